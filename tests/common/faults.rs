//! The fault control every simulator (OCI, npm, PyPI) shares: fault rules (a rule applies
//! to requests whose path contains its pattern; a limited rule (`first(n, fault)`) only to
//! its next `n` matches), cut and trickled bodies, the count of responses in flight, the
//! accept loop, and counting logged requests.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A simulator's fault enum.
pub trait SimFault: Clone {
    /// For a fault that holds for a few more matches only: how many are left and the fault.
    fn limited(&self) -> Option<(&AtomicUsize, &Self)>;
}

/// `impl SimFault` and a `first(n, fault)` constructor for a fault enum with a variant
/// `Limited { remaining: Arc<AtomicUsize>, fault: Box<Self> }`.
macro_rules! limited_fault {
    ($t:ident) => {
        impl $crate::common::faults::SimFault for $t {
            fn limited(&self) -> Option<(&std::sync::atomic::AtomicUsize, &Self)> {
                match self {
                    $t::Limited { remaining, fault } => Some((remaining, fault)),
                    _ => None,
                }
            }
        }

        impl $t {
            /// `fault` for the first `n` matching requests only.
            pub fn first(n: usize, fault: $t) -> $t {
                $t::Limited {
                    remaining: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(n)),
                    fault: Box::new(fault),
                }
            }
        }
    };
}
pub(crate) use limited_fault;

/// How the npm and PyPI simulators misbehave for requests whose path contains a pattern
/// (each answers in its format: an npm error is a JSON body, a PyPI one plain text).
#[derive(Clone, Debug)]
pub enum BodyFault {
    /// Answer with this status (and the format's error body).
    Status(u16),
    /// Right status and length, different bytes.
    WrongBytes,
    /// Full `Content-Length` announced, connection closed after half the body.
    CutMidBody,
    /// Body trickled: `chunk` bytes, then `delay`, repeatedly.
    Slow { chunk: usize, delay: Duration },
    /// Answer with this status, the format's error body and a `Retry-After` header with
    /// this value.
    RetryAfter(u16, String),
    /// Answer `200` with this content type and body instead (a maintenance page, an
    /// upstream's error page sent with a success status).
    Page(&'static str, String),
    /// The inner fault for the next `remaining` matching requests, then normal service
    /// (build with [`BodyFault::first`]).
    Limited {
        remaining: std::sync::Arc<AtomicUsize>,
        fault: Box<BodyFault>,
    },
}

limited_fault!(BodyFault);

/// Fault rules by path pattern.
pub struct FaultRules<F>(Vec<(String, F)>);

impl<F> Default for FaultRules<F> {
    fn default() -> Self {
        FaultRules(Vec::new())
    }
}

impl<F: SimFault> FaultRules<F> {
    /// A rule that wins over the earlier ones.
    pub fn add(&mut self, pattern: &str, fault: F) {
        self.0.insert(0, (pattern.to_string(), fault));
    }

    /// A rule that the earlier ones win over.
    pub fn add_behind(&mut self, pattern: &str, fault: F) {
        self.0.push((pattern.to_string(), fault));
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The fault for a request to `path`: the first rule whose pattern it contains (a
    /// limited one counts this request, and gives nothing once used up); `None`: no fault.
    pub fn matching(&self, path: &str) -> Option<F> {
        let (_, f) = self.0.iter().find(|(p, _)| path.contains(p.as_str()))?;
        match f.limited() {
            Some((remaining, fault)) => remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| fault.clone()),
            None => Some(f.clone()),
        }
    }
}

/// Responses being written right now, and the most ever at once.
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// A response starts: it counts until [`Flight::end`] (or until dropped).
    pub fn begin(&self) -> Flight<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Flight {
            of: self,
            ended: AtomicBool::new(false),
        }
    }

    /// The most responses that were being written at the same moment.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// One response counted in an [`InFlight`].
pub struct Flight<'a> {
    of: &'a InFlight,
    ended: AtomicBool,
}

impl Flight<'_> {
    /// The response stops counting (the first call; later ones do nothing).
    pub fn end(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.of.now.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// Serves each listener's connections with `serve(connection, the listener's tag)` until
/// `shutdown` turns true (which also ends the connections being served).
pub fn spawn_listeners<K, F, Fut, const N: usize>(
    listeners: [(TcpListener, K); N],
    shutdown: &watch::Sender<bool>,
    serve: F,
) where
    K: Copy + Send + 'static,
    F: Fn(TcpStream, K) -> Fut + Clone + Send + 'static,
    Fut: Future + Send + 'static,
{
    for (l, tag) in listeners {
        let serve = serve.clone();
        tokio::spawn(accept_loop(l, shutdown.subscribe(), move |sock| {
            serve(sock, tag)
        }));
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: watch::Receiver<bool>, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future + Send + 'static,
{
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let conn = serve(sock);
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        _ = conn => {}
                    }
                });
            }
        }
    }
}

/// Writes the first half of `body` and lets it leave before the caller closes the
/// connection, so the peer sees a short body rather than a reset that might discard the
/// bytes. Always `Ok(false)`: the connection may not be reused.
pub async fn cut_mid_body<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<bool> {
    w.write_all(&body[..body.len() / 2]).await?;
    w.flush().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(false)
}

/// Trickles `body`: `chunk` bytes at a time, `delay` between chunks only. `done` runs just
/// before the last chunk goes out: once a client has the last byte it may send its next
/// request at once, so the response's in-flight count must not outlive it.
pub async fn trickle<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    chunk: usize,
    delay: Duration,
    done: impl FnOnce(),
) -> io::Result<()> {
    let mut done = Some(done);
    let n = body.chunks(chunk.max(1)).count();
    for (i, c) in body.chunks(chunk.max(1)).enumerate() {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        if i + 1 == n {
            if let Some(d) = done.take() {
                d();
            }
        }
        w.write_all(c).await?;
        w.flush().await?;
    }
    Ok(())
}

/// A request as a simulator logs it (implement with [`logged_request!`]).
pub trait Logged {
    fn method(&self) -> &str;
    /// Path including any query string.
    fn path(&self) -> &str;
    fn header(&self, name: &str) -> Option<&str>;
}

/// `impl Logged` for a request type with `method`, `path` and `headers` fields.
macro_rules! logged_request {
    ($t:ty) => {
        impl $crate::common::faults::Logged for $t {
            fn method(&self) -> &str {
                &self.method
            }

            fn path(&self) -> &str {
                &self.path
            }

            fn header(&self, name: &str) -> Option<&str> {
                $crate::common::faults::header(&self.headers, name)
            }
        }
    };
}
pub(crate) use logged_request;

/// The value of header `name` (any case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Requests in `log` whose path contains `pattern` (with `method`, when given).
pub fn count<R: Logged>(log: &[R], method: Option<&str>, pattern: &str) -> usize {
    log.iter()
        .filter(|r| method.is_none_or(|m| r.method() == m) && r.path().contains(pattern))
        .count()
}

/// `Range` header values of the GETs in `log` whose path contains `pattern`.
pub fn range_requests<R: Logged>(log: &[R], pattern: &str) -> Vec<String> {
    log.iter()
        .filter(|r| r.method() == "GET" && r.path().contains(pattern))
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect()
}
