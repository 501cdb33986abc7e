//! Upstream fault handling, proven against the OCI simulator: bounded retries with backoff
//! for transient failures only, `Retry-After` honoured up to a cap (a `429`'s pauses the
//! whole upstream and is passed on), the per-upstream circuit
//! breaker (fail fast while open so cached copies answer at once, one probe after the
//! cool-down), and `max_stale` bounding stale-if-error.

mod common;

use std::time::{Duration, Instant};

use common::images::OCI_MANIFEST;
use common::metrics;
use common::sim::{Fault, Sim};
use common::{http_client, random_bytes, sluice_cache_header, within, Sluice};

/// sluice with the simulator as its default OCI upstream; `extra` adds upstream keys.
fn sluice_for(sim: &Sim, extra: &str) -> Sluice {
    Sluice::start(&sim.upstream_toml(&format!(
        "tag_ttl = \"1s\"\nretry_backoff = \"20ms\"\n{extra}"
    )))
}

/// Status and body of a GET (a cut body counts as an error string).
async fn get(c: &reqwest::Client, url: &str, accept: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut rb = c.get(url);
    if let Some(a) = accept {
        rb = rb.header("Accept", a);
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let cache = sluice_cache_header(&r);
    let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, cache, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_5xx_is_retried_and_the_client_never_sees_it() {
    let sim = Sim::start().await;
    let blob = random_bytes(50_000, 701);
    let digest = sim.add_blob(blob.clone());
    sim.fault(&digest, Fault::first(2, Fault::Status(503)));
    let s = sluice_for(&sim, "");
    within(30, "retried blob", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let (status, _, body) = get(&c, &url, None).await;
        assert_eq!(status, 200, "two 503s then a 200 with retries = 2");
        assert!(body == blob, "wrong bytes after retries");
        assert_eq!(sim.blob_gets(&digest), 3, "one request plus two retries");
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_upstream_retries_total{upstream=\"sim\"}"),
            2.0,
            "{m}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_and_other_4xx_are_never_retried() {
    let sim = Sim::start().await;
    let a = sim.add_blob(random_bytes(1000, 702));
    let b = sim.add_blob(random_bytes(1000, 703));
    sim.fault(&a, Fault::Status(502));
    sim.fault(&b, Fault::Status(403));
    let s = sluice_for(&sim, "retries = 3\ncircuit_failures = 0");
    within(30, "bounded retries", async {
        let c = http_client();
        let (status, _, _) = get(&c, &format!("{}/v2/app/blobs/{a}", s.base_url()), None).await;
        assert!((500..600).contains(&status), "persistent 502 → {status}");
        assert_eq!(sim.blob_gets(&a), 4, "retries = 3: four attempts, no more");
        let (status, _, body) = get(&c, &format!("{}/v2/app/blobs/{b}", s.base_url()), None).await;
        // A refusal, in Docker's format, saying why: not an opaque 502.
        assert_eq!(status, 403, "upstream 403");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("OCI error JSON");
        assert_eq!(v["errors"][0]["code"], "DENIED", "{v}");
        let msg = v["errors"][0]["message"].as_str().unwrap_or("");
        assert!(msg.contains("credentials"), "{msg}");
        assert_eq!(
            sim.blob_gets(&b),
            1,
            "a 403 is the upstream's answer: not retried"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_out_up_to_the_cap_and_not_beyond() {
    let sim = Sim::start().await;
    let a = sim.add_blob(random_bytes(1000, 704));
    let b = sim.add_blob(random_bytes(1000, 705));
    sim.fault(&a, Fault::first(1, Fault::RetryAfter(429, "1".into())));
    sim.fault(&b, Fault::RetryAfter(503, "3600".into()));
    let s = sluice_for(&sim, "retry_after_max = \"5s\"");
    within(30, "retry-after", async {
        let c = http_client();
        let t = Instant::now();
        let (status, _, _) = get(&c, &format!("{}/v2/app/blobs/{a}", s.base_url()), None).await;
        assert_eq!(status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "Retry-After: 1 not honoured ({:?})",
            t.elapsed()
        );
        assert_eq!(sim.blob_gets(&a), 2);
        let t = Instant::now();
        let (status, _, _) = get(&c, &format!("{}/v2/app/blobs/{b}", s.base_url()), None).await;
        assert!((500..600).contains(&status), "{status}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "waited {:?}",
            t.elapsed()
        );
        assert_eq!(
            sim.blob_gets(&b),
            1,
            "Retry-After beyond retry_after_max: fail now, do not retry"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_the_upstream_and_is_passed_on() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "latest", &[random_bytes(2000, 708)]);
    let limited = sim.add_blob(random_bytes(1000, 709));
    let other = sim.add_blob(random_bytes(1000, 710));
    // Failures alone never open the circuit here: only the upstream's request does.
    let s = sluice_for(&sim, "retry_after_max = \"1s\"\ncircuit_failures = 0");
    within(60, "429 pause", async {
        let c = http_client();
        let tag = format!("{}/v2/app/manifests/latest", s.base_url());
        let blob = |d: &str| format!("{}/v2/app/blobs/{d}", s.base_url());
        let (status, cache, _) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        sim.fault(
            &limited,
            Fault::first(1, Fault::RetryAfter(429, "3".into())),
        );
        // The 429 is passed on at once (3 s is over retry_after_max), with its wait.
        let t = Instant::now();
        let r = c.get(blob(&limited)).send().await.expect("GET");
        // The pause began when sluice got the 429, before this client had it.
        let paused_by = Instant::now();
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "the 429 was waited out, not passed on: {:?}",
            t.elapsed()
        );
        assert_eq!(r.status(), 429);
        let retry_after: u64 = common::header(&r, "retry-after")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((2..=3).contains(&retry_after), "Retry-After {retry_after}");
        let err = common::json_body(r).await;
        assert_eq!(err["errors"][0]["code"], "TOOMANYREQUESTS", "{err}");
        // The whole upstream is paused: another uncached blob gets the 429 without a
        // request to it, and a stale tag is served without its HEAD.
        let seen = sim.requests().len();
        let r = c.get(blob(&other)).send().await.expect("GET");
        assert_eq!(r.status(), 429);
        assert!(!common::header(&r, "retry-after").is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await; // past tag_ttl
        let (status, cache, body) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert_eq!((status, cache.as_str()), (200, "STALE"));
        assert!(body == img.manifest);
        tokio::time::sleep(Duration::from_millis(200)).await; // a revalidation would be sent
        assert_eq!(
            sim.requests().len(),
            seen,
            "upstream contacted while it asked to be left alone"
        );
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_upstream_pauses_total{upstream=\"sim\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"sim\"}"),
            1.0
        );
        // Once the wait is over (3 s after the 429 reached sluice, which was before this
        // client had it), requests go again (the fault is spent: 200).
        tokio::time::sleep_until((paused_by + Duration::from_millis(3050)).into()).await;
        let (status, _, _) = get(&c, &blob(&limited), None).await;
        assert_eq!(status, 200, "after the pause");
        assert_eq!(sim.blob_gets(&limited), 2);
        let (status, _, _) = get(&c, &blob(&other), None).await;
        assert_eq!(status, 200);
        assert_eq!(sim.blob_gets(&other), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_circuit_fails_fast_serves_stale_and_a_probe_closes_it() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "latest", &[random_bytes(2000, 706)]);
    let missing = sim.add_blob(random_bytes(1000, 707));
    let s = sluice_for(
        &sim,
        "retries = 0\ncircuit_failures = 3\ncircuit_cooldown = \"5s\"",
    );
    within(60, "circuit breaker", async {
        let c = http_client();
        let tag = format!("{}/v2/app/manifests/latest", s.base_url());
        let blob = format!("{}/v2/app/blobs/{missing}", s.base_url());
        let (status, cache, _) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        // Three consecutive failures open the circuit.
        sim.fault("/v2/", Fault::Status(503));
        for _ in 0..3 {
            let (status, _, _) = get(&c, &blob, None).await;
            assert!((500..600).contains(&status));
        }
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"sim\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_opens_total{upstream=\"sim\"}"),
            1.0
        );
        // Open: no upstream contact; the stale tag answers, the uncached blob fails fast.
        let seen = sim.requests().len();
        tokio::time::sleep(Duration::from_millis(1100)).await; // past tag_ttl
        let (status, cache, body) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert_eq!((status, cache.as_str()), (200, "STALE"));
        assert!(body == img.manifest);
        // Uncached: 503 at once, with Retry-After (seconds to the probe) and an OCI error.
        // (5 s of cool-down leave room for a slow machine between the opening and here.)
        let t = Instant::now();
        let r = c.get(&blob).send().await.expect("GET blob");
        assert!(
            t.elapsed() < Duration::from_millis(2000),
            "not failed fast: {:?}",
            t.elapsed()
        );
        assert_eq!(r.status(), 503, "an open circuit answers 503");
        let retry_after: u64 = common::header(&r, "retry-after")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((1..=4).contains(&retry_after), "Retry-After {retry_after}");
        let err = common::json_body(r).await;
        assert_eq!(err["errors"][0]["code"], "UNAVAILABLE", "{err}");
        assert_eq!(
            sim.requests().len(),
            seen,
            "upstream contacted while the circuit was open"
        );
        // After the cool-down one probe goes through; the upstream has recovered.
        sim.clear_faults();
        tokio::time::sleep(Duration::from_millis(retry_after * 1000 + 300)).await;
        let (status, _, _) = get(&c, &blob, None).await;
        assert_eq!(status, 200, "probe after the cool-down");
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"sim\"}"),
            0.0,
            "{m}"
        );
        // Closed: the stale tag is revalidated again (in the background: a stale answer,
        // then fresh ones).
        let mut caches = Vec::new();
        for _ in 0..40 {
            let (status, cache, _) = get(&c, &tag, Some(OCI_MANIFEST)).await;
            assert_eq!(status, 200);
            caches.push(cache);
            if caches.last().is_some_and(|c| c != "STALE") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(
            caches.last().map(String::as_str),
            Some("STALE"),
            "closed circuit revalidates again: {caches:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_queue_for_a_concurrency_slot_first() {
    let sim = Sim::start().await;
    let failing = sim.add_blob(random_bytes(1000, 708));
    let probe = sim.add_blob(random_bytes(1000, 709));
    let other = sim.add_blob(random_bytes(1000, 710));
    let s = sluice_for(
        &sim,
        "retries = 0\ncircuit_failures = 1\ncircuit_cooldown = \"1s\"\n\
         max_concurrent = 1\nqueue_timeout = \"20s\"",
    );
    within(60, "open circuit before the queue", async {
        let c = http_client();
        let url = |d: &str| format!("{}/v2/app/blobs/{d}", s.base_url());
        sim.fault(&failing, Fault::Status(503));
        let (status, _, _) = get(&c, &url(&failing), None).await;
        // (Failed once in a fresh-clone CI run with a status outside 5xx that was not
        // printed; not reproduced since. The status and the log say what it was next time.)
        assert!(
            (500..600).contains(&status),
            "the failure that opens the circuit: {status}\nupstream saw: {:?}\n{}",
            sim.requests()
                .iter()
                .map(|r| r.path.clone())
                .collect::<Vec<_>>(),
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The half-open probe holds the only concurrency slot: its upstream answer is held.
        let gate = common::sim::Gate::new();
        sim.fault(&probe, Fault::HoldHead(gate.clone()));
        let probe_req = tokio::spawn({
            let (c, u) = (c.clone(), url(&probe));
            async move { get(&c, &u, None).await.0 }
        });
        assert!(
            common::eventually(Duration::from_secs(10), || {
                sim.requests().iter().any(|r| r.path.contains(&probe))
            })
            .await,
            "the probe never reached the upstream"
        );
        // Refused at once with 503, not after waiting queue_timeout for the slot.
        let t = Instant::now();
        let (status, _, _) = get(&c, &url(&other), None).await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "refused only after {:?}",
            t.elapsed()
        );
        assert_eq!(status, 503);
        gate.open();
        assert_eq!(probe_req.await.expect("probe task"), 200);
        let (status, _, _) = get(&c, &url(&other), None).await;
        assert_eq!(status, 200, "the probe closed the circuit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_bounds_how_old_a_stale_tag_may_be() {
    let sim = Sim::start().await;
    sim.push_image("app", "latest", &[random_bytes(2000, 708)]);
    let s = sluice_for(&sim, "retries = 0\nmax_stale = \"5s\"");
    within(30, "max_stale", async {
        let c = http_client();
        let tag = format!("{}/v2/app/manifests/latest", s.base_url());
        let tags = format!("{}/v2/app/tags/list", s.base_url());
        assert_eq!(get(&c, &tag, Some(OCI_MANIFEST)).await.0, 200);
        assert_eq!(get(&c, &tags, None).await.0, 200);
        sim.fault("/v2/app/", Fault::Status(503));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, cache, _) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert_eq!(
            (status, cache.as_str()),
            (200, "STALE"),
            "younger than max_stale"
        );
        let (status, cache, _) = get(&c, &tags, None).await;
        assert_eq!((status, cache.as_str()), (200, "STALE"), "tag list");
        tokio::time::sleep(Duration::from_millis(4300)).await; // 5.5 s old, past max_stale (5 s)
        let (status, _, _) = get(&c, &tag, Some(OCI_MANIFEST)).await;
        assert!(
            (500..600).contains(&status),
            "a tag older than max_stale must not be served: {status}"
        );
        let (status, _, _) = get(&c, &tags, None).await;
        assert!((500..600).contains(&status), "tag list: {status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_bounds_how_old_a_stale_packument_may_be() {
    use common::npm_sim::{NpmFault, NpmSim};
    let sim = NpmSim::start().await;
    sim.publish("pkg", "1.0.0", &[]);
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n\
         metadata_ttl = \"1s\"\nretries = 0\nmax_stale = \"5s\"\n",
        sim.registry_url()
    ));
    within(30, "npm max_stale", async {
        let c = http_client();
        let url = format!("{}/npmjs/pkg", s.base_url());
        assert_eq!(get(&c, &url, None).await.0, 200);
        sim.fault("/registry/pkg", NpmFault::Status(503));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, cache, _) = get(&c, &url, None).await;
        assert_eq!(
            (status, cache.as_str()),
            (200, "STALE"),
            "younger than max_stale"
        );
        tokio::time::sleep(Duration::from_millis(4300)).await; // 5.5 s old, past max_stale (5 s)
        let (status, _, _) = get(&c, &url, None).await;
        assert!(
            (500..600).contains(&status),
            "a packument older than max_stale must not be served: {status}"
        );
    })
    .await;
}
