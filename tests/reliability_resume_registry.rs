//! Range resume against a real upstream: Debian's `docker-registry` behind a loopback TCP
//! relay that drops the connection after 1 MiB of the first GET of a large layer. sluice
//! must continue the fill with `Range: bytes=<written>-` (which the registry answers `206`)
//! and hand the client the whole, correct layer in one response.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::images::{build_large, push, PushFormat};
use common::registry::Registry;
use common::{blob_path, http_client, sha256_digest, tmp_files, within, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CUT_AFTER: usize = 1 << 20;

/// Relays loopback connections to `target`. The first connection that carries a GET of
/// `cut_path` without a `Range` header is closed after `CUT_AFTER` response bytes.
async fn relay(target: std::net::SocketAddr, cut_path: String) -> (u16, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = l.local_addr().expect("addr").port();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            tokio::spawn(pipe(client, server, cut_path.clone(), cut2.clone()));
        }
    });
    (port, cut)
}

async fn pipe(client: TcpStream, server: TcpStream, cut_path: String, cut: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let armed = Arc::new(AtomicBool::new(false));
    let armed2 = armed.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            if head.starts_with(&format!("get {cut_path} "))
                && !head.contains("\r\nrange:")
                && !cut.swap(true, Ordering::SeqCst)
            {
                armed2.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = if armed.load(Ordering::SeqCst) {
            let n = n.min(CUT_AFTER - sent);
            sent += n;
            n
        } else {
            n
        };
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if armed.load(Ordering::SeqCst) && sent >= CUT_AFTER {
            // Drop the connection mid-body (both directions).
            let _ = cw.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            break;
        }
    }
    up.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cut_between_sluice_and_docker_registry_is_resumed_with_a_range_request() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, m) = build_large(&tmp.path().join("src"), "v1", 8 << 20, 31);
    push(&layout.dir, "v1", &reg.host(), "large:v1", PushFormat::Oci);
    let manifest: serde_json::Value =
        serde_json::from_slice(&layout.blob(&m.digest)).expect("manifest JSON");
    let big = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    let want = layout.blob(&big);
    assert!(want.len() > 4 * CUT_AFTER, "layer of {} bytes", want.len());
    within(120, "resume from docker-registry", async {
        let cut_path = format!("/v2/large/blobs/{big}");
        let (port, cut) = relay(reg.addr(), cut_path.clone()).await;
        let s = Sluice::start(&format!(
            r#"[[upstream]]
name = "local"
format = "oci"
url = "http://127.0.0.1:{port}"
host = "127.0.0.1:{port}"
default = true
retries = 0
circuit_failures = 0
"#
        ));
        let r = http_client()
            .get(format!("{}/v2/large/blobs/{big}", s.base_url()))
            .send()
            .await
            .expect("GET layer");
        assert_eq!(r.status(), 200);
        let body = r
            .bytes()
            .await
            .expect("the client's body was cut although the fill resumed");
        assert!(cut.load(Ordering::SeqCst), "the relay never cut the layer");
        assert_eq!(sha256_digest(&body), big, "wrong layer bytes");
        assert!(body.as_ref() == want.as_slice());
        // The registry saw the cut GET and one ranged GET, answered 206. It logs a request
        // once its handler returns, which may be after its last bytes reached sluice.
        let statuses = || {
            let mut st: Vec<u16> = reg
                .access_lines()
                .into_iter()
                .filter(|a| a.method == "GET" && a.target == cut_path)
                .map(|a| a.status)
                .collect();
            st.sort_unstable();
            st
        };
        common::eventually(Duration::from_secs(10), || statuses().len() >= 2).await;
        assert_eq!(statuses(), vec![200, 206]);
        let m = s.metrics().await;
        assert!(
            m.lines()
                .any(|l| l.starts_with("sluice_fill_resumes_total{format=\"oci\"} 1")),
            "{m}"
        );
        s.settled().await;
        let stored = std::fs::read(blob_path(&s.data_dir(), &big)).expect("stored layer");
        assert_eq!(sha256_digest(&stored), big);
        assert!(tmp_files(&s.data_dir()).is_empty());
    })
    .await;
}
