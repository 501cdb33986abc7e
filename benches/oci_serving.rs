//! Benchmark: sluice serving OCI content on loopback (release build).
//!
//! Starts a minimal in-process upstream registry holding one 200 MB blob and one manifest,
//! starts the real `sluice` binary in front of it, and measures:
//! - cold blob fetch through sluice vs. the same fetch directly from the upstream;
//! - warm 200 MB blob, one stream (median of 5);
//! - warm manifest-by-tag requests/s at 32 connections (`wrk` when installed, else a
//!   built-in closed-loop client);
//! - sluice's RSS when idle and after the load.
//!
//! Run: `cargo bench --bench oci_serving` (add `-- --blob-mb 50` for a smaller blob).

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Upstream {
    blob: Bytes,
    blob_digest: String,
    manifest: Bytes,
    manifest_digest: String,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end);
                let mut parts = head.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let (status, ct, body, extra) = if path == "/v2/" {
                    (
                        "200 OK",
                        "application/json",
                        Bytes::from_static(b"{}"),
                        String::new(),
                    )
                } else if path.ends_with("/manifests/latest")
                    || path.ends_with(&format!("/manifests/{}", up.manifest_digest))
                {
                    (
                        "200 OK",
                        "application/vnd.oci.image.manifest.v1+json",
                        up.manifest.clone(),
                        format!("Docker-Content-Digest: {}\r\n", up.manifest_digest),
                    )
                } else if path.ends_with(&format!("/blobs/{}", up.blob_digest)) {
                    (
                        "200 OK",
                        "application/octet-stream",
                        up.blob.clone(),
                        String::new(),
                    )
                } else {
                    (
                        "404 Not Found",
                        "application/json",
                        Bytes::from_static(b"{\"errors\":[]}"),
                        String::new(),
                    )
                };
                let hdr = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n{extra}\r\n",
                    body.len()
                );
                if sock.write_all(hdr.as_bytes()).await.is_err() {
                    return;
                }
                if method != "HEAD" && sock.write_all(&body).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn fetch_all(client: &reqwest::Client, url: &str) -> (u64, Duration) {
    let t = Instant::now();
    let resp = client.get(url).send().await.expect("request");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let mut n = 0u64;
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        n += c.expect("body").len() as u64;
    }
    (n, t.elapsed())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wrk_rps(url: &str) -> Option<(f64, String)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "-d5s", "--latency", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    Some((rps, p99))
}

async fn builtin_rps(url: &str) -> f64 {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = client.get(&url).send().await.expect("req");
                let _ = r.bytes().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / 5.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let blob_mb: usize = args
        .iter()
        .position(|a| a == "--blob-mb")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);

    // Incompressible pseudo-random blob.
    let mut blob = vec![0u8; blob_mb << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let blob = Bytes::from(blob);
    let blob_digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob_digest}","size":{}}},"layers":[]}}"#,
        blob.len()
    ));
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    let up = Arc::new(Upstream {
        blob,
        blob_digest: blob_digest.clone(),
        manifest,
        manifest_digest,
    });

    let up_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr: SocketAddr = up_listener.local_addr().unwrap();
    tokio::spawn(serve_upstream(up_listener, up.clone()));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("sluice.toml");
    let mut f = std::fs::File::create(&cfg).unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\ndata_dir = \"{}\"\n[[upstream]]\nname = \"bench\"\nformat = \"oci\"\nurl = \"http://{up_addr}\"\ndefault = true\ntag_ttl = \"1h\"\n",
        dir.path().join("data").display()
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let pid = child.id();
    let _guard = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/-/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_rss = rss_kib(pid);

    let blob_path = format!("/v2/bench/img/blobs/{blob_digest}");
    let (n, direct) = fetch_all(&client, &format!("http://{up_addr}{blob_path}")).await;
    let (m, cold) = fetch_all(&client, &format!("{base}{blob_path}")).await;
    assert_eq!(n, m);
    let mb = n as f64 / 1e6;

    let mut warm = Vec::new();
    for _ in 0..5 {
        let (_, t) = fetch_all(&client, &format!("{base}{blob_path}")).await;
        warm.push(mb / t.as_secs_f64());
    }
    warm.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let warm_med = warm[2];

    let manifest_url = format!("{base}/v2/bench/img/manifests/latest");
    let _ = fetch_all(&client, &manifest_url).await;
    let (rps, p99, tool) = match wrk_rps(&manifest_url) {
        Some((r, p)) => (r, p, "wrk -t2 -c32 -d5s"),
        None => (
            builtin_rps(&manifest_url).await,
            "?".into(),
            "built-in client, 32 conns, 5 s",
        ),
    };
    let load_rss = rss_kib(pid);

    println!("\nsluice OCI serving benchmark ({blob_mb} MiB blob, loopback, release build)\n");
    println!("| what | figure |");
    println!("|---|---|");
    println!(
        "| direct fetch from upstream | {:.0} MB/s ({:.2} s) |",
        mb / direct.as_secs_f64(),
        direct.as_secs_f64()
    );
    println!(
        "| cold fetch through sluice | {:.0} MB/s ({:.2} s, {:.2}x direct time) |",
        mb / cold.as_secs_f64(),
        cold.as_secs_f64(),
        cold.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "| warm blob, one stream (median of 5) | {warm_med:.0} MB/s (min {:.0}, max {:.0}) |",
        warm[0], warm[4]
    );
    println!("| warm manifest by tag, 32 conns | {rps:.0} req/s, p99 {p99} ({tool}) |");
    println!(
        "| RSS idle / after load | {} MiB / {} MiB |",
        idle_rss / 1024,
        load_rss / 1024
    );
}
