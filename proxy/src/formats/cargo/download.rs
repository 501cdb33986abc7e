//! `.crate` downloads: `api/v1/crates/<name>/<version>/download`.
//!
//! What a crate must hash to is the version's `cksum` in the cached index file, and where
//! it comes from is the upstream `config.json`'s `dl` template: never anything the request
//! names, so sluice cannot be made to fetch an arbitrary URL. The content is verified
//! while streaming ([`crate::fill`]), stored under its sha256 and served byte-exact. A
//! version the cached index file lacks (a release newer than the copy) makes sluice
//! revalidate the file once before answering `404`; the `404` is then remembered for
//! `negative_ttl`.

use std::sync::Arc;

use futures_util::FutureExt;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::fill::UpstreamBody;
use crate::hashes::Expect;
use crate::response::{Body, CacheStatus, Reply};
use crate::upstream::Upstream;

use super::index::{self, CrateName, Release};

/// How long a missing version is remembered: `negative_ttl`, at least a second (each
/// miss revalidates the index file).
fn negative_ttl(up: &Upstream) -> std::time::Duration {
    up.cfg
        .negative_ttl
        .get()
        .max(std::time::Duration::from_secs(1))
}

fn not_found(name: &CrateName, version: &str) -> ProxyError {
    ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("crate {name} has no version {version}"),
    }
}

/// The index entry of `version`, revalidating the index file once if it lacks it.
async fn find(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &CrateName,
    version: &str,
) -> Result<Release, ProxyError> {
    for force in [false, true] {
        if force {
            if app.freshness(up).offline {
                break;
            }
            metrics::counter!("sluice_cargo_forced_revalidations_total", "upstream" => up.name().to_string())
                .increment(1);
        }
        let (doc, cache) = super::get_index(app, up, name, force).await?;
        if let Some(r) = index::releases(&doc).get(version) {
            return Ok(r.clone());
        }
        // Only a copy from the cache may be older than the release.
        if !matches!(cache, CacheStatus::Hit | CacheStatus::Stale) {
            break;
        }
    }
    Err(not_found(name, version))
}

/// Answers `GET`/`HEAD api/v1/crates/<name>/<version>/download`.
pub async fn serve(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &CrateName,
    version: &str,
    head: bool,
) -> Result<Reply, ProxyError> {
    let neg_key = format!("cargo/{}/{name}/{version}", up.name());
    if app.is_negative(&neg_key) {
        return Err(not_found(name, version));
    }
    let release = match find(app, up, name, version).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ProxyError::NotFound { .. }) {
                app.remember_negative(neg_key, negative_ttl(up));
            }
            return Err(e);
        }
    };
    // Cached is not the same as allowed: every download is checked.
    app.policy.check(&index::facts(
        up,
        &release.name,
        Some(version),
        release.published,
    ))?;
    let d = release.cksum;
    if let Some(reply) = stored(app, &d) {
        return Ok(reply);
    }
    let url = origin(app, up, &release, version).await?;
    if head {
        // A HEAD does not start a fill: ask the origin whether (and how big) it is.
        let resp = up
            .send_url(Method::HEAD, url, HeaderMap::new(), None, None)
            .await?;
        if !resp.status().is_success() {
            return Err(up.status_error(resp.status(), version, not_found(name, version)));
        }
        let mut r = headers(Reply::new(StatusCode::OK, CacheStatus::Bypass), None);
        r.head_length = crate::upstream::stated_length(&resp);
        return Ok(r);
    }
    let (up2, nf, what) = (
        up.clone(),
        not_found(name, version),
        format!("{name} {version}"),
    );
    let opener = Box::new(move || {
        async move {
            let resp = up2
                .send_url(Method::GET, url, HeaderMap::new(), None, None)
                .await?;
            if !resp.status().is_success() {
                return Err(up2.status_error(resp.status(), &what, nf));
            }
            Ok(UpstreamBody::from_response(up2.clone(), resp))
        }
        .boxed()
    });
    let Some(fill) = app
        .fills
        .join_or_start(Expect::Sha256(d), "cargo", up.name(), opener)
        .await?
    else {
        // Stored between our lookup and the fill registry check.
        return stored(app, &d).ok_or_else(|| ProxyError::internal("stored crate vanished"));
    };
    if let Err(e) = fill.started().await {
        if matches!(e, ProxyError::NotFound { .. }) {
            app.remember_negative(neg_key, negative_ttl(up));
        }
        return Err(e);
    }
    Ok(headers(Reply::new(StatusCode::OK, CacheStatus::Miss), None)
        .body(Body::Follow(fill.follow(0, None))))
}

/// Where the upstream serves `version` of the crate: its `config.json`'s `dl`, with the
/// markers cargo knows expanded, or with `/{crate}/{version}/download` appended when it
/// has none.
async fn origin(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    release: &Release,
    version: &str,
) -> Result<Url, ProxyError> {
    let (doc, _) = super::upstream_config(app, up).await?;
    let dl: Value = serde_json::from_slice(&doc.bytes).map_err(ProxyError::internal)?;
    let dl = dl.get("dl").and_then(Value::as_str).unwrap_or_default();
    let url = expand(dl, &release.name, version, &release.cksum);
    up.base().join(&url).map_err(|e| ProxyError::Upstream {
        upstream: up.name().to_string(),
        message: format!("config.json dl gives a bad URL {url:?}: {e}"),
        status: None,
    })
}

/// Expands a `dl` template for one crate version.
fn expand(dl: &str, name: &str, version: &str, cksum: &Digest) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| dl.contains(m)) {
        // As cargo does: appended as it is, a trailing `/` included.
        return format!("{dl}/{name}/{version}/download");
    }
    let prefix = match name.len() {
        1 => "1".to_string(),
        2 => "2".to_string(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    };
    dl.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{lowerprefix}", &prefix.to_ascii_lowercase())
        .replace("{prefix}", &prefix)
        .replace("{sha256-checksum}", &cksum.hex())
}

fn headers(r: Reply, d: Option<&Digest>) -> Reply {
    let r = r.header("Content-Type", "application/gzip");
    match d {
        Some(d) => r
            .header("ETag", format!("\"{}\"", d.hex()))
            .header("Cache-Control", "public, max-age=31536000, immutable"),
        None => r,
    }
}

/// The stored crate `d`, if any.
fn stored(app: &App, d: &Digest) -> Option<Reply> {
    let bytes = app.store.read(d)?;
    app.store.touch(d);
    Some(headers(Reply::new(StatusCode::OK, CacheStatus::Hit), Some(d)).body(Body::Mapped(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dl_templates_expand_as_cargo_expands_them() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(
            expand("https://dl.example/crates", "Serde", "1.0.0", &d),
            "https://dl.example/crates/Serde/1.0.0/download"
        );
        assert_eq!(
            expand("https://dl.example/crates/", "a", "0.1.0", &d),
            "https://dl.example/crates//a/0.1.0/download"
        );
        assert_eq!(
            expand(
                "https://dl.example/{prefix}/{lowerprefix}/{crate}-{version}.crate?c={sha256-checksum}",
                "Serde",
                "1.0.0",
                &d
            ),
            format!(
                "https://dl.example/Se/rd/se/rd/Serde-1.0.0.crate?c={}",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            expand("https://dl.example/{prefix}/{crate}", "abc", "1.0.0", &d),
            "https://dl.example/3/a/abc"
        );
    }
}
