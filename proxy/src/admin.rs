//! The admin API under `/-/api/` (JSON):
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /-/api/stats` | read | usage figures ([`crate::stats`]) and storage |
//! | `GET /-/api/cache?format=&name=&limit=` | admin | cached items, size, last access |
//! | `POST /-/api/purge?format=&name=[&tag=]` or `?digest=` | admin | remove from the store (content another item or a pin still uses is kept) |
//! | `POST /-/api/pin?format=&name=[&tag=]`, `POST /-/api/unpin?…` | admin | run-time pins |
//! | `GET /-/api/pins` | admin | configured and run-time pins |
//! | `POST /-/api/gc` | admin | run eviction and index GC now |
//! | `GET /-/api/cleanup`, `POST /-/api/cleanup[?dry_run=true]` | admin | last cleanup-policy evaluation; run it now (`dry_run`: report only) |
//! | `GET /-/api/policy/check?format=&name=&version=` | admin | evaluate the policy |
//! | `GET /-/api/blocks?limit=` | admin | what the policy refused lately ([`crate::refusals`]) |
//!
//! Parameters come from the query string, or from a JSON object body with the same keys.
//! Admin routes need an `admin` token: none (or an unknown one) answers `401`, a `read`
//! token `403`, whatever `auth.anonymous` grants. A browser's `POST` from another site is
//! refused (`403`, [`cross_site`]) whatever credentials it carries.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use sluice_config::{Format, Role};

use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::response::{Body, CacheStatus, Reply};
use crate::store::evict;
use crate::store::pins::{Pin, PurgeTarget, StoredPin};

/// Most items `GET /-/api/cache` lists.
const MAX_LIMIT: usize = 10_000;

/// Answers a request for `/-/api/<rest>`.
pub async fn handle(
    app: &Arc<App>,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    headers: &http::HeaderMap,
    body: Option<Bytes>,
) -> Result<Reply, ProxyError> {
    let need = if rest == "stats" {
        Role::Read
    } else {
        Role::Admin
    };
    // Before authorizing: a 401's basic challenge would invite the browser to store the
    // credentials another site's request is after.
    if !matches!(*method, Method::GET | Method::HEAD) {
        if let Some(why) = cross_site(headers) {
            metrics::counter!("sluice_admin_cross_site_refusals_total").increment(1);
            return Err(ProxyError::Denied(format!(
                "a browser request from another site ({why}) may not change anything here; \
                 use the CLI or send the request without a browser"
            )));
        }
    }
    authorize(app, authorization, need)?;
    let params = params(query, body.as_deref())?;
    let p = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    match (method.as_str(), rest) {
        ("GET", "stats") => {
            let mut v = app.stats.snapshot();
            v["storage"] = serde_json::json!({
                "stored_bytes": app.store.total_bytes(),
                "max_size": app.limits.max_size,
                "high_watermark": app.limits.high,
                "low_watermark": app.limits.low,
            });
            Ok(json(StatusCode::OK, &v))
        }
        ("GET", "blocks") => {
            let (since, entries) = app.policy.refusals.recent(limit(p("limit"))?);
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "since_unix": since, "blocks": entries }),
            ))
        }
        ("GET", "cache") => {
            let format = p("format").map(parse_format).transpose()?;
            let limit = limit(p("limit"))?;
            let name = p("name").map(str::to_string);
            let app2 = app.clone();
            let v = blocking(move || list(&app2, format, name.as_deref(), limit)).await?;
            Ok(json(StatusCode::OK, &v))
        }
        ("POST", "purge") => {
            let target = if let Some(d) = p("digest") {
                PurgeTarget::Digest(
                    d.parse::<Digest>()
                        .map_err(|_| bad("digest must be sha256:<64 hex>"))?,
                )
            } else {
                PurgeTarget::Name(pin_of(p)?)
            };
            let v = purge(app, target).await?;
            Ok(json(StatusCode::OK, &v))
        }
        ("POST", "pin") => {
            let pin = pin_of(p)?;
            app.store.add_pin(&pin).map_err(ProxyError::internal)?;
            Ok(json(StatusCode::OK, &serde_json::json!({ "pinned": pin })))
        }
        ("POST", "unpin") => {
            let pin = pin_of(p)?;
            let existed = app.store.remove_pin(&pin).map_err(ProxyError::internal)?;
            if !existed {
                return Err(ProxyError::NotFound {
                    code: "NOT_FOUND",
                    message: "no such run-time pin (configured pins are changed in the config)"
                        .into(),
                });
            }
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "unpinned": pin }),
            ))
        }
        ("GET", "pins") => {
            let stored = app.store.stored_pins().map_err(ProxyError::internal)?;
            let configured: Vec<StoredPin> = app
                .config
                .storage
                .pins
                .iter()
                .map(|c| StoredPin {
                    format: c.format,
                    name: c.name.clone(),
                    tag: c.tag.clone(),
                })
                .collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "configured": configured, "runtime": stored }),
            ))
        }
        ("POST", "gc") => {
            let app2 = app.clone();
            let report = blocking(move || {
                evict::collect(&app2.store, &app2.config.storage, &app2.limits, true)
                    .map_err(ProxyError::internal)
            })
            .await?;
            Ok(json(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            ))
        }
        ("GET", "cleanup") => Ok(cleanup_reply(app.store.cleanup_reports())),
        ("POST", "cleanup") => {
            // `dry_run=true` forces every policy to report only, for this call; nothing a
            // request says makes a `dry-run` policy remove.
            let dry_run = match p("dry_run") {
                None | Some("false" | "0") => false,
                Some("true" | "1") => true,
                Some(_) => return Err(bad("dry_run must be true or false")),
            };
            let app2 = app.clone();
            let reports = blocking(move || {
                let s = &app2.config.storage;
                let mut policies = s.cleanup.clone();
                if dry_run {
                    for p in &mut policies {
                        p.mode = sluice_config::CleanupMode::DryRun;
                    }
                }
                crate::store::cleanup::run(&app2.store, &policies, &s.pins, app2.limits.grace)
                    .map_err(ProxyError::internal)
            })
            .await?;
            Ok(cleanup_reply(reports))
        }
        ("GET", "policy/check") => {
            let format = parse_format(p("format").ok_or_else(|| bad("format is required"))?)?;
            let name = p("name").ok_or_else(|| bad("name is required"))?;
            let version = p("version");
            let d = app.policy.what_if(&sluice_policy::Facts {
                digest: p("digest"),
                license: p("license"),
                ..question(format, p("upstream").unwrap_or(""), name, version)
            });
            let findings: Vec<_> = d
                .findings
                .iter()
                .map(|f| serde_json::json!({ "finding": format!("{f:?}") }))
                .collect();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "format": format.as_str(), "name": name, "version": version,
                    "decision": d.verdict.as_str(), "rule": d.rule, "reason": d.reason,
                    "findings": findings,
                }),
            ))
        }
        (_, "stats" | "cache" | "pins" | "policy/check" | "blocks") => {
            Err(unsupported(method, rest, "GET"))
        }
        (_, "purge" | "pin" | "unpin" | "gc") => Err(unsupported(method, rest, "POST")),
        (_, "cleanup") => Err(unsupported(method, rest, "GET, POST")),
        _ => Err(ProxyError::NotFound {
            code: "NOT_FOUND",
            message: format!(
                "no admin route /-/api/{}",
                rest.chars().take(100).collect::<String>()
            ),
        }),
    }
}

/// Why a request is a browser's from another site, if it is: its `Sec-Fetch-Site` (set by
/// the browser) says so, or, without one, its `Origin` is not this host. Such a request
/// carries whatever credentials the browser holds for sluice (the basic-auth token the
/// dashboard's sign-in stored), so the routes that change something refuse it. Clients
/// that are not browsers send neither header.
fn cross_site(headers: &http::HeaderMap) -> Option<String> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        return (!matches!(site, "same-origin" | "none"))
            .then(|| format!("Sec-Fetch-Site: {site}"));
    }
    let origin = h("origin")?;
    let host = h("host").unwrap_or("");
    let same = origin
        .split_once("://")
        .is_some_and(|(_, authority)| same_authority(authority, host));
    (!same).then(|| format!("Origin: {}", origin.chars().take(100).collect::<String>()))
}

/// `a` and `b` name the same host and port: case, a trailing dot and a default port
/// (80, 443) aside.
fn same_authority(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        let s = s
            .strip_suffix(":80")
            .or_else(|| s.strip_suffix(":443"))
            .unwrap_or(&s)
            .to_string();
        s.strip_suffix('.').unwrap_or(&s).to_string()
    };
    !a.is_empty() && norm(a) == norm(b)
}

/// 405 for a method an admin route does not take; `allow` is what it takes.
fn unsupported(method: &http::Method, rest: &str, allow: &'static str) -> ProxyError {
    ProxyError::Unsupported {
        message: format!("{method} is not supported on /-/api/{rest} (use {allow})"),
        allow,
    }
}

fn cleanup_reply(policies: Vec<crate::store::cleanup::PolicyReport>) -> Reply {
    json(StatusCode::OK, &serde_json::json!({ "policies": policies }))
}

fn authorize(app: &App, authorization: Option<&str>, need: Role) -> Result<(), ProxyError> {
    let role = app.role_of(authorization);
    if need == Role::Admin && authorization.is_none() || role == Role::None {
        return Err(ProxyError::Unauthorized(
            "this admin endpoint needs a token with role admin (Authorization: Bearer <token>)"
                .into(),
        ));
    }
    if role < need {
        return Err(ProxyError::Denied(
            "this admin endpoint needs a token with role admin; this token has role read".into(),
        ));
    }
    Ok(())
}

/// The facts of a question to the policy about `name` (and `version`) of `format`: a
/// public upstream, no publish time, no install script.
pub(crate) fn question<'a>(
    format: Format,
    upstream: &'a str,
    name: &'a str,
    version: Option<&'a str>,
) -> sluice_policy::Facts<'a> {
    sluice_policy::Facts {
        ecosystem: format.ecosystem(),
        upstream,
        public_upstream: true,
        name,
        version,
        digest: None,
        published_unix: None,
        license: None,
        has_install_script: false,
    }
}

/// The `limit` parameter: a number, 100 when absent, at most [`MAX_LIMIT`].
fn limit(l: Option<&str>) -> Result<usize, ProxyError> {
    Ok(l.map(|l| {
        l.parse::<usize>()
            .map_err(|_| bad("limit must be a number"))
    })
    .transpose()?
    .unwrap_or(100)
    .min(MAX_LIMIT))
}

fn bad(m: &str) -> ProxyError {
    ProxyError::BadRequest {
        code: "BAD_REQUEST",
        message: m.to_string(),
    }
}

fn parse_format(f: &str) -> Result<Format, ProxyError> {
    Format::ALL
        .into_iter()
        .find(|x| x.as_str() == f)
        .ok_or_else(|| bad("format must be oci, npm, pypi or cargo"))
}

/// Query parameters, then the keys of a JSON object body (which win).
fn params(query: Option<&str>, body: Option<&[u8]>) -> Result<HashMap<String, String>, ProxyError> {
    let mut out: HashMap<String, String> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(b) = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(b)
            .map_err(|e| bad(&format!("body is not a JSON object: {e}")))?;
        for (k, v) in v {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            out.insert(k, s);
        }
    }
    Ok(out)
}

fn pin_of<'a>(p: impl Fn(&str) -> Option<&'a str>) -> Result<StoredPin, ProxyError> {
    Ok(StoredPin {
        format: parse_format(p("format").ok_or_else(|| bad("format is required"))?)?,
        name: p("name")
            .ok_or_else(|| bad("name (or digest) is required"))?
            .to_string(),
        tag: p("tag").or(p("version")).map(str::to_string),
    })
}

fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    Reply::new(status, CacheStatus::Bypass)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-store")
        .body(Body::Full(Bytes::from(
            serde_json::to_vec_pretty(v).unwrap_or_default(),
        )))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProxyError> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ProxyError::internal)?
}

pub(crate) fn list(
    app: &App,
    format: Option<Format>,
    name: Option<&str>,
    limit: usize,
) -> Result<serde_json::Value, ProxyError> {
    let store = &app.store;
    let records: HashMap<Digest, crate::store::index::BlobRecord> = store
        .records()
        .map_err(ProxyError::internal)?
        .into_iter()
        .collect();
    let filter = name.map(|n| {
        Pin::new(&sluice_config::PinConfig {
            format: format.unwrap_or(Format::Oci),
            name: n.to_string(),
            tag: None,
        })
    });
    let mut items = Vec::new();
    for item in store
        .items(&|f| !matches!(format, Some(w) if w != f))
        .map_err(ProxyError::internal)?
    {
        if let Some(f) = &filter {
            // Without a format, a name filter applies to every format.
            let mut probe = item.clone();
            if format.is_none() {
                probe.format = Format::Oci;
            }
            if !f.covers(&probe) {
                continue;
            }
        }
        let (mut size, mut last, mut stored) = (0u64, 0u64, 0usize);
        for d in &item.digests {
            if let Some(r) = records.get(d) {
                size += r.size;
                last = last.max(r.last_access);
                stored += 1;
            }
        }
        items.push(serde_json::json!({
            "format": item.format.as_str(),
            "kind": item.kind,
            "name": item.name,
            "tag": item.tag,
            "size": size,
            "last_access_unix": last,
            "files_stored": stored,
            "files": item.digests.len(),
        }));
    }
    items.sort_by_key(|v| std::cmp::Reverse(v["last_access_unix"].as_u64().unwrap_or(0)));
    let total = items.len();
    items.truncate(limit);
    Ok(serde_json::json!({
        "items": items,
        "total": total,
        "stored_bytes": store.total_bytes(),
        "stored_files": records.len(),
    }))
}

/// Removes what `target` names from the store ([`crate::store::Store::purge`]), then drops
/// the in-memory copies of the documents it removed, so the next request is a `MISS`.
async fn purge(app: &Arc<App>, target: PurgeTarget) -> Result<serde_json::Value, ProxyError> {
    let app2 = app.clone();
    let r = blocking(move || {
        app2.store
            .purge(&target, &app2.config.storage.pins)
            .map_err(ProxyError::internal)
    })
    .await?;
    for (key, digest) in &r.documents {
        app.docs.invalidate(key, digest);
    }
    tracing::info!(
        matched = r.matched_items,
        files = r.removed_files,
        bytes = r.removed_bytes,
        records = r.removed_records,
        kept_files = r.kept_files,
        kept_pinned = r.kept_pinned,
        "purge"
    );
    let mut v = serde_json::to_value(&r).map_err(ProxyError::internal)?;
    v["stored_bytes"] = app.store.total_bytes().into();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_site_requests_are_told_from_same_site_ones() {
        let host = ("host", "Sluice.Example:443");
        for ok in [
            vec![],
            vec![host],
            vec![host, ("sec-fetch-site", "same-origin")],
            vec![host, ("sec-fetch-site", "none")],
            vec![host, ("origin", "https://sluice.example")],
            vec![host, ("origin", "https://sluice.example.:443")],
            vec![("host", "[::1]:5080"), ("origin", "http://[::1]:5080")],
        ] {
            assert_eq!(cross_site(&headers(&ok)), None, "{ok:?}");
        }
        for bad in [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "https://sluice.example:8443")],
            vec![host, ("origin", "null")],
            vec![("origin", "https://sluice.example")],
        ] {
            assert!(cross_site(&headers(&bad)).is_some(), "{bad:?}");
        }
    }
}
