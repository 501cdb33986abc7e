//! PyPI: the simple repository API (PEP 503 HTML, PEP 691 JSON), the JSON API, and the
//! distribution files, mounted at `/<upstream>/`.
//!
//! - `simple/` and `simple/<project>/`: each page is fetched once from the upstream
//!   (asking for PEP 691 JSON first; an HTML-only index works too), cached as a document with
//!   the upstream's exact bytes ([`crate::docs`]: TTL, stale-while-revalidate,
//!   stale-if-error, negative cache), and rendered on demand as HTML or JSON, negotiated by
//!   `Accept` (with q-values) or `?format=`. Names that are not PEP 503 normalised redirect
//!   (301) to the normalised URL. Every file URL on a rendered page points at
//!   `/<up>/files/sha256/<hex>/<filename>` (with the `#sha256=` fragment / `hashes`), and
//!   PEP 592 yanks, PEP 700 fields, `requires-python` and PEP 658/714 core metadata are kept.
//! - `files/...`: see [`files`]. The origin of a file is recorded when its page is fetched
//!   (a file no page listed yet has its project's page fetched), never taken from a request.
//! - `pypi/<project>/json`, `pypi/<project>/<version>/json`: the upstream's JSON API (which
//!   lives beside its simple index: `.../simple/` → `.../pypi/`), cached the same way, with
//!   file URLs rewritten.
//! - Anything but `GET`/`HEAD` (uploads) answers `405`.

pub mod files;
pub mod simple;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::app::App;
use crate::docs::{Doc, Fetched, Fetcher, Rendered, Validators};
use crate::error::ProxyError;
use crate::response::{Body, ByteRange, CacheStatus, Reply};
use crate::text::Decimal;
use crate::upstream::{accept, Upstream};

use super::Request;
use files::FileKey;
use simple::{FileEntry, Link};

/// What sluice asks the upstream for: PEP 691 JSON, HTML as the fallback.
const UPSTREAM_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1";

/// Documents above this size are parsed and rendered off the async threads.
const BLOCKING_RENDER: usize = 1 << 20;

/// Answers one request below `/<upstream>/`.
pub async fn handle(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: Request<'_>,
) -> Result<Reply, ProxyError> {
    if !matches!(*req.method, Method::GET | Method::HEAD) {
        return Err(ProxyError::Unsupported {
            message: format!(
                "{} is not supported: sluice is a read-only mirror of the index (upload to the index itself)",
                req.method
            ),
            allow: "GET, HEAD",
        });
    }
    let rest = req.rest;
    if rest == "simple" {
        return Ok(redirect(
            format!("{}/simple/", app.mount_url(up.name(), req.headers)),
            req.query,
        ));
    }
    if rest == "simple/" {
        return root(app, up, &req).await;
    }
    if let Some(p) = rest.strip_prefix("simple/") {
        return project(app, up, &req, p).await;
    }
    if let Some(f) = rest.strip_prefix("files/") {
        let range = req.header(http::header::RANGE).and_then(ByteRange::parse);
        return files::serve(app, up, f, range, *req.method == Method::HEAD).await;
    }
    if let Some(j) = rest.strip_prefix("pypi/") {
        return json_api(app, up, &req, j).await;
    }
    Err(ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!(
            "no such PyPI route: /{}/{rest} (the index is at /{}/simple/)",
            up.name(),
            up.name()
        ),
    })
}

/// The project a request below `/<upstream>/` is about (for the access log), if any: from
/// the page or JSON API path, or, for a file, the project part of its name.
pub fn log_name(rest: &str) -> Option<String> {
    let project = if let Some(p) = rest
        .strip_prefix("simple/")
        .or_else(|| rest.strip_prefix("pypi/"))
    {
        p.split('/').next()?
    } else {
        let file = rest.strip_prefix("files/")?.rsplit('/').next()?;
        return files::project_of(file.strip_suffix(".metadata").unwrap_or(file));
    };
    (!project.is_empty()).then(|| simple::normalize(project))
}

fn redirect(location: String, query: Option<&str>) -> Reply {
    let location = match query {
        Some(q) if !q.is_empty() => format!("{location}?{q}"),
        _ => location,
    };
    Reply::new(StatusCode::MOVED_PERMANENTLY, CacheStatus::Bypass)
        .header("Location", location)
        .header("Content-Type", "text/plain; charset=utf-8")
}

fn not_found(what: String) -> impl Fn() -> ProxyError {
    move || ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("{what} not found upstream"),
    }
}

/// A representation of a simple page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// PEP 691 JSON.
    Json,
    /// PEP 691 HTML (`application/vnd.pypi.simple.v1+html`).
    HtmlV1,
    /// PEP 503 HTML (`text/html`).
    Html,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Json => "json",
            Variant::HtmlV1 => "html-v1",
            Variant::Html => "html",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Variant::Json => simple::JSON,
            Variant::HtmlV1 => simple::HTML_V1,
            Variant::Html => "text/html; charset=utf-8",
        }
    }
}

/// Picks the representation: `?format=<media type>` wins, else the best `Accept` entry by
/// q-value (explicit types before wildcards, JSON first on ties); no `Accept` means HTML.
/// `None`: nothing acceptable (`406`).
pub fn negotiate(accept_header: Option<&str>, query: Option<&str>) -> Option<Variant> {
    let format = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "format")
            // An unencoded `+` (as people type media types) decodes to a space.
            .map(|(_, v)| v.replace(' ', "+"))
    });
    let header = match (&format, accept_header) {
        (Some(f), _) => f.as_str(),
        (None, Some(a)) if !a.trim().is_empty() => a,
        _ => return Some(Variant::Html),
    };
    let mut best: Option<(f32, u8, u8, Variant)> = None;
    for part in header.split(',') {
        let mut it = part.split(';');
        let mt = it.next().unwrap_or("").trim();
        // (media type, variant, specificity, preference on ties); compared without
        // allocating a lowercased copy (this runs on every cached page request).
        const KNOWN: [(&str, Variant, u8, u8); 7] = [
            ("application/vnd.pypi.simple.v1+json", Variant::Json, 2, 3),
            (
                "application/vnd.pypi.simple.latest+json",
                Variant::Json,
                2,
                3,
            ),
            ("application/vnd.pypi.simple.v1+html", Variant::HtmlV1, 2, 2),
            (
                "application/vnd.pypi.simple.latest+html",
                Variant::HtmlV1,
                2,
                2,
            ),
            ("text/html", Variant::Html, 2, 1),
            ("application/*", Variant::Json, 1, 3),
            ("text/*", Variant::Html, 0, 1),
        ];
        let Some((variant, spec, pref)) = KNOWN
            .iter()
            .find(|k| k.0.eq_ignore_ascii_case(mt))
            .map(|k| (k.1, k.2, k.3))
            .or((mt == "*/*").then_some((Variant::Html, 0, 1)))
        else {
            continue;
        };
        let mut q = 1.0f32;
        for p in it {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if q <= 0.0 {
            continue;
        }
        let cand = (q, spec, pref, variant);
        if best.is_none_or(|b| (cand.0, cand.1, cand.2) > (b.0, b.1, b.2)) {
            best = Some(cand);
        }
    }
    best.map(|b| b.3)
}

fn not_acceptable() -> Reply {
    Reply::new(StatusCode::NOT_ACCEPTABLE, CacheStatus::Bypass)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::Full(Bytes::from_static(
            b"none of the requested media types is available: use application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html or text/html\n",
        )))
}

/// The conditional-request headers for `v`.
fn with_validators(mut h: HeaderMap, v: Option<Validators>) -> HeaderMap {
    if let Some(v) = v {
        if let Some(e) = v.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
            h.insert(http::header::IF_NONE_MATCH, e);
        }
        if let Some(l) = v.last_modified.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(http::header::IF_MODIFIED_SINCE, l);
        }
    }
    h
}

fn header_string(resp: &reqwest::Response, name: http::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn invalid(up: &Upstream, what: &str, e: String) -> ProxyError {
    ProxyError::Upstream {
        upstream: up.name().to_string(),
        message: format!("{what}: {e}"),
        status: None,
    }
}

/// A `fetcher` that reads a project's file list out of the fetched document (`list` gets the
/// body, its content type, the document's URL and the project) and records it for the
/// project (`only_new`: as `files::record_files`).
fn recording_fetcher(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    norm: &str,
    url: Url,
    accept_value: &'static str,
    only_new: bool,
    list: impl Fn(&Bytes, &str, &Url, &str) -> Result<Vec<FileEntry>, String>
        + Send
        + Sync
        + Clone
        + 'static,
) -> Fetcher {
    let (app2, up_name, norm, url2) = (
        app.clone(),
        up.name().to_string(),
        norm.to_string(),
        url.clone(),
    );
    fetcher(app, up, url, accept_value, move |b, ct| {
        let files = list(b, ct, &url2, &norm)?;
        files::record_files(&app2, &up_name, &norm, &files, only_new).map_err(|e| e.to_string())
    })
}

/// GETs an upstream document (conditionally) and checks it with `validate` before it is
/// cached: a page that does not parse is an upstream failure (stale copy served), not a
/// document.
fn fetcher(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    url: Url,
    accept_value: &'static str,
    validate: impl Fn(&Bytes, &str) -> Result<(), String> + Send + Sync + Clone + 'static,
) -> Fetcher {
    let (app, up) = (app.clone(), up.clone());
    Arc::new(move |v: Option<Validators>| {
        let (app, up, url, validate) = (app.clone(), up.clone(), url.clone(), validate.clone());
        async move {
            let h = with_validators(accept(accept_value), v);
            let resp = up.send_url(Method::GET, url.clone(), h, None, None).await?;
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
                return Ok(Fetched::NotFound);
            }
            if !status.is_success() {
                return Err(up.status_error(status, url.path(), not_found(url.path().into())()));
            }
            let content_type = header_string(&resp, http::header::CONTENT_TYPE)
                .unwrap_or_else(|| "text/html".into());
            let etag = header_string(&resp, http::header::ETAG);
            let last_modified = header_string(&resp, http::header::LAST_MODIFIED);
            let limit = app.config.server.max_metadata_size.0;
            let bytes = super::read_limited(&up, resp, limit, url.path()).await?;
            let (b2, ct2) = (bytes.clone(), content_type.clone());
            tokio::task::spawn_blocking(move || validate(&b2, &ct2))
                .await
                .map_err(ProxyError::internal)?
                .map_err(|e| invalid(&up, url.path(), e))?;
            Ok(Fetched::Doc {
                bytes,
                content_type,
                etag,
                last_modified,
            })
        }
        .boxed()
    })
}

/// Where the upstream's page for `norm` is (relative links resolve against it).
fn page_url(up: &Upstream, norm: &str) -> Result<Url, ProxyError> {
    let s = format!("{}/{norm}/", up.base().as_str().trim_end_matches('/'));
    Url::parse(&s).map_err(|e| ProxyError::internal(format!("bad upstream url: {e}")))
}

/// Renders `doc` as `variant` (cached per document digest), off the async threads when the
/// document is large.
/// `keep`: whether the result may be kept (see [`crate::app::LinkBase::cached`]).
async fn render(
    app: &Arc<App>,
    doc: Arc<Doc>,
    variant: impl AsRef<str> + Send + 'static,
    keep: bool,
    f: impl FnOnce(&Doc) -> Result<Rendered, ProxyError> + Send + 'static,
) -> Result<Arc<Rendered>, ProxyError> {
    if doc.bytes.len() < BLOCKING_RENDER {
        return app.docs.render_kept(&doc, variant.as_ref(), keep, f);
    }
    let docs = app.docs.clone();
    tokio::task::spawn_blocking(move || docs.render_kept(&doc, variant.as_ref(), keep, f))
        .await
        .map_err(ProxyError::internal)?
}

fn reply(req: &Request<'_>, r: &Rendered, cache: CacheStatus) -> Reply {
    r.reply(
        req.header(http::header::IF_NONE_MATCH),
        req.header(http::header::ACCEPT_ENCODING),
        cache,
    )
}

async fn root(app: &Arc<App>, up: &Arc<Upstream>, req: &Request<'_>) -> Result<Reply, ProxyError> {
    let Some(variant) = negotiate(req.header(http::header::ACCEPT), req.query) else {
        return Ok(not_acceptable());
    };
    let url = Url::parse(&format!("{}/", up.base().as_str().trim_end_matches('/')))
        .map_err(|e| ProxyError::internal(format!("bad upstream url: {e}")))?;
    let key = format!("pypi/{}/simple/", up.name());
    let fetch = fetcher(app, up, url, UPSTREAM_ACCEPT, |b, ct| {
        simple::parse_root(b, ct).map(|_| ())
    });
    let (doc, cache) = app
        .docs
        .get(
            &key,
            app.freshness(up),
            false,
            fetch,
            not_found("the index root".into()),
        )
        .await?;
    let rendered = render(app, doc, variant.name(), true, move |doc| {
        let names =
            simple::parse_root(&doc.bytes, &doc.content_type).map_err(ProxyError::internal)?;
        Ok(match variant {
            Variant::Json => Rendered::new(
                Bytes::from(simple::render_root_json(&names)),
                variant.content_type(),
            ),
            _ => Rendered::new(
                Bytes::from(simple::render_root_html(&names)),
                variant.content_type(),
            ),
        })
    })
    .await?;
    Ok(reply(req, &rendered, cache))
}

/// sluice's link for a file of a page.
fn link(mount: &str, f: &FileEntry) -> Link {
    let key = FileKey::of(f);
    let name = percent_encoding::utf8_percent_encode(&f.filename, PATH_SEGMENT);
    let fragment = match key {
        FileKey::Sha256(d) => Some(("sha256".to_string(), d.hex())),
        FileKey::Url(_) => ["sha512", "sha384", "sha224", "sha1", "md5"]
            .iter()
            .find_map(|a| f.hashes.get(*a).map(|h| (a.to_string(), h.clone()))),
    };
    Link {
        url: format!("{mount}/files/{}/{name}", key.path()),
        fragment,
    }
}

/// Characters escaped in a file name used as a path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

async fn project(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: &Request<'_>,
    p: &str,
) -> Result<Reply, ProxyError> {
    let (raw, slash) = match p.strip_suffix('/') {
        Some(r) => (r, true),
        None => (p, false),
    };
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if decoded.contains('/') || decoded.is_empty() {
        return Err(not_found(format!("project {:?}", truncate(&decoded)))());
    }
    let norm = simple::normalize(&decoded);
    if !simple::valid_normalized(&norm) {
        return Err(ProxyError::NotFound {
            code: "NOT_FOUND",
            message: format!("{:?} is not a valid project name", truncate(&decoded)),
        });
    }
    if norm != raw || !slash {
        return Ok(redirect(
            format!("{}/simple/{norm}/", app.mount_url(up.name(), req.headers)),
            req.query,
        ));
    }
    let Some(variant) = negotiate(req.header(http::header::ACCEPT), req.query) else {
        return Ok(not_acceptable());
    };
    // A project the policy blocks as a whole (namespace, deny without versions) is never
    // fetched.
    app.policy.check(&files::facts(up, &norm, None, None))?;
    let (doc, cache) = project_page(app, up, &norm, false).await?;
    // Rendered pages drop blocked versions; they are re-rendered when the policy changes
    // (generation) and hourly (release-age cooldowns expire). Their links are on the base
    // the client reached sluice at (when `public_url` is unset, each Host has its own).
    let base = app.link_base(req.headers);
    let mount = [base.url.as_str(), "/", up.name()].concat();
    let variant_key = [
        variant.name(),
        "#g",
        Decimal::new(app.policy.generation()).as_str(),
        "#h",
        Decimal::new(crate::store::unix_secs() / 3600).as_str(),
        "#",
        mount.as_str(),
    ]
    .concat();
    let rendered = if doc.bytes.len() < BLOCKING_RENDER {
        // Borrowing what a render needs: a hit clones nothing.
        app.docs
            .render_kept(&doc, &variant_key, base.cached, |doc| {
                render_page(app, up, &norm, variant, &mount, doc)
            })?
    } else {
        let (app2, up2) = (app.clone(), up.clone());
        render(app, doc, variant_key, base.cached, move |doc| {
            render_page(&app2, &up2, &norm, variant, &mount, doc)
        })
        .await?
    };
    Ok(reply(req, &rendered, cache))
}

/// The simple page `doc` of project `norm` as `variant`, its links below `mount`, without
/// the files the policy blocks.
fn render_page(
    app: &App,
    up: &Upstream,
    norm: &str,
    variant: Variant,
    mount: &str,
    doc: &Doc,
) -> Result<Rendered, ProxyError> {
    let policy = &app.policy;
    let url = page_url(up, norm)?;
    let mut page = simple::parse_page(&doc.bytes, &doc.content_type, &url, norm)
        .map_err(ProxyError::internal)?;
    if !policy.engine().is_empty() {
        page.files.retain(|f| {
            let v = files::version_of(norm, &f.filename);
            let facts = files::facts(up, norm, v.as_deref(), files::upload_time(f));
            policy.decide(&facts).verdict != sluice_policy::Verdict::Block
        });
    }
    let body = match variant {
        Variant::Json => simple::render_json(&page, |f| link(mount, f)),
        _ => simple::render_html(&page, |f| link(mount, f)).into_bytes(),
    };
    Ok(Rendered::new(Bytes::from(body), variant.content_type()))
}

/// The cached simple page of project `norm` (a valid normalised name the policy allows as
/// a whole): fetched when missing or expired (single flight), which records its files.
async fn project_page(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    norm: &str,
    force: bool,
) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
    let key = ["pypi/", up.name(), "/simple/", norm].concat();
    // A hit builds no upstream URL and no fetcher.
    if !force {
        if let Some(doc) = app.docs.fresh(&key, app.freshness(up)) {
            return Ok((doc, CacheStatus::Hit));
        }
    }
    let url = page_url(up, norm)?;
    let fetch = recording_fetcher(
        app,
        up,
        norm,
        url,
        UPSTREAM_ACCEPT,
        false,
        |b, ct, url, norm| simple::parse_page(b, ct, url, norm).map(|page| page.files),
    );
    app.docs
        .get(
            &key,
            app.freshness(up),
            force,
            fetch,
            not_found(format!("project {norm}")),
        )
        .await
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

/// The upstream's JSON API base: the simple index URL with its last `simple` segment
/// replaced by `pypi`.
fn json_api_base(up: &Upstream) -> Option<Url> {
    let base = up.base().as_str().trim_end_matches('/');
    let stem = base.strip_suffix("simple")?;
    Url::parse(&format!("{stem}pypi/")).ok()
}

/// A version as a path segment: PEP 440 characters, starting with a letter or digit (so
/// never `.` or `..`, which would change the upstream URL it is joined into).
fn valid_version(v: &str) -> bool {
    v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && v.len() <= 100
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b))
}

/// The files of a JSON API document (`urls` and every `releases` entry) as page entries.
fn json_api_files(v: &Value, base: &Url) -> Vec<FileEntry> {
    let mut out = Vec::new();
    let mut take = |f: &Value| {
        let (Some(filename), Some(url)) = (
            f.get("filename").and_then(Value::as_str),
            f.get("url").and_then(Value::as_str),
        ) else {
            return;
        };
        let Ok(url) = base.join(url) else { return };
        let mut hashes = std::collections::BTreeMap::new();
        if let Some(Value::Object(d)) = f.get("digests") {
            for (k, h) in d {
                if let Some(h) = h
                    .as_str()
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    hashes.insert(k.to_ascii_lowercase(), h.to_ascii_lowercase());
                }
            }
        }
        // The upload time, as a simple page's `upload-time`: the files route checks the
        // cooldown against it.
        let mut extra = serde_json::Map::new();
        if let Some(t) = f.get("upload_time_iso_8601").filter(|t| t.is_string()) {
            extra.insert("upload-time".into(), t.clone());
        }
        out.push(FileEntry {
            filename: filename.to_string(),
            url,
            hashes,
            requires_python: None,
            core_metadata: None,
            yanked: simple::Yanked::No,
            extra,
        });
    };
    if let Some(Value::Array(urls)) = v.get("urls") {
        urls.iter().for_each(&mut take);
    }
    if let Some(Value::Object(rels)) = v.get("releases") {
        for files in rels.values() {
            if let Value::Array(a) = files {
                a.iter().for_each(&mut take);
            }
        }
    }
    out
}

/// The upload time of the first file of a JSON API file list (`urls`, a `releases` entry).
fn first_upload_time(files: &Value) -> Option<i64> {
    files
        .as_array()?
        .first()?
        .get("upload_time_iso_8601")?
        .as_str()
        .and_then(crate::timefmt::parse_rfc3339)
}

/// Drops the releases `allowed` refuses from a project's JSON API document. When the
/// latest (`info.version`, whose files are `urls`) is one of them, `info.version` and
/// `urls` name the newest allowed release instead, as npm's `latest` is repointed; with
/// none allowed, `urls` is empty.
fn hide_blocked_releases(v: &mut Value, allowed: impl Fn(&str, &Value) -> bool) {
    if let Some(Value::Object(rels)) = v.get_mut("releases") {
        rels.retain(|ver, files| allowed(ver, files));
    }
    let latest = v.pointer("/info/version").and_then(Value::as_str);
    let urls = v.get("urls").cloned().unwrap_or(Value::Null);
    if latest.is_none_or(|l| allowed(l, &urls)) {
        return;
    }
    let newest = v
        .get("releases")
        .and_then(Value::as_object)
        .and_then(|rels| {
            rels.iter()
                .filter_map(|(ver, files)| {
                    let parsed = sluice_policy::pep440::Version::parse(ver).ok()?;
                    // A release with no files is not installable.
                    let any = files.as_array().is_some_and(|a| !a.is_empty());
                    (any && !parsed.is_prerelease()).then(|| (parsed, ver.clone(), files.clone()))
                })
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, ver, files)| (ver, files))
        });
    match newest {
        Some((ver, files)) => {
            if let Some(info) = v.get_mut("info").and_then(Value::as_object_mut) {
                info.insert("version".into(), Value::String(ver));
            }
            v["urls"] = files;
        }
        None => v["urls"] = Value::Array(Vec::new()),
    }
}

/// Rewrites every file `url` of a JSON API document to sluice's.
fn rewrite_json_api(v: &mut Value, base: &Url, mount: &str) {
    let rewrite = |f: &mut Value| {
        let entry = json_api_files(&serde_json::json!({ "urls": [f.clone()] }), base);
        if let (Some(e), Some(obj)) = (entry.first(), f.as_object_mut()) {
            obj.insert("url".into(), Value::String(link(mount, e).url));
        }
    };
    if let Some(Value::Array(urls)) = v.get_mut("urls") {
        urls.iter_mut().for_each(rewrite);
    }
    if let Some(Value::Object(rels)) = v.get_mut("releases") {
        for files in rels.values_mut() {
            if let Value::Array(a) = files {
                a.iter_mut().for_each(rewrite);
            }
        }
    }
}

async fn json_api(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    req: &Request<'_>,
    j: &str,
) -> Result<Reply, ProxyError> {
    let bad_route = || {
        ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!(
            "no such JSON API route: use /{0}/pypi/<project>/json or /{0}/pypi/<project>/<version>/json",
            up.name()
        ),
    }
    };
    let parts: Vec<&str> = j.split('/').collect();
    let (raw, version) = match parts.as_slice() {
        [p, "json"] | [p, "json", ""] => (*p, None),
        [p, v, "json"] | [p, v, "json", ""] => (*p, Some(*v)),
        _ => return Err(bad_route()),
    };
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let norm = simple::normalize(&decoded);
    if !simple::valid_normalized(&norm) || version.is_some_and(|v| !valid_version(v)) {
        return Err(bad_route());
    }
    let tail = match version {
        Some(v) => format!("{norm}/{v}/json"),
        None => format!("{norm}/json"),
    };
    if norm != raw {
        return Ok(redirect(
            format!("{}/pypi/{tail}", app.mount_url(up.name(), req.headers)),
            req.query,
        ));
    }
    let api = json_api_base(up).ok_or_else(|| ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!(
            "upstream {}: its index URL does not end in simple/, so it has no JSON API beside it",
            up.name()
        ),
    })?;
    // A project the policy blocks as a whole (namespace, deny without versions) is never
    // fetched.
    // With a version, its own check below records the audit findings.
    let facts = files::facts(up, &norm, None, None);
    if version.is_some() {
        app.policy.check_package(&facts)?;
    } else {
        app.policy.check(&facts)?;
    }
    let url = api.join(&tail).map_err(ProxyError::internal)?;
    let key = format!("pypi/{}/json/{tail}", up.name());
    let fetch = recording_fetcher(
        app,
        up,
        &norm,
        url.clone(),
        "application/json",
        true,
        |b, _, url, _| {
            let v: Value = serde_json::from_slice(b).map_err(|e| format!("invalid JSON: {e}"))?;
            Ok(json_api_files(&v, url))
        },
    );
    let (doc, cache) = app
        .docs
        .get(
            &key,
            app.freshness(up),
            false,
            fetch,
            not_found(format!("{norm} {}", version.unwrap_or(""))),
        )
        .await?;
    if let Some(v) = version {
        // Its files' upload time (`urls`), for the cooldown.
        let published = serde_json::from_slice::<Value>(&doc.bytes)
            .ok()
            .and_then(|d| first_upload_time(d.get("urls")?));
        app.policy
            .check(&files::facts(up, &norm, Some(v), published))?;
    }
    let base = app.link_base(req.headers);
    let mount = format!("{}/{}", base.url, up.name());
    let variant_key = format!(
        "json-api#g{}#h{}#{mount}",
        app.policy.generation(),
        crate::store::unix_secs() / 3600
    );
    let (policy, up2, project_doc) = (app.policy.clone(), up.clone(), version.is_none());
    let rendered = render(app, doc, variant_key, base.cached, move |doc| {
        let mut v: Value = serde_json::from_slice(&doc.bytes).map_err(ProxyError::internal)?;
        if !policy.engine().is_empty() {
            let allowed = |ver: &str, files: &Value| {
                let facts = files::facts(&up2, &norm, Some(ver), first_upload_time(files));
                policy.decide(&facts).verdict != sluice_policy::Verdict::Block
            };
            // A version's own document was checked above.
            if project_doc {
                hide_blocked_releases(&mut v, allowed);
            }
        }
        rewrite_json_api(&mut v, &url, &mount);
        let body = serde_json::to_vec(&v).map_err(ProxyError::internal)?;
        Ok(Rendered::new(Bytes::from(body), "application/json"))
    })
    .await?;
    Ok(reply(req, &rendered, cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_come_from_pages_and_file_names() {
        assert_eq!(log_name("simple/Demo_Pkg/").as_deref(), Some("demo-pkg"));
        assert_eq!(log_name("pypi/demo/1.0/json").as_deref(), Some("demo"));
        assert_eq!(
            log_name("files/sha256/00/demo_pkg-1.0-py3-none-any.whl.metadata").as_deref(),
            Some("demo-pkg")
        );
        assert_eq!(
            log_name("files/url/k/old-style-name-1.0.tar.gz").as_deref(),
            Some("old-style-name")
        );
        assert_eq!(log_name("simple/"), None);
    }

    #[test]
    fn versions_are_path_segments_that_cannot_climb() {
        for ok in ["1.0", "2.0.0rc1", "1!2.0", "1.0+local.7", "v1.2", "0"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".1", "-1", "1/2", "1%2F2", &"9".repeat(101)] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn negotiation_honours_q_values_format_and_defaults() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        assert_eq!(negotiate(Some(pip), None), Some(Variant::Json));
        assert_eq!(negotiate(None, None), Some(Variant::Html));
        assert_eq!(negotiate(Some("*/*"), None), Some(Variant::Html));
        assert_eq!(
            negotiate(
                Some("Application/VND.PyPI.Simple.v1+JSON, TEXT/HTML;q=0.5"),
                None
            ),
            Some(Variant::Json),
            "media types compare case-insensitively"
        );
        assert_eq!(
            negotiate(
                Some("text/html;q=0.9, application/vnd.pypi.simple.v1+json;q=0.5"),
                None
            ),
            Some(Variant::Html)
        );
        assert_eq!(
            negotiate(Some("application/vnd.pypi.simple.v1+json;q=0"), None),
            None
        );
        assert_eq!(negotiate(Some("application/json"), None), None);
        assert_eq!(
            negotiate(
                Some("text/html"),
                Some("format=application/vnd.pypi.simple.v1%2Bjson")
            ),
            Some(Variant::Json)
        );
        assert_eq!(
            negotiate(None, Some("format=application/vnd.pypi.simple.latest+html")),
            Some(Variant::HtmlV1)
        );
        assert_eq!(
            negotiate(
                Some("application/vnd.pypi.simple.latest+html, */*;q=0.1"),
                None
            ),
            Some(Variant::HtmlV1)
        );
    }
}
