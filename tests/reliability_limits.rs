//! Per-upstream limits against the OCI simulator: `max_concurrent` bounds the requests in
//! flight upstream (a streaming body included), a request that cannot get a slot within
//! `queue_timeout` fails fast as an upstream error, and `rate_limit` paces requests.

mod common;

use std::time::{Duration, Instant};

use common::metrics;
use common::sim::{Fault, Gate, Sim};
use common::{http_client, random_bytes, within, Sluice};

fn sluice_for(sim: &Sim, extra: &str) -> Sluice {
    Sluice::start(&sim.upstream_toml(&format!("retries = 0\ncircuit_failures = 0\n{extra}")))
}

async fn get_blob(c: &reqwest::Client, s: &Sluice, digest: &str) -> (u16, Vec<u8>) {
    let r = c
        .get(format!("{}/v2/app/blobs/{digest}", s.base_url()))
        .send()
        .await
        .expect("GET blob");
    let status = r.status().as_u16();
    (
        status,
        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_one_never_has_two_fetches_in_flight_upstream() {
    let sim = Sim::start().await;
    let slow = Fault::Slow {
        chunk: 32 * 1024,
        delay: Duration::from_millis(20),
    };
    let blobs: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let b = random_bytes(512 * 1024, 900 + i);
            let d = sim.add_blob(b.clone());
            sim.fault(&d, slow.clone());
            (d, b)
        })
        .collect();
    let s = sluice_for(&sim, "max_concurrent = 1");
    let c = http_client();
    within(60, "capped fetches", async {
        let t = Instant::now();
        let fetches: Vec<_> = blobs.iter().map(|(d, _)| get_blob(&c, &s, d)).collect();
        let results = futures_util::future::join_all(fetches).await;
        for ((status, body), (d, want)) in results.iter().zip(&blobs) {
            assert_eq!(*status, 200, "{d}");
            assert!(body == want, "wrong bytes for {d}");
        }
        assert_eq!(
            sim.peak_inflight(),
            1,
            "max_concurrent = 1 but the upstream served several at once"
        );
        // Each body trickles for about 320 ms; one after the other they cannot be quicker.
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        let m = s.metrics().await;
        assert!(
            metrics::sample(&m, "sluice_upstream_throttled_total{upstream=\"sim\"}") >= 1.0,
            "{m}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_past_queue_timeout_fails_as_an_upstream_error() {
    let sim = Sim::start().await;
    let held = random_bytes(100_000, 910);
    let held_d = sim.add_blob(held.clone());
    let other_d = sim.add_blob(random_bytes(1000, 911));
    let gate = Gate::new();
    sim.fault(
        &held_d,
        Fault::Hold {
            gate: gate.clone(),
            after: 1000,
        },
    );
    let s = sluice_for(&sim, "max_concurrent = 1\nqueue_timeout = \"300ms\"");
    let c = http_client();
    within(60, "queue timeout", async {
        let first = {
            let (c, url) = (c.clone(), format!("{}/v2/app/blobs/{held_d}", s.base_url()));
            tokio::spawn(async move {
                let r = c.get(url).send().await.expect("GET held blob");
                (r.status().as_u16(), r.bytes().await.expect("held body"))
            })
        };
        assert!(
            common::eventually(Duration::from_secs(10), || sim.blob_gets(&held_d) == 1).await,
            "the held fetch never reached the upstream"
        );
        let t = Instant::now();
        let r = c
            .get(format!("{}/v2/app/blobs/{other_d}", s.base_url()))
            .send()
            .await
            .expect("GET other blob");
        assert_eq!(r.status(), 503, "no slot within queue_timeout: unavailable");
        assert_eq!(common::header(&r, "retry-after"), "1");
        let err = common::json_body(r).await;
        assert_eq!(err["errors"][0]["code"], "UNAVAILABLE", "{err}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(sim.blob_gets(&other_d), 0, "sent despite the cap");
        gate.open();
        let (status, body) = first.await.expect("first fetch");
        assert_eq!(status, 200);
        assert!(body.as_ref() == held.as_slice());
        // The slot is free again once the body has ended.
        let (status, _) = get_blob(&c, &s, &other_d).await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_requests_to_the_upstream() {
    let sim = Sim::start().await;
    let digests: Vec<String> = (0..6)
        .map(|i| sim.add_blob(random_bytes(1000, 920 + i)))
        .collect();
    let s = sluice_for(&sim, "rate_limit = \"4/s\"");
    let c = http_client();
    within(60, "rate limit", async {
        // All at once: the limiter, not how long each fill takes, must do the pacing.
        let t = Instant::now();
        let gets = futures_util::future::join_all(digests.iter().map(|d| get_blob(&c, &s, d)));
        for (status, _) in gets.await {
            assert_eq!(status, 200);
        }
        // A burst of 4, then one every 250 ms: the last two wait at least 400 ms in all.
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        let m = s.metrics().await;
        assert!(
            metrics::sample(&m, "sluice_upstream_throttled_total{upstream=\"sim\"}") >= 2.0,
            "{m}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_by_our_own_limits_never_opens_the_circuit() {
    let sim = Sim::start().await;
    let digests: Vec<String> = (0..4)
        .map(|i| sim.add_blob(random_bytes(1000, 930 + i)))
        .collect();
    // One request per second, and a queue too short to wait for the next one: every request
    // after the first is throttled. A breaker counting that as an upstream failure would
    // open after one and refuse the rest.
    let s = Sluice::start(&sim.upstream_toml(
        "rate_limit = \"1/s\"\nqueue_timeout = \"100ms\"\ncircuit_failures = 1\n\
         circuit_cooldown = \"60s\"\nretries = 2\nretry_backoff = \"20ms\"",
    ));
    let c = http_client();
    within(60, "throttling and the circuit", async {
        assert_eq!(get_blob(&c, &s, &digests[0]).await.0, 200);
        for d in &digests[1..3] {
            let r = c
                .get(format!("{}/v2/app/blobs/{d}", s.base_url()))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 503);
            let err = common::json_body(r).await;
            let msg = err["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("rate_limit"), "throttled, not circuit: {err}");
            assert_eq!(sim.blob_gets(d), 0, "sent despite the rate limit");
        }
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"sim\"}"),
            0.0,
            "{m}"
        );
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_opens_total{upstream=\"sim\"}"),
            0.0
        );
        // Once the rate allows it, the next request goes through.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(get_blob(&c, &s, &digests[3]).await.0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_client_rate_limit_gets_429_at_once_and_other_clients_do_not() {
    let sim = Sim::start().await;
    let d = sim.add_blob(random_bytes(1000, 950));
    let s = Sluice::start_with(|port, dir| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\nclient_rate_limit = \"3/m\"\n\n\
             [storage]\ndata_dir = \"{}\"\n\n{}",
            dir.display(),
            sim.upstream_toml("")
        )
    });
    within(30, "client rate limit", async {
        let c = http_client();
        for _ in 0..3 {
            assert_eq!(get_blob(&c, &s, &d).await.0, 200);
        }
        let t = Instant::now();
        let r = c
            .get(format!("{}/v2/app/blobs/{d}", s.base_url()))
            .send()
            .await
            .expect("GET");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(r.status(), 429, "fourth request within the minute");
        let retry_after: u64 = common::header(&r, "retry-after")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
        let err = common::json_body(r).await;
        assert_eq!(err["errors"][0]["code"], "TOOMANYREQUESTS", "{err}");
        // Operations endpoints are not limited.
        for path in ["/-/healthz", "/-/readyz"] {
            let r = c
                .get(format!("{}{path}", s.base_url()))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 200, "{path}");
        }
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_client_throttled_total{format=\"oci\"}"),
            1.0,
            "{m}"
        );
        // Another client address has its own allowance.
        let other = reqwest::Client::builder()
            .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
            .build()
            .expect("client");
        assert_eq!(get_blob(&other, &s, &d).await.0, 200);
        assert_eq!(sim.blob_gets(&d), 1);
    })
    .await;
}
