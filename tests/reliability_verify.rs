//! `sluice verify`: a stored file corrupted on disk is found by re-hashing, moved to
//! `data_dir/quarantine/`, dropped from the index (the next pull fetches a good copy), and
//! the command exits 1; a second run on the repaired store exits 0. A file whose size
//! changed is caught already when sluice starts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sim::Sim;
use common::{blob_path, http_client, random_bytes, run_with_timeout, within, Sluice};

fn verify(s: &Sluice) -> std::process::Output {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("verify")
            .arg("--config")
            .arg(s.config_path()),
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_quarantines_a_corrupted_blob_and_exits_1_then_0() {
    let sim = Sim::start().await;
    let good = random_bytes(300_000, 801);
    let bad = random_bytes(200_000, 802);
    let good_d = sim.add_blob(good.clone());
    let bad_d = sim.add_blob(bad.clone());
    let mut s = Sluice::start(&format!(
        "[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{}\"\ndefault = true\n",
        sim.url()
    ));
    let c = http_client();
    within(30, "warm", async {
        for d in [&good_d, &bad_d] {
            let r = c
                .get(format!("{}/v2/app/blobs/{d}", s.base_url()))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body");
        }
    })
    .await;
    s.stop();
    let data = s.data_dir();
    let path = blob_path(&data, &bad_d);
    assert!(path.exists() && blob_path(&data, &good_d).exists());
    let mut corrupted = bad.clone();
    corrupted[1000] ^= 0x01; // one flipped bit
    std::fs::write(&path, &corrupted).expect("corrupt");

    let out = verify(&s);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&bad_d),
        "summary names the bad blob: {stdout}"
    );
    assert!(stdout.contains("1 quarantined"), "{stdout}");
    assert!(!path.exists(), "corrupted file left in the store");
    let q = data
        .join("quarantine")
        .join(bad_d.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&q).expect("quarantined file"), corrupted);
    assert!(blob_path(&data, &good_d).exists(), "good file kept");

    let out = verify(&s);
    assert_eq!(
        out.status.code(),
        Some(0),
        "second run: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Served again: the quarantined blob is fetched afresh and correct.
    s.restart();
    within(30, "refetch", async {
        let r = c
            .get(format!("{}/v2/app/blobs/{bad_d}", s.base_url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.expect("body") == bad,
            "wrong bytes after verify"
        );
    })
    .await;
    assert_eq!(sim.blob_gets(&bad_d), 2, "refetched from upstream once");
}

/// A stored file whose size changed while sluice was down (truncated) is found when sluice
/// starts: quarantined, counted, and the next pull fetches a good copy instead of serving
/// the cut bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_blob_is_quarantined_at_start_and_fetched_afresh() {
    let sim = Sim::start().await;
    let blob = random_bytes(300_000, 811);
    let d = sim.add_blob(blob.clone());
    let mut s = Sluice::start(&format!(
        "[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{}\"\ndefault = true\n",
        sim.url()
    ));
    let c = http_client();
    let get = |s: &Sluice| {
        let (c, url) = (c.clone(), format!("{}/v2/app/blobs/{d}", s.base_url()));
        async move {
            let r = c.get(url).send().await.expect("GET");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body")
        }
    };
    within(30, "warm", async {
        assert!(get(&s).await == blob);
        s.settled().await; // committed just after its body went out
    })
    .await;
    s.stop();
    let path = blob_path(&s.data_dir(), &d);
    std::fs::write(&path, &blob[..100_000]).expect("truncate");

    s.restart();
    within(30, "after restart", async {
        assert!(get(&s).await == blob, "the truncated file was served");
        let m = s.metrics().await;
        assert!(
            m.lines()
                .any(|l| l == "sluice_evictions_total{reason=\"quarantine\"} 1"),
            "{m}"
        );
    })
    .await;
    assert_eq!(sim.blob_gets(&d), 2, "fetched afresh once");
    let q = s
        .data_dir()
        .join("quarantine")
        .join(d.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(&q).expect("quarantined"), &blob[..100_000]);
}
