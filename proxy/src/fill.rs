//! Single-flight fills: one upstream fetch per missing digest, however many clients ask.
//!
//! The first request creates a [`Fill`] and spawns one task that streams the upstream body
//! into a temp file while hashing it, publishing progress on a `watch` channel. Every client
//! (the first one too) is a [`Follower`] that reads at its own offset as progress advances:
//! each streams at upstream speed, and a slow client never slows the fill or the others.
//! While it has followers, the fill keeps its latest received chunks (about
//! [`RECENT_BYTES`]) in memory, shared: a follower keeping up with the upstream is sent
//! those very buffers; one that fell behind (or joined late, or reads after the fill is
//! over) reads the temp file back with positional reads, [`FOLLOW_CHUNK`] at a time. What
//! all fills keep is bounded by [`KEPT_LIMIT`]: past it, followers read the file.
//!
//! Every response's last byte is held back until the whole body's digest matches; then
//! followers finish while the file is fsynced and renamed into the store (the client does
//! not wait for the disk: an fsync of 200 MB takes ~50 ms). A request arriving in that
//! window waits for the commit and is served from the store. On a mismatch, a short body or
//! an upstream error the fill fails, the temp file is removed, and followers return an
//! error so the server drops the connection instead of completing a response with wrong
//! bytes. If the commit itself fails (a disk error), the bytes already verified still reach
//! the followers from the open temp file; nothing is stored.
//!
//! The fill runs to completion even if every client goes away: the next pull is a hit.
//!
//! What a fill verifies is an [`Expect`]: a sha256 digest (OCI, PyPI) or the sha512 / sha1
//! an npm packument states. Files are always stored under their sha256; for the other
//! algorithms an alias (`sha512:<hex>` → sha256) is indexed after verification.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::digest::Digest;
use crate::error::ProxyError;
use crate::hashes::{Expect, Hashing};
use crate::store::shared::Shared;
use crate::store::Store;

/// Bytes a follower reads from the temp file per step, each into its own buffer held until
/// the client's socket took it: a thousand followers lagging at once hold 64 MB of them at
/// most. (A follower sent a kept chunk holds that chunk's buffer instead: a slice of the
/// upstream client's read buffer, a few hundred KiB at most.)
const FOLLOW_CHUNK: u64 = 64 * 1024;

/// Bytes written between progress notifications while the upstream keeps data coming.
const PUBLISH_EVERY: u64 = 256 * 1024;

/// Bytes of its latest chunks a fill keeps in memory for the followers at its head (one
/// set per fill, however many followers): each is spared reading back from the temp file
/// what the fill has just written there. A fill keeps a little more (the chunk that
/// crosses the mark), and holds up to [`PUBLISH_EVERY`] more between notifications.
const RECENT_BYTES: u64 = 1024 * 1024;

/// Bytes all fills together keep in memory for their followers: the windows of about 60
/// fills at once (the chunks each fill holds between two notifications, up to
/// [`PUBLISH_EVERY`], are not counted). Chunks past it are not kept; followers read them
/// from the file.
const KEPT_LIMIT: u64 = 64 * 1024 * 1024;

/// Attempts to continue one fill's body after it broke off.
const MAX_RESUMES: u32 = 3;

/// A body stream from the upstream.
pub type BodyStream = BoxStream<'static, Result<Bytes, ProxyError>>;

/// Opens the rest of a body from a byte offset (`Range: bytes=<offset>-`), yielding exactly
/// the bytes from there to the announced length, or an error.
pub type Resume = Box<dyn Fn(u64) -> BoxFuture<'static, Result<BodyStream, ProxyError>> + Send>;

/// An upstream body about to be streamed into a fill.
pub struct UpstreamBody {
    /// Length announced by the upstream, if any.
    pub len: Option<u64>,
    /// The body.
    pub stream: BodyStream,
    /// How to continue the body if it breaks off; `None` when the upstream does not serve
    /// ranges of it (or its length is unknown).
    pub resume: Option<Resume>,
    /// Where it comes from.
    pub source: BodySource,
}

/// Where a fill's body comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySource {
    /// The artifact's upstream.
    Upstream,
    /// The shared tier of the store (`[storage.s3]`).
    Shared,
}

impl BodySource {
    /// The `source` label of `sluice_bytes_total`.
    pub fn label(self) -> &'static str {
        match self {
            BodySource::Upstream => "upstream",
            BodySource::Shared => "shared",
        }
    }
}

impl UpstreamBody {
    /// The body of a successful upstream response, its read errors attributed to `up`.
    pub fn from_response(
        up: Arc<crate::upstream::Upstream>,
        resp: reqwest::Response,
    ) -> UpstreamBody {
        use crate::upstream::resume::{accepts_ranges, RequestScope};
        let len = resp.content_length();
        let resume = len.filter(|_| accepts_ranges(resp.headers())).map(|total| {
            let (up, url) = (up.clone(), resp.url().clone());
            let scope = resp
                .extensions()
                .get::<RequestScope>()
                .and_then(|s| s.0.clone());
            Box::new(move |from: u64| {
                let (up, url, scope) = (up.clone(), url.clone(), scope.clone());
                async move {
                    let resp = up.fetch_rest(url, scope.as_deref(), from, total).await?;
                    Ok(body_stream(up, resp))
                }
                .boxed()
            }) as Resume
        });
        UpstreamBody {
            len,
            stream: body_stream(up, resp),
            resume,
            source: BodySource::Upstream,
        }
    }
}

fn body_stream(up: Arc<crate::upstream::Upstream>, resp: reqwest::Response) -> BodyStream {
    resp.bytes_stream()
        .map(move |r| r.map_err(|e| up.body_error(e)))
        .boxed()
}

/// Starts the upstream request of a fill.
pub type Opener = Box<dyn FnOnce() -> BoxFuture<'static, Result<UpstreamBody, ProxyError>> + Send>;

#[derive(Clone, Debug)]
enum State {
    Connecting,
    Streaming,
    /// The whole body is written and its digest matches; being committed to the store.
    Verified,
    /// Verified and committed: the store has it.
    Done,
    /// Verified, but the commit failed: followers finish from the temp file.
    Unstored,
    Failed(ProxyError),
}

impl State {
    /// Whether every written byte is known good.
    fn verified(&self) -> bool {
        matches!(self, State::Verified | State::Done | State::Unstored)
    }
}

/// The bytes all fills of a registry keep in memory, against their limit.
#[derive(Debug)]
struct Kept {
    limit: u64,
    used: AtomicU64,
}

impl Kept {
    /// Counts `n` more bytes kept, if that stays within the limit.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Progress {
    state: State,
    len: Option<u64>,
    written: u64,
    /// The latest chunks up to `written`, by offset, in order: at least the last
    /// [`RECENT_BYTES`] of them (all of them at first), less any [`Kept`] had no room for
    /// (a gap, read from the file); emptied once the fill is over.
    recent: VecDeque<(u64, Bytes)>,
    kept: Arc<Kept>,
}

impl Progress {
    /// Makes `written` and the chunks received up to it visible to the followers.
    fn publish(&mut self, written: u64, received: &mut Vec<(u64, Bytes)>) {
        self.written = written;
        for (off, chunk) in received.drain(..) {
            if self.kept.take(chunk.len() as u64) {
                self.recent.push_back((off, chunk));
            }
        }
        while self.recent.len() > 1 && written - self.recent[1].0 >= RECENT_BYTES {
            if let Some((_, chunk)) = self.recent.pop_front() {
                self.kept.give_back(chunk.len() as u64);
            }
        }
    }

    /// The bytes from `pos` (up to `upto` and the end of the chunk that holds them), if
    /// still in memory.
    fn recent_from(&self, pos: u64, upto: u64) -> Option<Bytes> {
        let i = self
            .recent
            .partition_point(|(off, _)| *off <= pos)
            .checked_sub(1)?;
        let (off, chunk) = &self.recent[i];
        let end = (off + chunk.len() as u64).min(upto);
        (pos < end).then(|| chunk.slice((pos - off) as usize..(end - off) as usize))
    }

    /// Ends the fill in `state`, letting go of the chunks kept in memory.
    fn finish(&mut self, state: State) {
        self.state = state;
        self.let_go();
    }

    fn let_go(&mut self) {
        let n: u64 = self.recent.iter().map(|(_, c)| c.len() as u64).sum();
        self.kept.give_back(n);
        self.recent = VecDeque::new();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// One in-progress (or just finished) fill.
pub struct Fill {
    expect: Expect,
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
}

/// What is known of a digest without fetching it (see [`Fills::known_without_fetching`]).
pub enum Known {
    /// A fill is streaming it; its length.
    Filling(u64),
    /// It is stored: its bytes.
    Stored(Bytes),
}

/// The registry of in-flight fills.
pub struct Fills {
    store: Arc<Store>,
    inflight: Arc<Mutex<HashMap<Expect, Arc<Fill>>>>,
    kept: Arc<Kept>,
    /// The shared tier, asked before the upstream and given what the upstream sent.
    shared: Option<Arc<Shared>>,
}

impl Fills {
    /// An empty registry filling into `store`.
    pub fn new(store: Arc<Store>) -> Fills {
        Fills::keeping(store, KEPT_LIMIT)
    }

    /// An empty registry filling into `store`, with `shared` as the tier asked first.
    pub fn with_shared(store: Arc<Store>, shared: Option<Arc<Shared>>) -> Fills {
        Fills {
            shared,
            ..Fills::new(store)
        }
    }

    /// An empty registry whose fills keep at most `limit` bytes in memory together.
    fn keeping(store: Arc<Store>, limit: u64) -> Fills {
        Fills {
            store,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            kept: Arc::new(Kept {
                limit,
                used: AtomicU64::new(0),
            }),
            shared: None,
        }
    }

    /// Joins the fill of `expect`, starting it with `open` if none is running. `format`
    /// labels the upstream byte counter. Returns `None` if the content is already stored (a
    /// fill finished meanwhile): look it up again. A fill whose body is complete and being
    /// committed is waited for rather than joined, so that a request following a finished
    /// response is served from the store.
    pub async fn join_or_start(
        &self,
        expect: Expect,
        format: &'static str,
        upstream: &str,
        open: Opener,
    ) -> Result<Option<Arc<Fill>>, ProxyError> {
        match self.in_flight(&expect).await {
            Some(f) => Ok(Some(f)),
            None => self.start(expect, format, upstream, open),
        }
    }

    /// Whether a fill of `expect` is registered (in progress or committing).
    pub fn is_filling(&self, expect: &Expect) -> bool {
        self.inflight.lock().contains_key(expect)
    }

    /// The fill of `expect` in progress, if any. One whose body is complete and being
    /// committed is waited for and not returned: look in the store again.
    pub async fn in_flight(&self, expect: &Expect) -> Option<Arc<Fill>> {
        loop {
            let committing = {
                let map = self.inflight.lock();
                match map.get(expect) {
                    Some(f) if matches!(f.progress.borrow().state, State::Verified) => f.clone(),
                    Some(f) => return Some(f.clone()),
                    None => return None,
                }
            };
            committing.settled().await;
        }
    }

    /// What a HEAD of `d` can say without fetching anything: the length a fill in progress
    /// learnt from its upstream, or the stored file (a fill may just have committed it).
    /// `None`: ask the upstream.
    pub async fn known_without_fetching(&self, d: Digest) -> Option<Known> {
        match self.in_flight(&Expect::Sha256(d)).await {
            Some(fill) => match fill.started().await {
                Ok(Some(len)) => Some(Known::Filling(len)),
                _ => None,
            },
            None => self.store.read(&d).map(Known::Stored),
        }
    }

    fn start(
        &self,
        expect: Expect,
        format: &'static str,
        upstream: &str,
        open: Opener,
    ) -> Result<Option<Arc<Fill>>, ProxyError> {
        let mut map = self.inflight.lock();
        if let Some(f) = map.get(&expect) {
            return Ok(Some(f.clone()));
        }
        // A fill removes itself from the map only after indexing its file, so under the
        // lock "not in flight" and "not indexed" together mean it really is missing.
        if self.store.resolve(&expect).is_some() {
            return Ok(None);
        }
        let tmp = self.store.temp_file()?;
        let (tx, rx) = watch::channel(Progress {
            state: State::Connecting,
            len: None,
            written: 0,
            recent: VecDeque::new(),
            kept: self.kept.clone(),
        });
        let fill = Arc::new(Fill {
            expect: expect.clone(),
            file: tmp.file().clone(),
            progress: rx,
        });
        map.insert(expect.clone(), fill.clone());
        drop(map);
        metrics::gauge!("sluice_inflight_fills").increment(1.0);
        let store = self.store.clone();
        let inflight = self.inflight.clone();
        let shared = self.shared.clone().map(|s| (s, upstream.to_string()));
        tokio::spawn(async move {
            let shared = shared.as_ref().map(|(s, up)| (s, up.as_str()));
            // A panic fails the fill like an error would: followers get the error and the
            // next request starts afresh.
            let result =
                AssertUnwindSafe(run_fill(&store, shared, tmp, &expect, format, open, &tx))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(ProxyError::internal("fill task panicked")));
            // Remove from the registry before publishing the outcome: a request arriving
            // after this sees the store (on success) or starts a fresh fill (on failure).
            inflight.lock().remove(&expect);
            metrics::gauge!("sluice_inflight_fills").decrement(1.0);
            match result {
                Ok(true) => tx.send_modify(|p| p.finish(State::Done)),
                Ok(false) => tx.send_modify(|p| p.finish(State::Unstored)),
                Err(e) => {
                    tracing::warn!(expect = %expect, error = %e, "fill failed; nothing stored");
                    metrics::counter!("sluice_fill_failures_total", "format" => format)
                        .increment(1);
                    tx.send_modify(|p| p.finish(State::Failed(e)));
                }
            }
        });
        Ok(Some(fill))
    }
}

async fn run_fill(
    store: &Arc<Store>,
    shared: Option<(&Arc<Shared>, &str)>,
    tmp: crate::store::TempFile,
    expect: &Expect,
    format: &'static str,
    open: Opener,
    tx: &watch::Sender<Progress>,
) -> Result<bool, ProxyError> {
    let from_shared = match shared {
        Some((s, upstream)) => s.open(upstream, expect).await,
        None => None,
    };
    let body = match from_shared {
        Some(body) => body,
        None => open().await?,
    };
    let source = body.source;
    let result = stream_and_commit(store, tmp, expect, format, body, tx).await;
    match (&result, shared) {
        // The bucket's object is not what its key says: nobody gets it again.
        (
            Err(ProxyError::DigestMismatch { .. } | ProxyError::HashMismatch { .. }),
            Some((s, upstream)),
        ) if source == BodySource::Shared => s.discard(upstream, expect),
        // The bucket's body broke off: the next fills ask the upstream for a while.
        (Err(e), Some((s, _)))
            if source == BodySource::Shared && !matches!(e, ProxyError::Internal(_)) =>
        {
            s.read_failed(&format!("{expect}: {e}"))
        }
        (Ok(Some(stored)), Some((s, upstream))) if source == BodySource::Upstream => {
            s.upload(upstream, expect, stored.0, stored.1)
        }
        _ => {}
    }
    result.map(|stored| stored.is_some())
}

/// Streams `body` into `tmp`, verifies it and commits it: the digest and size stored, or
/// `None` when the verified body could not be stored.
async fn stream_and_commit(
    store: &Arc<Store>,
    tmp: crate::store::TempFile,
    expect: &Expect,
    format: &'static str,
    body: UpstreamBody,
    tx: &watch::Sender<Progress>,
) -> Result<Option<(Digest, u64)>, ProxyError> {
    let UpstreamBody {
        len,
        mut stream,
        resume,
        source,
    } = body;
    let mut resumes = 0;
    tx.send_modify(|p| {
        p.state = State::Streaming;
        p.len = len;
    });
    let mut hashing = Hashing::new(expect);
    let mut written: u64 = 0;
    let mut published: u64 = 0;
    // Chunks written since the last publish, by offset.
    let mut received: Vec<(u64, Bytes)> = Vec::new();
    loop {
        // Wake followers once per PUBLISH_EVERY bytes, or whenever the upstream has
        // nothing more ready right now: few wake-ups on a fast upstream, no held-back
        // bytes on a slow one.
        let next = match stream.next().now_or_never() {
            Some(n) => n,
            None => {
                if written > published {
                    tx.send_modify(|p| p.publish(written, &mut received));
                    published = written;
                }
                stream.next().await
            }
        };
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            None if len.is_none_or(|l| written >= l) => break,
            // Cut short (an error, or a clean end before the announced length): continue
            // from where it broke off if the upstream can, else fail as before.
            cut => {
                let why = match cut {
                    Some(Err(e)) => e,
                    _ => ProxyError::Upstream {
                        upstream: String::new(),
                        message: format!("{expect}: upstream body ended after {written} bytes"),
                        status: None,
                    },
                };
                let Some(resume) = resume.as_ref().filter(|_| resumes < MAX_RESUMES) else {
                    return Err(why);
                };
                resumes += 1;
                tracing::info!(expect = %expect, written, attempt = resumes, error = %why,
                    "upstream body broke off; resuming with a range request");
                metrics::counter!("sluice_fill_resumes_total", "format" => format).increment(1);
                stream = resume(written).await.map_err(|e| ProxyError::Upstream {
                    upstream: String::new(),
                    message: format!("{expect}: body broke off ({why}) and resuming failed: {e}"),
                    status: None,
                })?;
                continue;
            }
        };
        if len.is_some_and(|l| written + chunk.len() as u64 > l) {
            return Err(ProxyError::Upstream {
                upstream: String::new(),
                message: format!("{expect}: upstream sent more bytes than its Content-Length"),
                status: None,
            });
        }
        hashing.update(&chunk);
        (&**tmp.file())
            .write_all(&chunk)
            .map_err(|e| ProxyError::internal(format!("writing temp file: {e}")))?;
        let at = written;
        written += chunk.len() as u64;
        // Kept only while someone follows (the `Fill` itself holds one receiver).
        if !chunk.is_empty() && tx.receiver_count() > 1 {
            received.push((at, chunk));
        }
        if written - published >= PUBLISH_EVERY {
            tx.send_modify(|p| p.publish(written, &mut received));
            published = written;
            // Let the followers on this thread send what was just published: a fast
            // upstream would otherwise keep this task busy and the clients waiting.
            tokio::task::yield_now().await;
        }
    }
    if written > published {
        tx.send_modify(|p| p.publish(written, &mut received));
    }
    if let Some(l) = len {
        if written != l {
            return Err(ProxyError::Upstream {
                upstream: String::new(),
                message: format!("{expect}: upstream body ended after {written} of {l} bytes"),
                status: None,
            });
        }
    }
    let digest = hashing.verify(expect, format)?;
    metrics::counter!("sluice_bytes_total", "format" => format, "source" => source.label())
        .increment(written);
    // Release the last bytes (and the final length of a chunked body) now: the fsync and
    // rename below need not delay the clients.
    tx.send_modify(|p| {
        p.len = Some(written);
        p.state = State::Verified;
    });
    let store = store.clone();
    let alias = expect.clone();
    let committed = tokio::task::spawn_blocking(move || {
        store.commit(tmp, &digest, written)?;
        store.put_alias(&alias, &digest)
    })
    .await
    .map_err(ProxyError::internal)
    .and_then(|r| r);
    if let Err(e) = committed {
        tracing::error!(expect = %expect, error = %e, "verified body not stored: commit failed");
        metrics::counter!("sluice_fill_failures_total", "format" => format).increment(1);
        return Ok(None);
    }
    Ok(Some((digest, written)))
}

impl Fill {
    /// Waits until the upstream answered; returns the body length if it is known.
    pub async fn started(&self) -> Result<Option<u64>, ProxyError> {
        let mut rx = self.progress.clone();
        loop {
            {
                let p = rx.borrow_and_update();
                match &p.state {
                    State::Connecting => {}
                    State::Failed(e) => return Err(e.clone()),
                    _ => return Ok(p.len),
                }
            }
            rx.changed()
                .await
                .map_err(|_| ProxyError::internal("fill task ended without a result"))?;
        }
    }

    /// Waits until the fill is over: stored, unstored or failed.
    async fn settled(&self) {
        let mut rx = self.progress.clone();
        loop {
            if matches!(
                rx.borrow_and_update().state,
                State::Done | State::Unstored | State::Failed(_)
            ) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// What is being filled.
    pub fn expect(&self) -> &Expect {
        &self.expect
    }

    /// A reader of bytes `[start, end)` (`end = None`: to the end of the body).
    pub fn follow(self: &Arc<Self>, start: u64, end: Option<u64>) -> Follower {
        Follower {
            fill: self.clone(),
            rx: self.progress.clone(),
            pos: start,
            end,
        }
    }
}

/// Reads a fill's bytes as they arrive.
pub struct Follower {
    fill: Arc<Fill>,
    rx: watch::Receiver<Progress>,
    pos: u64,
    end: Option<u64>,
}

impl Follower {
    /// Body length of this reader, if known.
    pub fn len(&self) -> Option<u64> {
        let total = self.rx.borrow().len;
        match (self.end, total) {
            (Some(e), _) => Some(e - self.pos),
            (None, Some(t)) => Some(t.saturating_sub(self.pos)),
            (None, None) => None,
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The next chunk; `Ok(None)` at the end; `Err` if the fill failed, in which case the
    /// response must be aborted.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ProxyError> {
        loop {
            let (readable, verified) = {
                let p = self.rx.borrow_and_update();
                if let State::Failed(e) = &p.state {
                    return Err(e.clone());
                }
                let end = match (self.end, p.len) {
                    (Some(e), Some(l)) => e.min(l),
                    (Some(e), None) => e,
                    (None, Some(l)) => l,
                    (None, None) => u64::MAX,
                };
                let verified = p.state.verified();
                // The last byte of a response is held back until the whole body's digest
                // is verified: a client can never receive a complete body that turns out
                // wrong.
                let readable = if verified {
                    p.written.min(end)
                } else {
                    p.written.min(end.saturating_sub(1))
                };
                if let Some(bytes) = p.recent_from(self.pos, readable) {
                    self.pos += bytes.len() as u64;
                    crate::metrics::record_follow_bytes(true, bytes.len() as u64);
                    return Ok(Some(bytes));
                }
                (readable, verified)
            };
            if self.pos < readable {
                let n = (readable - self.pos).min(FOLLOW_CHUNK) as usize;
                let mut buf = BytesMut::zeroed(n);
                self.fill
                    .file
                    .read_exact_at(&mut buf, self.pos)
                    .map_err(|e| ProxyError::internal(format!("reading fill temp file: {e}")))?;
                self.pos += n as u64;
                crate::metrics::record_follow_bytes(false, n as u64);
                return Ok(Some(buf.freeze()));
            }
            if verified {
                // Everything up to `end` was sent (or the range went past the body).
                return Ok(None);
            }
            self.rx
                .changed()
                .await
                .map_err(|_| ProxyError::internal("fill task ended without a result"))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::time::Duration;

    fn opener(body: Bytes) -> Opener {
        Box::new(move || {
            async move {
                let len = Some(body.len() as u64);
                let chunks: Vec<Result<Bytes, ProxyError>> = body
                    .chunks(100_000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Ok(UpstreamBody {
                    len,
                    stream: futures_util::stream::iter(chunks).boxed(),
                    resume: None,
                    source: BodySource::Upstream,
                })
            }
            .boxed()
        })
    }

    async fn read_all(mut f: Follower) -> Result<Vec<u8>, ProxyError> {
        let mut out = Vec::new();
        while let Some(c) = f.next().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    // The held store lock is the point: commits (on the blocking pool) wait behind it.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn clients_get_the_verified_body_before_the_commit_and_later_requests_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fills = Fills::new(store.clone());
        let body = Bytes::from(
            (0..1_000_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>(),
        );
        let expect = Expect::Sha256(Digest::of(&body));

        let held = store.hold_commits();
        let fill = fills
            .join_or_start(expect.clone(), "oci", "up", opener(body.clone()))
            .await
            .unwrap()
            .expect("nothing stored yet");
        assert_eq!(fill.started().await.unwrap(), Some(body.len() as u64));
        // The whole body, last byte included, arrives while the commit cannot happen.
        let got = tokio::time::timeout(Duration::from_secs(10), read_all(fill.follow(0, None)))
            .await
            .expect("the body is released before the commit")
            .unwrap();
        assert_eq!(got, body);
        assert!(store.resolve(&expect).is_none(), "not committed yet");

        // A request now waits for the commit instead of joining, then finds it stored.
        let late = fills.join_or_start(expect.clone(), "oci", "up", opener(Bytes::new()));
        tokio::pin!(late);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut late)
                .await
                .is_err(),
            "a request during the commit waits for it"
        );
        drop(held);
        let late = tokio::time::timeout(Duration::from_secs(10), late)
            .await
            .expect("the commit finishes")
            .unwrap();
        assert!(
            late.is_none(),
            "served from the store, not from a second fill"
        );
        let stored = store.resolve(&expect).expect("committed");
        assert_eq!(store.read(&stored).unwrap(), body);
    }

    #[tokio::test]
    async fn a_wrong_body_is_never_completed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fills = Fills::new(store.clone());
        let body = Bytes::from(vec![7u8; 300_000]);
        let expect = Expect::Sha256(Digest::of(b"something else"));
        let fill = fills
            .join_or_start(expect.clone(), "oci", "up", opener(body.clone()))
            .await
            .unwrap()
            .unwrap();
        let mut f = fill.follow(0, None);
        let mut got = 0;
        let err = loop {
            match f.next().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => panic!("a body with the wrong digest completed"),
                Err(e) => break e,
            }
        };
        assert!(got < body.len(), "the last byte was held back");
        assert!(
            err.to_string().contains("digest") || err.to_string().contains("sha256"),
            "{err}"
        );
        assert!(store.resolve(&expect).is_none());
    }

    /// An upstream whose body arrives as the test sends it.
    fn paced_opener(len: Option<u64>) -> (Opener, tokio::sync::mpsc::UnboundedSender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let open: Opener = Box::new(move || {
            async move {
                let stream = tokio_stream_from(rx).map(Ok).boxed();
                Ok(UpstreamBody {
                    len,
                    stream,
                    resume: None,
                    source: BodySource::Upstream,
                })
            }
            .boxed()
        });
        (open, tx)
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) -> impl futures_util::Stream<Item = Bytes> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Reads `n` bytes from `f`, then checks that nothing more comes (the fill is waiting
    /// for its upstream).
    async fn read_written(f: &mut Follower, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let c = tokio::time::timeout(Duration::from_secs(5), f.next())
                .await
                .expect("written bytes arrive")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&c);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(100), f.next())
                .await
                .is_err(),
            "a follower read past the written bytes"
        );
        got
    }

    /// Followers of a fill in progress get exactly the bytes written so far, ranges
    /// included, with the length announced or not.
    #[tokio::test]
    async fn followers_read_only_what_was_written_with_or_without_a_length() {
        for announced in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let fills = Fills::new(store.clone());
            let body = Bytes::from(
                (0..3_000_000u32)
                    .map(|i| (i % 253) as u8 | 1)
                    .collect::<Vec<_>>(),
            );
            let expect = Expect::Sha256(Digest::of(&body));
            let (open, tx) = paced_opener(announced.then_some(body.len() as u64));
            let fill = fills
                .join_or_start(expect.clone(), "oci", "up", open)
                .await
                .unwrap()
                .unwrap();
            tx.send(body.slice(..1_200_000)).unwrap();
            let mut whole = fill.follow(0, None);
            let mut range = fill.follow(1_000_000, Some(2_500_000));
            // Each gets the written bytes, and nothing past them, the range too.
            let mut got = read_written(&mut whole, 1_200_000).await;
            assert_eq!(got, body[..1_200_000], "announced={announced}");
            let mut r = read_written(&mut range, 200_000).await;
            assert_eq!(r, body[1_000_000..1_200_000], "announced={announced}");
            tx.send(body.slice(1_200_000..)).unwrap();
            drop(tx);
            let mut rest = read_all(whole).await.unwrap();
            got.append(&mut rest);
            assert_eq!(got, body);
            while let Some(c) = range.next().await.unwrap() {
                r.extend_from_slice(&c);
            }
            assert_eq!(r, body[1_000_000..2_500_000]);
            fill.settled().await;
            let stored = store.resolve(&expect).expect("committed");
            assert_eq!(store.read(&stored).unwrap(), body);
        }
    }

    /// Whether `c` is a slice of one of the buffers the upstream sent, not a copy.
    fn is_one_of(c: &Bytes, sent: &[Bytes]) -> bool {
        let p = c.as_ptr() as usize;
        sent.iter().any(|s| {
            let from = s.as_ptr() as usize;
            p >= from && p + c.len() <= from + s.len()
        })
    }

    /// A fill of a 3 MB body whose 100 KB chunks (each its own allocation, as an upstream's
    /// would be) the test sends through `tx`, in a store of its own.
    struct Paced {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        fills: Fills,
        body: Bytes,
        sent: Vec<Bytes>,
        expect: Expect,
        fill: Arc<Fill>,
        tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    }

    impl Paced {
        /// Starts the fill, its registry keeping at most `kept_limit` bytes.
        async fn start(kept_limit: u64) -> Paced {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let fills = Fills::keeping(store.clone(), kept_limit);
            let body = Bytes::from(
                (0..3_000_000u32)
                    .map(|i| (i % 241) as u8)
                    .collect::<Vec<_>>(),
            );
            let sent = body.chunks(100_000).map(Bytes::copy_from_slice).collect();
            let expect = Expect::Sha256(Digest::of(&body));
            let (open, tx) = paced_opener(Some(body.len() as u64));
            let fill = fills
                .join_or_start(expect.clone(), "oci", "up", open)
                .await
                .unwrap()
                .unwrap();
            Paced {
                _dir: dir,
                store,
                fills,
                body,
                sent,
                expect,
                fill,
                tx,
            }
        }
    }

    /// Reads from `f` until it is at `to`, counting the bytes that came as slices of `sent`.
    async fn read_to(f: &mut Follower, to: u64, sent: &[Bytes], got: &mut Vec<u8>) -> usize {
        let mut from_memory = 0;
        while f.pos < to {
            let c = tokio::time::timeout(Duration::from_secs(5), f.next())
                .await
                .expect("written bytes arrive")
                .unwrap()
                .unwrap();
            if is_one_of(&c, sent) {
                from_memory += c.len();
            }
            got.extend_from_slice(&c);
        }
        assert_eq!(f.pos, to, "read past {to}");
        from_memory
    }

    fn kept_bytes(fill: &Fill) -> u64 {
        let p = fill.progress.borrow();
        p.recent.iter().map(|(_, c)| c.len() as u64).sum()
    }

    /// A follower keeping up is sent the very buffers the upstream delivered; one that fell
    /// more than RECENT_BYTES behind reads the temp file back, then catches up into the
    /// kept chunks; the last byte waits for the digest either way; both get the exact body,
    /// and the fill lets go of its buffers when it is over.
    #[tokio::test]
    async fn a_follower_in_step_is_sent_the_received_buffers_one_far_behind_reads_the_file() {
        let p = Paced::start(KEPT_LIMIT).await;
        let len = p.body.len() as u64;
        let mut lead = p.fill.follow(0, None);
        let mut behind = p.fill.follow(0, None);
        let mut got = Vec::new();
        let mut at = 0;
        for chunk in &p.sent {
            p.tx.send(chunk.clone()).unwrap();
            // The last byte waits for the digest.
            at = (at + chunk.len() as u64).min(len - 1);
            let n = at - lead.pos;
            let from_memory = read_to(&mut lead, at, &p.sent, &mut got).await;
            assert_eq!(
                from_memory as u64, n,
                "at {at}: a copy, not the received buffer"
            );
        }
        let kept = kept_bytes(&p.fill);
        assert!(
            (RECENT_BYTES..RECENT_BYTES + 100_000).contains(&kept),
            "{kept} bytes kept in memory"
        );
        assert_eq!(p.fills.kept.used.load(Ordering::Acquire), kept);

        // The one behind starts from the file and ends in the kept chunks, the fill still
        // running; neither gets the last byte before the digest is checked.
        let mut rest = Vec::new();
        let from_memory = read_to(&mut behind, len - 1, &p.sent, &mut rest).await as u64;
        assert!(
            (RECENT_BYTES - 100_000..=kept).contains(&from_memory),
            "{from_memory} bytes of the late part from memory"
        );
        for f in [&mut lead, &mut behind] {
            assert!(
                tokio::time::timeout(Duration::from_millis(100), f.next())
                    .await
                    .is_err(),
                "the last byte was sent before the body was verified"
            );
        }
        drop(p.tx);
        got.append(&mut read_all(lead).await.unwrap());
        assert_eq!(got, p.body);
        rest.append(&mut read_all(behind).await.unwrap());
        assert_eq!(rest, p.body);

        p.fill.settled().await;
        assert_eq!(kept_bytes(&p.fill), 0, "buffers let go");
        assert_eq!(p.fills.kept.used.load(Ordering::Acquire), 0);
        let stored = p.store.resolve(&p.expect).expect("committed");
        assert_eq!(p.store.read(&stored).unwrap(), p.body);
    }

    /// All fills together keep no more than their limit, chunks past it are read from the
    /// file, and a fill nobody follows keeps nothing.
    #[tokio::test]
    async fn kept_chunks_stay_within_the_limit_and_a_fill_without_followers_keeps_none() {
        let p = Paced::start(250_000).await;
        let len = p.body.len() as u64;
        let mut f = p.fill.follow(0, None);
        let mut got = Vec::new();
        let mut from_memory = 0;
        for (i, chunk) in p.sent.iter().enumerate() {
            p.tx.send(chunk.clone()).unwrap();
            let to = ((i as u64 + 1) * 100_000).min(len - 1);
            from_memory += read_to(&mut f, to, &p.sent, &mut got).await;
            let used = p.fills.kept.used.load(Ordering::Acquire);
            assert!(used <= 250_000, "{used} bytes kept, over the limit");
        }
        // Two chunks fit, then one more each time the window lets go of an old one
        // (RECENT_BYTES later): 400 KB of 3 MB; the rest came from the file.
        assert!(
            (200_000..=500_000).contains(&from_memory),
            "{from_memory} bytes from memory"
        );
        drop(p.tx);
        got.append(&mut read_all(f).await.unwrap());
        assert_eq!(got, p.body);
        p.fill.settled().await;
        assert_eq!(
            p.fills.kept.used.load(Ordering::Acquire),
            0,
            "all given back"
        );
        let (store, fills) = (p.store, p.fills);

        // Nobody follows this one: it keeps nothing.
        let other = Bytes::from(vec![3u8; 1_000_000]);
        let expect = Expect::Sha256(Digest::of(&other));
        let (open, tx) = paced_opener(Some(other.len() as u64));
        let fill = fills
            .join_or_start(expect.clone(), "oci", "up", open)
            .await
            .unwrap()
            .unwrap();
        for c in other.chunks(100_000) {
            tx.send(Bytes::copy_from_slice(c)).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while fill.progress.borrow().written < 900_000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the fill writes");
        assert_eq!(kept_bytes(&fill), 0);
        assert_eq!(fills.kept.used.load(Ordering::Acquire), 0);
        drop(tx);
        fill.settled().await;
        assert!(store.resolve(&expect).is_some());
    }
}
