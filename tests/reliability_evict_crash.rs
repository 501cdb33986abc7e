//! Crash safety during eviction: a small `max_size` and four clients pulling fresh blobs
//! keep the store above its high watermark, so eviction is removing files all the time;
//! sluice is SIGKILLed at a random moment, restarted on the same data dir, over and over.
//! After every restart `tmp/` is empty, the index and the files agree (the sizes of the
//! files add up to `sluice_storage_bytes`), every stored file hashes to its name, and every
//! blob of the round is served correctly (a hit, or refetched if it was evicted).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::metrics;
use common::ops::stored_on_disk;
use common::sim::{Fault, Sim};
use common::{
    blob_files, http_client, random_bytes, run_with_timeout, sha256_digest, tmp_files, within,
    Sluice, XorShift,
};

const ROUNDS: u64 = 8;
const BLOB_SIZE: usize = 32 * 1024;
const FETCHERS: usize = 4;

/// A blob a fetcher pulled: digest and bytes.
type Pulled = (String, Vec<u8>);

/// Milliseconds of the wall clock (what eviction's whole seconds count).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_eviction_never_corrupts_the_store_or_its_accounting() {
    let sim = Arc::new(Sim::start().await);
    let mut s = Sluice::start(&format!(
        r#"max_size = "512KiB"
high_watermark = 0.6
low_watermark = 0.3
eviction_grace = "1s"

{}"#,
        sim.upstream_toml("retries = 0\ncircuit_failures = 0")
    ));
    let c = http_client();
    let mut rng = XorShift::new(0xe71c7);
    let mut evicting_at_kill = 0;
    let mut pulled = 0;
    within(90, "eviction crash loop", async {
        for round in 0..ROUNDS {
            // Every blob comes in four chunks, so fills are in flight while eviction runs.
            sim.fault(
                "/blobs/",
                Fault::Slow {
                    chunk: 8 * 1024,
                    delay: Duration::from_millis(10),
                },
            );
            // Each fetcher pulls fresh blobs only (a hit would renew a file's grace), made
            // up and added to the simulator as it goes.
            let blobs: Arc<Mutex<Vec<Pulled>>> = Arc::default();
            let next = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let fetchers: Vec<_> = (0..FETCHERS)
                .map(|_| {
                    let (c, base, sim) = (c.clone(), s.base_url(), sim.clone());
                    let (blobs, next, stop) = (blobs.clone(), next.clone(), stop.clone());
                    tokio::spawn(async move {
                        // The connection dies with sluice: results do not matter here.
                        while !stop.load(Ordering::SeqCst) {
                            let seed = 1_000_000 * (round + 1) + next.fetch_add(1, Ordering::SeqCst);
                            let bytes = random_bytes(BLOB_SIZE, seed);
                            let d = sim.add_blob(bytes.clone());
                            blobs.lock().expect("blobs").push((d.clone(), bytes));
                            let url = format!("{base}/v2/app/blobs/{d}");
                            match c.get(url).send().await {
                                Ok(r) => {
                                    let _ = r.bytes().await;
                                }
                                Err(_) => return,
                            }
                        }
                    })
                })
                .collect();
            // Eviction keeps files for `eviction_grace` (1 s) counted in whole seconds of
            // the wall clock, so removals come in bursts just after a second begins: once the
            // round's first fills are old enough, kill a few ms past a second boundary, right
            // after a metrics scrape that shows files being evicted since just before it.
            tokio::time::sleep(Duration::from_millis(2200)).await;
            let boundary = Duration::from_millis(1000 - now_ms() % 1000);
            tokio::time::sleep(boundary.saturating_sub(Duration::from_millis(100))).await;
            let before = metrics::sum_prefixed(&s.metrics().await, "sluice_evictions_total").unwrap_or(0.0);
            let to_next = Duration::from_millis((1000 - now_ms() % 1000) % 1000);
            let at = to_next + Duration::from_millis(rng.next_u64() % 40);
            tokio::time::sleep(at).await;
            let just_before = metrics::sum_prefixed(&s.metrics().await, "sluice_evictions_total").unwrap_or(0.0);
            if just_before > before {
                evicting_at_kill += 1;
            }
            tokio::task::block_in_place(|| s.crash_restart());
            stop.store(true, Ordering::SeqCst);
            for f in fetchers {
                let _ = f.await;
            }

            let data = s.data_dir();
            let what = format!("round {round} (killed after {at:?})");
            let tmp = tmp_files(&data);
            assert!(tmp.is_empty(), "{what}: tmp/ not emptied on start: {tmp:?}");
            for f in blob_files(&data) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                // Eviction may run right after the start: a file gone since the listing
                // was removed whole, which is fine.
                let bytes = match std::fs::read(&f) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{what}: read {}: {e}", f.display()),
                };
                assert_eq!(
                    sha256_digest(&bytes),
                    format!("sha256:{name}"),
                    "{what}: {} does not hash to its name",
                    f.display()
                );
            }
            // Index and files agree. Eviction may still run after the restart, so compare
            // once the store is quiet (a real disagreement persists and fails).
            let mut last = (0, 0.0);
            let mut agreed = false;
            for _ in 0..50 {
                let m = metrics::sum_prefixed(&s.metrics().await, "sluice_storage_bytes").unwrap_or(0.0);
                let disk = stored_on_disk(&data);
                last = (disk, m);
                if disk as f64 == m {
                    agreed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                agreed,
                "{what}: files hold {} bytes, sluice_storage_bytes says {}",
                last.0, last.1
            );

            // Every blob of the round comes out right, stored or refetched.
            sim.clear_faults();
            let blobs = std::mem::take(&mut *blobs.lock().expect("blobs"));
            pulled += blobs.len();
            for (d, bytes) in &blobs {
                let r = c
                    .get(format!("{}/v2/app/blobs/{d}", s.base_url()))
                    .send()
                    .await
                    .expect("GET blob after restart");
                let status = r.status();
                let got = r.bytes().await.expect("blob body after restart");
                assert_eq!(
                    status,
                    200,
                    "{what}: {d}: {}",
                    String::from_utf8_lossy(&got)
                );
                assert!(got.as_ref() == bytes.as_slice(), "{what}: wrong bytes for {d}");
                sim.remove_blob(d);
            }
        }
        eprintln!("{pulled} blobs pulled in {ROUNDS} rounds; eviction seen right before {evicting_at_kill} kills");
        assert!(
            evicting_at_kill >= ROUNDS / 2,
            "eviction was removing files right before only {evicting_at_kill} of {ROUNDS} kills: the drill proves little"
        );
    })
    .await;
    // And the deep check agrees: every stored file re-hashes to its name.
    s.stop();
    let out = run_with_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("verify")
            .arg("--config")
            .arg(s.config_path()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "sluice verify after the crash loop: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
