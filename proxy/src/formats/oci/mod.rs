//! OCI Distribution (pull side): `/v2/`, manifests by tag and digest, blobs (with `Range`),
//! tag lists. Push, delete and uploads answer `405 UNSUPPORTED`.
//!
//! Manifests are small: fetched whole (single flight per reference), verified against the
//! requested digest and the upstream's `Docker-Content-Digest`, stored by digest and served
//! byte-exact. Tags map to manifest digests and are revalidated with a `HEAD` after the
//! upstream's `tag_ttl`; when the upstream fails, the stale mapping is served. Blobs are
//! streamed through [`crate::fill`].

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, StatusCode};
use memchr::memmem;

use crate::app::App;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::fill::{Known, UpstreamBody};
use crate::hashes::Expect;
use crate::names::{Reference, RepoName, Tag};
use crate::response::{Body, ByteRange, CacheStatus, Reply};
use crate::store::index::{IndexExt, ManifestRecord, TagRecord, Tree};
use crate::store::unix_ms;
use crate::upstream::{accept, Upstream};

pub(crate) mod links;
mod lists;
mod negotiate;

/// Every manifest media type sluice asks upstreams for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

const API_VERSION: (&str, &str) = ("Docker-Distribution-API-Version", "registry/2.0");

/// A request on `/v2/`, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum OciRoute<'a> {
    /// `/v2/`
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest(&'a str, &'a str),
    /// `/v2/<name>/blobs/<digest>`
    Blob(&'a str, &'a str),
    /// `/v2/<name>/tags/list`
    Tags(&'a str),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(&'a str, &'a str),
    /// Upload sessions, catalog ...: not for a pull-through cache.
    Unsupported,
    /// Anything else.
    Unknown,
}

/// Substring searchers built once: `str::contains` / `rsplit_once` with a string pattern set
/// one up on every call, and every OCI request parses its path.
static UPLOADS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new("/blobs/uploads"));
static MANIFESTS: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new("/manifests/"));
static BLOBS: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new("/blobs/"));

impl<'a> OciRoute<'a> {
    /// Parses the part of the path after `/v2/`.
    pub fn parse(rest: &'a str) -> OciRoute<'a> {
        if rest.is_empty() {
            return OciRoute::Base;
        }
        let bytes = rest.as_bytes();
        if rest == "_catalog" || UPLOADS.find(bytes).is_some() {
            return OciRoute::Unsupported;
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return OciRoute::Tags(name);
        }
        // The last occurrence, as `rsplit_once` would split (the needles are ASCII, so the
        // split points are character boundaries).
        if let Some(i) = MANIFESTS.rfind(bytes) {
            return OciRoute::Manifest(&rest[..i], &rest[i + "/manifests/".len()..]);
        }
        if let Some(i) = BLOBS.rfind(bytes) {
            return OciRoute::Blob(&rest[..i], &rest[i + "/blobs/".len()..]);
        }
        if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
            return OciRoute::Referrers(name, digest);
        }
        OciRoute::Unknown
    }

    /// The repository the route names (as requested, upstream prefix included).
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            OciRoute::Manifest(n, _)
            | OciRoute::Blob(n, _)
            | OciRoute::Tags(n)
            | OciRoute::Referrers(n, _) => Some(n),
            _ => None,
        }
    }
}

/// What an OCI handler needs from the request.
pub struct OciRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path after `/v2/`.
    pub rest: &'a str,
    /// containerd's `?ns=`.
    pub ns: Option<&'a str>,
    /// Raw query (tags list pagination).
    pub query: Option<&'a str>,
    /// `Range` header.
    pub range: Option<&'a str>,
    /// All request headers (a manifest's `Accept`).
    pub headers: &'a HeaderMap,
}

/// A fetched manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Its digest (of the exact bytes).
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its `200` response header, converted once (see [`Reply::prebuilt`]).
    pub head: Option<Arc<pingora::http::ResponseHeader>>,
}

/// Answers one `/v2/` request.
pub async fn handle(app: &Arc<App>, req: OciRequest<'_>) -> Result<Reply, ProxyError> {
    let route = OciRoute::parse(req.rest);
    let read = matches!(*req.method, Method::GET | Method::HEAD);
    if !read || route == OciRoute::Unsupported {
        let unserved = route == OciRoute::Unsupported;
        return Err(ProxyError::Unsupported {
            message: format!(
                "{} {} is not supported: sluice is a read-only pull-through cache",
                req.method,
                if unserved {
                    "on this endpoint"
                } else {
                    "(push, delete and uploads)"
                }
            ),
            // An endpoint sluice does not serve allows no method at all.
            allow: if unserved { "" } else { "GET, HEAD" },
        });
    }
    let head = *req.method == Method::HEAD;
    match route {
        OciRoute::Base => Ok(Reply::new(StatusCode::OK, CacheStatus::Bypass)
            .header(API_VERSION.0, API_VERSION.1)
            .header("Content-Type", "application/json")
            .body(Body::Full(Bytes::from_static(b"{}")))),
        OciRoute::Manifest(name, reference) => {
            let (up, repo) = app.resolve_oci(name, req.ns)?;
            let reference = Reference::parse(reference).map_err(|m| ProxyError::BadRequest {
                code: if reference.contains(':') {
                    "DIGEST_INVALID"
                } else {
                    "TAG_INVALID"
                },
                message: m,
            })?;
            // Checked before any upstream contact (a denied repository or tag is never
            // fetched), and again once the tag's digest is known (digest rules).
            let (tag, asked) = match &reference {
                Reference::Tag(t) => (Some(t.as_str()), None),
                Reference::Digest(d) => (None, Some(d.to_string())),
            };
            let first = app
                .policy
                .check(&facts(&up, &repo, tag, asked.as_deref()))?;
            let (m, cache, key) = match reference {
                Reference::Digest(d) => {
                    let (m, cache) = manifest_by_digest(app, &up, &repo, d).await?;
                    (m, cache, None)
                }
                Reference::Tag(ref t) => {
                    // The tag's index key, shared by the tag map, the index and the pull log.
                    let key = tag_key(&up, &repo, t);
                    let (m, cache) = manifest_by_tag(app, &up, &repo, t, &key).await?;
                    (m, cache, Some(key))
                }
            };
            let (m, cache) = match tag {
                Some(tag) => {
                    let decided = app.policy.check_again(
                        &facts(&up, &repo, Some(tag), Some(m.digest.text().as_str())),
                        &first,
                    )?;
                    let asked = Asked {
                        up: &up,
                        repo: &repo,
                        tag,
                        decided: &decided,
                    };
                    for_client(app, asked, req.headers, m, cache).await?
                }
                None => (m, cache),
            };
            app.store.touch(&m.digest);
            if let Some(key) = key {
                // Batched in memory (cleanup policies rank tags by last pull).
                app.store.tag_pulled(key);
            }
            Ok(manifest_reply(m, cache))
        }
        OciRoute::Blob(name, digest) => {
            let (up, repo) = app.resolve_oci(name, req.ns)?;
            let digest = parse_digest(digest)?;
            let range = req.range.and_then(ByteRange::parse);
            // Blobs belong to no tag: repository-level rules apply.
            app.policy.check(&facts(&up, &repo, None, None))?;
            blob(app, &up, &repo, digest, range, head).await
        }
        OciRoute::Tags(name) => {
            let (up, repo) = app.resolve_oci(name, req.ns)?;
            app.policy.check(&facts(&up, &repo, None, None))?;
            let asked = lists::Asked {
                name,
                ns: req.ns,
                query: req.query,
            };
            let reply = lists::answer(app, &up, &repo, lists::List::Tags, asked).await?;
            Ok(without_blocked_tags(app, &up, &repo, reply))
        }
        OciRoute::Referrers(name, digest) => {
            let (up, repo) = app.resolve_oci(name, req.ns)?;
            let digest = parse_digest(digest)?;
            app.policy.check(&facts(&up, &repo, None, None))?;
            let asked = lists::Asked {
                name,
                ns: req.ns,
                query: req.query,
            };
            lists::answer(app, &up, &repo, lists::List::Referrers(digest), asked).await
        }
        OciRoute::Unknown | OciRoute::Unsupported => Err(ProxyError::NotFound {
            code: "NAME_UNKNOWN",
            message: format!(
                "no such OCI endpoint: /v2/{}",
                req.rest.chars().take(200).collect::<String>()
            ),
        }),
    }
}

/// A manifest request by tag, once the policy allowed the tag's digest.
struct Asked<'a> {
    up: &'a Arc<Upstream>,
    repo: &'a RepoName,
    tag: &'a str,
    /// The policy's decision on the tag's digest.
    decided: &'a sluice_policy::Decision,
}

/// What a client gets for tag manifest `m` (see [`negotiate`]): for a Docker manifest list
/// its `Accept` does not name, the list's `linux/amd64` image manifest when the client
/// named that manifest's type and the policy allows its digest; else `m`. The reply's
/// cache status is the less cached of the two documents'.
async fn for_client(
    app: &Arc<App>,
    asked: Asked<'_>,
    headers: &HeaderMap,
    m: Manifest,
    cache: CacheStatus,
) -> Result<(Manifest, CacheStatus), ProxyError> {
    // Accept is read only for an index.
    if !negotiate::is_index(&m.media_type) {
        return Ok((m, cache));
    }
    let Some(accepted) = negotiate::Accepted::of(headers).filter(|a| !a.names(&m.media_type))
    else {
        return Ok((m, cache));
    };
    let count = |outcome: &'static str| {
        metrics::counter!("sluice_oci_manifest_negotiations_total", "outcome" => outcome)
            .increment(1)
    };
    let child = negotiate::is_docker_list(&m.media_type)
        .then(|| negotiate::default_platform(&m.bytes, accepted))
        .flatten();
    let Some(child) = child else {
        count("as_is");
        return Ok((m, cache));
    };
    let Asked {
        up,
        repo,
        tag,
        decided,
    } = asked;
    app.policy.check_again(
        &facts(up, repo, Some(tag), Some(child.text().as_str())),
        decided,
    )?;
    match manifest_by_digest(app, up, repo, child).await {
        Ok((platform, platform_cache)) => {
            count("platform");
            // The list stays in use: the tag points to it.
            app.store.touch(&m.digest);
            Ok((platform, cache.least_cached(platform_cache)))
        }
        // Not to be had now: the list, as the client got it before negotiation.
        Err(e)
            if e.is_upstream_failure()
                || matches!(e, ProxyError::NotFound { .. } | ProxyError::Offline(_)) =>
        {
            tracing::warn!(repository = %repo, tag, platform_manifest = %child, error = %e,
                "the list's linux/amd64 manifest cannot be had now; serving the list");
            count("as_is");
            Ok((m, cache))
        }
        Err(e) => Err(e),
    }
}

/// A digest from a request path.
fn parse_digest(s: &str) -> Result<Digest, ProxyError> {
    s.parse()
        .map_err(|e: crate::digest::DigestError| ProxyError::BadRequest {
            code: "DIGEST_INVALID",
            message: e.to_string(),
        })
}

/// What the policy engine knows about an OCI request.
fn facts<'a>(
    up: &'a Upstream,
    repo: &'a RepoName,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
) -> sluice_policy::Facts<'a> {
    sluice_policy::Facts {
        ecosystem: sluice_policy::Ecosystem::Oci,
        upstream: up.name(),
        public_upstream: up.cfg.public,
        name: repo.as_str(),
        version: tag,
        digest,
        published_unix: None,
        license: None,
        has_install_script: false,
    }
}

/// Drops blocked tags from a tag list (`{"name":..,"tags":[..]}`); other bodies unchanged.
fn without_blocked_tags(app: &App, up: &Upstream, repo: &RepoName, mut reply: Reply) -> Reply {
    if app.policy.engine().is_empty() {
        return reply;
    }
    let Body::Full(bytes) = &reply.body else {
        return reply;
    };
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return reply;
    };
    let Some(tags) = doc.get_mut("tags").and_then(|t| t.as_array_mut()) else {
        return reply;
    };
    let before = tags.len();
    tags.retain(|t| {
        t.as_str().is_none_or(|tag| {
            app.policy.decide(&facts(up, repo, Some(tag), None)).verdict
                != sluice_policy::Verdict::Block
        })
    });
    if tags.len() != before {
        if let Ok(b) = serde_json::to_vec(&doc) {
            reply.body = Body::Full(Bytes::from(b));
        }
    }
    reply
}

fn manifest_reply(m: Manifest, cache: CacheStatus) -> Reply {
    match m.head {
        // A kept manifest carries its converted header: no header list to build again.
        Some(head) => Reply::prebuilt_only(StatusCode::OK, cache, head),
        None => Reply::new(StatusCode::OK, cache)
            .header(API_VERSION.0, API_VERSION.1)
            .header("Content-Type", m.media_type)
            .header("Docker-Content-Digest", m.digest.text().as_str())
            .header("ETag", format!("\"{}\"", m.digest.text().as_str())),
    }
    .body(Body::Full(m.bytes))
}

fn scope(repo: &RepoName) -> String {
    format!("repository:{repo}:pull")
}

/// A stored manifest, if both its bytes and its media type are known.
fn cached_manifest(app: &App, d: &Digest) -> Option<Manifest> {
    let rec: ManifestRecord = app
        .store
        .index()
        .get_rec(Tree::Manifests, d.as_bytes())
        .ok()??;
    let bytes = app.store.read(d)?;
    Some(Manifest {
        digest: *d,
        media_type: rec.media_type,
        bytes,
        head: None,
    })
}

async fn manifest_by_digest(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: Digest,
) -> Result<(Manifest, CacheStatus), ProxyError> {
    let referenced_by = |bytes: &Bytes| {
        serde_json::from_slice(bytes)
            .map(|doc| links::referenced(&doc))
            .unwrap_or_default()
    };
    // A copy stored here, else one another replica stored in the shared store.
    let (m, cache) = match cached_manifest(app, &d) {
        Some(m) => (Some(m), CacheStatus::Hit),
        None => (manifest_from_shared(app, up, &d).await?, CacheStatus::Miss),
    };
    if let Some(m) = m {
        // One from the shared store is stored unlinked: if this repository is known to hold
        // it (an index fetched here lists it), it holds what it refers to too.
        if cache == CacheStatus::Miss && links::is_linked(app, up, repo, &d) {
            links::link(app, up, repo, referenced_by(&m.bytes));
        }
        // Confirmed here: so are the digests it refers to (an index's platform manifests,
        // an image's layers), which its clients ask for next.
        let bytes = m.bytes.clone();
        let referenced = move || referenced_by(&bytes);
        links::confirm(app, up, repo, &d, links::Content::Manifest, referenced).await?;
        return Ok((m, cache));
    }
    let m = fetch_manifest(app, up, repo, &d.to_string(), Some(d)).await?;
    Ok((m, CacheStatus::Miss))
}

fn tag_key(up: &Upstream, repo: &RepoName, tag: &Tag) -> String {
    crate::store::pulls::tag_key(up.name(), repo.as_str(), tag.as_str())
}

/// Tags recently served from the store, kept in memory so that a hit on one reads and
/// decodes no index record. An entry is trusted while the index's `tags` and `manifests`
/// trees have not changed since it was read (every tag update, purge, eviction and cleanup
/// writes there) and while the tag is younger than `tag_ttl`; otherwise the request takes
/// the index path, which puts a fresh entry back. Sharded read-write locks: a hit takes one
/// uncontended read lock.
#[derive(Default)]
pub struct HotTags {
    shards: crate::sharded::Sharded<parking_lot::RwLock<HotShard>>,
}

/// One shard: entries and the manifest bytes they hold.
#[derive(Default)]
struct HotShard {
    map: std::collections::HashMap<String, Arc<HotTag>>,
    bytes: usize,
}

/// Entries per shard; a full shard is emptied (it refills from the index on demand).
const HOT_PER_SHARD: usize = 4096;
/// Manifest bytes per shard (64 MiB in all): past it the shard is emptied. Entries of tags
/// that went away (purged, evicted, cleaned up) stay until then, so this bounds them too.
const HOT_SHARD_BYTES: usize = 4 << 20;
/// Larger manifests are not kept: they are memory-mapped, and a mapping held here would
/// keep an evicted file's disk space in use.
const HOT_MAX_MANIFEST: usize = 256 * 1024;

/// A tag's manifest as last read from the index.
pub struct HotTag {
    /// Index generations (`tags`, `manifests`) read before the records were.
    generation: (u64, u64),
    /// The tag record's fetch time.
    fetched_at_ms: u64,
    /// The manifest it points to.
    manifest: Manifest,
}

impl HotTags {
    /// The generations an entry read now is valid for.
    fn generation(app: &App) -> (u64, u64) {
        let index = app.store.index();
        (
            index.generation(Tree::Tags),
            index.generation(Tree::Manifests),
        )
    }

    fn shard(&self, key: &str) -> &parking_lot::RwLock<HotShard> {
        self.shards.shard(key)
    }

    fn get(&self, key: &str, generation: (u64, u64)) -> Option<Arc<HotTag>> {
        self.shard(key)
            .read()
            .map
            .get(key)
            .filter(|t| t.generation == generation)
            .cloned()
    }

    fn insert(&self, key: String, tag: HotTag) {
        let size = tag.manifest.bytes.len();
        if size > HOT_MAX_MANIFEST {
            return;
        }
        let mut shard = self.shard(&key).write();
        if let Some(old) = shard.map.remove(&key) {
            shard.bytes -= old.manifest.bytes.len();
        }
        if shard.map.len() >= HOT_PER_SHARD || shard.bytes + size > HOT_SHARD_BYTES {
            shard.map.clear();
            shard.bytes = 0;
        }
        shard.bytes += size;
        shard.map.insert(key, Arc::new(tag));
    }
}

async fn manifest_by_tag(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    tag: &Tag,
    key: &str,
) -> Result<(Manifest, CacheStatus), ProxyError> {
    // Read before the records: a write after this point makes the entry stale.
    let generation = HotTags::generation(app);
    if let Some(hot) = app.oci_hot.get(key, generation) {
        let age = unix_ms().saturating_sub(hot.fetched_at_ms);
        if up.is_offline() || u128::from(age) < up.cfg.tag_ttl.get().as_millis() {
            return Ok((hot.manifest.clone(), CacheStatus::Hit));
        }
    }
    let rec: Option<TagRecord> = app
        .store
        .index()
        .get_rec(Tree::Tags, key.as_bytes())
        .map_err(ProxyError::internal)?;
    if let Some(rec) = rec {
        if let Some(cached) = cached_manifest(app, &rec.digest) {
            let age = unix_ms().saturating_sub(rec.fetched_at_ms);
            if up.is_offline() || u128::from(age) < up.cfg.tag_ttl.get().as_millis() {
                let mut manifest = cached.clone();
                let headers = manifest_reply(cached.clone(), CacheStatus::Hit).headers;
                manifest.head =
                    crate::response::head_template(StatusCode::OK, &headers).map(Arc::new);
                app.oci_hot.insert(
                    key.to_string(),
                    HotTag {
                        generation,
                        fetched_at_ms: rec.fetched_at_ms,
                        manifest,
                    },
                );
                return Ok((cached, CacheStatus::Hit));
            }
            // Stale while revalidate: one background revalidation per tag, this client
            // served now. A copy older than `max_stale` waits for the upstream instead.
            if up.stale_allowed(age) {
                revalidate_in_background(app, up, repo, tag, key, rec.digest);
                return Ok((cached, CacheStatus::Stale));
            }
            // Older than `max_stale`: the upstream's answer or its error.
            return match revalidate_tag(app, up, repo, tag, key, rec.digest).await {
                Ok(Revalidated::Unchanged) => Ok((cached, CacheStatus::Revalidated)),
                Ok(Revalidated::Moved(m)) => Ok((m, CacheStatus::Miss)),
                Err(e) => Err(e),
            };
        }
    }
    if app.is_negative(key) {
        return Err(manifest_unknown(repo, tag.as_str()));
    }
    match fetch_manifest(app, up, repo, tag.as_str(), None).await {
        Ok(m) => {
            put_tag(app, key, m.digest)?;
            Ok((m, CacheStatus::Miss))
        }
        Err(e) => {
            if matches!(e, ProxyError::NotFound { .. }) {
                app.remember_negative(key.to_string(), up.cfg.negative_ttl.get());
            }
            Err(e)
        }
    }
}

/// Revalidates the stale tag `key` (cached as `old`) in a task of its own, unless one is
/// running or a failed one is waiting out its backoff.
fn revalidate_in_background(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    tag: &Tag,
    key: &str,
    old: Digest,
) {
    let Some(mut running) = app.tag_revalidations.start(key) else {
        return;
    };
    let (app, up, repo, tag, key) = (
        app.clone(),
        up.clone(),
        repo.clone(),
        tag.clone(),
        key.to_string(),
    );
    tokio::spawn(async move {
        let r = revalidate_tag(&app, &up, &repo, &tag, &key, old).await;
        // A failure waits; an answer (moved, gone, refused) was acted on.
        let failed = r
            .as_ref()
            .err()
            .filter(|e| !matches!(e, ProxyError::NotFound { .. }) && !e.is_refusal());
        if let Some(e) = failed {
            let wait = crate::revalidations::backoff(up.cfg.tag_ttl.get());
            running.failed(wait);
            tracing::warn!(tag = %key, error = %e, retry_in_s = wait.as_secs(), "tag revalidation failed; stale copy kept");
        }
    });
}

/// What revalidating a tag found.
enum Revalidated {
    /// It still points to the cached manifest.
    Unchanged,
    /// It moved: the manifest it points to now (fetched and stored).
    Moved(Manifest),
}

/// Asks the upstream about the tag `key`, cached as `old`: a HEAD, and the manifest only
/// when the digest moved. Records the answer; a tag gone upstream (404) is dropped and
/// its 404 remembered.
async fn revalidate_tag(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    tag: &Tag,
    key: &str,
    old: Digest,
) -> Result<Revalidated, ProxyError> {
    let r = async {
        match head_digest(up, repo, tag).await? {
            Some(d) if d == old => {
                put_tag(app, key, d)?;
                Ok(Revalidated::Unchanged)
            }
            _ => {
                let m = fetch_manifest(app, up, repo, tag.as_str(), None).await?;
                put_tag(app, key, m.digest)?;
                Ok(Revalidated::Moved(m))
            }
        }
    }
    .await;
    crate::metrics::record_revalidation(match &r {
        Ok(Revalidated::Unchanged) => "not_modified",
        Ok(Revalidated::Moved(_)) => "updated",
        Err(ProxyError::NotFound { .. }) => "gone",
        Err(_) => "failed",
    });
    // Gone (404) or refused (401, 403, ...): the tag is dropped, so the next pull asks in
    // the foreground and gets the upstream's answer (a 404 is also remembered).
    if let Err(e) = &r {
        let gone = matches!(e, ProxyError::NotFound { .. });
        if gone || e.is_refusal() {
            if let Err(e) = app.store.index().remove(Tree::Tags, key.as_bytes()) {
                tracing::warn!(tag = %key, error = %e, "dropping a tag failed");
            }
        }
        if gone {
            app.remember_negative(key.to_string(), up.cfg.negative_ttl.get());
        }
    }
    r
}

fn put_tag(app: &App, key: &str, digest: Digest) -> Result<(), ProxyError> {
    app.store
        .index()
        .put_rec(
            Tree::Tags,
            key.as_bytes(),
            &TagRecord {
                digest,
                fetched_at_ms: unix_ms(),
            },
        )
        .map_err(ProxyError::internal)
}

fn manifest_unknown(repo: &RepoName, reference: &str) -> ProxyError {
    ProxyError::NotFound {
        code: "MANIFEST_UNKNOWN",
        message: format!("manifest {repo}:{reference} not found upstream"),
    }
}

/// `HEAD` the tag upstream: the digest it points to now, if the upstream says.
async fn head_digest(
    up: &Arc<Upstream>,
    repo: &RepoName,
    tag: &Tag,
) -> Result<Option<Digest>, ProxyError> {
    let (resp, _) = ask_manifest(up, repo, tag.as_str(), Method::HEAD).await?;
    Ok(resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok()))
}

/// `method` on the manifest `reference` of `repo` upstream, every manifest type accepted: the
/// successful answer and its path (a `404` is "manifest unknown").
async fn ask_manifest(
    up: &Arc<Upstream>,
    repo: &RepoName,
    reference: &str,
    method: Method,
) -> Result<(reqwest::Response, String), ProxyError> {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = up
        .send(
            method,
            &path,
            accept(MANIFEST_ACCEPT),
            Some(&scope(repo)),
            None,
        )
        .await?;
    if !resp.status().is_success() {
        return Err(up.status_error(resp.status(), &path, manifest_unknown(repo, reference)));
    }
    Ok((resp, path))
}

/// GETs a manifest (single flight per upstream/repo/reference), verifies and stores it.
async fn fetch_manifest(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    reference: &str,
    expected: Option<Digest>,
) -> Result<Manifest, ProxyError> {
    let key = format!("{}/{}@{}", up.name(), repo, reference);
    let (app2, up2, repo2, reference2) =
        (app.clone(), up.clone(), repo.clone(), reference.to_string());
    app.manifest_flights
        .run(&key, move || {
            async move { fetch_manifest_once(&app2, &up2, &repo2, &reference2, expected).await }
                .boxed()
        })
        .await
}

async fn fetch_manifest_once(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    reference: &str,
    expected: Option<Digest>,
) -> Result<Manifest, ProxyError> {
    let (resp, path) = ask_manifest(up, repo, reference, Method::GET).await?;
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let announced: Option<Digest> = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let limit = app.config.server.max_metadata_size.0;
    let bytes = super::read_limited(up, resp, limit, &path).await?;
    let actual = Digest::of(&bytes);
    if let Some(exp) = expected.or(announced) {
        if exp != actual {
            metrics::counter!("sluice_digest_mismatches_total", "format" => "oci").increment(1);
            return Err(ProxyError::DigestMismatch {
                expected: exp,
                actual,
            });
        }
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ProxyError::Upstream {
            upstream: up.name().to_string(),
            message: format!("{path}: upstream sent a manifest that is not JSON: {e}"),
            status: None,
        })?;
    let media_type = media_type_of(&content_type, &doc);
    // This repository holds the manifest and what it refers to (recorded with it).
    let link_keys = links::keys(
        up,
        repo,
        std::iter::once(actual).chain(links::referenced(&doc)),
    );
    let m = store_manifest(app, bytes, media_type, link_keys).await?;
    metrics::counter!("sluice_bytes_total", "format" => "oci", "source" => "upstream")
        .increment(m.bytes.len() as u64);
    if let Some(shared) = &app.shared {
        shared.upload_manifest(up.name(), m.digest, m.bytes.len() as u64, &m.media_type);
    }
    Ok(m)
}

/// The media type of a manifest served with `content_type` (its parameters dropped): that
/// type, unless it says nothing (then the document's own `mediaType`, else what its fields
/// show).
fn media_type_of(content_type: &str, doc: &serde_json::Value) -> String {
    match content_type.split(';').next().unwrap_or("").trim() {
        ""
        | "application/json"
        | "text/plain"
        | "application/octet-stream"
        | "binary/octet-stream" => match doc.get("mediaType").and_then(|v| v.as_str()) {
            Some(t) => t.to_string(),
            None if doc.get("manifests").is_some_and(|m| m.is_array()) => {
                "application/vnd.oci.image.index.v1+json".to_string()
            }
            None => "application/vnd.oci.image.manifest.v1+json".to_string(),
        },
        ct => ct.to_string(),
    }
}

/// Stores a verified manifest with its media type and the repository links `link_keys`.
/// The media type lives only in the index, so it is flushed before the manifest is served:
/// after a crash a stored manifest is still servable without the upstream.
async fn store_manifest(
    app: &Arc<App>,
    bytes: Bytes,
    media_type: String,
    link_keys: Vec<String>,
) -> Result<Manifest, ProxyError> {
    let store = app.store.clone();
    let (b2, mt) = (bytes.clone(), media_type.clone());
    let digest = tokio::task::spawn_blocking(move || -> Result<Digest, ProxyError> {
        let digest = store.put_bytes(&b2)?;
        let rec = ManifestRecord {
            media_type: mt,
            size: b2.len() as u64,
        };
        store
            .index()
            .put_rec(Tree::Manifests, digest.as_bytes(), &rec)
            .map_err(ProxyError::internal)?;
        links::put(store.index().as_ref(), &link_keys)?;
        store.index().flush().map_err(ProxyError::internal)?;
        Ok(digest)
    })
    .await
    .map_err(ProxyError::internal)??;
    Ok(Manifest {
        digest,
        media_type,
        bytes,
        head: None,
    })
}

/// The manifest `d` from the shared store (`[storage.s3]`), stored here (not linked to any
/// repository: its caller confirms the repository holds it); one read at a time per
/// upstream and digest. `None`: not there, not a manifest, or no shared store.
async fn manifest_from_shared(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    d: &Digest,
) -> Result<Option<Manifest>, ProxyError> {
    if app.shared.is_none() {
        return Ok(None);
    }
    let (app2, up2, d2) = (app.clone(), up.clone(), *d);
    app.shared_manifests
        .run(&format!("{}@{d}", up.name()), move || {
            async move { read_shared_manifest(&app2, &up2, &d2).await }.boxed()
        })
        .await
}

async fn read_shared_manifest(
    app: &Arc<App>,
    up: &Upstream,
    d: &Digest,
) -> Result<Option<Manifest>, ProxyError> {
    let Some(shared) = &app.shared else {
        return Ok(None);
    };
    let limit = app.config.server.max_metadata_size.0;
    let Some((bytes, content_type)) = shared.read_manifest(up.name(), d, limit).await else {
        return Ok(None);
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(None);
    };
    let media_type = media_type_of(&content_type, &doc);
    let m = store_manifest(app, bytes, media_type, Vec::new()).await?;
    metrics::counter!("sluice_bytes_total", "format" => "oci", "source" => "shared")
        .increment(m.bytes.len() as u64);
    Ok(Some(m))
}

fn blob_unknown(d: &Digest) -> ProxyError {
    ProxyError::NotFound {
        code: "BLOB_UNKNOWN",
        message: format!("blob {d} not found upstream"),
    }
}

fn blob_headers(reply: Reply, d: &Digest) -> Reply {
    reply
        .header(API_VERSION.0, API_VERSION.1)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", d.to_string())
        .header("ETag", format!("\"{d}\""))
        .header("Accept-Ranges", "bytes")
}

async fn blob(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: Digest,
    range: Option<ByteRange>,
    head: bool,
) -> Result<Reply, ProxyError> {
    // A copy stored or being fetched, perhaps for another repository, is served here only
    // once this repository is known to hold it (`links::confirm`).
    let confirm = || links::confirm(app, up, repo, &d, links::Content::Blob, Vec::new);
    if let Some(bytes) = app.store.read(&d) {
        confirm().await?;
        return serve_stored(d, bytes, range, CacheStatus::Hit);
    }
    // Per repository: a 404 in one says nothing of another.
    let neg_key = format!("{}/{repo}/blob/{d}", up.name());
    if app.is_negative(&neg_key) {
        return Err(blob_unknown(&d));
    }
    let path = format!("/v2/{repo}/blobs/{d}");
    if head {
        // A HEAD does not start a fill. One in progress knows the size once the upstream
        // answered; one just committed is in the store.
        match app.fills.known_without_fetching(d).await {
            Some(Known::Filling(len)) => {
                confirm().await?;
                let mut r = blob_headers(Reply::new(StatusCode::OK, CacheStatus::Miss), &d);
                r.head_length = Some(len);
                return Ok(r);
            }
            Some(Known::Stored(bytes)) => {
                confirm().await?;
                return serve_stored(d, bytes, range, CacheStatus::Hit);
            }
            None => {}
        }
        // Otherwise ask the upstream whether (and how big) it is.
        let resp = up
            .send(
                Method::HEAD,
                &path,
                HeaderMap::new(),
                Some(&scope(repo)),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(up.status_error(resp.status(), &path, blob_unknown(&d)));
        }
        let mut r = blob_headers(Reply::new(StatusCode::OK, CacheStatus::Bypass), &d);
        r.head_length = crate::upstream::stated_length(&resp);
        return Ok(r);
    }
    // Set when this request's opener starts the fill: the upstream's answer to it is what
    // shows this repository holds the blob.
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (app2, up2, repo2, scope2, opened2) = (
        app.clone(),
        up.clone(),
        repo.clone(),
        scope(repo),
        opened.clone(),
    );
    let opener = Box::new(move || {
        async move {
            let resp = up2
                .send(Method::GET, &path, HeaderMap::new(), Some(&scope2), None)
                .await?;
            if !resp.status().is_success() {
                return Err(up2.status_error(resp.status(), &path, blob_unknown(&d)));
            }
            opened2.store(true, std::sync::atomic::Ordering::Release);
            links::link(&app2, &up2, &repo2, [d]);
            Ok(UpstreamBody::from_response(up2.clone(), resp))
        }
        .boxed()
    });
    let Some(fill) = app
        .fills
        .join_or_start(Expect::Sha256(d), "oci", up.name(), opener)
        .await?
    else {
        // Stored between our lookup and the fill registry check.
        let bytes = app
            .store
            .read(&d)
            .ok_or_else(|| ProxyError::internal("stored blob vanished"))?;
        confirm().await?;
        return serve_stored(d, bytes, range, CacheStatus::Hit);
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
    // Joined a fill another request opened, perhaps for another repository (one opened
    // for this one linked it before it started).
    if !opened.load(std::sync::atomic::Ordering::Acquire) {
        confirm().await?;
    }
    match (range, len) {
        (Some(r), Some(total)) => {
            let (start, end) = r
                .resolve(total)
                .ok_or(ProxyError::RangeNotSatisfiable { size: total })?;
            Ok(blob_headers(
                Reply::new(StatusCode::PARTIAL_CONTENT, CacheStatus::Miss),
                &d,
            )
            .header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", end - 1),
            )
            .body(Body::Follow(fill.follow(start, Some(end)))))
        }
        _ => Ok(
            blob_headers(Reply::new(StatusCode::OK, CacheStatus::Miss), &d)
                .body(Body::Follow(fill.follow(0, None))),
        ),
    }
}

fn serve_stored(
    d: Digest,
    bytes: Bytes,
    range: Option<ByteRange>,
    cache: CacheStatus,
) -> Result<Reply, ProxyError> {
    let total = bytes.len() as u64;
    match range {
        Some(r) => {
            let (start, end) = r
                .resolve(total)
                .ok_or(ProxyError::RangeNotSatisfiable { size: total })?;
            Ok(
                blob_headers(Reply::new(StatusCode::PARTIAL_CONTENT, cache), &d)
                    .header(
                        "Content-Range",
                        format!("bytes {start}-{}/{total}", end - 1),
                    )
                    .body(Body::Mapped(bytes.slice(start as usize..end as usize))),
            )
        }
        None => Ok(blob_headers(Reply::new(StatusCode::OK, cache), &d).body(Body::Mapped(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(bytes: usize) -> HotTag {
        let body = Bytes::from(vec![b'{'; bytes]);
        HotTag {
            generation: (1, 1),
            fetched_at_ms: 0,
            manifest: Manifest {
                digest: Digest::of(&body),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                bytes: body,
                head: None,
            },
        }
    }

    #[test]
    fn a_manifests_type_is_its_content_type_else_what_the_document_says() {
        let doc = |v: serde_json::Value| v;
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        let index = "application/vnd.oci.image.index.v1+json";
        let manifest = "application/vnd.oci.image.manifest.v1+json";
        let typed = doc(serde_json::json!({"mediaType": docker, "layers": []}));
        let untyped_index = doc(serde_json::json!({"manifests": []}));
        let untyped = doc(serde_json::json!({"layers": [], "manifests": null}));
        let cases = [
            // A real manifest type wins, parameters dropped.
            (format!("{index}; charset=utf-8"), &typed, index),
            (docker.to_string(), &untyped_index, docker),
            // A type that says nothing: the document's own, else its fields.
            ("application/json".to_string(), &typed, docker),
            ("binary/octet-stream".to_string(), &untyped_index, index),
            (String::new(), &untyped, manifest),
        ];
        for (content_type, doc, want) in cases {
            assert_eq!(media_type_of(&content_type, doc), want, "{content_type}");
        }
    }

    #[test]
    fn hot_tags_stay_within_their_byte_bound_and_skip_large_manifests() {
        let h = HotTags::default();
        h.insert("up/big:1".into(), hot(HOT_MAX_MANIFEST + 1));
        assert!(
            h.get("up/big:1", (1, 1)).is_none(),
            "a mapped-size manifest"
        );
        for i in 0..2_000 {
            h.insert(format!("up/r:{i}"), hot(200 * 1024));
        }
        let held: usize = h.shards.iter().map(|s| s.read().bytes).sum();
        let counted: usize = h
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .map
                    .values()
                    .map(|t| t.manifest.bytes.len())
                    .collect::<Vec<_>>()
            })
            .sum();
        assert_eq!(held, counted, "byte count matches the entries");
        assert!(held <= crate::sharded::SHARDS * HOT_SHARD_BYTES, "{held}");
        // Replacing an entry does not count it twice; a stale generation is not served.
        h.insert("up/r:x".into(), hot(100));
        h.insert("up/r:x".into(), hot(100));
        assert_eq!(
            h.shard("up/r:x")
                .read()
                .map
                .get("up/r:x")
                .unwrap()
                .manifest
                .bytes
                .len(),
            100
        );
        assert!(h.get("up/r:x", (1, 1)).is_some());
        assert!(h.get("up/r:x", (2, 1)).is_none());
    }

    #[test]
    fn routes_split_where_str_searches_would() {
        fn by_str(rest: &str) -> OciRoute<'_> {
            if rest.is_empty() {
                return OciRoute::Base;
            }
            if rest == "_catalog" || rest.contains("/blobs/uploads") {
                return OciRoute::Unsupported;
            }
            if let Some(name) = rest.strip_suffix("/tags/list") {
                return OciRoute::Tags(name);
            }
            if let Some((n, r)) = rest.rsplit_once("/manifests/") {
                return OciRoute::Manifest(n, r);
            }
            if let Some((n, d)) = rest.rsplit_once("/blobs/") {
                return OciRoute::Blob(n, d);
            }
            if let Some((n, d)) = rest.rsplit_once("/referrers/") {
                return OciRoute::Referrers(n, d);
            }
            OciRoute::Unknown
        }
        for p in [
            "a/manifests/b/manifests/c",
            "a/blobs/x/manifests/y",
            "a/manifests/",
            "/manifests/x",
            "manifests/x",
            "a/blobs/",
            "x/blobs/uploads",
            "x/blobs/uploadsy/z",
            "a/b/blobs/sha256:1/blobs/2",
            "ä/manifests/ü",
            "é/blobs/sha256:ü",
            "a/tags/list/manifests/x",
            "a/manifests/x/tags/list",
            "_catalog",
            "_catalog/x",
            "a",
        ] {
            assert_eq!(OciRoute::parse(p), by_str(p), "{p}");
        }
    }

    #[test]
    fn routes_parse_from_the_right() {
        assert_eq!(OciRoute::parse(""), OciRoute::Base);
        assert_eq!(
            OciRoute::parse("a/b/manifests/1.0"),
            OciRoute::Manifest("a/b", "1.0")
        );
        assert_eq!(
            OciRoute::parse("manifests/manifests/x"),
            OciRoute::Manifest("manifests", "x")
        );
        assert_eq!(
            OciRoute::parse("a/blobs/sha256:00"),
            OciRoute::Blob("a", "sha256:00")
        );
        assert_eq!(OciRoute::parse("a/tags/list"), OciRoute::Tags("a"));
        assert_eq!(OciRoute::parse("a/blobs/uploads/"), OciRoute::Unsupported);
        assert_eq!(OciRoute::parse("_catalog"), OciRoute::Unsupported);
        assert_eq!(OciRoute::parse("a/b"), OciRoute::Unknown);
    }
}
