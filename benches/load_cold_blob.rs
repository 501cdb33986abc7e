//! Load benchmark: many concurrent clients on one cold blob (SPEC §7: "1000 concurrent
//! requests, same uncached blob: exactly 1 upstream fetch; RSS < 200 MB").
//!
//! Starts an in-process upstream registry holding one blob (served at a paced rate so the
//! fill lasts long enough for every client to join it), the real `sluice` binary in front of
//! it, then N raw-socket clients that all ask for the blob at once and read it to the end.
//! Reports the upstream fetch count (must be 1), how many clients joined the fill in flight
//! (`MISS`) or came after it (`HIT`), sluice's peak RSS (`VmHWM`) and the aggregate
//! throughput delivered to the clients. Everything is on loopback and stops by itself.
//!
//! Run: `cargo bench --bench load_cold_blob` (options: `-- --clients 1000 --blob-mb 200
//! --upstream-mbps 200`). The process raises its own open-files limit to the hard limit.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Upstream {
    blob: Bytes,
    blob_digest: String,
    /// Bytes per second the blob is sent at.
    rate: u64,
    blob_gets: AtomicUsize,
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (inherited by sluice); returns it.
fn raise_nofile() -> u64 {
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7; // Linux
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls on a properly laid out struct we own.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let want = Rlimit {
            cur: r.max,
            max: r.max,
        };
        if setrlimit(RLIMIT_NOFILE, &want) == 0 {
            r.cur = r.max;
        }
    }
    r.cur
}

async fn serve_upstream(listener: TcpListener, up: Arc<Upstream>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let up = up.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let mut parts = head.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            if !path.ends_with(&format!("/blobs/{}", up.blob_digest)) {
                let body = if path == "/v2/" {
                    "{}"
                } else {
                    "{\"errors\":[]}"
                };
                let status = if path == "/v2/" {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
            if method == "GET" {
                up.blob_gets.fetch_add(1, Ordering::SeqCst);
            }
            let hdr = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                up.blob.len()
            );
            if sock.write_all(hdr.as_bytes()).await.is_err() || method == "HEAD" {
                return;
            }
            // Paced: 1 MiB at a time on a schedule of `rate` bytes per second.
            let started = Instant::now();
            let mut sent = 0u64;
            for c in up.blob.chunks(1 << 20) {
                if sock.write_all(c).await.is_err() {
                    return;
                }
                sent += c.len() as u64;
                let due = Duration::from_secs_f64(sent as f64 / up.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        });
    }
}

/// One client: a GET over its own connection, body read to EOF. Returns (status, cache
/// header, body bytes, sha256 of the body when `hash`).
async fn client(addr: SocketAddr, path: String, hash: bool) -> (u16, String, u64, Option<String>) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, "connect failed".into(), 0, None);
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, "write failed".into(), 0, None);
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let body_start;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return (0, "no head".into(), 0, None),
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body_start = i + 4;
            break;
        }
    }
    let text = String::from_utf8_lossy(&head[..body_start]).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cache = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-sluice-cache")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let mut hasher = hash.then(Sha256::new);
    let first = &head[body_start..];
    let mut n_body = first.len() as u64;
    if let Some(h) = hasher.as_mut() {
        h.update(first);
    }
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                n_body += n as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
            }
        }
    }
    let digest = hasher.map(|h| format!("sha256:{}", hex::encode(h.finalize())));
    (status, cache, n_body, digest)
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients = arg(&args, "--clients", 1000) as usize;
    let blob_mb = arg(&args, "--blob-mb", 200) as usize;
    let mbps = arg(&args, "--upstream-mbps", 200);
    let nofile = raise_nofile();
    assert!(
        nofile as usize > clients * 2 + 100,
        "open-files limit {nofile} too low for {clients} clients (each takes a socket on both ends)"
    );

    let mut blob = vec![0u8; blob_mb << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let blob = Bytes::from(blob);
    let blob_digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let up = Arc::new(Upstream {
        blob,
        blob_digest: blob_digest.clone(),
        rate: mbps * 1_000_000,
        blob_gets: AtomicUsize::new(0),
    });
    let up_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up_listener.local_addr().expect("addr");
    tokio::spawn(serve_upstream(up_listener, up.clone()));

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    let mut f = std::fs::File::create(&cfg).expect("config");
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\ndata_dir = \"{}\"\n[[upstream]]\nname = \"bench\"\nformat = \"oci\"\nurl = \"http://{up_addr}\"\ndefault = true\n",
        dir.path().join("data").display()
    )
    .expect("write config");
    drop(f);
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let pid = child.id();
    let _guard = Kill(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut up_ok = false;
    for _ in 0..100 {
        if client(addr, "/-/healthz".into(), false).await.0 == 200 {
            up_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up_ok, "sluice did not become healthy");
    let idle_rss = proc_status_kib(pid, "VmRSS:");

    let path = format!("/v2/bench/img/blobs/{blob_digest}");
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(addr, path.clone(), i == 0)))
        .collect();
    let (mut ok, mut miss, mut hit, mut bytes, mut failures) = (0, 0, 0, 0u64, Vec::new());
    for h in tasks {
        let (status, cache, n, digest) = h.await.expect("client task");
        bytes += n;
        let complete = status == 200 && n == up.blob.len() as u64;
        let right = digest.as_ref().is_none_or(|d| *d == blob_digest);
        if complete && right {
            ok += 1;
            match cache.as_str() {
                "MISS" => miss += 1,
                "HIT" => hit += 1,
                _ => {}
            }
        } else {
            failures.push(format!("{status} {cache} {n} bytes"));
        }
    }
    let wall = t.elapsed();
    let peak = proc_status_kib(pid, "VmHWM:");
    let fetches = up.blob_gets.load(Ordering::SeqCst);

    println!(
        "\nsluice load: {clients} concurrent clients, one cold {blob_mb} MiB blob (upstream paced at {mbps} MB/s), loopback\n"
    );
    println!("| what | figure |");
    println!("|---|---|");
    println!("| upstream blob fetches | {fetches} |");
    println!("| clients complete and correct | {ok} of {clients} ({miss} MISS joined the fill, {hit} HIT after it) |");
    println!("| wall time | {:.2} s |", wall.as_secs_f64());
    println!(
        "| aggregate throughput to clients | {:.0} MB/s ({:.1} GB delivered) |",
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        bytes as f64 / 1e9
    );
    println!(
        "| sluice RSS idle / peak (VmHWM) | {} MiB / {} MiB |",
        idle_rss / 1024,
        peak / 1024
    );
    println!("| open-files limit | {nofile} |");
    if !failures.is_empty() {
        println!(
            "\nfailures (first 10): {:?}",
            &failures[..failures.len().min(10)]
        );
    }
    assert_eq!(fetches, 1, "expected exactly one upstream fetch");
    assert_eq!(ok, clients, "some clients failed");
}
