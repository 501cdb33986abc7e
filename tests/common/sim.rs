//! An in-process upstream OCI registry that can lie, stall, cut and demand tokens.
//!
//! A raw HTTP/1.1 server on tokio (hand-written parsing gives full control over faults)
//! serving manifests and blobs from memory. It records every request (method, path,
//! headers) so tests can count upstream traffic and check what credentials were sent.
//! Optional: Docker bearer-token auth (`/token`), and blob GETs redirected (307) to a second
//! listener reached as `localhost:PORT` — another host name than `127.0.0.1` — standing in
//! for a CDN.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::faults::{self, FaultRules, InFlight};
use super::sha256_digest;

/// How the simulator misbehaves for requests whose path contains a pattern.
#[derive(Clone, Debug)]
pub enum Fault {
    Normal,
    /// Right status and length, different bytes (digest mismatch).
    WrongBytes,
    /// [`Fault::WrongBytes`] delivered like [`Fault::Slow`]: a proxy streaming to its client
    /// as bytes arrive has sent all of them before the upstream body ends.
    WrongBytesSlow {
        chunk: usize,
        delay: Duration,
    },
    /// Full `Content-Length` announced, connection closed after half the body.
    CutMidBody,
    /// Body trickled: `chunk` bytes, `delay` between chunks.
    Slow {
        chunk: usize,
        delay: Duration,
    },
    /// Answer with this status and an OCI error body instead.
    Status(u16),
    /// Send headers and the first `after` bytes, then wait until `gate` is opened.
    Hold {
        gate: Gate,
        after: usize,
    },
    /// Send nothing, not even the status line, until `gate` is opened; then answer normally.
    HoldHead(Gate),
    /// Answer with this status and a `Retry-After` header with this value.
    RetryAfter(u16, String),
    /// The inner fault for the next `remaining` matching requests, then normal service
    /// (build with [`Fault::first`]).
    Limited {
        remaining: Arc<std::sync::atomic::AtomicUsize>,
        fault: Box<Fault>,
    },
}

faults::limited_fault!(Fault);

/// A latch a test opens to let held response bodies continue.
#[derive(Clone, Debug)]
pub struct Gate {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.tx.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Bearer-token auth in front of `/v2/`.
#[derive(Clone, Debug)]
pub struct SimAuth {
    /// The token `/token` issues and `/v2/` accepts.
    pub token: String,
    /// When set, `/token` requires HTTP basic auth with these credentials.
    pub basic: Option<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    pub auth: Option<SimAuth>,
    /// Blob GETs answer 307 to the CDN listener on `localhost:<cdn_port>`.
    pub redirect_blobs: bool,
}

/// How a simulator advertising range support answers a `Range: bytes=N-` blob request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// `206` with `Content-Range: bytes N-(len-1)/len` and those bytes.
    Honour,
    /// `200` with the whole body, as servers that ignore `Range` do.
    Ignore,
    /// `206` claiming to start one byte later than asked.
    WrongStart,
    /// `206` with the right headers and corrupted bytes.
    Corrupt,
}

/// One request as the simulator received it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// Path including any query string.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

faults::logged_request!(Req);

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        faults::header(&self.headers, name)
    }
}

#[derive(Default)]
struct Inner {
    blobs: HashMap<String, Bytes>,
    manifests: HashMap<String, (String, Bytes)>,
    tags: BTreeMap<(String, String), String>,
    faults: FaultRules<Fault>,
    ranges: Option<Ranges>,
    log: Vec<Req>,
    cdn_log: Vec<Req>,
    /// Referrers API: descriptors by subject digest (none registered: `404`, as from a
    /// registry without the API).
    referrers: HashMap<String, Vec<serde_json::Value>>,
}

struct State {
    cfg: SimConfig,
    port: u16,
    cdn_port: u16,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
    /// Responses being written (either listener).
    inflight: InFlight,
}

/// A running simulator; its listeners and connections stop when it is dropped.
pub struct Sim {
    state: Arc<State>,
}

/// What [`Sim::push_image`] created.
#[derive(Clone, Debug)]
pub struct SimImage {
    pub manifest_digest: String,
    pub manifest: Bytes,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

impl Sim {
    pub async fn start() -> Sim {
        Self::start_with(SimConfig::default()).await
    }

    pub async fn start_with(cfg: SimConfig) -> Sim {
        let main = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let cdn = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sim cdn");
        let state = Arc::new(State {
            cfg,
            port: main.local_addr().expect("addr").port(),
            cdn_port: cdn.local_addr().expect("addr").port(),
            inner: Mutex::new(Inner::default()),
            shutdown: watch::channel(false).0,
            inflight: InFlight::default(),
        });
        let st = state.clone();
        faults::spawn_listeners(
            [(main, false), (cdn, true)],
            &state.shutdown,
            move |sock, cdn| serve_conn(sock, st.clone(), cdn),
        );
        Sim { state }
    }

    pub fn port(&self) -> u16 {
        self.state.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.state.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.state.port)
    }

    /// An `[[upstream]]` table naming this simulator `sim`, the default OCI upstream;
    /// `extra` adds keys to it.
    pub fn upstream_toml(&self, extra: &str) -> String {
        format!(
            r#"[[upstream]]
name = "sim"
format = "oci"
url = "{url}"
host = "{host}"
default = true
{extra}
"#,
            url = self.url(),
            host = self.host()
        )
    }

    /// The redirect target's port (reached as `localhost:PORT`).
    pub fn cdn_port(&self) -> u16 {
        self.state.cdn_port
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("sim lock")
    }

    /// Stores a blob (any repository can fetch it); returns its digest.
    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let d = sha256_digest(&bytes);
        self.inner().blobs.insert(d.clone(), bytes);
        d
    }

    pub fn remove_blob(&self, digest: &str) {
        self.inner().blobs.remove(digest);
    }

    /// Stores a manifest document under its digest; returns the digest.
    pub fn add_manifest(&self, media_type: &str, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let d = sha256_digest(&bytes);
        self.inner()
            .manifests
            .insert(d.clone(), (media_type.to_string(), bytes));
        d
    }

    /// Points `repo:tag` at a stored manifest digest.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        self.inner()
            .tags
            .insert((repo.to_string(), tag.to_string()), digest.to_string());
    }

    /// Lists `descriptor` among the referrers of `subject`.
    pub fn add_referrer(&self, subject: &str, descriptor: serde_json::Value) {
        self.inner()
            .referrers
            .entry(subject.to_string())
            .or_default()
            .push(descriptor);
    }

    /// Stores config + layers + an OCI manifest (pretty-printed, so byte-exactness matters)
    /// and tags it `repo:tag`.
    pub fn push_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> SimImage {
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let d = self.add_blob(l.clone());
                json!({"mediaType": super::images::OCI_LAYER_TAR, "digest": d, "size": l.len()})
            })
            .collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"sim.tag": format!("{repo}:{tag}")}},
            "rootfs": {"type": "layers", "diff_ids": layer_descs.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>()},
        }))
        .expect("json");
        let config_digest = self.add_blob(config.clone());
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": super::images::OCI_MANIFEST,
            "config": {"mediaType": super::images::OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        }))
        .expect("json");
        let manifest = Bytes::from(manifest);
        let manifest_digest = self.add_manifest(super::images::OCI_MANIFEST, manifest.clone());
        self.tag(repo, tag, &manifest_digest);
        SimImage {
            manifest_digest,
            manifest,
            config_digest,
            layer_digests: layer_descs
                .iter()
                .map(|d| d["digest"].as_str().expect("digest").to_string())
                .collect(),
        }
    }

    /// From now on blob GETs advertise `Accept-Ranges: bytes` and answer `Range: bytes=N-`
    /// as `mode` says (`None`, the default: no range support, no `Accept-Ranges`).
    pub fn set_ranges(&self, mode: Option<Ranges>) {
        self.inner().ranges = mode;
    }

    /// Blob GETs for `digest` that carried a `Range` header, with its value.
    pub fn range_requests(&self, digest: &str) -> Vec<String> {
        faults::range_requests(&self.inner().log, &format!("/blobs/{digest}"))
    }

    /// From now on, requests whose path contains `pattern` get `fault` (newest rule wins).
    pub fn fault(&self, pattern: &str, fault: Fault) {
        self.inner().faults.add(pattern, fault);
    }

    pub fn clear_faults(&self) {
        self.inner().faults.clear();
    }

    /// Every request to the registry listener so far.
    pub fn requests(&self) -> Vec<Req> {
        self.inner().log.clone()
    }

    /// Every request to the redirect (CDN) listener so far.
    pub fn cdn_requests(&self) -> Vec<Req> {
        self.inner().cdn_log.clone()
    }

    /// Requests to the registry listener with `method` and a path containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        faults::count(&self.inner().log, Some(method), path_contains)
    }

    /// Blob GETs for `digest` that reached the registry listener.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count("GET", &format!("/blobs/{digest}"))
    }

    /// The most responses (head and body) that were being written at the same moment.
    pub fn peak_inflight(&self) -> usize {
        self.state.inflight.peak()
    }

    /// Requests to `/token`.
    pub fn token_requests(&self) -> usize {
        self.count("GET", "/token")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.state.shutdown.send_replace(true);
    }
}

/// A response to write, with the fault to apply to its body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    head: bool,
    fault: Fault,
}

impl Resp {
    fn new(status: u16, body: impl Into<Bytes>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            head: false,
            fault: Fault::Normal,
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    fn json(status: u16, v: serde_json::Value) -> Resp {
        Resp::new(status, serde_json::to_vec(&v).expect("json"))
            .header("Content-Type", "application/json")
    }

    fn oci_error(status: u16, code: &str, message: &str) -> Resp {
        Resp::json(
            status,
            json!({"errors": [{"code": code, "message": message, "detail": null}]}),
        )
    }
}

async fn serve_conn(sock: TcpStream, state: Arc<State>, cdn: bool) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some((req, body_len, chunked)) = read_request(&mut r).await? else {
            return Ok(());
        };
        if body_len > 0 {
            let mut sink = tokio::io::sink();
            tokio::io::copy(&mut (&mut r).take(body_len), &mut sink).await?;
        }
        let close = chunked
            || req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        {
            let mut inner = state.inner.lock().expect("sim lock");
            if cdn {
                inner.cdn_log.push(req.clone());
            } else {
                inner.log.push(req.clone());
            }
        }
        let resp = if cdn {
            route_cdn(&state, &req)
        } else {
            route(&state, &req)
        };
        let flight = state.inflight.begin();
        let written = write_resp(&mut w, resp, || flight.end()).await;
        flight.end();
        if !written? || close {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

/// Reads one request head; `None` on a clean EOF between requests.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<(Req, u64, bool)>> {
    let Some(h) = super::http1::read_head(r).await? else {
        return Ok(None);
    };
    let req = Req {
        method: h.method,
        path: h.path,
        headers: h.headers,
    };
    let len = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    Ok(Some((req, len, chunked)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes a response applying its fault; returns whether the connection may be reused.
/// Writes a response. `done` runs just before the last body chunk goes out: once a client
/// has the last byte it may start its next request at once, so "in flight" (see
/// `peak_inflight`) must end no later than that.
async fn write_resp<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    resp: Resp,
    done: impl FnOnce(),
) -> io::Result<bool> {
    if let Fault::HoldHead(gate) = &resp.fault {
        gate.wait().await;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    head.push_str("Docker-Distribution-Api-Version: registry/2.0\r\n\r\n");
    w.write_all(head.as_bytes()).await?;
    if resp.head {
        w.flush().await?;
        return Ok(true);
    }
    let corrupt = |body: &Bytes| {
        let mut v = body.to_vec();
        if !v.is_empty() {
            let mid = v.len() / 2;
            v[0] ^= 0xff;
            v[mid] ^= 0x5a;
        }
        Bytes::from(v)
    };
    let body = resp.body;
    match resp.fault {
        Fault::Normal
        | Fault::Status(_)
        | Fault::RetryAfter(..)
        | Fault::Limited { .. }
        | Fault::HoldHead(_) => {
            w.write_all(&body).await?;
        }
        Fault::WrongBytes => {
            w.write_all(&corrupt(&body)).await?;
        }
        Fault::WrongBytesSlow { chunk, delay } => {
            for c in corrupt(&body).chunks(chunk.max(1)) {
                w.write_all(c).await?;
                w.flush().await?;
                tokio::time::sleep(delay).await;
            }
        }
        Fault::CutMidBody => return faults::cut_mid_body(w, &body).await,
        Fault::Slow { chunk, delay } => faults::trickle(w, &body, chunk, delay, done).await?,
        Fault::Hold { gate, after } => {
            let after = after.min(body.len());
            w.write_all(&body[..after]).await?;
            w.flush().await?;
            gate.wait().await;
            w.write_all(&body[after..]).await?;
        }
    }
    w.flush().await?;
    Ok(true)
}

fn fault_for(state: &State, path: &str) -> Fault {
    let inner = state.inner.lock().expect("sim lock");
    inner.faults.matching(path).unwrap_or(Fault::Normal)
}

/// Splits `/v2/<name>/<kind>/<rest>` on the last `/manifests/`, `/blobs/`, `/tags/` or
/// `/referrers/`.
fn parse_v2(path: &str) -> Option<(&str, &'static str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    for (pat, kind) in [
        ("/manifests/", "manifests"),
        ("/blobs/", "blobs"),
        ("/tags/", "tags"),
        ("/referrers/", "referrers"),
    ] {
        if let Some(i) = rest.rfind(pat) {
            let name = &rest[..i];
            if !name.is_empty() {
                return Some((name, kind, &rest[i + pat.len()..]));
            }
        }
    }
    None
}

fn route(state: &State, req: &Req) -> Resp {
    let path = req.path.split('?').next().unwrap_or("");
    let head = req.method == "HEAD";
    if path == "/token" {
        return token(state, req);
    }
    if !path.starts_with("/v2") {
        return Resp::new(404, "not found");
    }
    if let Some(auth) = &state.cfg.auth {
        let want = format!("Bearer {}", auth.token);
        if req.header("authorization") != Some(want.as_str()) {
            let scope = parse_v2(path)
                .map(|(name, _, _)| format!(",scope=\"repository:{name}:pull\""))
                .unwrap_or_default();
            let mut r = Resp::oci_error(401, "UNAUTHORIZED", "authentication required").header(
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"sim\"{scope}",
                    state.port
                ),
            );
            r.head = head;
            return r;
        }
    }
    let fault = fault_for(state, &req.path);
    if let Fault::Status(code) = fault {
        let mut r = Resp::oci_error(code, "UNAVAILABLE", "simulated upstream failure");
        r.head = head;
        return r;
    }
    if let Fault::RetryAfter(code, after) = &fault {
        let mut r = Resp::oci_error(*code, "TOOMANYREQUESTS", "simulated upstream failure")
            .header("Retry-After", after.clone());
        r.head = head;
        return r;
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Resp::oci_error(405, "UNSUPPORTED", "the simulator is read-only");
    }
    if path == "/v2/" || path == "/v2" {
        let mut r = Resp::json(200, json!({}));
        r.head = head;
        return r;
    }
    let Some((name, kind, tail)) = parse_v2(path) else {
        return Resp::oci_error(404, "NAME_UNKNOWN", "no such route");
    };
    let inner = state.inner.lock().expect("sim lock");
    let mut resp = match kind {
        "manifests" => {
            let digest = if tail.starts_with("sha256:") {
                Some(tail.to_string())
            } else {
                inner
                    .tags
                    .get(&(name.to_string(), tail.to_string()))
                    .cloned()
            };
            match digest.and_then(|d| inner.manifests.get(&d).map(|m| (d, m.clone()))) {
                Some((d, (mt, bytes))) => {
                    let mut r = Resp::new(200, bytes)
                        .header("Content-Type", mt)
                        .header("Docker-Content-Digest", d.clone())
                        .header("ETag", format!("\"{d}\""));
                    r.fault = fault;
                    r
                }
                None => Resp::oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
            }
        }
        "blobs" => match inner.blobs.get(tail) {
            Some(bytes) if state.cfg.redirect_blobs && !head => Resp::new(307, Bytes::new())
                .header(
                    "Location",
                    format!(
                        "http://localhost:{}/cdn/{tail}?sig=sim-signed",
                        state.cdn_port
                    ),
                )
                .header("X-Blob-Size", bytes.len().to_string()),
            Some(bytes) => {
                let mut r = blob_resp(inner.ranges, req, bytes)
                    .header("Content-Type", "application/octet-stream")
                    .header("Docker-Content-Digest", tail.to_string());
                r.fault = fault;
                r
            }
            None => Resp::oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry"),
        },
        "referrers" => match inner.referrers.get(tail) {
            Some(descriptors) => {
                let index = json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": descriptors,
                });
                Resp::new(200, serde_json::to_vec(&index).expect("json"))
                    .header("Content-Type", "application/vnd.oci.image.index.v1+json")
            }
            None => Resp::oci_error(404, "NAME_UNKNOWN", "no such route"),
        },
        _ if tail == "list" => {
            // Sorted (the map's order); `n` and `last` paginate, with a `Link` to the rest.
            let query: HashMap<&str, &str> = req
                .path
                .split_once('?')
                .map_or("", |q| q.1)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let all: Vec<_> = inner
                .tags
                .keys()
                .filter(|(r, _)| r == name)
                .map(|(_, t)| t.clone())
                .collect();
            let after: Vec<_> = all
                .iter()
                .filter(|t| query.get("last").is_none_or(|l| t.as_str() > *l))
                .cloned()
                .collect();
            let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
            let page: Vec<_> = after
                .iter()
                .take(n.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            if all.is_empty() {
                Resp::oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
            } else {
                let r = Resp::json(200, json!({"name": name, "tags": page}));
                match (n, page.last()) {
                    (Some(n), Some(last)) if after.len() > page.len() => r.header(
                        "Link",
                        format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
                    ),
                    _ => r,
                }
            }
        }
        _ => Resp::oci_error(404, "NAME_UNKNOWN", "no such route"),
    };
    resp.head = head;
    resp
}

/// A blob's `200`, or with range support a `206` for `Range: bytes=N-` (see [`Ranges`]).
fn blob_resp(ranges: Option<Ranges>, req: &Req, bytes: &Bytes) -> Resp {
    let Some(mode) = ranges else {
        return Resp::new(200, bytes.clone());
    };
    let from = req
        .header("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n < bytes.len());
    let resp = match (from, mode) {
        (None, _) | (Some(_), Ranges::Ignore) => Resp::new(200, bytes.clone()),
        (Some(n), Ranges::Honour) => Resp::new(206, bytes.slice(n..)).header(
            "Content-Range",
            format!("bytes {n}-{}/{}", bytes.len() - 1, bytes.len()),
        ),
        (Some(n), Ranges::WrongStart) => Resp::new(206, bytes.slice(n..)).header(
            "Content-Range",
            format!("bytes {}-{}/{}", n + 1, bytes.len() - 1, bytes.len()),
        ),
        (Some(n), Ranges::Corrupt) => {
            let mut v = bytes.slice(n..).to_vec();
            for b in v.iter_mut().step_by(97) {
                *b ^= 0x5a;
            }
            Resp::new(206, v).header(
                "Content-Range",
                format!("bytes {n}-{}/{}", bytes.len() - 1, bytes.len()),
            )
        }
    };
    resp.header("Accept-Ranges", "bytes")
}

fn token(state: &State, req: &Req) -> Resp {
    let Some(auth) = &state.cfg.auth else {
        return Resp::new(404, "no auth configured");
    };
    if let Some((user, pass)) = &auth.basic {
        let want = format!(
            "Basic {}",
            super::base64(format!("{user}:{pass}").as_bytes())
        );
        if req.header("authorization") != Some(want.as_str()) {
            return Resp::json(401, json!({"details": "incorrect username or password"}))
                .header("WWW-Authenticate", "Basic realm=\"sim\"");
        }
    }
    Resp::json(
        200,
        json!({"token": auth.token, "access_token": auth.token, "expires_in": 300}),
    )
}

fn route_cdn(state: &State, req: &Req) -> Resp {
    let path = req.path.split('?').next().unwrap_or("");
    let Some(digest) = path.strip_prefix("/cdn/") else {
        return Resp::new(404, "not found");
    };
    let fault = fault_for(state, &req.path);
    if let Fault::Status(code) = fault {
        let r = Resp::new(code, "simulated CDN failure");
        // A 401 carries a challenge of the CDN's choosing (service "cdn"): a proxy must not
        // answer it with the registry's credentials.
        return match code {
            401 => r.header(
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"cdn\",scope=\"repository:cdn:pull\"",
                    state.port
                ),
            ),
            _ => r,
        };
    }
    let blob = state
        .inner
        .lock()
        .expect("sim lock")
        .blobs
        .get(digest)
        .cloned();
    match blob {
        Some(bytes) => {
            let mut r = Resp::new(200, bytes).header("Content-Type", "application/octet-stream");
            r.fault = fault;
            r.head = req.method == "HEAD";
            r
        }
        None => Resp::new(404, "no such object"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(super::super::base64(b""), "");
        assert_eq!(super::super::base64(b"f"), "Zg==");
        assert_eq!(super::super::base64(b"fo"), "Zm8=");
        assert_eq!(super::super::base64(b"foo"), "Zm9v");
        assert_eq!(super::super::base64(b"foob"), "Zm9vYg==");
        assert_eq!(super::super::base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
