//! Hostile input never crashes sluice or escapes: slow-loris clients are cut off by the
//! header deadline, over-long request lines get a 4xx, heads that are not HTTP a 400, and
//! malformed or over-size upstream documents get a clear 5xx with nothing stored.
//! (Traversal and malformed names/digests: tests/oci_edges.rs; property tests:
//! proxy/tests/properties.rs.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::sim::Sim;
use common::{http_client, random_bytes, within, Sluice};

fn sluice_for(sim: &Sim, server_extra: &str) -> Sluice {
    let url = sim.url();
    let host = sim.host();
    let extra = server_extra.to_string();
    Sluice::start_with(move |port, data| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n{extra}\n[storage]\ndata_dir = \"{}\"\n[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{url}\"\nhost = \"{host}\"\ndefault = true\n",
            data.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_client_is_cut_off_by_the_header_deadline() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim, "header_timeout = \"1s\"");
    let addr = s.addr();
    let cut_after = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
        // One header line every 200 ms, never finishing the head.
        while start.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(200));
            if c.write_all(b"X-Slow: 1\r\n").is_err() {
                return start.elapsed();
            }
            let mut b = [0u8; 64];
            match c.read(&mut b) {
                Ok(0) => return start.elapsed(),
                Ok(_) => panic!("sluice answered an unfinished request"),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return start.elapsed(),
            }
        }
        panic!("a slow-loris connection was kept open for 8 s");
    })
    .await
    .unwrap();
    assert!(
        cut_after < Duration::from_secs(4),
        "cut only after {cut_after:?}"
    );
    // Normal clients are unaffected.
    let r = http_client()
        .get(format!("{}/v2/", s.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_request_line_gets_a_4xx_or_is_refused() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim, "");
    let addr = s.addr();
    let status = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let path = format!("/v2/{}/manifests/latest", "a".repeat(2 << 20));
        let _ = c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
    .await
    .unwrap();
    assert!(
        status.is_empty() || status.contains(" 4"),
        "over-long request line answered {status:?}"
    );
    assert_eq!(
        sim.requests().len(),
        0,
        "an over-long request reached the upstream"
    );
    let r = http_client()
        .get(format!("{}/-/healthz", s.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "sluice survived");
}

/// A head that is not HTTP gets a 400 before the connection closes, not a silent close a
/// client cannot tell from a network failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_is_not_http_gets_a_400() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim, "");
    let addr = s.addr();
    for head in [
        "NOT HTTP AT ALL\r\n\r\n",
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    ] {
        let answer = tokio::task::spawn_blocking(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).to_string()
        })
        .await
        .unwrap();
        let status = answer.lines().next().unwrap_or("");
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "{head:?} answered {answer:?}"
        );
        assert!(answer.contains("bad request head"), "{answer:?}");
    }
    assert!(sim.requests().is_empty());
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == "sluice_requests_total{format=\"other\",status=\"400\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_upstream_manifests_are_5xx_and_never_stored() {
    let sim = Sim::start().await;
    let bad = sim.add_manifest(
        "application/vnd.oci.image.manifest.v1+json",
        &b"{not json"[..],
    );
    sim.tag("app", "broken", &bad);
    let big = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"annotations\":{{\"x\":\"{}\"}}}}",
        "y".repeat(8192)
    );
    let huge = sim.add_manifest(
        "application/vnd.oci.image.manifest.v1+json",
        big.into_bytes(),
    );
    sim.tag("app", "huge", &huge);
    sim.push_image("app", "ok", &[random_bytes(1000, 3)]);
    let s = sluice_for(&sim, "max_metadata_size = \"4KiB\"");
    within(30, "bad manifests", async {
        let c = http_client();
        for (tag, digest, needle) in [("broken", &bad, "not JSON"), ("huge", &huge, "limit")] {
            let r = c
                .get(format!("{}/v2/app/manifests/{tag}", s.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 502, "{tag}");
            let body: serde_json::Value = r.json().await.unwrap();
            let msg = body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(msg.contains(needle), "{tag}: {msg}");
            assert!(
                !common::blob_path(&s.data_dir(), digest).exists(),
                "{tag} was stored"
            );
        }
        let r = c
            .get(format!("{}/v2/app/manifests/ok", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a good manifest still works");
    })
    .await;
}
