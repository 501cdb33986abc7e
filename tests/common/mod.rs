//! Shared integration-test harness: runs the real `sluice` binary against a config written
//! into a private temp dir, plus helpers every test file needs (ports, HTTP client, child
//! processes with deadlines, store inspection, deterministic random bytes).
//!
//! Each test file includes this with `mod common;`; not every file uses every helper.
#![allow(dead_code)]

pub mod cargo_client;
pub mod cargo_sim;
pub mod faults;
pub mod garage;
pub mod http1;
pub mod images;
pub mod metrics;
pub mod npm_sim;
pub mod ops;
pub mod pypi_sim;
pub mod registry;
pub mod sim;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Environment variables that could route a child's loopback traffic through a proxy.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Removes proxy settings from a child's environment: test traffic stays on loopback.
pub fn no_proxy_env(cmd: &mut Command) -> &mut Command {
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// A loopback port that was free a moment ago (bind to :0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A loopback port where nothing listens and nothing can start to while this is held: the
/// local end of a connected socket. Connecting to it is refused. (A `free_port()` left
/// unused can be taken by a server of a test running alongside.)
pub struct RefusingPort {
    pub port: u16,
    _held: (TcpStream, TcpStream),
}

pub fn refusing_port() -> RefusingPort {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let near = TcpStream::connect(l.local_addr().expect("local_addr")).expect("connect");
    let (far, _) = l.accept().expect("accept");
    RefusingPort {
        port: near.local_addr().expect("local_addr").port(),
        _held: (near, far),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic, incompressible bytes (xorshift64*), fast enough for hundreds of MB.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Never zero: xorshift's fixed point.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// `len` deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

/// A reqwest client for loopback tests: no proxy, bounded connect and total time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(180))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// Minimal blocking `GET` over a raw socket: returns the status code, or `None` when the
/// server is not (yet) answering. Used for readiness polling without an async runtime.
pub fn raw_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 1024 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&got);
    let mut parts = line.split_whitespace();
    let _version = parts.next()?;
    parts.next()?.parse().ok()
}

/// The last `max_bytes` of a file, lossily decoded (for failure messages).
pub fn file_tail(path: &Path, max_bytes: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let start = b.len().saturating_sub(max_bytes);
            String::from_utf8_lossy(&b[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs a command to completion with a deadline; kills it (by its own handle) on overrun.
/// Returns the output whatever the exit status; stdout/stderr are captured.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    no_proxy_env(cmd);
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(st) => break st,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let err = t_err.join().unwrap_or_default();
                panic!(
                    "command timed out after {timeout:?}: {desc}\nstderr:\n{}",
                    String::from_utf8_lossy(&err)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Like [`run_with_timeout`] but panics unless the command succeeded.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    assert!(
        out.status.success(),
        "command failed ({}): {desc}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every regular file below `dir` (recursively), sorted; empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Files in sluice's content-addressed store: `data_dir/blobs/sha256/<2hex>/<64hex>`.
pub fn blob_files(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("blobs").join("sha256"))
}

/// Where sluice stores `digest` (`sha256:<hex>`).
pub fn blob_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    data_dir
        .join("blobs")
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Files in sluice's temp area `data_dir/tmp/`.
pub fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("tmp"))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the async `cond` every 50 ms for up to 5 s; whether it held.
pub async fn eventually_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than `secs`.
pub async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s: {what}"),
    }
}

/// Header value as a string ("" when absent).
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Asserts the headers every sluice response carries and returns `X-Sluice-Cache`.
pub fn sluice_cache_header(resp: &reqwest::Response) -> String {
    let rid = header(resp, "x-request-id");
    assert!(
        !rid.is_empty(),
        "response to {} has no X-Request-Id (status {})",
        resp.url(),
        resp.status()
    );
    let cache = header(resp, "x-sluice-cache");
    assert!(
        ["HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"].contains(&cache.as_str()),
        "response to {} has X-Sluice-Cache {cache:?} (status {})",
        resp.url(),
        resp.status()
    );
    cache
}

/// A running `sluice serve` child with its own config, data dir and log file.
pub struct Sluice {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl Sluice {
    /// Starts sluice with `[server]` and `[storage]` generated (free port, data dir in a temp
    /// dir) followed by `body` (typically the `[[upstream]]` tables).
    pub fn start(body: &str) -> Sluice {
        Self::start_with(|port, data_dir| {
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n\n\
                 [storage]\ndata_dir = \"{}\"\n\n{body}\n",
                data_dir.display()
            )
        })
    }

    /// Starts sluice with a config written entirely by `make(port, data_dir)`.
    pub fn start_with(make: impl FnOnce(u16, &Path) -> String) -> Sluice {
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("sluice.toml");
        fs::write(&config_path, make(port, &data_dir)).expect("write config");
        let log_path = dir.path().join("sluice.log");
        let mut s = Sluice {
            child: None,
            dir,
            port,
            config_path,
            log_path,
        };
        // The port was free when picked, but another test may have bound it since: move
        // to a new one (the config names it only as `127.0.0.1:<port>`) and start again.
        for _ in 0..5 {
            match s.try_spawn() {
                Ok(()) => return s,
                Err(exited) if exited.contains("Address already in use") => {
                    let new_port = free_port();
                    let text = fs::read_to_string(&s.config_path).expect("read config");
                    let moved = text.replace(
                        &format!("127.0.0.1:{}", s.port),
                        &format!("127.0.0.1:{new_port}"),
                    );
                    fs::write(&s.config_path, moved).expect("write config");
                    fs::write(&s.log_path, "").expect("truncate log");
                    s.port = new_port;
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        panic!("sluice found no free port in 5 attempts");
    }

    fn spawn(&mut self) {
        if let Err(exited) = self.try_spawn() {
            panic!("{exited}");
        }
    }

    /// Starts the process and waits until it is healthy; `Err` (with the config and the
    /// log) when it exited during startup.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        let log2 = log.try_clone().expect("clone log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        no_proxy_env(&mut cmd);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().expect("spawn sluice");
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "sluice exited during startup ({st})\nconfig:\n{}\nlog:\n{}",
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.log()
                ));
            }
            if raw_get_status(self.addr(), "/-/healthz") == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.kill();
                panic!(
                    "sluice not healthy after {timeout:?}\nconfig:\n{}\nlog:\n{log}",
                    fs::read_to_string(&self.config_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops sluice gracefully: SIGTERM to its pid, then waits up to 20 s (SIGKILL after
    /// that). Returns the exit status, `None` if it had to be killed or was not running.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // The shell's builtin `kill`: no dependency on procps being installed.
        let term = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", c.id()))
            .status();
        if term.map(|s| s.success()).unwrap_or(false) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Stops sluice gracefully ([`Sluice::stop`]) and starts it again on the same port,
    /// config and data dir. Returns the exit status of the stopped process.
    pub fn restart(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.stop();
        self.spawn();
        st
    }

    /// Kills sluice with SIGKILL (a crash: no chance to flush anything) and starts it again
    /// on the same port, config and data dir.
    pub fn crash_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`, as used in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The whole log so far (stdout and stderr of every run).
    pub fn log(&self) -> String {
        file_tail(&self.log_path, usize::MAX)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits until no fill is in flight. A client gets a fill's last byte once the body is
    /// verified, before the file is fsynced and renamed into the store: call this before
    /// looking at the disk (or at storage metrics) right after a cold response.
    pub async fn settled(&self) {
        let start = std::time::Instant::now();
        loop {
            let m = self.metrics().await;
            if metrics::sample(&m, "sluice_inflight_fills ") == 0.0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fills still in flight after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The Prometheus text from `/-/metrics`.
    pub async fn metrics(&self) -> String {
        let r = http_client()
            .get(format!("{}/-/metrics", self.base_url()))
            .send()
            .await
            .expect("GET /-/metrics");
        assert_eq!(r.status(), 200, "/-/metrics status");
        r.text().await.expect("metrics body")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sluice log ({}) tail ----\n{}\n---- end sluice log ----",
                self.log_path.display(),
                file_tail(&self.log_path, 16 * 1024)
            );
        }
        self.kill();
    }
}

/// Opens `path` for reading, with a readable panic.
pub fn open(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The body parsed as JSON, with a readable panic.
pub async fn json_body(resp: reqwest::Response) -> serde_json::Value {
    let url = resp.url().clone();
    let status = resp.status();
    let b = resp.bytes().await.expect("read body");
    serde_json::from_slice(&b).unwrap_or_else(|e| {
        panic!(
            "response from {url} ({status}) is not JSON: {e}: {}",
            String::from_utf8_lossy(&b)
        )
    })
}

/// The real `npm` CLI in `dir`, isolated from the machine's npm setup: its own userconfig
/// (pointing at `registry`) and cache, no funding/update chatter, no retries (loopback
/// upstreams answer at once), lockfiles with `resolved` URLs.
#[allow(dead_code)]
pub fn npm(dir: &Path, registry: &str, cache: &Path, args: &[&str]) -> Command {
    let rc = cache.with_extension("npmrc");
    std::fs::write(&rc, format!("registry={registry}\n")).expect("write npmrc");
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir)
        .args(args)
        .arg("--userconfig")
        .arg(&rc)
        .arg("--cache")
        .arg(cache)
        .args([
            "--no-fund",
            "--no-update-notifier",
            "--fetch-retries=0",
            "--omit-lockfile-registry-resolved=false",
        ]);
    no_proxy_env(&mut cmd);
    cmd
}

/// A minimal, valid pure-Python wheel for `name==version` in `dir`, built with Python's
/// zipfile: `(file name, bytes)`.
#[allow(dead_code)]
pub fn build_wheel(dir: &Path, name: &str, version: &str) -> (String, Vec<u8>) {
    let filename = format!("{name}-{version}-py3-none-any.whl");
    let path = dir.join(&filename);
    let script = r#"
import zipfile, sys
n, v, p = sys.argv[1], sys.argv[2], sys.argv[3]
di = f"{n}-{v}.dist-info"
files = {
    f"{n}/__init__.py": f"VERSION = '{v}'\n",
    f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {n}\nVersion: {v}\n",
    f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: sluice-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[f"{di}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{di}/RECORD,,\n"
with zipfile.ZipFile(p, "w") as z:
    for k, c in files.items():
        z.writestr(k, c)
"#;
    let ok = Command::new("python3")
        .args(["-c", script, name, version])
        .arg(&path)
        .status()
        .expect("python3")
        .success();
    assert!(ok, "building {filename}");
    (filename, std::fs::read(&path).expect("read wheel"))
}

#[allow(dead_code)]
/// Standard base64 with padding (the simulators' basic auth and npm SRI strings).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
