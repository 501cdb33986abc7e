//! Distribution files and their PEP 658 `.metadata` companions.
//!
//! A file is asked for as `/<up>/files/sha256/<hex>/<filename>`. A stored hit is served
//! straight from the store. A miss needs the file's origin, which only ever comes from a
//! [`FileRecord`] written when one of the upstream's own pages listed the file (index tree
//! `files`, keyed by upstream and sha256): a request can name a digest, never a URL, so
//! sluice is no open proxy. With no record yet (a fresh data dir, a link another replica
//! rendered, a lockfile's URL), the project the file name belongs to has its page fetched
//! once through the normal page path, which writes the records. The fill verifies the
//! sha256 while streaming and stores the file by digest; concurrent requests share one
//! upstream fetch.
//!
//! Files the upstream lists without a sha256 (only md5, or no hash at all) cannot be
//! verified, so they are not cached: they are linked as `/<up>/files/url/<key>/<filename>`
//! (`key` = sha256 of the origin URL, looked up in the same tree) and passed through with
//! `X-Sluice-Cache: BYPASS`, keeping the upstream's own hash in the link for the client to
//! check. PyPI itself always states sha256.

use std::sync::Arc;

use futures_util::FutureExt;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::fill::{Known, UpstreamBody};
use crate::hashes::Expect;
use crate::response::{Body, ByteRange, CacheStatus, Reply};
use crate::store::index::{IndexExt, Tree};
use crate::upstream::Upstream;

use super::simple::FileEntry;

/// What sluice knows about a file from the upstream page that listed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    /// Origin URL, as the upstream's page gave it.
    pub url: String,
    /// Normalised project name.
    pub project: String,
    /// File name.
    pub filename: String,
    /// Version, as far as the file name tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// sha256 (hex) of the PEP 658 core metadata, when the page stated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_sha256: Option<String>,
    /// The page announced core metadata (with or without a hash).
    #[serde(default)]
    pub has_metadata: bool,
    /// PEP 700 `upload-time`, Unix seconds (for `min_age` policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_time: Option<i64>,
}

/// How sluice addresses a file: by its sha256, or (unverifiable files) by its URL's sha256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKey {
    /// `files/sha256/<hex>/...`: cached, verified.
    Sha256(Digest),
    /// `files/url/<hex>/...`: passed through.
    Url(Digest),
}

impl FileKey {
    /// The key of a page's file entry.
    pub fn of(f: &FileEntry) -> FileKey {
        match f.sha256().and_then(|h| format!("sha256:{h}").parse().ok()) {
            Some(d) => FileKey::Sha256(d),
            None => FileKey::Url(Digest::of(f.url.as_str().as_bytes())),
        }
    }

    /// Path segment pair below `files/`.
    pub fn path(&self) -> String {
        match self {
            FileKey::Sha256(d) => format!("sha256/{}", d.hex()),
            FileKey::Url(d) => format!("url/{}", d.hex()),
        }
    }

    fn index_key(&self, upstream: &str) -> String {
        format!("pypi/{upstream}/{}", self.path())
    }
}

/// Writes the records for every file of a page (once per fetched page; `only_new` keeps
/// existing records, for sources that know less, like the JSON API).
pub fn record_files(
    app: &App,
    upstream: &str,
    project: &str,
    files: &[FileEntry],
    only_new: bool,
) -> Result<(), ProxyError> {
    let index = app.store.index();
    for f in files {
        let key = FileKey::of(f).index_key(upstream);
        if only_new
            && index
                .get(Tree::Files, key.as_bytes())
                .ok()
                .flatten()
                .is_some()
        {
            continue;
        }
        let rec = FileRecord {
            url: f.url.to_string(),
            project: project.to_string(),
            filename: f.filename.clone(),
            version: version_of(project, &f.filename),
            metadata_sha256: f
                .core_metadata
                .as_ref()
                .and_then(|m| m.get("sha256").cloned()),
            has_metadata: f.core_metadata.is_some(),
            upload_time: upload_time(f),
        };
        index
            .put_rec(Tree::Files, key.as_bytes(), &rec)
            .map_err(ProxyError::internal)?;
    }
    Ok(())
}

/// PEP 700 `upload-time` of a page's file, Unix seconds.
pub fn upload_time(f: &FileEntry) -> Option<i64> {
    f.extra
        .get("upload-time")
        .and_then(|v| v.as_str())
        .and_then(crate::timefmt::parse_rfc3339)
}

/// What the policy engine knows about a file of `project`.
pub fn facts<'a>(
    up: &'a Upstream,
    project: &'a str,
    version: Option<&'a str>,
    published: Option<i64>,
) -> sluice_policy::Facts<'a> {
    sluice_policy::Facts {
        ecosystem: sluice_policy::Ecosystem::Pypi,
        upstream: up.name(),
        public_upstream: up.cfg.public,
        name: project,
        version,
        digest: None,
        published_unix: published,
        license: None,
        has_install_script: false,
    }
}

/// The version in a distribution file name (wheel: second field; sdist: after the
/// project name), best effort.
pub fn version_of(project: &str, filename: &str) -> Option<String> {
    if let Some(stem) = filename.strip_suffix(".whl") {
        return stem.split('-').nth(1).map(str::to_string);
    }
    let stem = [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".egg"]
        .iter()
        .find_map(|ext| filename.strip_suffix(ext))?;
    // The project part may itself contain '-' or '_': find the split whose prefix
    // normalises to the project name.
    for (i, c) in stem.char_indices() {
        if c == '-' && super::simple::normalize(&stem[..i]) == project {
            let v = &stem[i + 1..];
            return (!v.is_empty()).then(|| v.to_string());
        }
    }
    None
}

/// The normalised project a distribution file name belongs to: a wheel's (or egg's) first
/// `-`-separated field, an sdist's (PEP 625) name before the last `-`. `None` for other
/// names and when that is no valid project name.
pub fn project_of(filename: &str) -> Option<String> {
    let project = if filename.ends_with(".whl") {
        // name-version(-build)?-python-abi-platform.whl
        if filename.split('-').count() < 5 {
            return None;
        }
        filename.split('-').next()?
    } else if filename.ends_with(".egg") {
        filename.split_once('-')?.0
    } else if [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".tar"]
        .iter()
        .any(|ext| filename.ends_with(ext))
    {
        filename.rsplit_once('-')?.0
    } else {
        return None;
    };
    let norm = super::simple::normalize(project);
    super::simple::valid_normalized(&norm).then_some(norm)
}

fn not_known(what: &str) -> ProxyError {
    ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("{what} is not known to sluice: no page of this index lists it"),
    }
}

/// Answers `files/<kind>/<hex>/<filename>` (`rest` is what follows `files/`).
pub async fn serve(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    rest: &str,
    range: Option<ByteRange>,
    head: bool,
) -> Result<Reply, ProxyError> {
    let mut parts = rest.splitn(3, '/');
    let (Some(kind), Some(hex), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(not_known(rest));
    };
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .map_err(|_| bad("file name is not UTF-8"))?
        .into_owned();
    if name.is_empty() || name.contains('/') {
        return Err(bad("invalid file name"));
    }
    let d: Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|e: crate::digest::DigestError| bad(&e.to_string()))?;
    let key = match kind {
        "sha256" => FileKey::Sha256(d),
        "url" => FileKey::Url(d),
        _ => return Err(not_known(rest)),
    };
    let (name, want_metadata) = match name.strip_suffix(".metadata") {
        Some(n) => (n.to_string(), true),
        None => (name, false),
    };
    // Cached is not the same as allowed: with a policy, every file is checked against the
    // project and version its page recorded.
    let policy_on = !app.policy.engine().is_empty();
    let mut rec = None;
    if policy_on {
        let r = record(app, up, key, &name).await?;
        app.policy
            .check(&facts(up, &r.project, r.version.as_deref(), r.upload_time))?;
        rec = Some(r);
    }
    if let (FileKey::Sha256(d), false) = (key, want_metadata) {
        // A stored hit needs nothing else: the digest is the file.
        if let Some(bytes) = app.store.read(&d) {
            return serve_stored(&d, bytes, range, CacheStatus::Hit);
        }
    }
    let rec = match rec {
        Some(r) => r,
        None => record(app, up, key, &name).await?,
    };
    let origin = Url::parse(&rec.url).map_err(ProxyError::internal)?;
    if want_metadata {
        return metadata(app, up, &rec, origin, head).await;
    }
    match key {
        FileKey::Sha256(d) => fill(app, up, d, origin, range, head).await,
        FileKey::Url(_) => pass_through(up, origin, head).await,
    }
}

/// The record of file `key` named `name`. A file no page has listed yet on this sluice (a
/// fresh data dir, another replica's link, a lockfile's URL) is looked up on the page of
/// the project its name belongs to: that page is fetched through the normal path (policy,
/// single flight, recording its files), never anything the request names. A cached page
/// that does not list it (the file is newer than the copy) is revalidated once, at most
/// once per `negative_ttl` (at least 1 s) per project. Counted in
/// `sluice_pypi_cold_file_lookups_total{upstream,result}` (`found`, `unknown`).
async fn record(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    key: FileKey,
    name: &str,
) -> Result<FileRecord, ProxyError> {
    let lookup = || -> Result<Option<FileRecord>, ProxyError> {
        app.store
            .index()
            .get_rec(Tree::Files, key.index_key(up.name()).as_bytes())
            .map_err(ProxyError::internal)
    };
    let unknown = || not_known(&format!("file {name}"));
    let rec = match lookup()? {
        Some(r) => r,
        None => {
            let project = project_of(name).ok_or_else(unknown)?;
            app.policy.check_package(&facts(up, &project, None, None))?;
            let mut found = None;
            for force in [false, true] {
                if force {
                    // Per project: one refresh lists every newer file, and a client
                    // cycling through made-up digests gets one page fetch, not one each.
                    let recent = format!("pypi-cold/{}/{project}", up.name());
                    if app.is_negative(&recent) {
                        break;
                    }
                    let ttl = up
                        .cfg
                        .negative_ttl
                        .get()
                        .max(std::time::Duration::from_secs(1));
                    app.remember_negative(recent, ttl);
                }
                match super::project_page(app, up, &project, force).await {
                    Ok((_, cache)) => {
                        found = lookup()?;
                        // Only a copy from the cache may be older than the file.
                        if found.is_some()
                            || !matches!(cache, CacheStatus::Hit | CacheStatus::Stale)
                        {
                            break;
                        }
                    }
                    Err(ProxyError::NotFound { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
            let result = if found.is_some() { "found" } else { "unknown" };
            metrics::counter!("sluice_pypi_cold_file_lookups_total", "upstream" => up.name().to_string(), "result" => result)
                .increment(1);
            found.ok_or_else(unknown)?
        }
    };
    if rec.filename != name {
        return Err(unknown());
    }
    Ok(rec)
}

fn bad(m: &str) -> ProxyError {
    ProxyError::BadRequest {
        code: "BAD_REQUEST",
        message: m.to_string(),
    }
}

fn file_headers(reply: Reply, d: &Digest, content_type: &'static str) -> Reply {
    reply
        .header("Content-Type", content_type)
        .header("ETag", format!("\"{}\"", d.hex()))
        .header("Cache-Control", "public, max-age=31536000, immutable")
        .header("Accept-Ranges", "bytes")
}

fn serve_stored(
    d: &Digest,
    bytes: bytes::Bytes,
    range: Option<ByteRange>,
    cache: CacheStatus,
) -> Result<Reply, ProxyError> {
    let total = bytes.len() as u64;
    let ct = "application/octet-stream";
    match range {
        Some(r) => {
            let (start, end) = r
                .resolve(total)
                .ok_or(ProxyError::RangeNotSatisfiable { size: total })?;
            Ok(
                file_headers(Reply::new(StatusCode::PARTIAL_CONTENT, cache), d, ct)
                    .header(
                        "Content-Range",
                        format!("bytes {start}-{}/{total}", end - 1),
                    )
                    .body(Body::Mapped(bytes.slice(start as usize..end as usize))),
            )
        }
        None => {
            Ok(file_headers(Reply::new(StatusCode::OK, cache), d, ct).body(Body::Mapped(bytes)))
        }
    }
}

/// Streams `origin` into the store as `d` (single flight), serving this client as it comes.
/// A HEAD starts no fill: see [`head_of`].
async fn fill(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    d: Digest,
    origin: Url,
    range: Option<ByteRange>,
    head: bool,
) -> Result<Reply, ProxyError> {
    let neg_key = format!("{}/file/{d}", up.name());
    if app.is_negative(&neg_key) {
        return Err(not_found_upstream(&origin));
    }
    if head {
        return head_of(app, up, d, origin, range).await;
    }
    let up2 = up.clone();
    let opener = Box::new(move || {
        async move {
            let resp = up2
                .send_url(Method::GET, origin.clone(), HeaderMap::new(), None, None)
                .await?;
            if !resp.status().is_success() {
                return Err(up2.status_error(
                    resp.status(),
                    origin.path(),
                    not_found_upstream(&origin),
                ));
            }
            Ok(UpstreamBody::from_response(up2.clone(), resp))
        }
        .boxed()
    });
    let Some(fill) = app
        .fills
        .join_or_start(Expect::Sha256(d), "pypi", up.name(), opener)
        .await?
    else {
        let bytes = app
            .store
            .read(&d)
            .ok_or_else(|| ProxyError::internal("stored file vanished"))?;
        return serve_stored(&d, bytes, range, CacheStatus::Hit);
    };
    let len = match fill.started().await {
        Ok(len) => len,
        Err(e) => {
            if matches!(e, ProxyError::NotFound { .. }) {
                app.remember_negative(neg_key, up.cfg.negative_ttl.get());
            }
            return Err(e);
        }
    };
    let ct = "application/octet-stream";
    match (range, len) {
        (Some(r), Some(total)) => {
            let (start, end) = r
                .resolve(total)
                .ok_or(ProxyError::RangeNotSatisfiable { size: total })?;
            Ok(file_headers(
                Reply::new(StatusCode::PARTIAL_CONTENT, CacheStatus::Miss),
                &d,
                ct,
            )
            .header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", end - 1),
            )
            .body(Body::Follow(fill.follow(start, Some(end)))))
        }
        _ => Ok(
            file_headers(Reply::new(StatusCode::OK, CacheStatus::Miss), &d, ct)
                .body(Body::Follow(fill.follow(0, None))),
        ),
    }
}

/// A HEAD of a file not stored: the length a fill in progress knows, the stored file if a
/// fill just committed it, else the upstream's answer to a HEAD. Never downloads the file.
async fn head_of(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    d: Digest,
    origin: Url,
    range: Option<ByteRange>,
) -> Result<Reply, ProxyError> {
    let ct = "application/octet-stream";
    match app.fills.known_without_fetching(d).await {
        Some(Known::Filling(len)) => {
            let mut r = file_headers(Reply::new(StatusCode::OK, CacheStatus::Miss), &d, ct);
            r.head_length = Some(len);
            return Ok(r);
        }
        Some(Known::Stored(bytes)) => return serve_stored(&d, bytes, range, CacheStatus::Hit),
        None => {}
    }
    let resp = up
        .send_url(Method::HEAD, origin.clone(), HeaderMap::new(), None, None)
        .await?;
    if !resp.status().is_success() {
        return Err(up.status_error(resp.status(), origin.path(), not_found_upstream(&origin)));
    }
    let mut r = file_headers(Reply::new(StatusCode::OK, CacheStatus::Bypass), &d, ct);
    r.head_length = crate::upstream::stated_length(&resp);
    Ok(r)
}

fn not_found_upstream(origin: &Url) -> ProxyError {
    ProxyError::NotFound {
        code: "NOT_FOUND",
        message: format!("{} not found upstream", origin.path()),
    }
}

/// PEP 658: `<file URL>.metadata`, verified against the hash the page stated.
async fn metadata(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    rec: &FileRecord,
    origin: Url,
    head: bool,
) -> Result<Reply, ProxyError> {
    if !rec.has_metadata {
        return Err(ProxyError::NotFound {
            code: "NOT_FOUND",
            message: format!("the index states no core metadata for {}", rec.filename),
        });
    }
    let mut meta_url = origin;
    meta_url.set_path(&format!("{}.metadata", meta_url.path()));
    let digest = rec
        .metadata_sha256
        .as_deref()
        .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
    match digest {
        Some(d) => fill(app, up, d, meta_url, None, head).await,
        None => pass_through(up, meta_url, head).await,
    }
}

/// An unverifiable file: streamed from the upstream, not stored.
async fn pass_through(up: &Arc<Upstream>, origin: Url, head: bool) -> Result<Reply, ProxyError> {
    let method = if head { Method::HEAD } else { Method::GET };
    let resp = up
        .send_url(method, origin.clone(), HeaderMap::new(), None, None)
        .await?;
    if !resp.status().is_success() {
        return Err(up.status_error(resp.status(), origin.path(), not_found_upstream(&origin)));
    }
    Ok(crate::formats::pass_through(up, resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_come_from_wheel_and_sdist_names() {
        for (file, project) in [
            ("demo_pkg-1.0-py3-none-any.whl", Some("demo-pkg")),
            (
                "Zope.Interface-6.0-1-cp312-cp312-linux_x86_64.whl",
                Some("zope-interface"),
            ),
            ("demo_pkg-0.9.tar.gz", Some("demo-pkg")),
            ("old-style-name-1.0.zip", Some("old-style-name")),
            ("six-1.0-py2.7.egg", Some("six")),
            ("x.whl", None),
            ("x-1.0-py3.whl", None),
            ("nodash.tar.gz", None),
            ("demo-1.0.exe", None),
            ("..%2F..-1.0.tar.gz", None),
            ("-1.0.tar.gz", None),
        ] {
            assert_eq!(project_of(file).as_deref(), project, "{file}");
        }
    }

    #[test]
    fn versions_come_from_wheel_and_sdist_names() {
        assert_eq!(
            version_of("six", "six-1.16.0-py2.py3-none-any.whl").as_deref(),
            Some("1.16.0")
        );
        assert_eq!(
            version_of("zope-interface", "zope.interface-6.0.tar.gz").as_deref(),
            Some("6.0")
        );
        assert_eq!(
            version_of("foo-bar", "foo_bar-2.0rc1.zip").as_deref(),
            Some("2.0rc1")
        );
        assert_eq!(version_of("x", "x.exe"), None);
    }
}
