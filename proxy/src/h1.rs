//! Plaintext HTTP/1.1 connections, with the requests that make up almost all of a mirror's
//! traffic answered without pingora's session: a `GET` or `HEAD` with no body.
//!
//! pingora's HTTP/1 session costs more than the rest of a cached answer (reading the head
//! into a `RequestHeader`, building a `ResponseHeader` and serialising it, per-read timers)
//! and copies a small body into its write buffer. Here a head is parsed by httparse (the
//! parser pingora uses, with its default strictness), routed, answered and counted by the
//! same code as pingora's requests ([`HttpApp::answer`], [`HttpApp::account`]), and the
//! reply written with one vectored write of head and body: the plaintext listener has no
//! write buffer ([`crate::WRITE_BUFFER`] applies to TLS), so a body is never copied.
//!
//! Anything else is handed to pingora, with the bytes already read put back in front of the
//! connection, for the rest of the connection: a method other than `GET`/`HEAD`, HTTP/1.0,
//! a request target not in origin form, any of `Content-Length`, `Transfer-Encoding`,
//! `Expect`, `Upgrade`, a second `Host` or one with userinfo, more than [`MAX_HEADERS`]
//! headers, a head over [`MAX_HEAD`] bytes, or one httparse rejects (pingora answers it
//! `400`). Requests with a body and their framing are therefore only ever read by pingora.
//! TLS connections (and anything but a TCP or Unix stream) go to pingora whole. A head
//! handed over part-read gets pingora's own `server.header_timeout` from then on.
//!
//! `sluice_h1_requests_total{path="direct"|"pingora"}` counts requests answered here and
//! connections handed over.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, IO};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::response::{Body, Reply};
use crate::server::{self, HttpApp, Incoming, SEND_CHUNK};

/// Most header fields in a head answered here (pingora takes longer heads).
pub const MAX_HEADERS: usize = 64;

/// Largest head answered here, in bytes (pingora takes longer heads, up to its own limit).
pub const MAX_HEAD: usize = 16 << 10;

/// How long a kept-alive connection waits for its next request, as on pingora's path.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// How much is read from the socket at a time.
const READ_SIZE: usize = 4 << 10;

/// The pingora application of the plaintext listeners: answers what it can and hands the
/// rest to the [`HttpApp`] it wraps.
pub struct Front {
    http: Arc<HttpApp>,
}

impl Front {
    /// Wraps the HTTP app.
    pub fn new(http: HttpApp) -> Front {
        Front {
            http: Arc::new(http),
        }
    }
}

/// A request head taken here.
struct Head {
    method: Method,
    /// Path and query, as sent.
    target: http::uri::PathAndQuery,
    headers: HeaderMap,
    /// The client asked to close after the answer (`Connection: close`).
    close: bool,
}

/// What the next bytes of a connection are.
enum Next {
    Request(Head),
    /// Not for this module: pingora reads it from the first byte still in the buffer.
    HandOff,
    /// The client closed, went idle too long, or sluice is stopping.
    Close,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let io: &dyn IO = &*stream;
        if io.get_ssl_digest().is_some() || !io.as_any().is::<L4Stream>() {
            return ServerApp::process_new(&self.http, stream, shutdown).await;
        }
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
        };
        let mut reused = false;
        loop {
            match conn.next(&self.http, shutdown, reused).await {
                Next::Request(head) => match self.serve(&mut conn, head, shutdown).await {
                    (true, true) => {}
                    // Answered, and the last: close the sending side first, as pingora
                    // does, so that the client reads the whole answer before the close.
                    (true, false) => {
                        pingora::protocols::Shutdown::shutdown(&mut *conn.stream).await;
                        return None;
                    }
                    // Cut mid-body: dropping the connection tells the client so.
                    (false, _) => return None,
                },
                Next::HandOff => {
                    metrics::counter!("sluice_h1_requests_total", "path" => "pingora").increment(1);
                    let mut stream = conn.stream.into_any().downcast::<L4Stream>().ok()?;
                    stream.rewind(&conn.buf);
                    let stream: Stream = stream;
                    return ServerApp::process_new(&self.http, stream, shutdown).await;
                }
                Next::Close => return None,
            }
            reused = true;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.http).await;
    }
}

impl Front {
    /// Answers one request: whether the answer was written whole, and whether the
    /// connection stays open for another.
    async fn serve(&self, conn: &mut Conn, head: Head, shutdown: &ShutdownWatch) -> (bool, bool) {
        static DIRECT: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        DIRECT
            .get_or_init(|| metrics::counter!("sluice_h1_requests_total", "path" => "direct"))
            .increment(1);
        let http = &self.http;
        let started = Instant::now();
        let id = http.request_id();
        let request_id = id.as_str();
        let addr = (*conn.stream).get_socket_digest();
        let peer = addr.as_ref().and_then(|d| d.peer_addr());
        let client = server::client_text(peer);
        let header = |n: HeaderName| head.headers.get(n).and_then(|v| v.to_str().ok());
        let incoming = Incoming {
            method: &head.method,
            path: head.target.path(),
            query: head.target.query(),
            range: header(http::header::RANGE),
            authorization: header(http::header::AUTHORIZATION),
            headers: &head.headers,
        };
        let (outcome, reply) = http.answer(id, incoming, peer, None, None).await;
        let keepalive = !head.close && !*shutdown.borrow();
        let (ok, sent) = write_reply(&mut conn.stream, reply, request_id, keepalive).await;
        http.account(
            &outcome,
            &head.method,
            head.target.path(),
            &client,
            request_id,
            sent,
            ok,
            started,
        );
        (ok, keepalive)
    }
}

/// A connection: the stream and what was read of it and not yet used.
struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Conn {
    /// Reads until the buffer starts with a whole head (or something to hand off), within
    /// `server.header_timeout` (at most [`KEEPALIVE`] on a `reused` connection), counted as
    /// on pingora's path: from when the connection is ready for its next request, idle
    /// time included. An idle connection closes when sluice stops.
    async fn next(&mut self, http: &HttpApp, shutdown: &ShutdownWatch, reused: bool) -> Next {
        // A kept-alive connection also waits no longer than pingora's keep-alive time.
        let limit = if reused {
            http.header_timeout().min(KEEPALIVE)
        } else {
            http.header_timeout()
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut stopping = shutdown.clone();
        loop {
            if !self.buf.is_empty() {
                match parse(&self.buf) {
                    Parsed::Complete(len, head) => {
                        let _ = self.buf.split_to(len);
                        return Next::Request(head);
                    }
                    Parsed::Partial if self.buf.len() <= MAX_HEAD => {}
                    Parsed::Partial | Parsed::Other => return Next::HandOff,
                }
            }
            let idle = self.buf.is_empty();
            if idle && *stopping.borrow() {
                return Next::Close;
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
                self.buf.reserve(READ_SIZE);
            }
            let read = tokio::select! {
                // A request already sent is read, even when sluice is stopping.
                biased;
                r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)) => r,
                _ = stopping.changed(), if idle => return Next::Close,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
                Ok(Ok(_)) => {}
                Err(_) => {
                    metrics::counter!("sluice_header_timeouts_total").increment(1);
                    return Next::Close;
                }
            }
        }
    }
}

/// What the start of the buffer holds.
enum Parsed {
    /// A head taken here, and its length.
    Complete(usize, Head),
    /// The beginning of a head.
    Partial,
    /// Something for pingora (see the module's documentation).
    Other,
}

/// Parses the head at the start of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::Other,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Parsed::Other;
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let Ok(target) = http::uri::PathAndQuery::try_from(path) else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    let mut hosts = 0;
    for f in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            return Parsed::Other;
        };
        match name {
            http::header::CONTENT_LENGTH
            | http::header::TRANSFER_ENCODING
            | http::header::EXPECT
            | http::header::UPGRADE => return Parsed::Other,
            http::header::HOST => {
                hosts += 1;
                if hosts > 1 || f.value.contains(&b'@') {
                    return Parsed::Other;
                }
            }
            http::header::CONNECTION => {
                close |= f
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            _ => {}
        }
        let Ok(value) = HeaderValue::from_bytes(f.value) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    Parsed::Complete(
        len,
        Head {
            method,
            target,
            headers,
            close,
        },
    )
}

/// Writes the reply: the head with the first (or only) slice of the body in one vectored
/// write, then the rest. Returns whether it completed and how many body bytes were sent;
/// a body that fails midway leaves the connection to be closed, short of its length or its
/// final chunk, as pingora's writer does.
async fn write_reply(
    stream: &mut Stream,
    reply: Reply,
    request_id: &str,
    keepalive: bool,
) -> (bool, u64) {
    let length = server::body_length(&reply);
    let mut head = Vec::with_capacity(512);
    write_head(&mut head, &reply, request_id, length, keepalive);
    // These never have a body, whatever the reply holds (as pingora's writer does).
    let bodyless = matches!(reply.status.as_u16(), 100..=199 | 204 | 304);
    let mut sent = 0u64;
    match reply.body {
        _ if bodyless => return (write_all(stream, &[&head]).await, 0),
        Body::Empty => return (write_all(stream, &[&head]).await, 0),
        Body::Full(b) | Body::Mapped(b) => {
            let mut off = 0;
            let mut head: &[u8] = &head;
            loop {
                let end = (off + SEND_CHUNK).min(b.len());
                if !write_all(stream, &[head, &b[off..end]]).await {
                    return (false, sent);
                }
                head = &[];
                sent += (end - off) as u64;
                off = end;
                if off == b.len() {
                    return (true, sent);
                }
            }
        }
        Body::Follow(mut f) => {
            if !write_all(stream, &[&head]).await {
                return (false, 0);
            }
            loop {
                match f.next().await {
                    Ok(Some(chunk)) => {
                        if !write_chunk(stream, &chunk, length, sent).await {
                            return (false, sent);
                        }
                        sent += chunk.len() as u64;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(request_id, error = %e, "aborting response: upstream body failed");
                        return (false, sent);
                    }
                }
            }
        }
        Body::Stream(mut st, _) => {
            use futures_util::StreamExt;
            if !write_all(stream, &[&head]).await {
                return (false, 0);
            }
            while let Some(chunk) = st.next().await {
                match chunk {
                    Ok(chunk) => {
                        if !write_chunk(stream, &chunk, length, sent).await {
                            return (false, sent);
                        }
                        sent += chunk.len() as u64;
                    }
                    Err(e) => {
                        tracing::warn!(request_id, error = %e, "aborting response: upstream body failed");
                        return (false, sent);
                    }
                }
            }
        }
    }
    // A known length must have been sent whole (pingora's writer refuses to finish short).
    let done = match length {
        Some(l) => l == sent,
        None => write_all(stream, &[b"0\r\n\r\n"]).await,
    };
    (done, sent)
}

/// One chunk of a body, framed when the body is chunked (`length` unknown). A chunk that
/// would go past the announced length is not written: the answer fails instead.
async fn write_chunk(stream: &mut Stream, chunk: &[u8], length: Option<u64>, sent: u64) -> bool {
    if chunk.is_empty() {
        return true;
    }
    if let Some(length) = length {
        return sent + chunk.len() as u64 <= length && write_all(stream, &[chunk]).await;
    }
    let size = format!("{:x}\r\n", chunk.len());
    write_all(stream, &[size.as_bytes(), chunk, b"\r\n"]).await
}

/// Writes all of `parts` with vectored writes.
async fn write_all(stream: &mut Stream, parts: &[&[u8]]) -> bool {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    while !parts.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut n = match stream.write_vectored(&slices).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        while n > 0 {
            if n >= parts[0].len() {
                n -= parts[0].len();
                parts.remove(0);
            } else {
                parts[0] = &parts[0][n..];
                n = 0;
            }
        }
    }
    stream.flush().await.is_ok()
}

/// The response head: status line, the reply's headers (from its kept head when it has
/// one), `Date`, `Connection`, and the three the server adds (`X-Request-Id`,
/// `X-Sluice-Cache`, and `Content-Length` or `Transfer-Encoding: chunked`).
fn write_head(
    out: &mut Vec<u8>,
    reply: &Reply,
    request_id: &str,
    length: Option<u64>,
    keepalive: bool,
) {
    let status = reply.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    match reply.prebuilt.as_deref().filter(|h| h.status == status) {
        Some(h) => {
            for (name, value) in h.headers.iter() {
                field(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        // As pingora's conversion does: names in lower case, and a value with a control
        // character (which could split the head) left out.
        None => {
            for (name, value) in &reply.headers {
                let value = value.as_bytes();
                if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    continue;
                }
                field(name.to_ascii_lowercase().as_bytes(), value);
            }
        }
    }
    field(
        b"date",
        pingora::protocols::http::date::get_cached_date().as_bytes(),
    );
    field(
        b"connection",
        if keepalive { b"keep-alive" } else { b"close" },
    );
    field(b"x-request-id", request_id.as_bytes());
    field(b"x-sluice-cache", reply.cache.as_str().as_bytes());
    match length {
        Some(l) => {
            let mut digits = String::with_capacity(20);
            crate::text::push_decimal(&mut digits, l);
            field(b"content-length", digits.as_bytes());
        }
        None => field(b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn head(raw: &str) -> Option<Head> {
        match parse(raw.as_bytes()) {
            Parsed::Complete(len, h) => {
                assert_eq!(len, raw.find("\r\n\r\n").unwrap() + 4);
                Some(h)
            }
            _ => None,
        }
    }

    #[test]
    fn bodyless_gets_and_heads_are_taken() {
        let h =
            head("GET /npm/left-pad?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nAccept: b\r\n\r\n")
                .expect("taken");
        assert_eq!(h.method, Method::GET);
        assert_eq!(
            (h.target.path(), h.target.query()),
            ("/npm/left-pad", Some("x=1"))
        );
        assert_eq!(h.headers.get_all("accept").iter().count(), 2);
        assert!(!h.close);
        let h = head("HEAD /v2/ HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").expect("taken");
        assert_eq!(h.method, Method::HEAD);
        assert!(h.close);
    }

    #[test]
    fn requests_with_bodies_framing_or_odd_forms_go_to_pingora() {
        for raw in [
            "POST /-/api/purge HTTP/1.1\r\nHost: a\r\n\r\n",
            "PUT /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/v2/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::Other), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(raw.as_bytes()), Parsed::Other));
    }

    #[test]
    fn an_unfinished_head_is_partial_and_pipelined_heads_are_taken_one_at_a_time() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let Parsed::Complete(len, h) = parse(two) else {
            panic!("first head")
        };
        assert_eq!(h.target.path(), "/a");
        let Parsed::Complete(_, h) = parse(&two[len..]) else {
            panic!("second head")
        };
        assert_eq!(h.target.path(), "/b");
    }

    #[test]
    fn heads_carry_the_replys_headers_and_the_servers() {
        let reply = Reply::new(
            http::StatusCode::NOT_FOUND,
            crate::response::CacheStatus::Hit,
        )
        .header("Content-Type", "application/json")
        .header("X-Split", "a\r\ninjected: 1");
        let mut out = Vec::new();
        write_head(&mut out, &reply, "abc", Some(12), false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ndate: "),
            "{text}"
        );
        assert!(!text.contains("injected"), "{text}");
        assert!(text.ends_with("\r\nconnection: close\r\nx-request-id: abc\r\nx-sluice-cache: HIT\r\ncontent-length: 12\r\n\r\n"), "{text}");
        let mut out = Vec::new();
        write_head(&mut out, &reply, "abc", None, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("connection: keep-alive\r\nx-request-id: abc\r\nx-sluice-cache: HIT\r\ntransfer-encoding: chunked\r\n\r\n"), "{text}");
    }

    /// Writes `reply` to an in-memory stream: the result and the bytes written.
    async fn written(reply: Reply) -> ((bool, u64), Vec<u8>) {
        let mut stream: Stream = Box::new(std::io::Cursor::new(Vec::new()));
        let result = write_reply(&mut stream, reply, "id", true).await;
        let cursor = stream
            .into_any()
            .downcast::<std::io::Cursor<Vec<u8>>>()
            .expect("a cursor");
        (result, cursor.into_inner())
    }

    fn streamed(status: u16, items: Vec<Result<&'static [u8], ()>>, len: Option<u64>) -> Reply {
        let items = items.into_iter().map(|i| {
            i.map(Bytes::from_static)
                .map_err(|()| crate::error::ProxyError::BadRequest {
                    code: "X",
                    message: "cut".into(),
                })
        });
        let mut r = Reply::new(
            http::StatusCode::from_u16(status).unwrap(),
            crate::response::CacheStatus::Miss,
        );
        r.body = Body::Stream(Box::pin(futures_util::stream::iter(items)), len);
        r
    }

    fn body_of(out: &[u8]) -> &[u8] {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        &out[end..]
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_or_chunks_and_cut_ones_never_finish() {
        let big = Bytes::from(vec![7u8; SEND_CHUNK * 2 + 5]);
        let mut r = Reply::new(http::StatusCode::OK, crate::response::CacheStatus::Hit);
        r.body = Body::Mapped(big.clone());
        let (result, out) = written(r).await;
        assert_eq!(result, (true, big.len() as u64));
        assert_eq!(body_of(&out), &big[..]);

        let (result, out) = written(streamed(200, vec![Ok(b"ab"), Ok(b"cde")], None)).await;
        assert_eq!(result, (true, 5));
        assert_eq!(body_of(&out), b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");
        let (result, out) = written(streamed(200, vec![Ok(b"ab"), Err(())], None)).await;
        assert_eq!(result, (false, 2));
        assert_eq!(body_of(&out), b"2\r\nab\r\n", "no final chunk");

        let (result, out) = written(streamed(200, vec![Ok(b"ab"), Ok(b"cde")], Some(5))).await;
        assert_eq!(result, (true, 5));
        assert_eq!(body_of(&out), b"abcde");
        // Short of its length, or past it: not finished, and nothing past the length.
        let (result, _) = written(streamed(200, vec![Ok(b"ab")], Some(5))).await;
        assert_eq!(result, (false, 2));
        let (result, out) = written(streamed(200, vec![Ok(b"ab"), Ok(b"cdefg")], Some(5))).await;
        assert_eq!(result, (false, 2));
        assert_eq!(body_of(&out), b"ab");
    }

    #[tokio::test]
    async fn not_modified_and_no_content_answers_carry_no_body() {
        for status in [204, 304] {
            let (result, out) = written(streamed(status, vec![Ok(b"body")], None)).await;
            assert_eq!(result, (true, 0), "{status}");
            assert_eq!(body_of(&out), b"", "{status}");
        }
    }
}
