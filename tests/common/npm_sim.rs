//! An in-process fake npm registry that can lie, fail and publish new versions.
//!
//! A raw HTTP/1.1 server on tokio serving packuments under `/registry/` (so the upstream URL
//! has a path prefix, as a corporate npm mirror often does) and tarballs under `/files/`
//! (a layout no client would guess: sluice must take tarball URLs from the packument).
//! Tarballs are real gzipped tars with `package/package.json`, so the real `npm` CLI can
//! install them. Every request is recorded (method, path, headers, body) so tests can count
//! upstream traffic and inspect what was forwarded. Faults for the reliability matrix: error
//! statuses (optionally with `Retry-After`, optionally for the first N requests only), cut
//! and trickled bodies, byte-range answers for resuming a cut tarball ([`NpmSim::set_ranges`]),
//! and the peak number of responses in flight ([`NpmSim::peak_inflight`]).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::faults::{self, FaultRules, InFlight};

/// How the fake misbehaves for requests whose path contains a pattern (errors as JSON).
pub type NpmFault = faults::BodyFault;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct NpmReq {
    pub method: String,
    /// Path including any query string.
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

faults::logged_request!(NpmReq);

impl NpmReq {
    pub fn header(&self, name: &str) -> Option<&str> {
        faults::header(&self.headers, name)
    }
}

/// A published version.
#[derive(Clone, Debug)]
pub struct Published {
    pub name: String,
    pub version: String,
    pub tarball: Bytes,
    /// `sha512-<base64>`.
    pub integrity: String,
    pub shasum: String,
    /// File name of the tarball (`<base>-<version>.tgz`).
    pub file: String,
}

#[derive(Clone, Debug)]
struct Version {
    tarball: Bytes,
    manifest: Value,
    /// Only `dist.shasum`, no `dist.integrity` (packages from before 2017).
    legacy: bool,
}

#[derive(Default)]
struct Inner {
    packages: BTreeMap<String, BTreeMap<String, Version>>,
    faults: FaultRules<NpmFault>,
    log: Vec<NpmReq>,
    corgi: bool,
    advisories: Value,
    clock: u64,
    /// Publish times (`time[version]`), by (name, version).
    times: BTreeMap<(String, String), String>,
    /// Tarballs advertise `Accept-Ranges: bytes` and answer `Range: bytes=N-` with a `206`.
    ranges: bool,
    /// Attestation bundles (`/-/npm/v1/attestations/<name>@<version>`), by (name, version);
    /// their versions' `dist.attestations.url` points at them.
    attestations: BTreeMap<(String, String), Value>,
    /// Tarball URLs GitHub Packages style: `/download/<name>/<version>/<sha256>`, no file
    /// name.
    github_urls: bool,
    /// What `POST /-/npm/v1/security/audits` (pnpm audit) answers.
    audit_report: Value,
}

struct State {
    port: u16,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
    inflight: InFlight,
}

/// A running fake registry; it stops when dropped.
pub struct NpmSim {
    state: Arc<State>,
}

impl NpmSim {
    pub async fn start() -> NpmSim {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind npm sim");
        let state = Arc::new(State {
            port: l.local_addr().expect("addr").port(),
            inner: Mutex::new(Inner {
                advisories: json!({}),
                audit_report: json!({"actions": [], "advisories": {}, "muted": [], "metadata": {
                    "vulnerabilities": {"info": 0, "low": 0, "moderate": 0, "high": 0, "critical": 0},
                    "dependencies": 0, "devDependencies": 0, "optionalDependencies": 0,
                    "totalDependencies": 0}}),
                ..Inner::default()
            }),
            shutdown: watch::channel(false).0,
            inflight: InFlight::default(),
        });
        let st = state.clone();
        faults::spawn_listeners([(l, ())], &state.shutdown, move |sock, ()| {
            serve_conn(sock, st.clone())
        });
        NpmSim { state }
    }

    /// The registry URL to configure as sluice's upstream (with its path prefix).
    pub fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}/registry/", self.state.port)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("npm sim lock")
    }

    /// Publishes `name@version` with `dependencies`, as a real installable tarball.
    pub fn publish(&self, name: &str, version: &str, deps: &[(&str, &str)]) -> Published {
        self.publish_with(name, version, deps, json!({}), false)
    }

    /// Like [`NpmSim::publish`] with extra manifest fields (e.g. `scripts`), and `legacy`
    /// for a version whose packument states only the sha1 `shasum`.
    pub fn publish_with(
        &self,
        name: &str,
        version: &str,
        deps: &[(&str, &str)],
        extra: Value,
        legacy: bool,
    ) -> Published {
        let deps: serde_json::Map<String, Value> = deps
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let mut manifest = json!({
            "name": name,
            "version": version,
            "description": format!("fake package {name}"),
            "main": "index.js",
            "dependencies": deps,
        });
        if let (Some(m), Some(e)) = (manifest.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let pkg_json = serde_json::to_vec_pretty(&manifest).expect("json");
        let index = format!("module.exports = {:?};\n", format!("{name}@{version}"));
        let tarball = Bytes::from(make_tgz(&[
            ("package/package.json", &pkg_json),
            ("package/index.js", index.as_bytes()),
        ]));
        let p = published(name, version, &tarball);
        let mut inner = self.inner();
        inner.clock += 1;
        inner.packages.entry(name.to_string()).or_default().insert(
            version.to_string(),
            Version {
                tarball,
                manifest,
                legacy,
            },
        );
        p
    }

    /// Sets the publish time (`time[version]`, RFC 3339) of `name@version`.
    pub fn set_time(&self, name: &str, version: &str, rfc3339: &str) {
        self.inner()
            .times
            .insert((name.to_string(), version.to_string()), rfc3339.to_string());
    }

    /// Serve abbreviated packuments (`application/vnd.npm.install-v1+json`) when asked
    /// for them; otherwise the full document is the answer to every `Accept`.
    pub fn set_corgi(&self, on: bool) {
        self.inner().corgi = on;
    }

    /// Publishes attestations for `name@version`: its `dist.attestations` points at
    /// `/-/npm/v1/attestations/<name>@<version>`, which answers `bundle`.
    pub fn set_attestations(&self, name: &str, version: &str, bundle: Value) {
        self.inner()
            .attestations
            .insert((name.to_string(), version.to_string()), bundle);
    }

    /// From now on `dist.tarball` URLs are GitHub Packages style
    /// (`/download/<name>/<version>/<sha256>`: no `.tgz` file name).
    pub fn set_github_urls(&self, on: bool) {
        self.inner().github_urls = on;
    }

    /// What `POST /-/npm/v1/security/audits` (pnpm's audit endpoint) answers.
    pub fn set_audit_report(&self, v: Value) {
        self.inner().audit_report = v;
    }

    /// What the bulk advisory endpoint answers.
    pub fn set_advisories(&self, v: Value) {
        self.inner().advisories = v;
    }

    pub fn fault(&self, pattern: &str, fault: NpmFault) {
        self.inner().faults.add_behind(pattern, fault);
    }

    pub fn clear_faults(&self) {
        self.inner().faults.clear();
    }

    /// From now on tarball GETs advertise `Accept-Ranges: bytes` and answer
    /// `Range: bytes=N-` with `206` and `Content-Range` (off, the default: plain `200`s).
    pub fn set_ranges(&self, on: bool) {
        self.inner().ranges = on;
    }

    /// `Range` header values of GETs whose path contains `path_contains`.
    pub fn range_requests(&self, path_contains: &str) -> Vec<String> {
        faults::range_requests(&self.inner().log, path_contains)
    }

    /// The most responses that were being written at the same moment. A response stops
    /// counting just before its last body chunk goes out (once a client has the last byte
    /// it may send its next request at once).
    pub fn peak_inflight(&self) -> usize {
        self.state.inflight.peak()
    }

    pub fn requests(&self) -> Vec<NpmReq> {
        self.inner().log.clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        faults::count(&self.inner().log, Some(method), path_contains)
    }

    /// The packument the fake serves for `name` (full form).
    pub fn packument(&self, name: &str) -> Option<Value> {
        let inner = self.inner();
        packument_json(&inner, self.state.port, name, false)
    }
}

impl Drop for NpmSim {
    fn drop(&mut self) {
        self.state.shutdown.send_replace(true);
    }
}

fn published(name: &str, version: &str, tarball: &Bytes) -> Published {
    let base = name.rsplit('/').next().unwrap_or(name);
    Published {
        name: name.to_string(),
        version: version.to_string(),
        integrity: format!("sha512-{}", super::base64(&Sha512::digest(tarball))),
        shasum: hex::encode(sha1::Sha1::digest(tarball)),
        file: format!("{base}-{version}.tgz"),
        tarball: tarball.clone(),
    }
}

fn packument_json(inner: &Inner, port: u16, name: &str, corgi: bool) -> Option<Value> {
    let versions = inner.packages.get(name)?;
    let mut vs = serde_json::Map::new();
    let mut time = serde_json::Map::new();
    time.insert("created".into(), json!("2020-01-01T00:00:00.000Z"));
    time.insert(
        "modified".into(),
        json!(format!("2020-01-01T00:00:{:02}.000Z", inner.clock % 60)),
    );
    let mut latest = None;
    for (v, ver) in versions {
        if let Some(t) = inner.times.get(&(name.to_string(), v.clone())) {
            time.insert(v.clone(), json!(t));
        }
        let p = published(name, v, &ver.tarball);
        let mut dist = serde_json::Map::new();
        dist.insert("shasum".into(), json!(p.shasum));
        let tarball = if inner.github_urls {
            format!(
                "http://127.0.0.1:{port}/download/{name}/{v}/{}",
                hex::encode(Sha256::digest(&ver.tarball))
            )
        } else {
            format!("http://127.0.0.1:{port}/files/{name}/-/{}", p.file)
        };
        dist.insert("tarball".into(), json!(tarball));
        if inner
            .attestations
            .contains_key(&(name.to_string(), v.clone()))
        {
            dist.insert(
                "attestations".into(),
                json!({
                    "url": format!(
                        "http://127.0.0.1:{port}/registry/-/npm/v1/attestations/{}@{v}",
                        name.replace('/', "%2f")
                    ),
                    "provenance": {"predicateType": "https://slsa.dev/provenance/v1"},
                }),
            );
        }
        if !ver.legacy {
            dist.insert("integrity".into(), json!(p.integrity));
            dist.insert(
                "signatures".into(),
                json!([{"keyid": "SHA256:fake-key", "sig": format!("MEUCIQ-fake-{name}-{v}")}]),
            );
        }
        let mut m = ver.manifest.as_object().cloned().unwrap_or_default();
        m.insert("dist".into(), Value::Object(dist));
        m.insert("_id".into(), json!(format!("{name}@{v}")));
        if corgi {
            m.retain(|k, _| {
                [
                    "name",
                    "version",
                    "dependencies",
                    "dist",
                    "bin",
                    "engines",
                    "deprecated",
                ]
                .contains(&k.as_str())
            });
        } else {
            m.insert("readme".into(), json!("# readme\n".repeat(200)));
        }
        vs.insert(v.clone(), Value::Object(m));
        time.entry(v.clone())
            .or_insert_with(|| json!("2020-01-01T00:00:00.000Z"));
        latest = Some(v.clone());
    }
    let latest = latest?;
    Some(if corgi {
        json!({
            "name": name,
            "modified": time["modified"],
            "dist-tags": {"latest": latest},
            "versions": vs,
        })
    } else {
        json!({
            "_id": name,
            "name": name,
            "dist-tags": {"latest": latest},
            "versions": vs,
            "time": time,
            "readme": "# top readme",
            "x-unknown-field": {"kept": [1, 2, 3]},
        })
    })
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    head: bool,
    fault: Option<NpmFault>,
}

impl Resp {
    fn new(status: u16, body: impl Into<Bytes>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            head: false,
            fault: None,
        }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    fn json(status: u16, v: &Value) -> Resp {
        Resp::new(status, serde_json::to_vec(v).expect("json"))
            .header("Content-Type", "application/json")
    }

    fn error(status: u16, msg: &str) -> Resp {
        Resp::json(status, &json!({"error": msg}))
    }
}

async fn serve_conn(sock: TcpStream, state: Arc<State>) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some(mut req) = read_request(&mut r).await? else {
            return Ok(());
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > 0 {
            let mut body = vec![0u8; len.min(64 << 20)];
            r.read_exact(&mut body).await?;
            req.body = Bytes::from(body);
        }
        state
            .inner
            .lock()
            .expect("npm sim lock")
            .log
            .push(req.clone());
        let resp = route(&state, &req);
        let flight = state.inflight.begin();
        let written = write_resp(&mut w, resp, || flight.end()).await;
        flight.end();
        if !written? {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<NpmReq>> {
    Ok(super::http1::read_head(r).await?.map(|h| NpmReq {
        method: h.method,
        path: h.path,
        headers: h.headers,
        body: Bytes::new(),
    }))
}

/// Writes a response applying its fault; returns whether the connection may be reused.
/// `done` runs just before the last body chunk goes out (see [`NpmSim::peak_inflight`]).
async fn write_resp<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    resp: Resp,
    done: impl FnOnce(),
) -> io::Result<bool> {
    let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
    w.write_all(head.as_bytes()).await?;
    if resp.head {
        w.flush().await?;
        return Ok(true);
    }
    let body = resp.body;
    match resp.fault {
        None
        | Some(
            NpmFault::Status(_)
            | NpmFault::RetryAfter(..)
            | NpmFault::Page(..)
            | NpmFault::Limited { .. },
        ) => {
            // One chunk: it is the last.
            done();
            w.write_all(&body).await?
        }
        Some(NpmFault::WrongBytes) => {
            let mut v = body.to_vec();
            if let Some(b) = v.last_mut() {
                *b ^= 0xff;
            }
            w.write_all(&v).await?;
        }
        Some(NpmFault::CutMidBody) => return faults::cut_mid_body(w, &body).await,
        Some(NpmFault::Slow { chunk, delay }) => {
            faults::trickle(w, &body, chunk, delay, done).await?
        }
    }
    w.flush().await?;
    Ok(true)
}

fn route(state: &State, req: &NpmReq) -> Resp {
    let (path, _query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let inner = state.inner.lock().expect("npm sim lock");
    let fault = inner.faults.matching(&req.path);
    match &fault {
        Some(NpmFault::Status(code)) => return Resp::error(*code, "simulated upstream failure"),
        Some(NpmFault::RetryAfter(code, after)) => {
            return Resp::error(*code, "simulated upstream failure")
                .header("Retry-After", after.clone())
        }
        Some(NpmFault::Page(content_type, body)) => {
            return Resp::new(200, body.clone()).header("Content-Type", *content_type)
        }
        _ => {}
    }
    let head = req.method == "HEAD";
    if let Some(file_path) = path.strip_prefix("/files/") {
        let Some((name, file)) = file_path.rsplit_once("/-/") else {
            return Resp::error(404, "no such file");
        };
        let found = inner.packages.get(name).and_then(|vs| {
            vs.iter()
                .find(|(v, ver)| published(name, v, &ver.tarball).file == file)
                .map(|(_, ver)| ver.tarball.clone())
        });
        return match found {
            Some(t) => {
                let mut r = tarball_resp(inner.ranges, req, t)
                    .header("Content-Type", "application/octet-stream");
                r.head = head;
                r.fault = fault;
                r
            }
            None => Resp::error(404, "no such file"),
        };
    }
    if let Some(rest) = path.strip_prefix("/download/") {
        // `<name>/<version>/<sha256>`, the name maybe scoped.
        let mut parts = rest.rsplitn(3, '/');
        let (sha, version, name) = (parts.next(), parts.next(), parts.next());
        let found = match (name, version, sha) {
            (Some(n), Some(v), Some(sha)) => inner
                .packages
                .get(n)
                .and_then(|vs| vs.get(v))
                .filter(|ver| hex::encode(Sha256::digest(&ver.tarball)) == sha)
                .map(|ver| ver.tarball.clone()),
            _ => None,
        };
        return match found {
            Some(t) => {
                let mut r = tarball_resp(inner.ranges, req, t)
                    .header("Content-Type", "application/octet-stream");
                r.head = head;
                r.fault = fault;
                r
            }
            None => Resp::error(404, "no such download"),
        };
    }
    let Some(api) = path.strip_prefix("/registry/") else {
        return Resp::error(404, "not under /registry/");
    };
    match (req.method.as_str(), api) {
        ("GET", "-/ping") => return Resp::json(200, &json!({})),
        ("GET", "-/npm/v1/keys") => {
            return Resp::json(
                200,
                &json!({"keys": [{"expires": null, "keyid": "SHA256:fake-key", "keytype": "ecdsa-sha2-nistp256", "scheme": "ecdsa-sha2-nistp256", "key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfake"}]}),
            )
        }
        ("GET", "-/v1/search") => {
            return Resp::json(
                200,
                &json!({"objects": [], "total": 0, "query": req.path.clone()}),
            )
        }
        ("POST", "-/npm/v1/security/advisories/bulk") => return Resp::json(200, &inner.advisories),
        ("POST", "-/npm/v1/security/audits") => return Resp::json(200, &inner.audit_report),
        ("GET", a) if a.starts_with("-/npm/v1/attestations/") => {
            let spec = a["-/npm/v1/attestations/".len()..]
                .replace("%2f", "/")
                .replace("%2F", "/");
            let found = spec
                .get(1..)
                .and_then(|s| s.rsplit_once('@'))
                .map(|(n, v)| (spec[..n.len() + 1].to_string(), v.to_string()))
                .and_then(|k| inner.attestations.get(&k));
            return match found {
                Some(b) => Resp::json(200, b),
                None => Resp::error(404, "Not found"),
            };
        }
        ("POST", "-/npm/v1/security/audits/quick") => {
            return Resp::json(200, &json!({"advisories": {}, "metadata": {}}))
        }
        ("GET" | "HEAD", _) => {}
        _ => return Resp::error(405, "the fake registry is read-only"),
    }
    let name = api.replace("%2f", "/").replace("%2F", "/");
    let wants_corgi = req
        .header("accept")
        .is_some_and(|a| a.contains("application/vnd.npm.install-v1+json"));
    let corgi = inner.corgi && wants_corgi;
    let Some(doc) = packument_json(&inner, state.port, &name, corgi) else {
        return Resp::error(404, "Not found");
    };
    let body = serde_json::to_vec(&doc).expect("json");
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..8]));
    if req.header("if-none-match") == Some(etag.as_str()) {
        return Resp::new(304, Bytes::new()).header("ETag", etag);
    }
    let ct = if corgi {
        "application/vnd.npm.install-v1+json"
    } else {
        "application/json"
    };
    let gzip = req
        .header("accept-encoding")
        .is_some_and(|v| v.contains("gzip"));
    let mut r = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).expect("gzip");
        Resp::new(200, enc.finish().expect("gzip")).header("Content-Encoding", "gzip")
    } else {
        Resp::new(200, body)
    };
    r = r.header("Content-Type", ct).header("ETag", etag);
    r.head = head;
    r.fault = fault;
    r
}

/// A tarball's `200`, or with range support a `206` for `Range: bytes=N-`.
fn tarball_resp(ranges: bool, req: &NpmReq, t: Bytes) -> Resp {
    if !ranges {
        return Resp::new(200, t);
    }
    let from = req
        .header("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n < t.len());
    let r = match from {
        Some(n) => Resp::new(206, t.slice(n..)).header(
            "Content-Range",
            format!("bytes {n}-{}/{}", t.len() - 1, t.len()),
        ),
        None => Resp::new(200, t),
    };
    r.header("Accept-Ranges", "bytes")
}

/// A gzipped ustar archive of regular files.
pub fn make_tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (path, data) in files {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"14000000000\0");
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        tar.extend_from_slice(&h);
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&tar).expect("gzip");
    enc.finish().expect("gzip")
}
