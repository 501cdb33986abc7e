//! Mutable metadata documents (packuments, simple pages, ...) with freshness: the cache
//! that every format's metadata goes through.
//!
//! A document is stored by digest in the blob store (so restarts keep it) and described in
//! the index's `meta` tree with its upstream validators and fetch time; an in-memory front
//! keeps hot documents parsed-free as `Bytes`.
//!
//! - **Fresh** (younger than the TTL) → served (`HIT`).
//! - **Stale** → served at once (`STALE`) while one background revalidation runs
//!   (conditional request; `304` only bumps the fetch time).
//! - **Missing** → fetched (single flight per key) (`MISS`); a `404` is remembered for the
//!   negative TTL.
//! - **Forced** (the format saw that the cached copy lacks what the client asks for, e.g. a
//!   new npm version) → revalidated before answering (`REVALIDATED` or `MISS`).
//! - **Upstream failure** (connect, timeout, 5xx, 429) with a cached copy → the cached copy
//!   (`STALE`), however old, unless `max_stale` bounds it.
//!
//! Rendered variants (rewritten URLs, abbreviated forms, gzip) are cached by document digest
//! and variant name, so a hit does no parsing or serialisation at all.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pingora::http::ResponseHeader;

use crate::digest::Digest;
use crate::error::ProxyError;
use crate::flight::Flights;
use crate::response::{head_template, Body, CacheStatus, Reply};
use crate::revalidations::{self, Revalidations};
use crate::store::index::{IndexExt, MetaRecord, Tree};
use crate::store::{unix_ms, Store};

/// A cached document: the upstream's exact bytes and what is known about them.
#[derive(Debug)]
pub struct Doc {
    /// Upstream bytes.
    pub bytes: Bytes,
    /// Their sha256.
    pub digest: Digest,
    /// Upstream `Content-Type`.
    pub content_type: String,
    /// Upstream `ETag`.
    pub etag: Option<String>,
    /// Upstream `Last-Modified`.
    pub last_modified: Option<String>,
    /// When it was fetched or last confirmed unchanged (Unix ms).
    pub fetched_at_ms: u64,
    /// The variant of it last answered from [`Docs::render_kept`] and kept, by name, if its
    /// body is at most [`MEMO_MAX`]: a cached hit on a small document finds its answer here
    /// without asking the render cache.
    pub memo: arc_swap::ArcSwapOption<(String, Arc<Rendered>)>,
}

/// Largest rendered body a [`Doc`] remembers as its last answer. Above it the render
/// cache's lookup is small beside sending the body, and a remembered copy would be held as
/// long as the document stays in memory, past the render cache's own bound.
pub const MEMO_MAX: usize = 64 * 1024;

/// Validators for a conditional request.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    /// Send as `If-None-Match`.
    pub etag: Option<String>,
    /// Send as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

/// What a fetch from the upstream produced.
pub enum Fetched {
    /// A (new) document.
    Doc {
        /// Exact bytes.
        bytes: Bytes,
        /// `Content-Type`.
        content_type: String,
        /// `ETag`.
        etag: Option<String>,
        /// `Last-Modified`.
        last_modified: Option<String>,
    },
    /// `304 Not Modified` to a conditional request.
    NotModified,
    /// `404` / `410`.
    NotFound,
}

/// Fetches a document from the upstream, conditionally when validators are given.
pub type Fetcher = Arc<
    dyn Fn(Option<Validators>) -> BoxFuture<'static, Result<Fetched, ProxyError>> + Send + Sync,
>;

/// Freshness rules for one document.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Served without revalidation while younger than this.
    pub ttl: Duration,
    /// How long a 404 is remembered.
    pub negative_ttl: Duration,
    /// Never contact the upstream.
    pub offline: bool,
    /// Oldest copy served when the upstream fails (`None`: any age).
    pub max_stale: Option<Duration>,
}

/// A rendered variant of a document, ready to serve.
#[derive(Debug)]
pub struct Rendered {
    /// Body.
    pub body: Bytes,
    /// Gzip of the body, made on first request for it.
    gzip: std::sync::OnceLock<Bytes>,
    /// `Content-Type`.
    pub content_type: String,
    /// Strong ETag sluice serves for this variant.
    pub etag: String,
    /// Extra response headers (e.g. npm's `npm-notice` naming blocked versions).
    pub headers: Vec<(&'static str, String)>,
    /// The `200` response header of the identity and the gzip variant, converted on first
    /// use (see [`Reply::prebuilt`]).
    head: [std::sync::OnceLock<Option<Arc<ResponseHeader>>>; 2],
}

impl Rendered {
    /// A variant with its ETag derived from its bytes.
    pub fn new(body: Bytes, content_type: impl Into<String>) -> Rendered {
        let etag = format!("\"{}\"", &Digest::of(&body).hex()[..32]);
        Rendered {
            body,
            gzip: std::sync::OnceLock::new(),
            content_type: content_type.into(),
            etag,
            headers: Vec::new(),
            head: Default::default(),
        }
    }

    /// Adds a response header (ASCII control characters are replaced by spaces).
    pub fn with_header(mut self, name: &'static str, value: &str) -> Rendered {
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        self.headers.push((name, clean));
        self.head = Default::default();
        self
    }

    fn gzipped(&self) -> &Bytes {
        self.gzip.get_or_init(|| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = enc.write_all(&self.body);
            Bytes::from(enc.finish().unwrap_or_default())
        })
    }

    /// The reply for a client: `304` if `If-None-Match` matches, gzip if accepted.
    pub fn reply(
        &self,
        if_none_match: Option<&str>,
        accept_encoding: Option<&str>,
        cache: CacheStatus,
    ) -> Reply {
        let etag_matches = if_none_match.is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == self.etag || t.strip_prefix("W/") == Some(self.etag.as_str())
            })
        });
        let base = |status| {
            let mut r = Reply::new(status, cache)
                .header("ETag", self.etag.clone())
                .header("Vary", "Accept, Accept-Encoding");
            for (k, v) in &self.headers {
                r = r.header(k, v.clone());
            }
            r
        };
        if etag_matches {
            return base(http::StatusCode::NOT_MODIFIED);
        }
        let gzip = accept_encoding.is_some_and(accepts_gzip) && self.body.len() > 1024;
        let body = if gzip {
            self.gzipped().clone()
        } else {
            self.body.clone()
        };
        if let Some(Some(head)) = self.head[usize::from(gzip)].get() {
            // Converted on the first reply of this variant: no header list to build again.
            return Reply::prebuilt_only(http::StatusCode::OK, cache, head.clone())
                .body(Body::Full(body));
        }
        let r = base(http::StatusCode::OK).header("Content-Type", self.content_type.clone());
        let r = if gzip {
            r.header("Content-Encoding", "gzip")
        } else {
            r
        };
        let head = self.head[usize::from(gzip)]
            .get_or_init(|| head_template(r.status, &r.headers).map(Arc::new));
        let r = match head {
            Some(h) => r.with_prebuilt(h.clone()),
            None => r,
        };
        r.body(Body::Full(body))
    }
}

fn accepts_gzip(v: &str) -> bool {
    v.split(',').any(|part| {
        let mut it = part.split(';');
        let coding = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
    })
}

/// The document cache.
pub struct Docs {
    store: Arc<Store>,
    hot: moka::sync::Cache<String, Arc<Doc>>,
    rendered: moka::sync::Cache<(Digest, String), Arc<Rendered>>,
    flights: Flights<(Arc<Doc>, CacheStatus)>,
    negative: moka::sync::Cache<String, u64>,
    /// Background revalidations: one per key, and a backoff after a failed one.
    revalidations: Revalidations,
}

impl Docs {
    /// An empty cache over `store`.
    pub fn new(store: Arc<Store>) -> Docs {
        Docs {
            store,
            hot: moka::sync::Cache::builder()
                .weigher(|_k: &String, v: &Arc<Doc>| v.bytes.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(128 << 20)
                .build(),
            rendered: moka::sync::Cache::builder()
                .weigher(|_k: &(Digest, String), v: &Arc<Rendered>| {
                    v.body.len().try_into().unwrap_or(u32::MAX)
                })
                .max_capacity(256 << 20)
                .build(),
            flights: Flights::default(),
            negative: moka::sync::Cache::builder().max_capacity(100_000).build(),
            revalidations: Revalidations::default(),
        }
    }

    fn lookup(&self, key: &str) -> Option<Arc<Doc>> {
        if let Some(d) = self.hot.get(key) {
            return Some(d);
        }
        let rec: MetaRecord = self
            .store
            .index()
            .get_rec(Tree::Meta, key.as_bytes())
            .ok()??;
        let bytes = self.store.read(&rec.digest)?;
        let doc = Arc::new(Doc {
            bytes,
            digest: rec.digest,
            content_type: rec.content_type,
            etag: rec.etag,
            last_modified: rec.last_modified,
            fetched_at_ms: rec.fetched_at_ms,
            memo: Default::default(),
        });
        self.hot.insert(key.to_string(), doc.clone());
        Some(doc)
    }

    /// The cached document `key` when [`Docs::get`] (not forced) would answer it from the
    /// cache as a `HIT`, so a handler can skip building its fetcher.
    pub fn fresh(&self, key: &str, fresh: Freshness) -> Option<Arc<Doc>> {
        let doc = self.lookup(key)?;
        let age = unix_ms().saturating_sub(doc.fetched_at_ms);
        (fresh.offline || u128::from(age) < fresh.ttl.as_millis()).then_some(doc)
    }

    /// The cached document `key`, whatever its age, without contacting the upstream (to
    /// pick which of several cached variants to consult).
    pub fn peek(&self, key: &str) -> Option<Arc<Doc>> {
        self.lookup(key)
    }

    fn save(&self, key: &str, doc: Doc) -> Result<Arc<Doc>, ProxyError> {
        let rec = MetaRecord {
            digest: doc.digest,
            content_type: doc.content_type.clone(),
            fetched_at_ms: doc.fetched_at_ms,
            etag: doc.etag.clone(),
            last_modified: doc.last_modified.clone(),
            next_page: None,
        };
        self.store
            .index()
            .put_rec(Tree::Meta, key.as_bytes(), &rec)
            .map_err(ProxyError::internal)?;
        let doc = Arc::new(doc);
        self.hot.insert(key.to_string(), doc.clone());
        Ok(doc)
    }

    /// The document `key`, per the freshness rules; `force` revalidates a cached copy
    /// before answering. `not_found` is the error for an upstream 404.
    pub async fn get(
        self: &Arc<Self>,
        key: &str,
        fresh: Freshness,
        force: bool,
        fetch: Fetcher,
        not_found: impl Fn() -> ProxyError,
    ) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
        let cached = self.lookup(key);
        let Some(doc) = cached else {
            if self.negative.get(key).is_some_and(|exp| unix_ms() < exp) {
                return Err(not_found());
            }
            if fresh.offline {
                return Err(ProxyError::Offline(format!("offline: {key} is not cached")));
            }
            let r = self.clone().refresh(key, None, fetch).await;
            if is_not_found(&r) {
                self.remember_404(key, fresh.negative_ttl);
                return Err(not_found());
            }
            return r;
        };
        let age = unix_ms().saturating_sub(doc.fetched_at_ms);
        let is_fresh = u128::from(age) < fresh.ttl.as_millis();
        if fresh.offline || (is_fresh && !force) {
            return Ok((doc, CacheStatus::Hit));
        }
        let too_old = fresh
            .max_stale
            .is_some_and(|m| u128::from(age) > m.as_millis());
        if !force && !too_old {
            // Stale while revalidate: one background refresh, this client served now; none
            // while a failed one waits out its backoff.
            let Some(mut running) = self.revalidations.start(key) else {
                return Ok((doc, CacheStatus::Stale));
            };
            let (this, key2, old) = (self.clone(), key.to_string(), doc.clone());
            tokio::spawn(async move {
                let r = this.clone().refresh(&key2, Some(old), fetch).await;
                count_revalidation(&r);
                match r {
                    Ok(_) => {}
                    // Gone upstream: a 404 from now on, as for a document never cached.
                    Err(e) if is_not_found_err(&e) => this.forget_gone(&key2, fresh.negative_ttl),
                    // Refused (401, 403, ...): the next request asks in the foreground and
                    // gets the refusal; the copy is not served on.
                    Err(e) if e.is_refusal() => {
                        this.forget(&key2);
                        tracing::warn!(key = %key2, error = %e, "upstream refused a cached document; dropped");
                    }
                    Err(e) => {
                        let wait = revalidations::backoff(fresh.ttl);
                        running.failed(wait);
                        tracing::warn!(key = %key2, error = %e, retry_in_s = wait.as_secs(), "background revalidation failed; stale copy kept");
                    }
                }
            });
            return Ok((doc, CacheStatus::Stale));
        }
        let r = self.clone().refresh(key, Some(doc.clone()), fetch).await;
        count_revalidation(&r);
        match r {
            Ok(r) => {
                self.revalidations.answered(key);
                Ok(r)
            }
            Err(e) if is_not_found_err(&e) => {
                self.forget_gone(key, fresh.negative_ttl);
                Err(not_found())
            }
            Err(e)
                if (e.is_upstream_failure() || matches!(e, ProxyError::Offline(_))) && !too_old =>
            {
                tracing::warn!(key, error = %e, "upstream failed; serving stale copy");
                Ok((doc, CacheStatus::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// Drops the cached document `key`, which the upstream says no longer exists (only
    /// connection failures, timeouts, 5xx and 429 keep a stale copy served), and remembers
    /// the 404.
    fn forget_gone(&self, key: &str, negative_ttl: Duration) {
        self.forget(key);
        self.remember_404(key, negative_ttl);
    }

    /// Drops the cached document `key`.
    fn forget(&self, key: &str) {
        if let Err(e) = self.store.index().remove(Tree::Meta, key.as_bytes()) {
            tracing::warn!(key, error = %e, "dropping a cached document failed");
        }
        self.hot.invalidate(key);
    }

    /// Drops the in-memory copies of document `key` (stored as `digest`) and of its rendered
    /// variants, after a purge removed its record: the next request fetches it (`MISS`).
    pub fn invalidate(&self, key: &str, digest: &Digest) {
        if let Some(doc) = self.hot.remove(key) {
            // A request holding it meanwhile renders again rather than reuse its answer.
            doc.memo.store(None);
        }
        let variants: Vec<_> = self
            .rendered
            .iter()
            .filter(|(k, _)| k.0 == *digest)
            .map(|(k, _)| k)
            .collect();
        for k in variants {
            self.rendered.invalidate(&*k);
        }
    }

    fn remember_404(&self, key: &str, ttl: Duration) {
        if !ttl.is_zero() {
            self.negative
                .insert(key.to_string(), unix_ms() + ttl.as_millis() as u64);
        }
    }

    /// One fetch (single flight per key): conditional when `old` is given.
    async fn refresh(
        self: Arc<Self>,
        key: &str,
        old: Option<Arc<Doc>>,
        fetch: Fetcher,
    ) -> Result<(Arc<Doc>, CacheStatus), ProxyError> {
        let this = self.clone();
        let key2 = key.to_string();
        self.flights
            .run(key, move || {
                async move {
                    let validators = old.as_ref().map(|d| Validators {
                        etag: d.etag.clone(),
                        last_modified: d.last_modified.clone(),
                    });
                    match fetch(validators).await? {
                        Fetched::NotModified => {
                            let Some(old) = old else {
                                return Err(ProxyError::internal(
                                    "304 to an unconditional request",
                                ));
                            };
                            if !this.store.contains(&old.digest) {
                                // Removed meanwhile (purge, eviction): store the bytes again
                                // so the record never names a file that is gone.
                                let (store, b) = (this.store.clone(), old.bytes.clone());
                                tokio::task::spawn_blocking(move || store.put_bytes(&b))
                                    .await
                                    .map_err(ProxyError::internal)??;
                            }
                            let doc = Doc {
                                bytes: old.bytes.clone(),
                                digest: old.digest,
                                content_type: old.content_type.clone(),
                                etag: old.etag.clone(),
                                last_modified: old.last_modified.clone(),
                                fetched_at_ms: unix_ms(),
                                memo: Default::default(),
                            };
                            Ok((this.save(&key2, doc)?, CacheStatus::Revalidated))
                        }
                        Fetched::NotFound => Err(ProxyError::NotFound {
                            code: "NOT_FOUND",
                            message: format!("{key2} not found upstream"),
                        }),
                        Fetched::Doc {
                            bytes,
                            content_type,
                            etag,
                            last_modified,
                        } => {
                            let store = this.store.clone();
                            let b2 = bytes.clone();
                            let digest = tokio::task::spawn_blocking(move || store.put_bytes(&b2))
                                .await
                                .map_err(ProxyError::internal)??;
                            let unchanged = old.as_ref().is_some_and(|o| o.digest == digest);
                            let doc = Doc {
                                bytes,
                                digest,
                                content_type,
                                etag,
                                last_modified,
                                fetched_at_ms: unix_ms(),
                                memo: Default::default(),
                            };
                            let status = if unchanged {
                                CacheStatus::Revalidated
                            } else {
                                CacheStatus::Miss
                            };
                            Ok((this.save(&key2, doc)?, status))
                        }
                    }
                }
                .boxed()
            })
            .await
    }

    /// The variant `variant` of `doc`, rendered by `render` once per document digest.
    pub fn render(
        &self,
        doc: &Doc,
        variant: &str,
        render: impl FnOnce(&Doc) -> Result<Rendered, ProxyError>,
    ) -> Result<Arc<Rendered>, ProxyError> {
        self.render_kept(doc, variant, true, render)
    }

    /// [`Docs::render`], keeping the result only when `keep` (else rendered for this answer
    /// alone: links on a host the render cache has no room for).
    pub fn render_kept(
        &self,
        doc: &Doc,
        variant: &str,
        keep: bool,
        render: impl FnOnce(&Doc) -> Result<Rendered, ProxyError>,
    ) -> Result<Arc<Rendered>, ProxyError> {
        if let Some((name, r)) = doc.memo.load().as_deref() {
            if name == variant {
                return Ok(r.clone());
            }
        }
        let key = (doc.digest, variant.to_string());
        let r = match self.rendered.get(&key) {
            Some(r) => r,
            None => {
                let r = Arc::new(render(doc)?);
                if keep {
                    self.rendered.insert(key.clone(), r.clone());
                }
                r
            }
        };
        if keep && r.body.len() <= MEMO_MAX {
            doc.memo.store(Some(Arc::new((key.1, r.clone()))));
        }
        Ok(r)
    }
}

/// Counts what asking the upstream about a cached document found.
fn count_revalidation(r: &Result<(Arc<Doc>, CacheStatus), ProxyError>) {
    let result = match r {
        Ok((_, CacheStatus::Revalidated)) => "not_modified",
        Ok(_) => "updated",
        Err(e) if is_not_found_err(e) => "gone",
        Err(_) => "failed",
    };
    crate::metrics::record_revalidation(result);
}

fn is_not_found_err(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::NotFound {
            code: "NOT_FOUND",
            ..
        }
    )
}

fn is_not_found<T>(r: &Result<T, ProxyError>) -> bool {
    matches!(r, Err(e) if is_not_found_err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fresh(ttl_ms: u64) -> Freshness {
        Freshness {
            ttl: Duration::from_millis(ttl_ms),
            negative_ttl: Duration::from_secs(30),
            offline: false,
            max_stale: None,
        }
    }

    /// A fetcher that serves `body` (or fails / 404s per `mode`) and counts calls.
    fn fetcher(calls: Arc<AtomicUsize>, mode: Arc<parking_lot::Mutex<&'static str>>) -> Fetcher {
        Arc::new(move |v: Option<Validators>| {
            let calls = calls.clone();
            let mode = *mode.lock();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                match mode {
                    "fail" => Err(ProxyError::Upstream {
                        upstream: "u".into(),
                        message: "down".into(),
                        status: Some(503),
                    }),
                    "404" => Ok(Fetched::NotFound),
                    "403" => Err(ProxyError::Upstream {
                        upstream: "u".into(),
                        message: "forbidden".into(),
                        status: Some(403),
                    }),
                    "304" if v.is_some() => Ok(Fetched::NotModified),
                    body => Ok(Fetched::Doc {
                        bytes: Bytes::from(body),
                        content_type: "application/json".into(),
                        etag: Some("\"e\"".into()),
                        last_modified: None,
                    }),
                }
            }
            .boxed()
        })
    }

    type Mode = Arc<parking_lot::Mutex<&'static str>>;

    /// A cache over a fresh store and a [`fetcher`] starting in `mode`.
    fn setup(
        mode: &'static str,
    ) -> (
        tempfile::TempDir,
        Arc<Docs>,
        Arc<AtomicUsize>,
        Mode,
        Fetcher,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let docs = Arc::new(Docs::new(Arc::new(Store::open(dir.path()).unwrap())));
        let calls = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(parking_lot::Mutex::new(mode));
        let f = fetcher(calls.clone(), mode.clone());
        (dir, docs, calls, mode, f)
    }

    fn nf() -> ProxyError {
        ProxyError::NotFound {
            code: "NOT_FOUND",
            message: "nope".into(),
        }
    }

    #[tokio::test]
    async fn miss_then_hit_then_stale_while_revalidate_then_stale_if_error() {
        let (_dir, docs, calls, mode, f) = setup("v1");
        let (d, s) = docs
            .get("k", fresh(60_000), false, f.clone(), nf)
            .await
            .unwrap();
        assert_eq!((&d.bytes[..], s), (&b"v1"[..], CacheStatus::Miss));
        let (_, s) = docs
            .get("k", fresh(60_000), false, f.clone(), nf)
            .await
            .unwrap();
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // TTL 0: stale served at once, refreshed in the background.
        *mode.lock() = "v2";
        let (d, s) = docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        assert_eq!((&d.bytes[..], s), (&b"v1"[..], CacheStatus::Stale));
        for _ in 0..100 {
            if docs.lookup("k").unwrap().bytes == "v2" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(docs.lookup("k").unwrap().bytes, "v2");
        // Forced revalidation with the upstream down: the cached copy, marked stale.
        *mode.lock() = "fail";
        let (d, s) = docs.get("k", fresh(0), true, f.clone(), nf).await.unwrap();
        assert_eq!((&d.bytes[..], s), (&b"v2"[..], CacheStatus::Stale));
        // 304 bumps the fetch time only.
        *mode.lock() = "304";
        let (d, s) = docs.get("k", fresh(0), true, f.clone(), nf).await.unwrap();
        assert_eq!((&d.bytes[..], s), (&b"v2"[..], CacheStatus::Revalidated));
    }

    #[tokio::test]
    async fn not_found_is_remembered_and_offline_never_fetches() {
        let (_dir, docs, calls, _mode, f) = setup("404");
        assert!(matches!(
            docs.get("gone", fresh(1000), false, f.clone(), nf).await,
            Err(ProxyError::NotFound { .. })
        ));
        assert!(matches!(
            docs.get("gone", fresh(1000), false, f.clone(), nf).await,
            Err(ProxyError::NotFound { .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let off = Freshness {
            offline: true,
            ..fresh(1000)
        };
        assert!(matches!(
            docs.get("other", off, false, f, nf).await,
            Err(ProxyError::Offline(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// Waits (bounded) until `calls` reaches `n`, then a little longer for the background
    /// task to finish what follows its fetch.
    async fn calls_reach(calls: &AtomicUsize, n: usize) {
        for _ in 0..200 {
            if calls.load(Ordering::SeqCst) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_document_gone_upstream_is_dropped_and_its_404_remembered() {
        let (_dir, docs, calls, mode, f) = setup("v1");
        docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        *mode.lock() = "404";
        // Stale: served once while the background revalidation learns it is gone.
        let (_, s) = docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        assert_eq!(s, CacheStatus::Stale);
        calls_reach(&calls, 2).await;
        for _ in 0..3 {
            assert!(matches!(
                docs.get("k", fresh(0), false, f.clone(), nf).await,
                Err(ProxyError::NotFound { .. })
            ));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the 404 was not remembered"
        );
        assert!(
            docs.peek("k").is_none(),
            "the gone document is still cached"
        );
        // The same through a forced revalidation (a version missing from a packument).
        *mode.lock() = "v1";
        docs.get("f", fresh(0), false, f.clone(), nf).await.unwrap();
        *mode.lock() = "404";
        assert!(matches!(
            docs.get("f", fresh(0), true, f.clone(), nf).await,
            Err(ProxyError::NotFound { .. })
        ));
        assert!(docs.peek("f").is_none());
    }

    #[tokio::test]
    async fn a_refused_background_revalidation_drops_the_copy() {
        let (_dir, docs, calls, mode, f) = setup("v1");
        docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        *mode.lock() = "403";
        let (_, s) = docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        assert_eq!(s, CacheStatus::Stale);
        calls_reach(&calls, 2).await;
        assert!(
            docs.peek("k").is_none(),
            "a refused document is still cached"
        );
        let e = docs
            .get("k", fresh(0), false, f.clone(), nf)
            .await
            .unwrap_err();
        assert!(e.is_refusal(), "{e}");
    }

    #[tokio::test]
    async fn a_failed_background_revalidation_waits_before_the_next() {
        let (_dir, docs, calls, mode, f) = setup("v1");
        docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        *mode.lock() = "fail";
        docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        calls_reach(&calls, 2).await;
        // Within the backoff (1 s at TTL 0): stale copies, no upstream request.
        for _ in 0..5 {
            let (d, s) = docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
            assert_eq!((&d.bytes[..], s), (&b"v1"[..], CacheStatus::Stale));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // After it: one more try, which succeeds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        *mode.lock() = "v2";
        docs.get("k", fresh(0), false, f.clone(), nf).await.unwrap();
        calls_reach(&calls, 3).await;
        assert_eq!(docs.lookup("k").unwrap().bytes, "v2");
    }

    #[test]
    fn rendered_variants_answer_304_and_gzip() {
        let r = Rendered::new(Bytes::from(vec![b'a'; 5000]), "application/json");
        let not_mod = r.reply(Some(&r.etag.clone()), None, CacheStatus::Hit);
        assert_eq!(not_mod.status, http::StatusCode::NOT_MODIFIED);
        let gz = r.reply(None, Some("gzip, deflate"), CacheStatus::Hit);
        assert!(gz
            .headers
            .iter()
            .any(|(k, v)| *k == "Content-Encoding" && v == "gzip"));
        let plain = r.reply(None, Some("gzip;q=0"), CacheStatus::Hit);
        assert!(!plain.headers.iter().any(|(k, _)| *k == "Content-Encoding"));
        // The header kept per variant is the one its first reply's headers convert to, and
        // later replies carry it (and its body) without building the list again.
        for _ in 0..2 {
            for (reply, first) in [
                (r.reply(None, Some("gzip"), CacheStatus::Hit), &gz),
                (r.reply(None, None, CacheStatus::Hit), &plain),
            ] {
                let kept = reply.prebuilt.as_deref().expect("kept header");
                let fresh = crate::response::head_template(first.status, &first.headers).unwrap();
                assert_eq!(kept.status, fresh.status);
                assert_eq!(kept.headers, fresh.headers);
                assert!(reply.headers.is_empty());
                match (&reply.body, &first.body) {
                    (Body::Full(a), Body::Full(b)) => assert_eq!(a, b),
                    _ => panic!("full bodies"),
                }
            }
        }
        assert!(not_mod.prebuilt.is_none());
    }

    #[tokio::test]
    async fn a_small_kept_variant_is_remembered_by_its_document_until_a_purge() {
        let (_dir, docs, _calls, _mode, f) = setup("v1");
        let (d, _) = docs
            .get("k", fresh(60_000), false, f.clone(), nf)
            .await
            .unwrap();
        let renders = AtomicUsize::new(0);
        let render = |body: &'static [u8]| {
            let renders = &renders;
            move |_: &Doc| {
                renders.fetch_add(1, Ordering::SeqCst);
                Ok(Rendered::new(Bytes::from_static(body), "text/plain"))
            }
        };
        let a = docs.render_kept(&d, "a", true, render(b"a")).unwrap();
        // The render cache no longer has it: the document's memo answers.
        docs.rendered.invalidate_all();
        let again = docs.render_kept(&d, "a", true, render(b"x")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        // Another variant is not the remembered one.
        let b = docs.render_kept(&d, "b", true, render(b"b")).unwrap();
        assert_eq!(&b.body[..], b"b");
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        // A variant not kept (a Host past the bound) is neither cached nor remembered.
        docs.render_kept(&d, "c", false, render(b"c")).unwrap();
        let c = docs.render_kept(&d, "c", false, render(b"c2")).unwrap();
        assert_eq!(&c.body[..], b"c2");
        // Too large to remember: only the render cache has it.
        let big: &'static [u8] = Box::leak(vec![b'z'; MEMO_MAX + 1].into_boxed_slice());
        docs.render_kept(&d, "big", true, render(big)).unwrap();
        assert!(doc_memo(&d).is_some_and(|n| n != "big"));
        // A purge forgets the memo of the document in memory.
        docs.render_kept(&d, "a", true, render(b"a")).unwrap();
        assert_eq!(doc_memo(&d).as_deref(), Some("a"));
        docs.invalidate("k", &d.digest);
        assert!(doc_memo(&d).is_none());
        let n = renders.load(Ordering::SeqCst);
        docs.render_kept(&d, "a", true, render(b"a3")).unwrap();
        assert_eq!(
            renders.load(Ordering::SeqCst),
            n + 1,
            "rendered again after the purge"
        );
    }

    fn doc_memo(d: &Doc) -> Option<String> {
        d.memo.load().as_deref().map(|(n, _)| n.clone())
    }

    #[tokio::test]
    async fn invalidate_drops_the_memory_copies_and_a_304_restores_a_removed_file() {
        let (_dir, docs, calls, mode, f) = setup("v1");
        let (d, _) = docs
            .get("k", fresh(60_000), false, f.clone(), nf)
            .await
            .unwrap();
        let variant = Arc::new(Rendered::new(Bytes::from_static(b"r"), "text/plain"));
        docs.rendered.insert((d.digest, "x".into()), variant);
        // Its file removed (purge, eviction) while the copy is in memory: a 304 stores the
        // bytes again, so the record it rewrites names a stored file.
        docs.store.remove(&d.digest).unwrap();
        *mode.lock() = "304";
        let (_, s) = docs.get("k", fresh(0), true, f.clone(), nf).await.unwrap();
        assert_eq!(s, CacheStatus::Revalidated);
        assert!(docs.store.contains(&d.digest));
        // A purge: the record goes, then the memory copies; the next get fetches.
        docs.store.index().remove(Tree::Meta, b"k").unwrap();
        docs.invalidate("k", &d.digest);
        assert!(docs.rendered.get(&(d.digest, "x".to_string())).is_none());
        *mode.lock() = "v1";
        let (_, s) = docs.get("k", fresh(60_000), false, f, nf).await.unwrap();
        assert_eq!(s, CacheStatus::Miss);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
