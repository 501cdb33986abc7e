//! A fill whose upstream body is cut continues with a range request when the upstream
//! serves ranges: the client gets the whole, correct body in one response. An upstream that
//! answers the range wrongly (a `200`, another start, other bytes) fails the fill as a cut
//! always did: the client's response is aborted and nothing is stored.

mod common;

use std::time::Duration;

use common::metrics;
use common::sim::{Fault, Ranges, Sim};
use common::{blob_path, http_client, random_bytes, sha256_digest, within, Sluice};

fn sluice_for(sim: &Sim) -> Sluice {
    Sluice::start(&sim.upstream_toml("retries = 0\ncircuit_failures = 0"))
}

/// Status and body of a blob GET; `None` for the body when it did not arrive whole.
async fn get_blob(c: &reqwest::Client, s: &Sluice, digest: &str) -> (u16, Option<Vec<u8>>) {
    let r = c
        .get(format!("{}/v2/app/blobs/{digest}", s.base_url()))
        .send()
        .await
        .expect("GET blob");
    let status = r.status().as_u16();
    (status, r.bytes().await.ok().map(|b| b.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_body_is_resumed_with_a_range_request_and_the_client_gets_it_whole() {
    let sim = Sim::start().await;
    sim.set_ranges(Some(Ranges::Honour));
    let blob = random_bytes(3 << 20, 931);
    let d = sim.add_blob(blob.clone());
    sim.fault(&d, Fault::first(1, Fault::CutMidBody));
    let s = sluice_for(&sim);
    let c = http_client();
    within(60, "resumed fill", async {
        let (status, body) = get_blob(&c, &s, &d).await;
        assert_eq!(status, 200);
        let body = body.expect("the client's body was cut although the fill resumed");
        assert!(body == blob, "resumed body differs from the blob");
        assert_eq!(sim.blob_gets(&d), 2, "one cut GET, one range GET");
        let ranges = sim.range_requests(&d);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let from: u64 = ranges[0]
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("range {:?}", ranges[0]));
        assert!(from > 0 && from < blob.len() as u64, "resumed at {from}");
        s.settled().await;
        let stored = std::fs::read(blob_path(&s.data_dir(), &d)).expect("stored blob");
        assert_eq!(sha256_digest(&stored), d);
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_fill_resumes_total{format=\"oci\"}"),
            1.0,
            "{m}"
        );
        // Every byte the one client got went through the fill's follower, counted once,
        // from the kept chunks or from the temp file.
        let handed = metrics::sample(&m, "sluice_fill_follow_bytes_total{from=\"memory\"}")
            + metrics::sample(&m, "sluice_fill_follow_bytes_total{from=\"file\"}");
        assert_eq!(handed, blob.len() as f64, "{m}");
        // And it is a hit from now on.
        let (status, body) = get_blob(&c, &s, &d).await;
        assert_eq!(status, 200);
        assert!(body.as_deref() == Some(blob.as_slice()));
        assert_eq!(sim.blob_gets(&d), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_to_the_range_request_fails_the_fill_and_stores_nothing() {
    for (i, mode) in [Ranges::Ignore, Ranges::WrongStart, Ranges::Corrupt]
        .into_iter()
        .enumerate()
    {
        let sim = Sim::start().await;
        sim.set_ranges(Some(mode));
        let blob = random_bytes(1 << 20, 940 + i as u64);
        let d = sim.add_blob(blob.clone());
        sim.fault(&d, Fault::first(1, Fault::CutMidBody));
        let s = sluice_for(&sim);
        let c = http_client();
        within(60, "bad resume", async {
            let (status, body) = get_blob(&c, &s, &d).await;
            assert!(
                body.as_deref() != Some(blob.as_slice()) || status != 200,
                "{mode:?}: a failed fill completed the client's response"
            );
            assert!(
                body.as_deref().is_none_or(|b| b != blob.as_slice()),
                "{mode:?}"
            );
            assert!(
                common::eventually(Duration::from_secs(5), || common::tmp_files(&s.data_dir())
                    .is_empty())
                .await,
                "{mode:?}: temp file left"
            );
            assert!(
                !blob_path(&s.data_dir(), &d).exists(),
                "{mode:?}: a blob was stored from a bad resume"
            );
            assert!(
                !sim.range_requests(&d).is_empty(),
                "{mode:?}: no range request was made"
            );
            // The upstream behaves again: the next pull fills from scratch, correctly.
            sim.set_ranges(None);
            let (status, body) = get_blob(&c, &s, &d).await;
            assert_eq!(status, 200, "{mode:?}");
            assert!(body.as_deref() == Some(blob.as_slice()), "{mode:?}");
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_range_support_a_cut_body_fails_as_before() {
    let sim = Sim::start().await;
    let blob = random_bytes(1 << 20, 950);
    let d = sim.add_blob(blob.clone());
    sim.fault(&d, Fault::first(1, Fault::CutMidBody));
    let s = sluice_for(&sim);
    let c = http_client();
    within(60, "cut without ranges", async {
        let (_, body) = get_blob(&c, &s, &d).await;
        assert!(body.as_deref().is_none_or(|b| b != blob.as_slice()));
        assert!(
            sim.range_requests(&d).is_empty(),
            "asked for a range anyway"
        );
        assert!(!blob_path(&s.data_dir(), &d).exists());
    })
    .await;
}
