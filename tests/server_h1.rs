//! The HTTP/1 front (proxy/src/h1.rs) on the wire, with raw sockets: pipelined requests
//! are answered in order; a request the front does not take (a body, framing headers,
//! HTTP/1.0) is handed to pingora with the connection going on; a body on a GET never
//! becomes a second request; `Connection: close` closes; each path is counted.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::metrics::sample;
use common::sim::Sim;
use common::Sluice;

fn sluice_for(sim: &Sim) -> Sluice {
    let url = sim.url();
    let host = sim.host();
    Sluice::start_with(move |port, data| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\ndata_dir = \"{}\"\n[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{url}\"\nhost = \"{host}\"\ndefault = true\n",
            data.display()
        )
    })
}

/// One response read off the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Reads one response (`head_only`: the answer to a HEAD, which has no body); `None` when
/// the connection ends (or stays silent for the read timeout) before a status line.
fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> Option<Response> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if !head_only {
        if let Some(len) = headers.get("content-length") {
            body.resize(len.parse().ok()?, 0);
            r.read_exact(&mut body).ok()?;
        } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// What [`exchange`] got: the responses, what followed them, and whether sluice closed the
/// connection (rather than leaving it silent for 2 s).
struct Exchange {
    got: Vec<Response>,
    rest: Vec<u8>,
    closed: bool,
}

/// Connects, sends `parts` (300 ms apart), and reads `expect` responses (`true`: a HEAD's),
/// then whatever else arrives before the connection closes or stays silent for 2 s.
async fn exchange(addr: SocketAddr, parts: &[&'static [u8]], expect: &'static [bool]) -> Exchange {
    let parts = parts.to_vec();
    tokio::task::spawn_blocking(move || {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            (&c).write_all(part).unwrap();
        }
        let mut r = BufReader::new(c);
        let got: Vec<Response> = expect
            .iter()
            .map_while(|&head| read_response(&mut r, head))
            .collect();
        let mut rest = Vec::new();
        let closed = r.read_to_end(&mut rest).is_ok();
        Exchange { got, rest, closed }
    })
    .await
    .unwrap()
}

/// `sluice_h1_requests_total{path}` now (a metrics request counts itself as direct).
async fn h1_count(s: &Sluice, path: &str) -> f64 {
    let m = s.metrics().await;
    sample(&m, &format!("sluice_h1_requests_total{{path=\"{path}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim);
    let before = h1_count(&s, "direct").await;
    let Exchange { got, rest, closed } = exchange(
        s.addr(),
        &[b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /-/readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        &[false, true, false, false],
    )
    .await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!((got[0].status, got[0].body.as_slice()), (200, &b"ok\n"[..]));
    // A HEAD announces the length of the body it does not send: the next answer follows
    // its head directly.
    assert_eq!(got[1].status, 200);
    assert_eq!(
        got[1].headers["content-length"],
        got[2].body.len().to_string()
    );
    assert_eq!(got[2].status, 200);
    assert_eq!(
        got[2].headers["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(
        (got[3].status, got[3].body.as_slice()),
        (200, &b"ready\n"[..])
    );
    assert_eq!(got[3].headers["connection"], "close");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(closed, "closed after Connection: close");
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r.headers["x-request-id"].as_str())
        .collect();
    assert_eq!(ids.len(), 4, "one request id each");
    // The four, and the metrics request that counts them.
    assert_eq!(h1_count(&s, "direct").await - before, 5.0);
    assert_eq!(h1_count(&s, "pingora").await, 0.0);
}

/// A request with a body goes to pingora, which reads it, answers, and serves the rest of
/// the connection; a refused write closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_handed_to_pingora_and_the_connection_goes_on() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim);
    let before = h1_count(&s, "direct").await;
    let addr = s.addr();
    let got = tokio::task::spawn_blocking(move || {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut got = Vec::new();
        // One request at a time: pingora does not take pipelined requests after a body
        // (it answers, then closes).
        for req in [
            &b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /-/api/purge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PUT /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            (&c).write_all(req).unwrap();
            got.push(read_response(&mut r, false).expect("an answer"));
        }
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).ok(), Some(0), "closed after the PUT");
        got
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200, 405], "{got:?}");
    assert_eq!(got[2].body, b"ok\n");
    assert_eq!(got[3].headers["connection"], "close");
    assert_eq!(
        h1_count(&s, "direct").await - before,
        2.0,
        "the first GET and the metrics request"
    );
    assert_eq!(h1_count(&s, "pingora").await, 1.0);

    // A body that arrives in one segment with the head before it goes to pingora with it.
    let Exchange { got, closed, .. } = exchange(
        s.addr(),
        &[b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /-/api/purge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"],
        &[false, false],
    )
    .await;
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401], "{got:?}");
    assert!(closed);
    assert_eq!(h1_count(&s, "pingora").await, 2.0);

    // HTTP/1.0 is pingora's too.
    let got = exchange(s.addr(), &[b"GET /-/healthz HTTP/1.0\r\n\r\n"], &[false])
        .await
        .got;
    assert_eq!((got[0].status, got[0].body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(h1_count(&s, "pingora").await, 3.0);
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
}

/// Whatever a GET carries as its body (by length or chunked) is read as its body by
/// pingora, never as a request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_get_never_becomes_a_second_request() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim);
    // The body of each: a whole request line and an empty line, 41 bytes (0x29).
    assert_eq!("GET /v2/smuggled/manifests/x HTTP/1.1\r\n\r\n".len(), 41);
    for bytes in [
        &b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\n\r\n"[..],
        &b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n29\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"[..],
    ] {
        let Exchange { got, rest, .. } = exchange(s.addr(), &[bytes], &[false, false]).await;
        let what = String::from_utf8_lossy(bytes);
        assert_eq!(got.len(), 1, "{what:?}: {got:?}");
        assert_eq!((got[0].status, got[0].body.as_slice()), (200, &b"ok\n"[..]), "{what:?}");
        assert!(rest.is_empty(), "{what:?}: {rest:?}");
    }
    // Conflicting lengths: refused or answered once, never a second request.
    let Exchange { got, rest, .. } = exchange(
        s.addr(),
        &[b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\nGET /v2/smuggled/manifests/x HTTP/1.1\r\n\r\n"],
        &[false, false],
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(got[0].status, 200 | 400), "{got:?}");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        sim.requests().iter().all(|r| !r.path.contains("smuggled")),
        "{:?}",
        sim.requests()
    );
    let m = s.metrics().await;
    assert_eq!(
        sample(&m, "sluice_requests_total{format=\"oci\",status=\"404\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(h1_count(&s, "pingora").await, 3.0);
}

/// A head that arrives in pieces is answered once whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_in_pieces_is_answered_once_complete() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim);
    let before = h1_count(&s, "direct").await;
    let Exchange { got, closed, .. } = exchange(
        s.addr(),
        &[
            b"GET /-/heal",
            b"thz HTTP/1.1\r\nHost: x\r\n",
            b"Connection: close\r\n\r\n",
        ],
        &[false],
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].status, got[0].body.as_slice()), (200, &b"ok\n"[..]));
    assert!(closed);
    assert_eq!(h1_count(&s, "direct").await - before, 2.0, "taken directly");
    assert_eq!(h1_count(&s, "pingora").await, 0.0);
}

/// A head longer than h1 takes (16 KiB) is pingora's, which answers it as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_head_is_handed_to_pingora() {
    let sim = Sim::start().await;
    let s = sluice_for(&sim);
    let head: &'static [u8] = Box::leak(
        format!(
            "GET /-/healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(20 << 10)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let Exchange { got, .. } = exchange(s.addr(), &[head], &[false]).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].status, got[0].body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(h1_count(&s, "pingora").await, 1.0);
    // Unfinished: h1 stops buffering it past 16 KiB (pingora applies its own limit).
    let addr = s.addr();
    let held = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        let long = format!(
            "GET /-/healthz HTTP/1.1\r\nX-Long: {}",
            "a".repeat(20 << 10)
        );
        c.write_all(long.as_bytes()).unwrap();
        c
    })
    .await
    .unwrap();
    assert!(
        common::eventually_async(|| async { h1_count(&s, "pingora").await == 2.0 }).await,
        "an unfinished long head is handed over"
    );
    drop(held);
}
