//! Cargo sparse registries (the protocol of `sparse+` index URLs), mounted at
//! `/<upstream>/`. An `experiment` format: served only with `[formats] cargo = true`.
//!
//! - **`config.json`**: the upstream's, cached as a document, with `dl` pointing at sluice
//!   (`<base>/<upstream>/api/v1/crates`, to which cargo appends
//!   `/{crate}/{version}/download`), without `api` (sluice takes no publishes), and with
//!   `auth-required` set by sluice's own `[auth]`: when anonymous clients may not read,
//!   cargo must send its token with every request, downloads included.
//! - **Index files** (`1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`) go through the document
//!   cache ([`crate::docs`]): TTL, stale-while-revalidate, stale-if-error, negative cache,
//!   `ETag`/`304` and gzip. Versions a rule blocks are marked yanked ([`index::withhold`]).
//! - **Downloads** (`api/v1/crates/<name>/<version>/download`) are verified against the
//!   version's `cksum` in the cached index file and stored by digest ([`download`]).
//! - **Writes** (publish, yank, owners) answer `405`; other API calls `404`.

mod download;
mod index;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::app::App;
use crate::docs::{Doc, Fetcher, Rendered};
use crate::error::ProxyError;
use crate::response::{CacheStatus, Reply};
use crate::upstream::Upstream;

use super::Request;
use index::CrateName;

/// What a request below `/<upstream>/` asks for.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    /// `config.json`.
    Config,
    /// The index file of a crate.
    Index(CrateName),
    /// `api/v1/crates/<name>/<version>/download` (a `+` may come as `%2B`).
    Download(CrateName, Cow<'a, str>),
    /// A registry write (publish, yank, unyank, owners).
    Write,
}

fn parse<'a>(method: &Method, rest: &'a str) -> Option<Route<'a>> {
    let reads = *method == Method::GET || *method == Method::HEAD;
    if let Some(api) = rest.strip_prefix("api/v1/crates") {
        if !reads {
            return Some(Route::Write);
        }
        let parts: Vec<&str> = api.split('/').collect();
        return match parts.as_slice() {
            ["", name, version, "download"] => {
                let version = if version.contains('%') {
                    Cow::Owned(version.replace("%2B", "+").replace("%2b", "+"))
                } else {
                    Cow::Borrowed(*version)
                };
                valid_version(&version)
                    .then_some(())
                    .and_then(|_| Some(Route::Download(CrateName::parse(name)?, version)))
            }
            _ => None,
        };
    }
    if !reads {
        return Some(Route::Write);
    }
    if rest == "config.json" {
        return Some(Route::Config);
    }
    CrateName::from_index_path(rest).map(Route::Index)
}

/// A SemVer version's characters, bounded.
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// The crate a request below `/<upstream>/` is about (for the access log), if any.
pub fn log_name(rest: &str) -> Option<String> {
    match parse(&Method::GET, rest)? {
        Route::Index(n) | Route::Download(n, _) => Some(n.as_str().to_string()),
        _ => None,
    }
}

/// Answers one request below `/<upstream>/`.
pub async fn handle(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: Request<'_>,
) -> Result<Reply, ProxyError> {
    let Some(route) = parse(req.method, req.rest) else {
        return Err(ProxyError::NotFound {
            code: "NOT_FOUND",
            message: format!(
                "no such Cargo registry endpoint: {} /{}/{}",
                req.method,
                up.name(),
                req.rest.chars().take(200).collect::<String>()
            ),
        });
    };
    match route {
        Route::Write => Err(ProxyError::Unsupported {
            message: format!(
                "{} is not supported: sluice is a read-only Cargo registry mirror (no publish, \
                 yank or owner changes); publish to the registry itself",
                req.method
            ),
            allow: "GET, HEAD",
        }),
        Route::Config => config(app, up, &req).await,
        Route::Index(name) => {
            check_name(app, up, &name)?;
            index_file(app, up, &name, &req).await
        }
        Route::Download(name, version) => {
            check_name(app, up, &name)?;
            download::serve(app, up, &name, &version, *req.method == Method::HEAD).await
        }
    }
}

/// The versions an index file lists and what each `.crate` hashes to (for pins, cleanup
/// and listings).
pub(crate) fn versions_of(index: &[u8]) -> Vec<(String, crate::digest::Digest)> {
    index::releases_of(index)
        .into_iter()
        .map(|(v, r)| (v, r.cksum))
        .collect()
}

/// Crate-level policy (namespace protection, deny without versions) before anything is
/// fetched: an internal name never reaches a public registry.
fn check_name(app: &App, up: &Upstream, name: &CrateName) -> Result<(), ProxyError> {
    app.policy
        .check_package(&index::facts(up, name.as_str(), None, None))
        .map(|_| ())
}

fn doc_fetcher(
    app: &App,
    up: &Arc<Upstream>,
    path: String,
    check: impl Fn(&[u8]) -> Result<(), String> + Send + Sync + 'static,
) -> Fetcher {
    super::doc_fetcher(
        app,
        up,
        path,
        "application/json, text/plain, */*",
        "cargo",
        // 451 (taken down for legal reasons) is gone too, as cargo reads it.
        &[404, 410, 451],
        check,
    )
}

/// The upstream's `config.json`, cached as a document.
async fn upstream_config(
    app: &Arc<App>,
    up: &Arc<Upstream>,
) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
    let key = format!("cargo/{}/config.json", up.name());
    let fetcher = doc_fetcher(app, up, "/config.json".into(), check_config);
    let name = up.name().to_string();
    app.docs
        .get(&key, app.freshness(up), false, fetcher, move || {
            ProxyError::Upstream {
                upstream: name.clone(),
                message: "the upstream has no config.json: is url a Cargo sparse index?".into(),
                status: Some(404),
            }
        })
        .await
}

fn check_config(bytes: &[u8]) -> Result<(), String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("config.json is not JSON: {e}"))?;
    match v.get("dl").and_then(Value::as_str) {
        Some(dl) if !dl.is_empty() => Ok(()),
        _ => Err("config.json has no dl (download URL)".into()),
    }
}

/// `config.json` for sluice's clients: downloads from sluice, no publish API.
async fn config(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let (doc, cache) = upstream_config(app, up).await?;
    let base = app.link_base(req.headers);
    let dl = format!("{}/{}/api/v1/crates", base.url, up.name());
    // Without anonymous reads, cargo must be told to send its token on downloads too (it
    // sends it for the index once a 401 asked for it, but for downloads only when told).
    let auth_required = app.role_of(None) < sluice_config::Role::Read;
    let variant = format!("cargo-config#{dl}#auth{auth_required}");
    let rendered = app.docs.render_kept(&doc, &variant, base.cached, |d| {
        let mut v: Value = serde_json::from_slice(&d.bytes).map_err(ProxyError::internal)?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| ProxyError::internal("config.json is not an object"))?;
        obj.insert("dl".into(), Value::String(dl.clone()));
        obj.remove("api");
        if auth_required {
            obj.insert("auth-required".into(), Value::Bool(true));
        } else {
            obj.remove("auth-required");
        }
        Ok(Rendered::new(
            Bytes::from(v.to_string()),
            "application/json",
        ))
    })?;
    Ok(rendered.reply(
        req.header("if-none-match"),
        req.header("accept-encoding"),
        cache,
    ))
}

/// The doc-cache key of a crate's index file.
fn index_key(up: &Upstream, name: &CrateName) -> String {
    format!("cargo/{}/{}", up.name(), name.index_path())
}

/// The cached index file of `name`; `force` revalidates a cached copy first.
async fn get_index(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &CrateName,
    force: bool,
) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
    let key = index_key(up, name);
    if !force {
        // A hit needs no fetcher.
        if let Some(doc) = app.docs.fresh(&key, app.freshness(up)) {
            return Ok((doc, CacheStatus::Hit));
        }
    }
    let crate_name = name.clone();
    let fetcher = doc_fetcher(app, up, format!("/{}", name.index_path()), move |b| {
        index::check(b, &crate_name)
    });
    let shown = name.to_string();
    app.docs
        .get(&key, app.freshness(up), force, fetcher, move || {
            ProxyError::NotFound {
                code: "NOT_FOUND",
                message: format!("crate {shown} not found"),
            }
        })
        .await
}

/// An index file as cargo gets it: blocked versions marked yanked.
async fn index_file(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &CrateName,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let (doc, cache) = get_index(app, up, name, false).await?;
    // Re-rendered when the policy changes (generation) and hourly (cooldowns end).
    let variant = format!(
        "cargo-index#{}#g{}#h{}",
        up.name(),
        app.policy.generation(),
        crate::store::unix_secs() / 3600
    );
    let rendered = app.docs.render(&doc, &variant, |d| {
        let body = match index::withhold(&d.bytes, &app.policy, up) {
            Some((b, n)) => {
                metrics::counter!("sluice_cargo_withheld_versions_total", "upstream" => up.name().to_string())
                    .increment(n as u64);
                Bytes::from(b)
            }
            None => d.bytes.clone(),
        };
        Ok(Rendered::new(body, "text/plain; charset=utf-8"))
    })?;
    Ok(rendered.reply(
        req.header("if-none-match"),
        req.header("accept-encoding"),
        cache,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = |p| parse(&Method::GET, p);
        let n = |s| CrateName::parse(s).unwrap();
        assert_eq!(get("config.json"), Some(Route::Config));
        assert_eq!(get("se/rd/serde"), Some(Route::Index(n("serde"))));
        assert_eq!(get("1/a"), Some(Route::Index(n("a"))));
        assert_eq!(
            get("api/v1/crates/serde/1.0.200/download"),
            Some(Route::Download(n("serde"), "1.0.200".into()))
        );
        assert_eq!(
            get("api/v1/crates/x/1.0.0-rc.1+build.5/download"),
            Some(Route::Download(n("x"), "1.0.0-rc.1+build.5".into()))
        );
        assert_eq!(
            get("api/v1/crates/x/1.0.0%2Bbuild.5/download"),
            Some(Route::Download(n("x"), "1.0.0+build.5".into()))
        );
        assert_eq!(get("api/v1/crates/serde/1.0.200"), None);
        assert_eq!(get("api/v1/crates/serde/1.0%2f/download"), None);
        assert_eq!(get("api/v1/crates?q=serde"), None);
        assert_eq!(get("xx/yy/serde"), None);
        assert_eq!(get(""), None);
        assert_eq!(parse(&Method::PUT, "api/v1/crates/new"), Some(Route::Write));
        assert_eq!(
            parse(&Method::DELETE, "api/v1/crates/x/1.0.0/yank"),
            Some(Route::Write)
        );
        assert_eq!(parse(&Method::POST, "se/rd/serde"), Some(Route::Write));
    }
}
