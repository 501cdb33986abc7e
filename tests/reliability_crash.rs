//! Crash safety: sluice is SIGKILLed at a random moment while several cold blob fills
//! stream slowly from the OCI simulator, then restarted on the same data dir, over and
//! over. After every restart `tmp/` is empty, every file under `blobs/` hashes to its name
//! (a half-written fill is never published), and every blob fetched afterwards is correct.

mod common;

use std::time::Duration;

use common::sim::{Fault, Sim};
use common::{
    blob_files, http_client, random_bytes, sha256_digest, tmp_files, within, Sluice, XorShift,
};

const ITERATIONS: u64 = 8;
const BLOBS_PER_ITERATION: u64 = 4;
const BLOB_SIZE: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fills_never_leaves_a_wrong_or_partial_blob() {
    let sim = Sim::start().await;
    let mut s = Sluice::start(&sim.upstream_toml("retries = 0\ncircuit_failures = 0"));
    let c = http_client();
    let mut rng = XorShift::new(0x5eed);
    let mut killed_mid_fill = 0;
    within(90, "crash loop", async {
        for it in 0..ITERATIONS {
            // Fresh blobs each round, so every fetch is a cold fill trickling from upstream
            // (1 MiB at 32 KiB per 15 ms: about half a second each).
            let blobs: Vec<(String, Vec<u8>)> = (0..BLOBS_PER_ITERATION)
                .map(|b| {
                    let bytes = random_bytes(BLOB_SIZE, 1000 * it + b);
                    let d = sim.add_blob(bytes.clone());
                    sim.fault(
                        &d,
                        Fault::Slow {
                            chunk: 32 * 1024,
                            delay: Duration::from_millis(15),
                        },
                    );
                    (d, bytes)
                })
                .collect();
            let clients: Vec<_> = blobs
                .iter()
                .map(|(d, _)| {
                    let (c, url) = (c.clone(), format!("{}/v2/app/blobs/{d}", s.base_url()));
                    // The connection dies with sluice: the result does not matter.
                    tokio::spawn(async move {
                        if let Ok(r) = c.get(url).send().await {
                            let _ = r.bytes().await;
                        }
                    })
                })
                .collect();
            let at = Duration::from_millis(50 + rng.next_u64() % 500);
            tokio::time::sleep(at).await;
            if !tmp_files(&s.data_dir()).is_empty() {
                killed_mid_fill += 1;
            }
            tokio::task::block_in_place(|| s.crash_restart());
            for h in clients {
                let _ = h.await;
            }

            let data = s.data_dir();
            let tmp = tmp_files(&data);
            assert!(
                tmp.is_empty(),
                "round {it} (killed after {at:?}): tmp/ not emptied on start: {tmp:?}"
            );
            for f in blob_files(&data) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let bytes = std::fs::read(&f).expect("read stored blob");
                assert_eq!(
                    sha256_digest(&bytes),
                    format!("sha256:{name}"),
                    "round {it} (killed after {at:?}): {} does not hash to its name",
                    f.display()
                );
            }

            // After the restart every blob of this round comes out right (refilled or hit).
            sim.clear_faults();
            for (d, bytes) in &blobs {
                let r = c
                    .get(format!("{}/v2/app/blobs/{d}", s.base_url()))
                    .send()
                    .await
                    .expect("GET blob after restart");
                assert_eq!(r.status(), 200, "round {it}: {d}");
                let got = r.bytes().await.expect("blob body after restart");
                assert!(
                    got.as_ref() == bytes.as_slice(),
                    "round {it}: wrong bytes for {d}"
                );
            }
        }
        assert!(
            killed_mid_fill >= ITERATIONS / 2,
            "only {killed_mid_fill} of {ITERATIONS} kills hit fills in flight: the drill proves little"
        );
    })
    .await;
}
