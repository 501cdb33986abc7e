//! npm registry protocol, mounted at `/<upstream>/` (e.g. `/npmjs/`).
//!
//! - **Packuments** (`/<name>`, `/@scope%2fname`, `/@scope/name`), full and abbreviated
//!   (`Accept: application/vnd.npm.install-v1+json`), go through the document cache
//!   ([`crate::docs`]): TTL, stale-while-revalidate, stale-if-error, negative cache. The
//!   abbreviated form is fetched from the upstream with that `Accept` and cached as its own
//!   document; if the upstream answers with a full document instead, sluice abbreviates
//!   it. Both are served with `dist.tarball` pointing at sluice and everything else
//!   untouched ([`packument`]), with `ETag`/`304` and gzip.
//! - **Tarballs** (`/<name>/-/<file>.tgz`) are verified against the packument's
//!   `dist.integrity` / `dist.shasum` and stored by digest ([`tarball`]).
//! - **Pass-through**: `/-/ping`, `/-/v1/search`, the audit endpoints (npm's and pnpm's);
//!   `/-/npm/v1/keys` and `/-/npm/v1/attestations/<name>@<version>` are cached as documents
//!   (`dist.attestations.url` on the upstream is rewritten to the latter).
//! - **Writes** (publish, unpublish, dist-tag changes, login) answer `405`.

mod name;
mod packument;
mod policy;
mod tarball;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::app::App;
use crate::docs::{Doc, Fetcher, Rendered};
use crate::error::ProxyError;
use crate::response::{CacheStatus, Reply};
use crate::text::Decimal;
use crate::upstream::Upstream;

use super::Request;
use name::{NpmName, Route, RouteError};
use packument::{TarballBase, CORGI};

/// `Accept` sluice sends for abbreviated packuments (as npm and pnpm do).
const ACCEPT_CORGI: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// The package a request below `/<upstream>/` is about (for the access log), if any.
pub fn log_name(method: &Method, rest: &str) -> Option<String> {
    match name::parse(method, rest).ok()? {
        Route::Packument(n)
        | Route::Version(n, _)
        | Route::Tarball(n, _)
        | Route::DistTags(n)
        | Route::Attestations(n, _) => Some(n.as_str().to_string()),
        _ => None,
    }
}

/// Answers one request below `/<upstream>/`.
pub async fn handle(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: Request<'_>,
) -> Result<Reply, ProxyError> {
    let route = match name::parse(req.method, req.rest) {
        Ok(r) => r,
        Err(RouteError::Bad(message)) => {
            return Err(ProxyError::BadRequest {
                code: "BAD_REQUEST",
                message,
            })
        }
        Err(RouteError::NotFound) => {
            return Err(ProxyError::NotFound {
                code: "NOT_FOUND",
                message: format!(
                    "no such npm registry endpoint: {} /{}/{}",
                    req.method,
                    up.name(),
                    req.rest.chars().take(200).collect::<String>()
                ),
            })
        }
    };
    let head = *req.method == Method::HEAD;
    match route {
        Route::Write => Err(ProxyError::Unsupported {
            message: format!(
                "{} is not supported: sluice is a read-only npm mirror (no publish, unpublish, \
                 dist-tag changes or login); publish to the registry itself",
                req.method
            ),
            allow: "GET, HEAD",
        }),
        Route::Packument(name) => {
            check_name(app, up, &name)?;
            packument(app, up, &name, &req).await
        }
        Route::Version(name, spec) => {
            check_name(app, up, &name)?;
            // A version a rule blocks gets the rule's reason (403), decided on the version's
            // facts from the packument (publish time, license) in `version`.
            version(app, up, &name, &spec, &req).await
        }
        Route::DistTags(name) => {
            check_name(app, up, &name)?;
            dist_tags(app, up, &name, &req).await
        }
        Route::Tarball(name, file) => {
            // The tarball's own check (with its version) records the audit findings.
            app.policy
                .check_package(&policy::facts(up, name.as_str(), None, None, None))?;
            tarball::serve(app, up, &name, &file, head).await
        }
        Route::Keys => keys(app, up, &req).await,
        Route::Attestations(name, v) => {
            check_name(app, up, &name)?;
            attestations(app, up, &name, &v, &req).await
        }
        Route::Ping => pass(up, Method::GET, "/-/ping", &req).await,
        Route::Search => pass(up, Method::GET, "/-/v1/search", &req).await,
        Route::Audit(path) => pass(up, Method::POST, path, &req).await,
    }
}

/// The doc-cache key of a packument.
/// Package-level policy (namespace protection, deny without versions) before anything is
/// fetched: an internal name never reaches a public registry.
fn check_name(app: &App, up: &Upstream, name: &NpmName) -> Result<(), ProxyError> {
    app.policy
        .check(&policy::facts(up, name.as_str(), None, None, None))
        .map(|_| ())
}

/// The packument bytes with blocked versions removed (unchanged when nothing is blocked).
fn allowed_bytes(app: &App, up: &Upstream, name: &NpmName, doc: &Doc) -> Result<Bytes, ProxyError> {
    Ok(policy::filter(&doc.bytes, &app.policy, up, name.as_str())
        .map_err(bad_doc)?
        .map(|(b, _)| Bytes::from(b))
        .unwrap_or_else(|| doc.bytes.clone()))
}

fn doc_key(up: &Upstream, name: &NpmName, abbrev: bool) -> String {
    [
        "npm/",
        up.name(),
        "/",
        name.as_str(),
        if abbrev { "/abbrev" } else { "/full" },
    ]
    .concat()
}

fn not_found(name: &NpmName) -> impl Fn() -> ProxyError + '_ {
    move || ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("package {name} not found"),
    }
}

/// Where tarball URLs of `name` point, answering a request with `headers`:
/// `<base>/<upstream>/<name>/-/` (see [`App::base_url`]: with `public_url` unset, the base
/// the client reached sluice at, so rendered variants keyed on it).
/// Also whether documents rendered with it may be kept (see
/// [`crate::app::LinkBase::cached`]).
fn tarball_base(app: &App, up: &Upstream, name: &NpmName, headers: &HeaderMap) -> (String, bool) {
    let base = app.link_base(headers);
    (tarball_url_base(&base.url, up, name), base.cached)
}

/// `<base>/<upstream>/<name>/-/`.
fn tarball_url_base(base: &str, up: &Upstream, name: &NpmName) -> String {
    format!("{base}/{}/{name}/-/", up.name())
}

/// Whether the client prefers the abbreviated form.
fn wants_corgi(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut it = part.split(';');
            let mt = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            mt.eq_ignore_ascii_case(CORGI) && !q_zero
        })
    })
}

/// Whether the client asked to bypass caches (`Cache-Control: no-cache` / `max-age=0`,
/// `Pragma: no-cache`): the cached packument is revalidated before answering.
fn wants_revalidation(req: &Request<'_>) -> bool {
    let cc = req
        .header(http::header::CACHE_CONTROL)
        .unwrap_or("")
        .to_ascii_lowercase();
    cc.contains("no-cache")
        || cc.contains("max-age=0")
        || req
            .header(http::header::PRAGMA)
            .is_some_and(|p| p.to_ascii_lowercase().contains("no-cache"))
}

/// Fetcher of a packument (full, or abbreviated with the corgi `Accept`).
fn packument_fetcher(app: &App, up: &Arc<Upstream>, name: &NpmName, abbrev: bool) -> Fetcher {
    doc_fetcher(
        app,
        up,
        format!("/{}", name.encoded()),
        if abbrev {
            ACCEPT_CORGI
        } else {
            "application/json"
        },
    )
}

/// Fetcher of a JSON document at `path` below the upstream's base URL (see
/// [`super::doc_fetcher`]): it must be a JSON object.
fn doc_fetcher(app: &App, up: &Arc<Upstream>, path: String, accept: &'static str) -> Fetcher {
    super::doc_fetcher(app, up, path, accept, "npm", &[404, 410], |b| {
        packument::check_object(b).map_err(|m| format!("upstream document is {m}"))
    })
}

/// The packument of `name` in the form the client asked for.
async fn packument(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let corgi = wants_corgi(req.header(http::header::ACCEPT));
    let force = wants_revalidation(req);
    // With a policy, the full packument is the source even for abbreviated answers: its
    // `time` map (publish times, for cooldowns) and licenses are not in the abbreviated form.
    let policy_on = !app.policy.engine().is_empty();
    let (doc, cache) = get_packument(app, up, name, corgi && !policy_on, force).await?;
    // Rendered forms drop blocked versions; they are re-rendered when the policy changes
    // (generation) and hourly (release-age cooldowns expire).
    let link = app.link_base(req.headers);
    let variant = [
        if corgi { "npm-corgi" } else { "npm-full" },
        "#g",
        Decimal::new(app.policy.generation()).as_str(),
        "#h",
        Decimal::new(crate::store::unix_secs() / 3600).as_str(),
        "#",
        link.url.as_str(),
        "/",
        up.name(),
        "/",
        name.as_str(),
        "/-/",
    ]
    .concat();
    let rendered = app.docs.render_kept(&doc, &variant, link.cached, |d| {
        let base = tarball_url_base(link.url.as_str(), up, name);
        let (source, notice) =
            match policy::filter(&d.bytes, &app.policy, up, name.as_str()).map_err(bad_doc)? {
                Some((filtered, notice)) => (Bytes::from(filtered), Some(notice)),
                None => (d.bytes.clone(), None),
            };
        let origin = up.base().origin().ascii_serialization();
        let links = TarballBase {
            tarballs: &base,
            name: name.as_str(),
            upstream_origin: &origin,
        };
        let (body, content_type) = if !corgi {
            (packument::rewrite_full(&source, &links), "application/json")
        } else if d.content_type.starts_with(CORGI) {
            (packument::rewrite_full(&source, &links), CORGI)
        } else {
            (packument::abbreviate(&source, &links), CORGI)
        };
        let r = Rendered::new(Bytes::from(body.map_err(bad_doc)?), content_type);
        Ok(match notice {
            // npm prints `npm-notice` only for responses it does not store in its own
            // cache, so a filtered packument is marked no-store: the user whose install
            // then fails (ETARGET) sees which rule removed the version.
            Some(n) => r
                .with_header("npm-notice", &n)
                .with_header("Cache-Control", "no-store"),
            None => r,
        })
    })?;
    Ok(rendered.reply(
        req.header(http::header::IF_NONE_MATCH),
        req.header(http::header::ACCEPT_ENCODING),
        cache,
    ))
}

fn bad_doc(m: String) -> ProxyError {
    ProxyError::Upstream {
        upstream: String::new(),
        message: m,
        status: None,
    }
}

/// The cached packument of `name` (abbreviated or full). When the abbreviated form is
/// not cached and cannot be fetched (offline, upstream down), a cached full packument
/// stands in: sluice abbreviates it.
async fn get_packument(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    corgi: bool,
    force: bool,
) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
    let key = doc_key(up, name, corgi);
    // The other form was found changed after this copy was fetched: revalidate this one too
    // (a new release seen through the full form is then in the abbreviated one).
    let outdated = changed_at(&key)
        .is_some_and(|at| app.docs.peek(&key).is_some_and(|d| d.fetched_at_ms < at));
    if !force && !outdated {
        // A hit needs no fetcher.
        if let Some(doc) = app.docs.fresh(&key, app.freshness(up)) {
            return Ok((doc, CacheStatus::Hit));
        }
    }
    if outdated && !force {
        count_forced("other_form");
    }
    let fetcher = packument_fetcher(app, up, name, corgi);
    let got = app
        .docs
        .get(
            &key,
            app.freshness(up),
            force || outdated,
            fetcher,
            not_found(name),
        )
        .await;
    if outdated {
        // Asked once, whatever the answer: an upstream failing now must not be asked again
        // on every request (the copy is then served stale, as any other).
        changed().invalidate(&key);
    }
    if force {
        if let Ok((_, CacheStatus::Miss)) = &got {
            // Changed upstream (or first fetched): the other form's copy, if older, is
            // revalidated on its next use. Not when this revalidation was itself caused by
            // such a mark (no ping-pong between the forms).
            ANY_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
            changed().insert(doc_key(up, name, !corgi), crate::store::unix_ms());
        }
    }
    match got {
        Err(e) if corgi && (e.is_upstream_failure() || matches!(e, ProxyError::Offline(_))) => {
            match app.docs.peek(&doc_key(up, name, false)) {
                Some(full) => Ok((full, CacheStatus::Stale)),
                None => Err(e),
            }
        }
        other => other,
    }
}

/// When a forced revalidation last found a packument form changed, by the doc key of the
/// *other* form (Unix ms): its copies fetched before then are revalidated before use.
fn changed() -> &'static moka::sync::Cache<String, u64> {
    static CACHE: OnceLock<moka::sync::Cache<String, u64>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(24 * 3600))
            .build()
    })
}

/// Whether anything was ever put in [`changed`]: until then a cache hit skips asking it.
static ANY_CHANGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn changed_at(key: &str) -> Option<u64> {
    if !ANY_CHANGED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    changed().get(key)
}

/// `/<name>/<version or dist-tag>`: one version object. A version the packument lists but a
/// rule blocks answers the rule's refusal (403); one missing from the cached packument makes
/// sluice revalidate it before answering 404, at most once per `negative_ttl` (at least a
/// second) for the same version.
async fn version(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    spec: &str,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let (base, keep) = tarball_base(app, up, name, req.headers);
    let variant = format!(
        "npm-version:{spec}#g{}#h{}#{base}",
        app.policy.generation(),
        crate::store::unix_secs() / 3600
    );
    let mut force = wants_revalidation(req);
    let neg_key = format!("npm/{}/{name}/@{spec}", up.name());
    loop {
        let (doc, cache) = get_packument(app, up, name, false, force).await?;
        let refused_key = (doc.digest, variant.clone());
        if let Some((version, rule, reason)) = refused().get(&refused_key) {
            app.policy.repeat_block(&crate::refusals::Seen {
                format: "npm",
                upstream: up.name(),
                name: name.as_str(),
                version: Some(&version),
                rule: &rule,
                outcome: "block",
                reason: &reason,
            });
            return Err(ProxyError::Blocked {
                hidden: false,
                rule,
                reason,
            });
        }
        let rendered = app.docs.render_kept(&doc, &variant, keep, |d| {
            let bytes = allowed_bytes(app, up, name, d)?;
            let origin = up.base().origin().ascii_serialization();
            let links = TarballBase {
                tarballs: &base,
                name: name.as_str(),
                upstream_origin: &origin,
            };
            packument::version_doc(&bytes, spec, &links)
                .map(|b| Rendered::new(Bytes::from(b), "application/json"))
                .ok_or_else(|| ProxyError::NotFound {
                    code: "NOT_FOUND",
                    message: format!("version {spec} of {name} not found"),
                })
        });
        match rendered {
            Ok(r) => {
                return Ok(r.reply(
                    req.header(http::header::IF_NONE_MATCH),
                    req.header(http::header::ACCEPT_ENCODING),
                    cache,
                ))
            }
            Err(e) => {
                // Listed upstream but blocked: the rule's reason, and nothing to revalidate.
                if let Some((version, blocked)) =
                    policy::blocked_version(&doc.bytes, &app.policy, up, name.as_str(), spec)
                {
                    // Remembered for this copy and policy generation: asking again does not
                    // parse the packument twice more.
                    if let ProxyError::Blocked {
                        hidden: false,
                        rule,
                        reason,
                    } = &blocked
                    {
                        refused().insert(refused_key, (version, rule.clone(), reason.clone()));
                    }
                    return Err(blocked);
                }
                if !matches!(e, ProxyError::NotFound { .. }) || app.freshness(up).offline {
                    return Err(e);
                }
                // Missing from the cached copy: revalidate it, at most once per
                // `negative_ttl` (at least a second) for the same version.
                if force {
                    let ttl = up.cfg.negative_ttl.get().max(Duration::from_secs(1));
                    app.remember_negative(neg_key, ttl);
                    return Err(e);
                }
                if app.is_negative(&neg_key) {
                    count_forced("suppressed");
                    return Err(e);
                }
                count_forced("missing_version");
                force = true;
            }
        }
    }
}

/// Refusals of blocked versions by packument copy and version variant (which names the
/// policy generation): (version, rule, reason), for a minute (a release-age cooldown may
/// end, a waiver start or expire, without a new generation).
type Refused = moka::sync::Cache<(crate::digest::Digest, String), (String, String, String)>;

fn refused() -> &'static Refused {
    static CACHE: OnceLock<Refused> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(60))
            .build()
    })
}

/// Counts revalidations of a packument forced by what a request found (or not) in the
/// cached copy: `missing_version` / `missing_tarball` (a release newer than the copy),
/// `other_form` (the other form of the packument was found changed), and `suppressed`
/// (a version asked for again within `negative_ttl`: answered 404 without asking).
pub(crate) fn count_forced(reason: &'static str) {
    metrics::counter!("sluice_npm_forced_revalidations_total", "reason" => reason).increment(1);
}

/// `/-/package/<name>/dist-tags`, from the cached full packument.
async fn dist_tags(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let (doc, cache) = get_packument(app, up, name, false, wants_revalidation(req)).await?;
    let variant = format!(
        "npm-dist-tags#g{}#h{}",
        app.policy.generation(),
        crate::store::unix_secs() / 3600
    );
    let rendered = app.docs.render(&doc, &variant, |d| {
        let bytes = allowed_bytes(app, up, name, d)?;
        let tags = packument::dist_tags(&bytes).unwrap_or_else(|| b"{}".to_vec());
        Ok(Rendered::new(Bytes::from(tags), "application/json"))
    })?;
    Ok(rendered.reply(
        req.header(http::header::IF_NONE_MATCH),
        req.header(http::header::ACCEPT_ENCODING),
        cache,
    ))
}

/// `/-/npm/v1/keys`: the registry's signing keys, cached as a document so that
/// `npm audit signatures` works from cache too.
async fn keys(app: &Arc<App>, up: &Arc<Upstream>, req: &Request<'_>) -> Result<Reply, ProxyError> {
    let key = format!("npm/{}/-/keys", up.name());
    json_document(app, up, req, key, "/-/npm/v1/keys".into(), || {
        "the upstream registry publishes no signing keys".into()
    })
    .await
}

/// An upstream JSON document served as it came, cached under `key` like any document (an
/// upstream 404 is a 404, remembered for `negative_ttl`, saying `missing()`).
async fn json_document(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: &Request<'_>,
    key: String,
    path: String,
    missing: impl Fn() -> String,
) -> Result<Reply, ProxyError> {
    let fetcher = doc_fetcher(app, up, path, "application/json");
    let (doc, cache) = app
        .docs
        .get(&key, app.freshness(up), false, fetcher, move || {
            ProxyError::NotFound {
                code: "NOT_FOUND",
                message: missing(),
            }
        })
        .await?;
    let rendered = app.docs.render(&doc, "npm-json", |d| {
        Ok(Rendered::new(d.bytes.clone(), "application/json"))
    })?;
    Ok(rendered.reply(
        req.header(http::header::IF_NONE_MATCH),
        req.header(http::header::ACCEPT_ENCODING),
        cache,
    ))
}

/// `/-/npm/v1/attestations/<name>@<version>` (provenance and publish attestations, fetched
/// by `npm audit signatures`): immutable for a version, so cached as a document like the
/// keys; an upstream 404 is a 404 (remembered for `negative_ttl`).
async fn attestations(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    name: &NpmName,
    version: &str,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let key = format!("npm/{}/-/attestations/{name}@{version}", up.name());
    let path = format!("/-/npm/v1/attestations/{}@{version}", name.encoded());
    let what = format!("no attestations for {name}@{version}");
    json_document(app, up, req, key, path, move || what.clone()).await
}

/// Passes a request to the upstream and its answer back, uncached. Only headers that
/// describe the request body and the wanted answer are forwarded: never credentials.
async fn pass(
    up: &Arc<Upstream>,
    method: Method,
    path: &str,
    req: &Request<'_>,
) -> Result<Reply, ProxyError> {
    let mut h = HeaderMap::new();
    for n in [
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
        http::header::ACCEPT,
        http::header::ACCEPT_ENCODING,
    ] {
        if let Some(v) = req.headers.get(&n) {
            h.insert(n, v.clone());
        }
    }
    let path = match req.query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let body = if method == Method::POST {
        Some(req.body.clone().unwrap_or_default())
    } else {
        None
    };
    let resp = up.relay(method, &path, h, body).await?;
    Ok(super::pass_through(up, resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corgi_is_chosen_by_accept() {
        assert!(wants_corgi(Some(ACCEPT_CORGI)));
        assert!(wants_corgi(Some("application/vnd.npm.install-v1+json")));
        assert!(!wants_corgi(Some("application/json")));
        assert!(!wants_corgi(Some(
            "application/vnd.npm.install-v1+json;q=0, application/json"
        )));
        assert!(!wants_corgi(None));
    }
}
