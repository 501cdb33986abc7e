//! An in-process fake Cargo sparse registry for deterministic Cargo tests.
//!
//! Two listeners, like the real thing: the index (`http://127.0.0.1:P1/`: `config.json`
//! and the index files `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`) and a download host
//! reached as `localhost:P2` — another host name — named by `config.json`'s `dl`. Index
//! files carry an `ETag` and answer `304` to a matching `If-None-Match`. Crates are real
//! `.crate` archives ([`crate_file`]) that the real `cargo` can build. Faults per path
//! pattern (shared [`BodyFault`]s), and every request is logged.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::faults::{self, BodyFault, FaultRules};

/// One published version.
#[derive(Clone, Debug)]
pub struct SimCrate {
    pub name: String,
    pub version: String,
    pub bytes: Bytes,
    /// `pubtime` in the index line (RFC 3339); `None`: the line has none (older registries).
    pub pubtime: Option<String>,
    pub yanked: bool,
}

impl SimCrate {
    /// A real `.crate` of a library with no dependencies.
    pub fn new(name: &str, version: &str) -> SimCrate {
        SimCrate {
            name: name.into(),
            version: version.into(),
            bytes: crate_file(name, version).into(),
            pubtime: None,
            yanked: false,
        }
    }

    pub fn sha256(&self) -> String {
        super::sha256_digest(&self.bytes)
            .trim_start_matches("sha256:")
            .to_string()
    }

    fn index_line(&self) -> String {
        let mut v = json!({
            "name": self.name, "vers": self.version, "deps": [], "cksum": self.sha256(),
            "features": {}, "yanked": self.yanked, "v": 2,
        });
        if let Some(t) = &self.pubtime {
            v["pubtime"] = json!(t);
        }
        v.to_string()
    }
}

/// A `.crate` archive: `<name>-<version>/Cargo.toml` and `src/lib.rs`.
pub fn crate_file(name: &str, version: &str) -> Vec<u8> {
    let dir = format!("{name}-{version}");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n\n[lib]\npath = \"src/lib.rs\"\n"
    );
    let lib = format!("pub const VERSION: &str = \"{version}\";\n");
    super::npm_sim::make_tgz(&[
        (&format!("{dir}/Cargo.toml"), manifest.as_bytes()),
        (&format!("{dir}/src/lib.rs"), lib.as_bytes()),
    ])
}

/// The sparse index path of `name`.
pub fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

#[derive(Clone, Debug)]
pub struct CargoReq {
    pub method: String,
    pub path: String,
    /// Which listener: `false` index, `true` download host.
    pub dl_host: bool,
    pub headers: Vec<(String, String)>,
}

faults::logged_request!(CargoReq);

#[derive(Default)]
struct Inner {
    /// lower-case name → versions.
    crates: BTreeMap<String, Vec<SimCrate>>,
    faults: FaultRules<BodyFault>,
    log: Vec<CargoReq>,
    /// `config.json`'s `dl` with `{port}` for the download host's; `None`: the default
    /// (`http://localhost:{port}/crates`, no markers).
    dl: Option<String>,
}

struct State {
    port: u16,
    dl_port: u16,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
}

pub struct CargoSim {
    state: Arc<State>,
}

impl CargoSim {
    pub async fn start() -> CargoSim {
        let index = TcpListener::bind("127.0.0.1:0").await.expect("bind index");
        let dl = TcpListener::bind("127.0.0.1:0").await.expect("bind dl");
        let state = Arc::new(State {
            port: index.local_addr().expect("addr").port(),
            dl_port: dl.local_addr().expect("addr").port(),
            inner: Mutex::new(Inner::default()),
            shutdown: watch::channel(false).0,
        });
        let st = state.clone();
        faults::spawn_listeners(
            [(index, false), (dl, true)],
            &state.shutdown,
            move |sock, dl_host| serve(sock, st.clone(), dl_host),
        );
        CargoSim { state }
    }

    /// The index URL (what follows `sparse+` in cargo's configuration).
    pub fn index_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.state.port)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("cargo sim lock")
    }

    /// Publishes a version; returns its sha256 hex.
    pub fn publish(&self, c: SimCrate) -> String {
        let h = c.sha256();
        self.inner()
            .crates
            .entry(c.name.to_ascii_lowercase())
            .or_default()
            .push(c);
        h
    }

    /// From now on `config.json` says `dl = template` (`{port}` is the download host's).
    pub fn set_dl(&self, template: &str) {
        self.inner().dl = Some(template.to_string());
    }

    /// From now on, requests whose path contains `pattern` get `fault` (newest first).
    pub fn fault(&self, pattern: &str, fault: BodyFault) {
        self.inner().faults.add(pattern, fault);
    }

    pub fn clear_faults(&self) {
        self.inner().faults.clear();
    }

    pub fn requests(&self) -> Vec<CargoReq> {
        self.inner().log.clone()
    }

    /// Requests (either listener) whose path contains `pat`.
    pub fn count(&self, pat: &str) -> usize {
        faults::count(&self.inner().log, None, pat)
    }
}

impl Drop for CargoSim {
    fn drop(&mut self) {
        self.state.shutdown.send_replace(true);
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    fault: Option<BodyFault>,
}

impl Resp {
    fn new(status: u16, ct: &str, body: impl Into<Bytes>) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), ct.into())],
            body: body.into(),
            fault: None,
        }
    }
}

async fn serve(sock: TcpStream, state: Arc<State>, dl_host: bool) -> io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some(h) = super::http1::read_head(&mut r).await? else {
            return Ok(());
        };
        let req = CargoReq {
            method: h.method,
            path: h.path,
            dl_host,
            headers: h.headers,
        };
        state.inner.lock().expect("lock").log.push(req.clone());
        let resp = route(&state, &req);
        let head = req.method == "HEAD";
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            resp.status,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes()).await?;
        if !head && resp.status != 304 {
            match resp.fault {
                Some(BodyFault::CutMidBody) => {
                    faults::cut_mid_body(&mut w, &resp.body).await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Some(BodyFault::Slow { chunk, delay }) => {
                    faults::trickle(&mut w, &resp.body, chunk, delay, || {}).await?
                }
                _ => w.write_all(&resp.body).await?,
            }
        }
        w.flush().await?;
    }
}

fn route(state: &State, req: &CargoReq) -> Resp {
    let inner = state.inner.lock().expect("lock");
    let fault = inner.faults.matching(&req.path);
    match &fault {
        Some(BodyFault::Status(s)) => {
            return Resp::new(
                *s,
                "application/json",
                json!({"errors": [{"detail": format!("fault {s}")}]}).to_string(),
            )
        }
        Some(BodyFault::Page(ct, body)) => return Resp::new(200, ct, body.clone()),
        _ => {}
    }
    let path = req.path.split('?').next().unwrap_or("");
    if req.dl_host {
        // /crates/<name>/<version>/download, or /dl/<name>-<version>.crate (markers).
        let found = inner.crates.values().flatten().find(|c| {
            path == format!("/crates/{}/{}/download", c.name, c.version)
                || path == format!("/dl/{}-{}.crate", c.name, c.version)
        });
        let Some(c) = found else {
            return Resp::new(404, "text/plain", "no such crate\n");
        };
        let mut body = c.bytes.clone();
        if matches!(fault, Some(BodyFault::WrongBytes)) {
            body = body.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>().into();
        }
        let mut r = Resp::new(200, "application/gzip", body);
        r.fault = fault;
        return r;
    }
    if path == "/config.json" {
        let dl = inner
            .dl
            .clone()
            .unwrap_or_else(|| "http://localhost:{port}/crates".into())
            .replace("{port}", &state.dl_port.to_string());
        let api = format!("http://127.0.0.1:{}", state.port);
        return Resp::new(
            200,
            "application/json",
            json!({"dl": dl, "api": api}).to_string(),
        );
    }
    let rel = path.trim_start_matches('/');
    let name = rel.rsplit('/').next().unwrap_or("");
    let Some(versions) = inner.crates.get(name).filter(|_| index_path(name) == rel) else {
        return Resp::new(404, "text/plain", "not found\n");
    };
    let body: String = versions.iter().map(|c| c.index_line() + "\n").collect();
    let etag = format!("\"{}\"", &super::sha256_digest(body.as_bytes())[7..23]);
    if faults::header(&req.headers, "if-none-match") == Some(etag.as_str()) {
        let mut r = Resp::new(304, "text/plain", Bytes::new());
        r.headers.push(("ETag".into(), etag));
        return r;
    }
    let mut r = Resp::new(200, "text/plain", body);
    r.headers.push(("ETag".into(), etag));
    r.fault = fault;
    r
}
