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

use http::StatusCode;
use serde_json::Value;
use url::Url;

use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
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
        release.name.as_str(),
        Some(version),
        release.published,
    ))?;
    let d = release.cksum;
    if let Some(reply) = stored(app, &d) {
        return Ok(reply);
    }
    let url = origin(app, up, &release, version).await?;
    let (n, v) = (name.clone(), version.to_string());
    let file = super::super::OriginFile {
        url,
        expect: Expect::Sha256(d),
        format: "cargo",
        content_type: CONTENT_TYPE,
        what: format!("{name} {version}"),
        not_found: move || not_found(&n, &v),
        negative_key: neg_key,
    };
    match super::super::from_origin(app, up, file, head).await? {
        Some(reply) => Ok(reply),
        // Stored between our lookup and the fill registry check.
        None => stored(app, &d).ok_or_else(|| ProxyError::internal("stored crate vanished")),
    }
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
    let url = expand(dl, release.name.as_str(), version, &release.cksum);
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

const CONTENT_TYPE: &str = "application/gzip";

/// The stored crate `d`, if any.
fn stored(app: &App, d: &Digest) -> Option<Reply> {
    let bytes = app.store.read(d)?;
    app.store.touch(d);
    Some(
        Reply::new(StatusCode::OK, CacheStatus::Hit)
            .header("Content-Type", CONTENT_TYPE)
            .header("ETag", format!("\"{}\"", d.hex()))
            .header("Cache-Control", "public, max-age=31536000, immutable")
            .body(Body::Mapped(bytes)),
    )
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
