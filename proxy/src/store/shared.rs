//! The shared tier of the store (`[storage.s3]`): an S3-compatible bucket that several
//! sluice replicas use together, each keeping its own `data_dir` as a local hot cache.
//!
//! - A fill ([`crate::fill`]) first asks the bucket for the content ([`Shared::open`]);
//!   only when the bucket does not have it (or cannot answer) is the upstream asked. The
//!   bucket's bytes go through the same fill as an upstream's: hashed while streaming,
//!   verified before anything is stored or a response completed. An object whose bytes do
//!   not match its key is deleted from the bucket ([`Shared::discard`]).
//! - What a replica fetched from an upstream is uploaded after it was stored
//!   ([`Shared::upload`]), in the background and at most `upload_concurrency` at once;
//!   an object already there (another replica's upload) is not sent again. One `PUT` per
//!   object: content over [`MAX_UPLOAD`] (5 GiB) stays local.
//! - Objects are keyed by the digest a fill verifies: `<prefix>blobs/sha256/<hex>` for OCI
//!   blobs and Python files, `<prefix>blobs/sha512/<hex>` (or `sha1`) for npm tarballs.
//! - A bucket that fails (an error, a 5xx, no answer within [`ANSWER_TIMEOUT`]) is left
//!   alone for [`BACKOFF`]: requests go straight to their upstream meanwhile.
//! - sluice never deletes sound objects: expire them with the bucket's lifecycle rules.
//!
//! Requests are signed with AWS Signature V4 ([`super::sigv4`]); bodies are sent unsigned.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Longest wait for the bucket's answer (its status line and headers).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest object one `PUT` may create (S3's limit); larger content is not uploaded.
pub const MAX_UPLOAD: u64 = 5 << 30;

/// How long a failing bucket is not asked.
pub const BACKOFF: Duration = Duration::from_secs(30);

/// What the metrics and errors call the bucket.
const NAME: &str = "shared store";

/// The bucket and what is being uploaded to it.
pub struct Shared {
    client: reqwest::Client,
    signer: Signer,
    /// The bucket's URL, ending in `/`: object keys are joined to it.
    base: url::Url,
    prefix: String,
    store: Arc<Store>,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Keys queued or being uploaded.
    queued: Mutex<HashSet<String>>,
    /// Unix ms before which the bucket is not asked (after a failure).
    resting_until: AtomicU64,
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
            base.set_path("/");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            // The bucket answers itself: a redirect would be a misconfiguration.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Shared {
            client,
            signer: Signer::new(&cfg.access_key_id, &cfg.secret_access_key, &cfg.region),
            base,
            prefix: cfg.prefix.clone(),
            store,
            uploads: Arc::new(tokio::sync::Semaphore::new(cfg.upload_concurrency.max(1))),
            queued: Mutex::new(HashSet::new()),
            resting_until: AtomicU64::new(0),
        })
    }

    /// The object key of content verified as `expect`.
    fn key(&self, expect: &Expect) -> String {
        format!(
            "{}blobs/{}",
            self.prefix,
            expect.to_string().replacen(':', "/", 1)
        )
    }

    /// Whether the bucket is being left alone after a failure.
    fn resting(&self) -> bool {
        crate::store::unix_ms() < self.resting_until.load(Ordering::Relaxed)
    }

    /// Records a failure of the bucket: it is not asked for [`BACKOFF`].
    pub(crate) fn failed(&self, op: &'static str, why: &str) {
        count(op, "error");
        let was_resting = self.resting();
        self.resting_until.store(
            crate::store::unix_ms() + BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !was_resting {
            tracing::warn!(op, error = why, backoff = ?BACKOFF,
                "shared store failed; upstreams are asked directly meanwhile");
        }
    }

    /// Sends a signed request for `key`: from byte `from` on if given, with `body` (and
    /// its length) if given.
    async fn send(
        &self,
        method: Method,
        key: &str,
        from: Option<u64>,
        body: Option<(reqwest::Body, u64)>,
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
        let mut req = self
            .client
            .request(method, url)
            .header("x-amz-date", signed.amz_date)
            .header("x-amz-content-sha256", signed.content_sha256)
            .header(header::AUTHORIZATION, signed.authorization);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        if let Some((b, len)) = body {
            req = req.header(header::CONTENT_LENGTH, len).body(b);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, req.send()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
        }
    }

    /// The body of the object for `expect`, if the bucket has it. `None` when it does not,
    /// or cannot answer now: ask the upstream.
    pub async fn open(self: &Arc<Self>, expect: &Expect) -> Option<UpstreamBody> {
        if self.resting() {
            count("get", "skipped");
            return None;
        }
        let key = self.key(expect);
        match self.send(Method::GET, &key, None, None).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                count("get", "hit");
                Some(self.body(key, resp))
            }
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                count("get", "miss");
                None
            }
            Ok(resp) => {
                self.failed("get", &format!("GET {key}: status {}", resp.status()));
                None
            }
            Err(e) => {
                self.failed("get", &format!("GET {key}: {e}"));
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

    /// Queues the upload of stored content `d` (`size` bytes), verified as `expect`.
    pub fn upload(self: &Arc<Self>, expect: &Expect, d: Digest, size: u64) {
        let key = self.key(expect);
        if !self.queued.lock().insert(key.clone()) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let result = match shared.uploads.clone().acquire_owned().await {
                _ if size > MAX_UPLOAD => Ok("too_large"),
                Ok(_permit) if shared.resting() => Ok("skipped"),
                Ok(_permit) => shared.put(&key, &d, size).await,
                Err(_) => Ok("skipped"),
            };
            shared.queued.lock().remove(&key);
            match result {
                Ok(outcome) => count("upload", outcome),
                Err(e) => shared.failed("upload", &format!("PUT {key}: {e}")),
            }
        });
    }

    /// Uploads `d` as `key` unless the bucket has it already.
    async fn put(&self, key: &str, d: &Digest, size: u64) -> Result<&'static str, String> {
        let head = self.send(Method::HEAD, key, None, None).await?;
        match head.status() {
            StatusCode::OK => return Ok("present"),
            StatusCode::NOT_FOUND => {}
            s => return Err(format!("HEAD: status {s}")),
        }
        // Opened before sending: eviction may remove the file meanwhile, and an open file
        // stays readable.
        let file = match tokio::fs::File::open(self.store.path_of(d)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("gone"),
            Err(e) => return Err(e.to_string()),
        };
        let resp = self
            .send(
                Method::PUT,
                key,
                None,
                Some((reqwest::Body::from(file), size)),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        metrics::counter!("sluice_shared_store_uploaded_bytes_total").increment(size);
        Ok("uploaded")
    }

    /// Deletes the object for `expect`: its bytes did not match its key.
    pub fn discard(self: &Arc<Self>, expect: &Expect) {
        let key = self.key(expect);
        tracing::warn!(
            key,
            "shared store object does not match its digest; deleting it"
        );
        let shared = self.clone();
        tokio::spawn(async move {
            match shared.send(Method::DELETE, &key, None, None).await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {
                    count("discard", "deleted")
                }
                Ok(r) => shared.failed("discard", &format!("DELETE {key}: status {}", r.status())),
                Err(e) => shared.failed("discard", &format!("DELETE {key}: {e}")),
            }
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

fn stream(resp: reqwest::Response) -> BodyStream {
    resp.bytes_stream()
        .map(|r| r.map_err(|e| shared_error(format!("reading: {e}"))))
        .boxed()
}
