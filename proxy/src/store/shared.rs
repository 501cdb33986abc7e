//! The shared tier of the store (`[storage.s3]`): an S3-compatible bucket that several
//! sluice replicas use together, each keeping its own `data_dir` as a local hot cache.
//!
//! - A fill ([`crate::fill`]) first asks the bucket for the content ([`Shared::open`]);
//!   only when the bucket does not have it (or cannot answer) is the upstream asked. The
//!   bucket's bytes go through the same fill as an upstream's: hashed while streaming,
//!   verified before anything is stored or a response completed. An object whose bytes do
//!   not match its key is deleted from the bucket and not read again ([`Shared::discard`]).
//! - What a replica fetched from an upstream is uploaded after it was stored
//!   ([`Shared::upload`]), in the background and at most `upload_concurrency` at once;
//!   an object already there (another replica's upload) is not sent again. One `PUT` per
//!   object: content over [`MAX_UPLOAD`] (5 GiB) stays local.
//! - OCI manifests by digest ([`Shared::read_manifest`], [`Shared::upload_manifest`]) are
//!   read whole, with the media type they were uploaded with.
//! - Objects are keyed by upstream and by the digest a fill verifies:
//!   `<prefix><upstream>/blobs/sha256/<hex>` for OCI blobs and Python files,
//!   `<prefix><upstream>/blobs/sha512/<hex>` (or `sha1`) for npm tarballs,
//!   `<prefix><upstream>/manifests/sha256/<hex>` for OCI manifests. Keyed by upstream,
//!   content fetched through one upstream (a private registry, with its credentials) is
//!   never read from the bucket for another.
//! - Reads and writes rest separately: a bucket whose reads fail (an error, a status
//!   other than 200/404, no answer within [`ANSWER_TIMEOUT`], a body that breaks off or
//!   does not match) is not read for [`BACKOFF`]; one whose writes fail (read-only
//!   credentials, say) gets no uploads for as long, and is still read.
//! - sluice never deletes sound objects: expire them with the bucket's lifecycle rules.
//!
//! Requests are signed with AWS Signature V4 ([`super::sigv4`]); bodies are sent unsigned.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{header, Method, StatusCode};
use parking_lot::Mutex;
use sluice_config::S3Config;

use super::sigv4::{Signer, UNSIGNED_PAYLOAD};
use super::Store;
use crate::digest::Digest;
use crate::error::ProxyError;
use crate::fill::{BodySource, BodyStream, Resume, UpstreamBody};
use crate::hashes::Expect;

/// Longest wait for the bucket's answer to a GET, HEAD or DELETE (its status line and
/// headers), and longest pause within a body it sends.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// An upload may take this long, plus a second per [`UPLOAD_BYTES_PER_SEC`] bytes.
pub const UPLOAD_BASE_TIME: Duration = Duration::from_secs(60);

/// The slowest upload rate allowed for before an upload is abandoned: 1 MiB/s.
pub const UPLOAD_BYTES_PER_SEC: u64 = 1 << 20;

/// Uploads queued at once, at most; further ones are dropped (counted).
const MAX_QUEUED: usize = 10_000;

/// How long a key whose object did not match its digest is not read again (whether or
/// not deleting it worked).
const BAD_OBJECT_TTL: Duration = Duration::from_secs(3600);

/// Largest object one `PUT` may create (S3's limit); larger content is not uploaded.
pub const MAX_UPLOAD: u64 = 5 << 30;

/// How long a failing bucket is not asked.
pub const BACKOFF: Duration = Duration::from_secs(30);

/// What the metrics and errors call the bucket.
const NAME: &str = "shared store";

/// The bucket and what is being uploaded to it.
pub struct Shared {
    /// For GET, HEAD, DELETE: a body that pauses [`ANSWER_TIMEOUT`] fails.
    reads: reqwest::Client,
    /// For PUT: bounded by a deadline that grows with the size instead.
    writes: reqwest::Client,
    signer: Signer,
    /// The bucket's URL, ending in `/`: object keys are joined to it.
    base: url::Url,
    prefix: String,
    store: Arc<Store>,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Keys queued or being uploaded.
    queued: Mutex<HashSet<String>>,
    /// Keys whose object did not match its digest: not read again for a while.
    bad: moka::sync::Cache<String, ()>,
    read_rest: Rest,
    write_rest: Rest,
}

/// What an upload sends: a stored file (digest, size), with the `Content-Type` to give
/// it (a manifest's media type), if any. Read from the store when its turn comes, so a
/// queued upload holds no body.
struct Payload {
    digest: Digest,
    size: u64,
    content_type: Option<String>,
}

/// The body of a `PUT`.
struct Upload {
    body: reqwest::Body,
    len: u64,
    content_type: Option<String>,
}

/// [`Shared::status`].
pub struct SharedStatus {
    /// How long reads still rest after a failure, if they do.
    pub reads_rest: Option<Duration>,
    /// How long uploads still rest after a failure, if they do.
    pub writes_rest: Option<Duration>,
    /// Uploads queued or running.
    pub queued: usize,
}

/// After a failure, a side (reads or writes) of the bucket rests for [`BACKOFF`].
struct Rest {
    side: &'static str,
    start: Instant,
    /// Milliseconds after `start` before which this side is not used.
    until_ms: AtomicU64,
}

impl Rest {
    fn new(side: &'static str) -> Rest {
        Rest {
            side,
            start: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn resting(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// How long this side still rests, if it does.
    fn remaining(&self) -> Option<Duration> {
        let left = self
            .until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.now_ms());
        (left > 0).then(|| Duration::from_millis(left))
    }

    /// Counts a failure of `op` and rests; warns once per episode.
    fn failed(&self, op: &'static str, why: &str) {
        count(op, "error");
        let was_resting = self.resting();
        self.until_ms.store(
            self.now_ms() + BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !was_resting {
            tracing::warn!(op, error = why, backoff = ?BACKOFF, side = self.side,
                "shared store failed; not used for this meanwhile");
        }
    }
}

fn count(op: &'static str, result: &'static str) {
    metrics::counter!("sluice_shared_store_events_total", "op" => op, "result" => result)
        .increment(1);
}

fn shared_error(message: String) -> ProxyError {
    ProxyError::Upstream {
        upstream: NAME.to_string(),
        message,
        status: None,
    }
}

impl Shared {
    /// What the bucket's two sides are doing, for display.
    pub fn status(&self) -> SharedStatus {
        SharedStatus {
            reads_rest: self.read_rest.remaining(),
            writes_rest: self.write_rest.remaining(),
            queued: self.queued.lock().len(),
        }
    }

    /// The bucket of `cfg`; files to upload are read from `store`.
    pub fn new(cfg: &S3Config, store: Arc<Store>) -> anyhow::Result<Shared> {
        let endpoint = url::Url::parse(&cfg.endpoint)?;
        let mut base = endpoint.clone();
        if cfg.path_style {
            let path = format!("{}/{}/", endpoint.path().trim_end_matches('/'), cfg.bucket);
            base.set_path(&path);
        } else {
            let host = format!("{}.{}", cfg.bucket, endpoint.host_str().unwrap_or_default());
            base.set_host(Some(&host))?;
            base.set_path(&format!("{}/", endpoint.path().trim_end_matches('/')));
        }
        let client = |read_timeout: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                // The bucket answers itself: a redirect would be a misconfiguration.
                .redirect(reqwest::redirect::Policy::none());
            if let Some(t) = read_timeout {
                b = b.read_timeout(t);
            }
            // A self-hosted bucket's private CA, as for upstreams.
            for cert in crate::upstream::extra_roots() {
                b = b.add_root_certificate(cert);
            }
            b.build()
        };
        Ok(Shared {
            reads: client(Some(ANSWER_TIMEOUT))?,
            writes: client(None)?,
            signer: Signer::new(&cfg.access_key_id, &cfg.secret_access_key, &cfg.region),
            base,
            prefix: cfg.prefix.clone(),
            store,
            uploads: Arc::new(tokio::sync::Semaphore::new(cfg.upload_concurrency.max(1))),
            queued: Mutex::new(HashSet::new()),
            bad: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(BAD_OBJECT_TTL)
                .build(),
            read_rest: Rest::new("reads"),
            write_rest: Rest::new("writes"),
        })
    }

    /// The object key of content fetched through `upstream` and verified as `expect`.
    fn key(&self, upstream: &str, expect: &Expect) -> String {
        format!(
            "{}{upstream}/blobs/{}",
            self.prefix,
            expect.to_string().replacen(':', "/", 1)
        )
    }

    /// The object key of the manifest `d` fetched through `upstream`: manifests have keys of
    /// their own (the same bytes fetched as a blob have no media type).
    fn manifest_key(&self, upstream: &str, d: &Digest) -> String {
        format!("{}{upstream}/manifests/sha256/{}", self.prefix, d.hex())
    }

    /// Records a failure reading the bucket: it is not read for [`BACKOFF`].
    pub(crate) fn read_failed(&self, why: &str) {
        self.read_rest.failed("get", why);
    }

    /// Sends a signed request for `key`: from byte `from` on if given, with `body` (and
    /// its length) if given. A request with a body may take [`upload_deadline`]; any other
    /// gets its answer within [`ANSWER_TIMEOUT`].
    async fn send(
        &self,
        method: Method,
        key: &str,
        from: Option<u64>,
        body: Option<Upload>,
    ) -> Result<reqwest::Response, String> {
        let url = self.base.join(key).map_err(|e| e.to_string())?;
        let range = from.map(|f| format!("bytes={f}-"));
        let signed_headers: Vec<(&str, &str)> =
            range.iter().map(|r| ("range", r.as_str())).collect();
        let signed = self.signer.sign(
            method.as_str(),
            &url,
            &signed_headers,
            UNSIGNED_PAYLOAD,
            crate::store::unix_secs(),
        );
        let (client, deadline) = match &body {
            Some(u) => (&self.writes, upload_deadline(u.len)),
            None => (&self.reads, ANSWER_TIMEOUT),
        };
        let mut req = client
            .request(method, url)
            .header("x-amz-date", signed.amz_date)
            .header("x-amz-content-sha256", signed.content_sha256)
            .header(header::AUTHORIZATION, signed.authorization);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        if let Some(u) = body {
            req = req.header(header::CONTENT_LENGTH, u.len).body(u.body);
            if let Some(t) = u.content_type {
                req = req.header(header::CONTENT_TYPE, t);
            }
        }
        match tokio::time::timeout(deadline, req.send()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }

    /// The body of the object `upstream` sent as `expect`, if the bucket has it. `None`
    /// when it does not, or cannot answer now: ask the upstream.
    pub async fn open(self: &Arc<Self>, upstream: &str, expect: &Expect) -> Option<UpstreamBody> {
        let key = self.key(upstream, expect);
        let resp = self.get(&key).await?;
        Some(self.body(key, resp))
    }

    /// The bucket's answer to a GET of `key`, when it has the object.
    async fn get(&self, key: &str) -> Option<reqwest::Response> {
        if self.read_rest.resting() {
            count("get", "skipped");
            return None;
        }
        if self.bad.contains_key(key) {
            count("get", "skipped_bad");
            return None;
        }
        match self.send(Method::GET, key, None, None).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                count("get", "hit");
                Some(resp)
            }
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                count("get", "miss");
                None
            }
            Ok(resp) => {
                self.read_failed(&format!("GET {key}: status {}", resp.status()));
                None
            }
            Err(e) => {
                self.read_failed(&format!("GET {key}: {e}"));
                None
            }
        }
    }

    fn body(self: &Arc<Self>, key: String, resp: reqwest::Response) -> UpstreamBody {
        let len = resp.content_length();
        let resume = len.map(|total| {
            let shared = self.clone();
            Box::new(move |from: u64| {
                let (shared, key) = (shared.clone(), key.clone());
                async move {
                    let resp = shared
                        .send(Method::GET, &key, Some(from), None)
                        .await
                        .map_err(shared_error)?;
                    let want = format!("bytes {from}-{}/{total}", total.saturating_sub(1));
                    let got = resp
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok());
                    if resp.status() != StatusCode::PARTIAL_CONTENT || got != Some(want.as_str()) {
                        return Err(shared_error(format!(
                            "GET {key} from byte {from}: status {}, Content-Range {got:?}",
                            resp.status()
                        )));
                    }
                    Ok(stream(resp))
                }
                .boxed()
            }) as Resume
        });
        UpstreamBody {
            len,
            stream: stream(resp),
            resume,
            source: BodySource::Shared,
        }
    }

    /// Queues the upload of stored content `d` (`size` bytes), which `upstream` sent as
    /// `expect`.
    pub fn upload(self: &Arc<Self>, upstream: &str, expect: &Expect, d: Digest, size: u64) {
        let payload = Payload {
            digest: d,
            size,
            content_type: None,
        };
        self.queue(self.key(upstream, expect), payload);
    }

    /// Queues the upload of the stored manifest `d` (`size` bytes) `upstream` sent, of
    /// media type `media_type`: read back with [`Shared::read_manifest`].
    pub fn upload_manifest(
        self: &Arc<Self>,
        upstream: &str,
        d: Digest,
        size: u64,
        media_type: &str,
    ) {
        let payload = Payload {
            digest: d,
            size,
            content_type: Some(media_type.to_string()),
        };
        self.queue(self.manifest_key(upstream, &d), payload);
    }

    fn queue(self: &Arc<Self>, key: String, payload: Payload) {
        if payload.size > MAX_UPLOAD {
            count("upload", "too_large");
            return;
        }
        {
            let mut queued = self.queued.lock();
            if queued.len() >= MAX_QUEUED {
                count("upload", "dropped");
                return;
            }
            if !queued.insert(key.clone()) {
                return;
            }
            metrics::gauge!("sluice_shared_store_upload_queue").set(queued.len() as f64);
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let result = match shared.uploads.clone().acquire_owned().await {
                Ok(_permit) if shared.write_rest.resting() => Ok("skipped"),
                Ok(_permit) => shared.put(&key, payload).await,
                Err(_) => Ok("skipped"),
            };
            {
                let mut queued = shared.queued.lock();
                queued.remove(&key);
                metrics::gauge!("sluice_shared_store_upload_queue").set(queued.len() as f64);
            }
            match result {
                Ok(outcome) => count("upload", outcome),
                Err(e) => shared
                    .write_rest
                    .failed("upload", &format!("PUT {key}: {e}")),
            }
        });
    }

    /// Uploads `payload` as `key` unless the bucket has it already.
    async fn put(&self, key: &str, payload: Payload) -> Result<&'static str, String> {
        let head = self.send(Method::HEAD, key, None, None).await?;
        match head.status() {
            StatusCode::OK => return Ok("present"),
            StatusCode::NOT_FOUND => {}
            s => return Err(format!("HEAD: status {s}")),
        }
        // Opened before sending: eviction may remove the file meanwhile, and an open file
        // stays readable.
        let file = match tokio::fs::File::open(self.store.path_of(&payload.digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("gone"),
            Err(e) => return Err(e.to_string()),
        };
        let len = payload.size;
        let upload = Upload {
            body: reqwest::Body::from(file),
            len,
            content_type: payload.content_type,
        };
        let resp = self.send(Method::PUT, key, None, Some(upload)).await?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        metrics::counter!("sluice_shared_store_uploaded_bytes_total").increment(len);
        Ok("uploaded")
    }

    /// The manifest `upstream` sent as `d`, whole, if the bucket has it and it is at most
    /// `limit` bytes, with the `Content-Type` it was uploaded with; verified against `d`.
    pub async fn read_manifest(
        self: &Arc<Self>,
        upstream: &str,
        d: &Digest,
        limit: u64,
    ) -> Option<(Bytes, String)> {
        let key = self.manifest_key(upstream, d);
        let resp = self.get(&key).await?;
        if resp.content_length().is_some_and(|l| l > limit) {
            return None;
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut stream = stream(resp);
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) if (buf.len() + c.len()) as u64 <= limit => buf.extend_from_slice(&c),
                Ok(_) => return None,
                Err(e) => {
                    self.read_failed(&format!("{key}: {e}"));
                    return None;
                }
            }
        }
        let bytes = buf.freeze();
        if Digest::of(&bytes) != *d {
            self.discard_key(key);
            return None;
        }
        Some((bytes, content_type))
    }

    /// The object `upstream` sent as `expect` did not match its digest: see
    /// [`Shared::discard_key`].
    pub fn discard(self: &Arc<Self>, upstream: &str, expect: &Expect) {
        self.discard_key(self.key(upstream, expect));
    }

    /// The object `key` did not match its digest: it is not read again, reads rest (a
    /// bucket serving wrong bytes is not trusted for a while), and it is deleted.
    fn discard_key(self: &Arc<Self>, key: String) {
        tracing::warn!(
            key,
            "shared store object does not match its digest; deleting it"
        );
        self.bad.insert(key.clone(), ());
        self.read_failed(&format!("GET {key}: bytes do not match the digest"));
        let shared = self.clone();
        tokio::spawn(async move {
            let why = match shared.send(Method::DELETE, &key, None, None).await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                    return count("discard", "deleted");
                }
                Ok(r) => format!("DELETE {key}: status {}", r.status()),
                Err(e) => format!("DELETE {key}: {e}"),
            };
            shared.write_rest.failed("discard", &why);
        });
    }

    /// Whether the bucket answers with these credentials (logged at start).
    pub async fn check(&self) -> Result<(), String> {
        let resp = self.send(Method::HEAD, "", None, None).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", resp.status()))
        }
    }
}

/// How long an upload of `len` bytes may take.
fn upload_deadline(len: u64) -> Duration {
    UPLOAD_BASE_TIME + Duration::from_secs(len / UPLOAD_BYTES_PER_SEC)
}

fn stream(resp: reqwest::Response) -> BodyStream {
    resp.bytes_stream()
        .map(|r| r.map_err(|e| shared_error(format!("reading: {e}"))))
        .boxed()
}
