//! Soak (ignored by default; `benches/soak_eviction.sh` runs it in release mode): churns a
//! store five times its `max_size` through concurrent pulls on loopback, samples the data
//! directory's disk usage, and reports the high-water mark and the eviction rate. Bounded:
//! a fixed number of images, a fixed concurrency, and a 300 s deadline.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::metrics;
use common::sim::Sim;
use common::{http_client, random_bytes, sha256_digest, within, Sluice};

const MIB: u64 = 1 << 20;

fn du(dir: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sb")
        .arg(dir)
        .output()
        .ok();
    out.and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with benches/soak_eviction.sh"]
async fn soak_churn_five_times_max_size() {
    let max = 32 * MIB;
    let images = 80usize; // 80 × 2 MiB = 160 MiB = 5 × max_size
    let layer = 2 * MIB as usize;
    let concurrency = 8usize;
    let sim = Sim::start().await;
    let imgs: Vec<_> = (0..images)
        .map(|i| sim.push_image(&format!("soak/i{i}"), "1", &[random_bytes(layer, i as u64)]))
        .collect();
    // SOAK_GRACE: `storage.eviction_grace` (default and minimum 1s); the high-water mark
    // of a burst faster than eviction is about fill rate × grace.
    let grace = std::env::var("SOAK_GRACE").unwrap_or_else(|_| "1s".into());
    let s = Sluice::start_with(|port, dir| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n\n\
             [storage]\ndata_dir = \"{}\"\nmax_size = \"32MiB\"\nhigh_watermark = 0.9\n\
             low_watermark = 0.7\neviction_grace = \"{grace}\"\ngc_interval = \"1h\"\n\n\
             [[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{}\"\nhost = \"{}\"\n\
             default = true\n",
            dir.display(),
            sim.url(),
            sim.host()
        )
    });
    let data = s.data_dir();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, data) = (stop.clone(), peak.clone(), data.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(du(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // SOAK_PACE_MS: pause of each client between images (default 0: as fast as loopback).
    let pace = Duration::from_millis(
        std::env::var("SOAK_PACE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let base = s.base_url();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, imgs, base) = (next.clone(), imgs.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let c = http_client();
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= imgs.len() {
                    return bytes;
                }
                let img = &imgs[i];
                // Each image twice: a miss, then (usually) a hit; plus a re-read of a
                // recent image, so LRU order matters.
                for j in [i, i, i.saturating_sub(3)] {
                    let d = &imgs[j].layer_digests[0];
                    let r = c
                        .get(format!("{base}/v2/soak/i{j}/blobs/{d}"))
                        .send()
                        .await
                        .expect("get");
                    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                    let b = r.bytes().await.expect("body");
                    assert_eq!(&sha256_digest(&b), d);
                    bytes += b.len() as u64;
                }
                let _ = img;
                tokio::time::sleep(pace).await;
            }
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += within(300, "soak clients", t).await.expect("client task");
    }
    let elapsed = started.elapsed();
    // Let the last eviction settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let m = s.metrics().await;
    let evictions = metrics::sum_prefixed(&m, "sluice_evictions_total").unwrap_or(0.0);
    let evicted = metrics::sum_prefixed(&m, "sluice_evicted_bytes_total").unwrap_or(0.0);
    let stored = metrics::sum_prefixed(&m, "sluice_storage_bytes").unwrap_or(0.0);
    let peak = peak.load(Ordering::Relaxed);
    println!("soak: eviction_grace = {grace}, pace {pace:?} per image per client");
    println!(
        "soak: {images} images x {} MiB through max_size {} MiB, {concurrency} clients, {:.1} s",
        layer as u64 / MIB,
        max / MIB,
        elapsed.as_secs_f64()
    );
    println!(
        "soak: served {:.0} MiB; disk high-water {:.1} MiB ({:.2} x max_size); final stored {:.1} MiB",
        served as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        peak as f64 / max as f64,
        stored / MIB as f64
    );
    println!(
        "soak: {evictions} evictions, {:.0} MiB evicted: {:.1} files/s, {:.1} MiB/s",
        evicted / MIB as f64,
        evictions / elapsed.as_secs_f64(),
        evicted / MIB as f64 / elapsed.as_secs_f64()
    );
    assert!(stored <= max as f64, "store over max_size after settling");
    assert!(evicted >= (3 * max) as f64, "too little evicted: {evicted}");
}
