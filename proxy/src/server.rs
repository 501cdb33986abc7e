//! The HTTP server: a pingora `HttpServerApp` that reads a request, routes it (formats,
//! health, metrics, admin API), streams the reply, and logs and counts it. On plaintext
//! listeners it gets only what the HTTP/1 front ([`crate::h1`]) hands over (requests with
//! bodies, HTTP/1.0, odd heads); the front answers bodyless `GET`/`HEAD` requests itself
//! with the same routing and bookkeeping ([`HttpApp::answer`], [`HttpApp::account`]).
//!
//! Bodies are written as they come: a stored file in ~1 MiB slices of its memory map, a
//! fill in progress chunk by chunk. When a fill fails mid-body the connection is dropped
//! without finishing the response, so the client sees a truncated body (short
//! `Content-Length` or missing final chunk), never a complete one with wrong bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use sluice_config::Role;

use crate::app::App;
use crate::client_limits::ClientLimits;
use crate::error::ProxyError;
use crate::formats;
use crate::formats::oci::{self, OciRequest};
use crate::response::{Body, CacheStatus, Reply};

/// Slice size for memory-mapped bodies (measured at or above nginx's sendfile).
pub(crate) const SEND_CHUNK: usize = 1 << 20;

/// The pingora application.
pub struct HttpApp {
    app: Arc<App>,
    /// Shared by the per-thread copies ([`HttpApp::sibling`]): one id sequence per process.
    seq: Arc<AtomicU64>,
    prefix: u32,
    /// `server.client_rate_limit`, shared by the per-thread copies.
    clients: Arc<ClientLimits>,
}

impl HttpApp {
    /// Wraps the shared state.
    pub fn new(app: Arc<App>) -> HttpApp {
        HttpApp {
            clients: Arc::new(ClientLimits::new(app.config.server.client_rate_limit)),
            app,
            seq: Arc::new(AtomicU64::new(0)),
            prefix: rand::random(),
        }
    }

    /// Another app for another listener thread, continuing the same request ids.
    pub fn sibling(&self) -> HttpApp {
        HttpApp {
            app: self.app.clone(),
            seq: self.seq.clone(),
            prefix: self.prefix,
            clients: self.clients.clone(),
        }
    }

    /// `server.header_timeout`.
    pub(crate) fn header_timeout(&self) -> Duration {
        self.app.config.server.header_timeout.get()
    }

    pub(crate) fn request_id(&self) -> RequestId {
        RequestId::new(self.prefix, self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

/// A request id: `{prefix:08x}{seq:08x}` (random per-process prefix, sequence number),
/// kept on the stack.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; 24],
    len: usize,
}

impl RequestId {
    fn new(prefix: u32, seq: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // At least 8 digits for the sequence, more once it passes 32 bits.
        let seq_digits = (16 - seq.leading_zeros() as usize / 4).max(8);
        let mut id = RequestId {
            buf: [0; 24],
            len: 8 + seq_digits,
        };
        for i in 0..8 {
            id.buf[i] = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..seq_digits {
            id.buf[8 + i] = HEX[((seq >> (4 * (seq_digits - 1 - i))) & 0xf) as usize];
        }
        id
    }

    /// The id as sent in `X-Request-Id`.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// `IP:port` of the client, as `SocketAddr`'s `Display` writes it (IPv4 without going
/// through the formatter).
pub(crate) fn client_text(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> String {
    let Some(addr) = addr else {
        return String::new();
    };
    match addr.as_inet() {
        Some(std::net::SocketAddr::V4(v4)) => {
            let mut s = String::with_capacity(21);
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                crate::text::push_decimal(&mut s, u64::from(o));
            }
            s.push(':');
            crate::text::push_decimal(&mut s, u64::from(v4.port()));
            s
        }
        _ => addr.to_string(),
    }
}

/// Which client protocol a path belongs to (metrics label, error format).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Oci,
    Npm,
    Pypi,
    Cargo,
    Ops,
    Admin,
    Ui,
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Oci => "oci",
            Kind::Npm => "npm",
            Kind::Pypi => "pypi",
            Kind::Cargo => "cargo",
            Kind::Ops => "ops",
            Kind::Admin => "admin",
            Kind::Ui => "ui",
            Kind::Other => "other",
        }
    }
}

#[async_trait]
impl HttpServerApp for HttpApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A total deadline for the request head: pingora's own read timeout is per read,
        // so a client trickling a header byte at a time would otherwise hold the
        // connection forever (slow loris).
        let deadline = self.app.config.server.header_timeout.get();
        match tokio::time::timeout(deadline, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            // A head that is not HTTP, or too large: a 400 before closing, not a silent
            // close the client cannot tell from a network failure (an I/O error gets
            // nothing: there is no one to answer).
            Ok(Err(e)) => {
                if *e.etype() == pingora::ErrorType::InvalidHTTPHeader {
                    let body =
                        Bytes::from(format!("bad request head: {}\n", truncate(&e.to_string())));
                    let _ = session.respond_error_with_body(400, body).await;
                    crate::metrics::record_response("other", 400, None, 0);
                }
                return None;
            }
            Err(_) => {
                metrics::counter!("sluice_header_timeouts_total").increment(1);
                return None;
            }
        }
        let started = Instant::now();
        let id = self.request_id();
        let request_id = id.as_str();
        let method = session.req_header().method.clone();
        let client = client_text(session.client_addr());

        // Request bodies are read only for POSTs to npm mounts (audits) and the admin API,
        // bounded; any other body (a refused write) is discarded.
        let mut body = None;
        let mut body_error = None;
        let reads = matches!(method, Method::GET | Method::HEAD);
        let mut keepalive = !*shutdown.borrow() && reads;
        let (admin_post, mounted_post) = {
            let path = session.req_header().uri.path();
            (
                method == Method::POST && path.starts_with("/-/api/"),
                method == Method::POST && self.mounted_kind(path) == Some(Kind::Npm),
            )
        };
        if !reads && !admin_post && !mounted_post {
            drain_body(&mut session).await;
        }
        if admin_post || mounted_post {
            let limit = if admin_post {
                MAX_ADMIN_BODY
            } else {
                MAX_REQUEST_BODY
            };
            match read_body(&mut session, limit).await {
                Ok(b) => {
                    body = Some(b);
                    keepalive = !*shutdown.borrow();
                }
                // Answered as an error below, never routed without its body.
                Err(e) => {
                    body_error = Some(e);
                    keepalive = false;
                }
            }
        }
        session.set_keepalive(if keepalive { Some(60) } else { None });

        // The request head is borrowed, not copied, while the handler runs.
        let req = session.req_header();
        let header = |n: http::HeaderName| req.headers.get(n).and_then(|v| v.to_str().ok());
        let incoming = Incoming {
            method: &method,
            path: req.uri.path(),
            query: req.uri.query(),
            range: header(http::header::RANGE),
            authorization: header(http::header::AUTHORIZATION),
            headers: &req.headers,
        };
        let body_error = body_error.map(|e| (e, admin_post));
        let (outcome, reply) = self
            .answer(id, incoming, session.client_addr(), body, body_error)
            .await;
        let (ok, sent) = write_reply(&mut session, reply, request_id).await;
        let path = session.req_header().uri.path();
        self.account(
            &outcome, &method, path, &client, request_id, sent, ok, started,
        );
        if !ok {
            // Dropping the session closes the connection mid-body.
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
            Err(_) => None,
        }
    }
}

/// What the bookkeeping after a response needs to know of its answer.
pub(crate) struct Outcome {
    kind: Kind,
    status: u16,
    cache: CacheStatus,
    blocked: bool,
    /// Tells an image manifest from an index, for the images-served figure.
    manifest_type: Option<String>,
}

impl HttpApp {
    /// The reply to a request whose head (and any body) was read: throttled, refused for
    /// its unreadable body (`body_error`, with whether it was an admin request), or routed;
    /// HEAD replies lose their body. Shared by pingora's sessions and [`crate::h1`].
    pub(crate) async fn answer(
        &self,
        id: RequestId,
        incoming: Incoming<'_>,
        addr: Option<&pingora::protocols::l4::socket::SocketAddr>,
        body: Option<Bytes>,
        body_error: Option<(ProxyError, bool)>,
    ) -> (Outcome, Reply) {
        let method = incoming.method;
        let path = incoming.path;
        let throttled = self.throttled(addr, path);
        let (kind, result) = match (body_error, throttled) {
            (_, Some(e)) => (self.kind_of_path(path), Err(e)),
            (Some((e, true)), _) => (Kind::Admin, Err(e)),
            // The only other bodies read are npm audits.
            (Some((e, false)), _) => (Kind::Npm, Err(e)),
            (None, None) => {
                crate::refusals::REQUEST_ID
                    .scope(id, self.route(incoming, body))
                    .await
            }
        };
        let blocked = matches!(result, Err(ProxyError::Blocked { .. }));
        let reply = match result {
            Ok(r) => r,
            Err(e) => error_reply(&e, kind, id.as_str()),
        };
        let reply = if *method == Method::HEAD {
            reply.into_head()
        } else {
            reply
        };
        let manifest_type = (kind == Kind::Oci && path.contains("/manifests/"))
            .then(|| reply.content_type().map(str::to_owned))
            .flatten();
        let outcome = Outcome {
            kind,
            status: reply.status.as_u16(),
            cache: reply.cache,
            blocked,
            manifest_type,
        };
        (outcome, reply)
    }

    /// Counts a written response (metrics, usage figures) and logs it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn account(
        &self,
        outcome: &Outcome,
        method: &Method,
        path: &str,
        client: &str,
        request_id: &str,
        sent: u64,
        ok: bool,
        started: Instant,
    ) {
        let Outcome {
            kind,
            status,
            cache,
            blocked,
            ref manifest_type,
        } = *outcome;
        // Parsed again only for the access log, when it is on.
        let log_on = crate::accesslog::enabled();
        let name = log_on.then(|| self.log_name(kind, method, path)).flatten();
        let cached_bytes = if matches!(
            cache,
            CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidated
        ) {
            sent
        } else {
            0
        };
        // Cache events count artifact and metadata answers of the formats, not API probes
        // (`/v2/`), refused writes or errors.
        let is_format = matches!(kind, Kind::Oci | Kind::Npm | Kind::Pypi | Kind::Cargo);
        let counted =
            (is_format && path != "/v2/" && status < 500 && status != 405).then(|| cache.label());
        crate::metrics::record_response(kind.label(), status, counted, cached_bytes);
        self.app.stats.record(&crate::stats::Served {
            format: kind.label(),
            get: *method == Method::GET,
            path,
            status,
            cache,
            cached_bytes,
            client,
            content_type: manifest_type.as_deref(),
            blocked,
        });
        if log_on {
            crate::accesslog::write(&crate::accesslog::Line {
                request_id,
                client: &client,
                format: kind.label(),
                method: method.as_str(),
                path,
                name: name.as_deref(),
                status,
                cache: cache.as_str(),
                bytes: sent,
                complete: ok,
                ms: started.elapsed().as_millis() as u64,
            });
        }
    }
}

impl HttpApp {
    /// The refusal of a request over its client's `client_rate_limit` (operations endpoints
    /// are never limited).
    fn throttled(
        &self,
        addr: Option<&pingora::protocols::l4::socket::SocketAddr>,
        path: &str,
    ) -> Option<ProxyError> {
        let ip = addr?.as_inet()?.ip();
        if matches!(path, "/-/healthz" | "/-/readyz" | "/-/metrics") {
            return None;
        }
        let wait = self.clients.check(ip).err()?;
        metrics::counter!("sluice_client_throttled_total", "format" => self.kind_of_path(path).label())
            .increment(1);
        Some(ProxyError::ClientThrottled {
            limit: self.clients.describe(),
            retry_after: wait.as_millis().div_ceil(1000).max(1) as u64,
        })
    }

    /// The client protocol of `path`, without routing it (for answers given before).
    fn kind_of_path(&self, path: &str) -> Kind {
        if let Some(kind) = self.mounted_kind(path) {
            kind
        } else if path.starts_with("/v2/") || path == "/v2" {
            Kind::Oci
        } else if path.starts_with("/-/api/") {
            Kind::Admin
        } else if is_ui(path) {
            Kind::Ui
        } else {
            Kind::Other
        }
    }

    async fn route(
        &self,
        inc: Incoming<'_>,
        body: Option<Bytes>,
    ) -> (Kind, Result<Reply, ProxyError>) {
        let Incoming {
            method,
            path,
            query,
            range,
            authorization,
            headers,
        } = inc;
        let app = &self.app;
        if let Some((name, rest)) = self.mounted_name(path) {
            let up = app.mounted[name].clone();
            let kind = kind_of(&up);
            if app.role_of(authorization) < Role::Read {
                return (
                    kind,
                    Err(ProxyError::Unauthorized(
                        "authentication required: send a sluice token".into(),
                    )),
                );
            }
            let req = formats::Request {
                method,
                rest,
                query,
                headers,
                body,
            };
            let result = match kind {
                Kind::Npm => formats::npm::handle(app, &up, req).await,
                Kind::Cargo => formats::cargo::handle(app, &up, req).await,
                _ => formats::pypi::handle(app, &up, req).await,
            };
            return (kind, result);
        }
        if let Some(rest) = path.strip_prefix("/v2/").or((path == "/v2").then_some("")) {
            if app.role_of(authorization) < Role::Read {
                return (
                    Kind::Oci,
                    Err(ProxyError::Unauthorized(
                        "authentication required: send a sluice token".into(),
                    )),
                );
            }
            let ns = query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "ns")
                    .map(|(_, v)| v.into_owned())
            });
            let req = OciRequest {
                method,
                rest,
                ns: ns.as_deref(),
                query,
                range,
                headers,
            };
            return (Kind::Oci, oci::handle(app, req).await);
        }
        let text = |status: StatusCode, body: &'static str| {
            Ok(Reply::new(status, CacheStatus::Bypass)
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(Body::Full(Bytes::from_static(body.as_bytes()))))
        };
        if let Some(rest) = path.strip_prefix("/-/api/") {
            return (
                Kind::Admin,
                crate::admin::handle(app, method, rest, query, authorization, headers, body).await,
            );
        }
        if is_ui(path) {
            return (
                Kind::Ui,
                crate::ui::handle(app, method, query, authorization).await,
            );
        }
        match path {
            "/-/healthz" => (Kind::Ops, text(StatusCode::OK, "ok\n")),
            "/-/readyz" => {
                let ready = app.store.writable()
                    && app
                        .store
                        .index()
                        .get(crate::store::index::Tree::Blobs, b"")
                        .is_ok();
                if ready {
                    (Kind::Ops, text(StatusCode::OK, "ready\n"))
                } else {
                    (
                        Kind::Ops,
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: store not writable or index not open\n",
                        ),
                    )
                }
            }
            "/-/metrics" => (
                Kind::Ops,
                Ok(Reply::new(StatusCode::OK, CacheStatus::Bypass)
                    .header("Content-Type", "text/plain; version=0.0.4")
                    .body(Body::Full(Bytes::from(app.metrics.render())))),
            ),
            _ => (
                Kind::Other,
                Err(ProxyError::NotFound {
                    code: "NAME_UNKNOWN",
                    message: format!("no route for {}", truncate(path)),
                }),
            ),
        }
    }
}

/// The dashboard's path ([`crate::ui`]).
fn is_ui(path: &str) -> bool {
    matches!(path, "/-/ui" | "/-/ui/")
}

/// The parts of a request that routing looks at.
pub(crate) struct Incoming<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub range: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// Largest request body read (npm audit payloads).
const MAX_REQUEST_BODY: usize = 16 << 20;

/// Largest admin API request body (a small JSON object).
const MAX_ADMIN_BODY: usize = 64 << 10;

/// Reads and discards what is left of a request body (for up to [`DRAIN_TIMEOUT`]) before
/// an error answer: closing with unread bytes makes the kernel reset the connection, and a
/// client still sending sees the reset instead of the answer.
async fn drain_body(session: &mut ServerSession) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, session.drain_request_body()).await;
}

/// Longest a refused request body is read and discarded.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole request body, up to `limit` bytes: over it, `413`; cut short or unreadable,
/// `400`.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    drain_body(session).await;
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(ProxyError::BadRequest {
                    code: "BAD_REQUEST",
                    message: format!("the request body could not be read: {e}"),
                })
            }
        }
    }
}

impl HttpApp {
    /// The package or repository a request names, for the access log: derived from the
    /// path (best effort; the OCI name keeps any upstream prefix).
    fn log_name<'p>(
        &self,
        kind: Kind,
        method: &Method,
        path: &'p str,
    ) -> Option<std::borrow::Cow<'p, str>> {
        match kind {
            Kind::Oci => oci::OciRoute::parse(path.strip_prefix("/v2/")?)
                .name()
                .map(std::borrow::Cow::Borrowed),
            Kind::Npm => formats::npm::log_name(method, self.mounted_name(path)?.1).map(Into::into),
            Kind::Pypi => formats::pypi::log_name(self.mounted_name(path)?.1).map(Into::into),
            Kind::Cargo => formats::cargo::log_name(self.mounted_name(path)?.1).map(Into::into),
            _ => None,
        }
    }

    /// `(upstream name, rest)` when `path` is below a mounted (npm/PyPI) upstream.
    fn mounted_name<'p>(&self, path: &'p str) -> Option<(&'p str, &'p str)> {
        let p = path.strip_prefix('/')?;
        let (name, rest) = p.split_once('/').unwrap_or((p, ""));
        self.app.mounted.contains_key(name).then_some((name, rest))
    }

    /// The format of the upstream mounted at the start of `path`, if one is.
    fn mounted_kind(&self, path: &str) -> Option<Kind> {
        let (name, _) = self.mounted_name(path)?;
        Some(kind_of(&self.app.mounted[name]))
    }
}

/// The client protocol of a mounted upstream (PyPI unless npm).
fn kind_of(up: &crate::upstream::Upstream) -> Kind {
    match up.cfg.format {
        sluice_config::Format::Npm => Kind::Npm,
        sluice_config::Format::Cargo => Kind::Cargo,
        _ => Kind::Pypi,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn error_reply(e: &ProxyError, kind: Kind, request_id: &str) -> Reply {
    let (ct, body) = match kind {
        Kind::Oci => ("application/json", e.oci_body(request_id)),
        Kind::Npm | Kind::Admin => ("application/json", e.npm_body(request_id)),
        Kind::Cargo => ("application/json", e.cargo_body(request_id)),
        _ => ("text/plain; charset=utf-8", e.text_body(request_id)),
    };
    let mut r = Reply::new(e.status(), CacheStatus::Bypass)
        .header("Content-Type", ct)
        .body(Body::Full(Bytes::from(body)));
    if kind == Kind::Oci {
        r = r.header("Docker-Distribution-API-Version", "registry/2.0");
    }
    match e {
        ProxyError::Unauthorized(_) => r = r.header("WWW-Authenticate", "Basic realm=\"sluice\""),
        ProxyError::Unsupported { allow, .. } => r = r.header("Allow", *allow),
        ProxyError::RangeNotSatisfiable { size } => {
            r = r.header("Content-Range", format!("bytes */{size}"))
        }
        _ => {}
    }
    if let Some(secs) = e.retry_after() {
        r = r.header("Retry-After", secs.to_string());
    }
    r
}

/// The `Content-Length` a reply is sent with; `None`: unknown, sent chunked (so that an
/// aborted body is distinguishable from a complete one, as a close-delimited body would
/// not be).
pub(crate) fn body_length(reply: &Reply) -> Option<u64> {
    match &reply.body {
        Body::Empty => reply.head_length.or(Some(0)),
        Body::Full(b) | Body::Mapped(b) => Some(b.len() as u64),
        Body::Follow(f) => f.len(),
        Body::Stream(_, len) => *len,
    }
}

/// Writes the reply; returns whether it completed and how many body bytes were sent.
async fn write_reply(session: &mut ServerSession, reply: Reply, request_id: &str) -> (bool, u64) {
    let prebuilt = reply
        .prebuilt
        .as_deref()
        .filter(|h| h.status == reply.status);
    let resp = match prebuilt {
        Some(h) => Some(h.clone()),
        None => crate::response::head_template(reply.status, &reply.headers),
    };
    let Some(mut resp) = resp else {
        return (false, 0);
    };
    // Handlers never set these three (Reply's contract), so appending is enough.
    let _ = resp.append_header("X-Request-Id", request_id);
    let _ = resp.append_header("X-Sluice-Cache", reply.cache.as_str());
    match body_length(&reply) {
        Some(l) => {
            let _ = resp.append_header("Content-Length", l.to_string());
        }
        None => {
            let _ = resp.append_header("Transfer-Encoding", "chunked");
        }
    }
    if session.write_response_header(Box::new(resp)).await.is_err() {
        return (false, 0);
    }
    let mut sent = 0u64;
    match reply.body {
        Body::Empty => {}
        Body::Full(b) => {
            sent = b.len() as u64;
            if session.write_response_body(b, true).await.is_err() {
                return (false, 0);
            }
        }
        Body::Mapped(b) => {
            let mut off = 0;
            while off < b.len() {
                let end = (off + SEND_CHUNK).min(b.len());
                if session
                    .write_response_body(b.slice(off..end), end == b.len())
                    .await
                    .is_err()
                {
                    return (false, sent);
                }
                sent += (end - off) as u64;
                off = end;
            }
        }
        Body::Follow(mut f) => loop {
            match f.next().await {
                Ok(Some(chunk)) => {
                    let n = chunk.len() as u64;
                    if session.write_response_body(chunk, false).await.is_err() {
                        return (false, sent);
                    }
                    sent += n;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(request_id, error = %e, "aborting response: upstream body failed");
                    return (false, sent);
                }
            }
        },
        Body::Stream(mut st, _) => {
            use futures_util::StreamExt;
            while let Some(chunk) = st.next().await {
                match chunk {
                    Ok(c) => {
                        let n = c.len() as u64;
                        if session.write_response_body(c, false).await.is_err() {
                            return (false, sent);
                        }
                        sent += n;
                    }
                    Err(e) => {
                        tracing::warn!(request_id, error = %e, "aborting response: upstream body failed");
                        return (false, sent);
                    }
                }
            }
        }
    }
    if session.finish_body().await.is_err() {
        return (false, sent);
    }
    (true, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_match_the_hex_format() {
        for (p, q) in [
            (0u32, 0u64),
            (0xdead_beef, 1),
            (7, 0xffff_ffff),
            (1, 1 << 32),
            (u32::MAX, u64::MAX),
        ] {
            assert_eq!(RequestId::new(p, q).as_str(), format!("{p:08x}{q:08x}"));
        }
    }

    #[test]
    fn client_text_matches_display() {
        for a in ["127.0.0.1:53160", "10.0.0.255:1", "[::1]:8080"] {
            let std: std::net::SocketAddr = a.parse().unwrap();
            let addr = pingora::protocols::l4::socket::SocketAddr::Inet(std);
            assert_eq!(client_text(Some(&addr)), std.to_string());
        }
        assert_eq!(client_text(None), "");
    }
}
