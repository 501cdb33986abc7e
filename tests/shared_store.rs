//! The shared tier (`[storage.s3]`, SPEC §6 scale-out): several sluice replicas, each with
//! its own data dir, sharing one bucket of a real Garage (`common::garage`) in front of the
//! in-process OCI and npm simulators.

mod common;

use common::garage::{self, Garage};
use common::metrics::sum_labelled;
use common::npm_sim::NpmSim;
use common::sim::{Fault, Sim};
use common::{blob_path, http_client, random_bytes, tmp_files, within, Sluice};
use reqwest::Method;

fn npm_upstream(sim: &NpmSim) -> String {
    format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n",
        sim.registry_url()
    )
}

/// Waits until `sluice`'s metric `name` with `labels` reaches `want`; its last value.
async fn metric_reaches(sluice: &Sluice, name: &str, labels: &[&str], want: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let last = sum_labelled(&sluice.metrics().await, name, labels).unwrap_or(0.0);
        if last >= want || std::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Status and body of a GET, or what cut the body.
async fn get(url: &str) -> (u16, Result<Vec<u8>, String>) {
    let r = http_client().get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (
        status,
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string()),
    )
}

/// The object key of a sha256 digest (`sha256:<hex>`) under `prefix`.
fn key_of(prefix: &str, digest: &str) -> String {
    format!("{prefix}blobs/{}", digest.replacen(':', "/", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_from_the_bucket_what_another_fetched_from_the_upstream() {
    let garage = Garage::start();
    let (sim, npm) = (Sim::start().await, NpmSim::start().await);
    let blob = random_bytes(3 << 20, 71);
    let d = sim.add_blob(blob.clone());
    let pkg = npm.publish("shared-pkg", "1.0.0", &[]);
    let config = format!(
        "{}\n{}\n{}",
        garage.storage_toml("ci/"),
        sim.upstream_toml(""),
        npm_upstream(&npm)
    );
    let (a, b) = (Sluice::start(&config), Sluice::start(&config));
    let blob_url = |s: &Sluice| format!("{}/v2/team/app/blobs/{d}", s.base_url());
    let tarball_url = |s: &Sluice| format!("{}/npmjs/shared-pkg/-/{}", s.base_url(), pkg.file);
    within(120, "two replicas", async {
        // Replica A fetches both from their upstreams, stores them, and uploads them.
        assert_eq!(get(&blob_url(&a)).await, (200, Ok(blob.clone())));
        let r = http_client()
            .get(format!("{}/npmjs/shared-pkg", a.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(get(&tarball_url(&a)).await, (200, Ok(pkg.tarball.to_vec())));
        let uploaded = metric_reaches(
            &a,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"uploaded\""],
            2.0,
        )
        .await;
        assert_eq!(
            uploaded,
            2.0,
            "A uploads the blob and the tarball\n{}",
            a.log()
        );
        // Under the prefix, keyed by the digest each was verified against: the npm
        // tarball by its packument's sha512.
        let object = garage::request(&garage, Method::GET, &key_of("ci/", &d), None).await;
        assert_eq!(object.status(), 200);
        assert_eq!(object.bytes().await.unwrap().to_vec(), blob);
        let sha512 = hex_of_integrity(&pkg.integrity);
        let object = garage::request(
            &garage,
            Method::HEAD,
            &format!("ci/blobs/sha512/{sha512}"),
            None,
        )
        .await;
        assert_eq!(object.status(), 200, "npm tarball keyed by its sha512");

        // Replica B has neither. The upstream now fails every blob request, so what B
        // serves can only come from the bucket (its check that the repository holds the
        // blob cannot be answered, and a copy it has is served then).
        sim.fault(&d[7..], Fault::Status(503));
        assert_eq!(get(&blob_url(&b)).await, (200, Ok(blob.clone())));
        assert_eq!(sim.blob_gets(&d), 1, "one upstream GET of the blob, by A");
        let r = http_client()
            .get(format!("{}/npmjs/shared-pkg", b.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(get(&tarball_url(&b)).await, (200, Ok(pkg.tarball.to_vec())));
        assert_eq!(
            npm.count("GET", "/-/shared-pkg-"),
            1,
            "one tarball GET, by A"
        );
        let page = b.metrics().await;
        let from_shared = |format: &str| {
            sum_labelled(
                &page,
                "sluice_bytes_total",
                &[&format!("format=\"{format}\""), "source=\"shared\""],
            )
        };
        assert_eq!(from_shared("oci"), Some(blob.len() as f64));
        assert_eq!(from_shared("npm"), Some(pkg.tarball.len() as f64));
        assert_eq!(
            sum_labelled(
                &page,
                "sluice_shared_store_events_total",
                &["op=\"get\"", "result=\"hit\""]
            ),
            Some(2.0)
        );
        // What came from the bucket is not uploaded back.
        assert_eq!(
            sum_labelled(
                &page,
                "sluice_shared_store_events_total",
                &["op=\"upload\""]
            ),
            None,
            "{page}"
        );
        // B keeps its own copy: its next request is a local hit.
        assert!(blob_path(&b.data_dir(), &d).exists());
        let r = http_client().get(blob_url(&b)).send().await.unwrap();
        assert_eq!(common::sluice_cache_header(&r), "HIT");

        // A replica whose upstream is offline still reads the bucket: it is sluice's own
        // storage, not an upstream.
        let c = Sluice::start(&format!(
            "{}\n{}",
            garage.storage_toml("ci/"),
            sim.upstream_toml("offline = true")
        ));
        assert_eq!(get(&blob_url(&c)).await, (200, Ok(blob.clone())));
        assert_eq!(sim.blob_gets(&d), 1);
    })
    .await;
}

/// Hex of an npm `sha512-<base64>` integrity.
fn hex_of_integrity(integrity: &str) -> String {
    hex::encode(base64_decode(
        integrity.strip_prefix("sha512-").expect("sha512 integrity"),
    ))
}

/// Standard base64 (with padding), as npm's integrity strings are written.
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_match_its_digest_is_deleted_and_never_served() {
    let garage = Garage::start();
    let sim = Sim::start().await;
    let blob = random_bytes(1 << 20, 72);
    let d = sim.add_blob(blob.clone());
    let mut wrong = blob.clone();
    wrong[700_000] ^= 0xff;
    let key = key_of("", &d);
    let put = garage::request(&garage, Method::PUT, &key, Some(wrong.clone())).await;
    assert_eq!(put.status(), 200);
    let s = Sluice::start(&format!(
        "{}\n{}",
        garage.storage_toml(""),
        sim.upstream_toml("")
    ));
    let url = format!("{}/v2/team/app/blobs/{d}", s.base_url());
    within(90, "corrupt object", async {
        // The bucket's bytes are streamed as they come, but the response is not completed
        // with them: the last byte waits for the digest.
        let (status, body) = get(&url).await;
        assert!(
            body.as_ref().map_or(true, |b| b != &wrong && b != &blob) || status != 200,
            "a corrupt object was served: {status}"
        );
        assert!(body.is_err() || status >= 500, "{status} {body:?}");
        assert_eq!(sim.blob_gets(&d), 0);
        let deleted = metric_reaches(
            &s,
            "sluice_shared_store_events_total",
            &["op=\"discard\"", "result=\"deleted\""],
            1.0,
        )
        .await;
        assert_eq!(deleted, 1.0, "{}", s.log());
        let head = garage::request(&garage, Method::HEAD, &key, None).await;
        assert_eq!(head.status(), 404, "the corrupt object is deleted");
        assert!(!blob_path(&s.data_dir(), &d).exists(), "nothing stored");
        assert!(tmp_files(&s.data_dir()).is_empty());
        // The next request goes to the upstream, and its verified bytes replace the
        // object.
        assert_eq!(get(&url).await, (200, Ok(blob.clone())));
        assert_eq!(sim.blob_gets(&d), 1);
        metric_reaches(
            &s,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"uploaded\""],
            1.0,
        )
        .await;
        let object = garage::request(&garage, Method::GET, &key, None).await;
        assert_eq!(object.bytes().await.unwrap().to_vec(), blob);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_cannot_be_reached_leaves_requests_to_the_upstream() {
    let sim = Sim::start().await;
    let (one, two) = (random_bytes(200_000, 73), random_bytes(200_000, 74));
    let (d1, d2) = (sim.add_blob(one.clone()), sim.add_blob(two.clone()));
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let s = Sluice::start(&format!(
        "[storage.s3]\nendpoint = \"{endpoint}\"\nbucket = \"nowhere\"\n\
         access_key_id = \"id\"\nsecret_access_key = \"secret\"\n\n{}",
        sim.upstream_toml("")
    ));
    within(60, "unreachable bucket", async {
        let url = |d: &str| format!("{}/v2/team/app/blobs/{d}", s.base_url());
        assert_eq!(get(&url(&d1)).await, (200, Ok(one.clone())));
        // Left alone after that failure: not asked for the next one, nor given uploads.
        assert_eq!(get(&url(&d2)).await, (200, Ok(two.clone())));
        let page = s.metrics().await;
        let events = |op: &str, result: &str| {
            sum_labelled(
                &page,
                "sluice_shared_store_events_total",
                &[&format!("op=\"{op}\""), &format!("result=\"{result}\"")],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(events("get", "error"), 1.0, "{page}");
        assert_eq!(events("get", "skipped"), 1.0, "{page}");
        assert_eq!(
            metric_reaches(
                &s,
                "sluice_shared_store_events_total",
                &["op=\"upload\"", "result=\"skipped\""],
                2.0
            )
            .await,
            2.0
        );
        let ready = http_client()
            .get(format!("{}/-/readyz", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "the bucket is not needed to serve");
        assert!(s.log().contains("shared store"), "{}", s.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_whose_bodies_break_off_is_left_alone_for_a_while() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Sim::start().await;
    let blob = random_bytes(100_000, 75);
    let d = sim.add_blob(blob.clone());
    // A bucket that has every object, announces its full length and closes the
    // connection after 10 bytes (also on range requests).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked2 = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            asked2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789";
                let _ = sock.write_all(head.as_bytes()).await;
            });
        }
    });
    let s = Sluice::start(&format!(
        "[storage.s3]\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"cut-off\"\n\
         access_key_id = \"id\"\nsecret_access_key = \"secret\"\n\n{}",
        sim.upstream_toml("")
    ));
    let url = format!("{}/v2/team/app/blobs/{d}", s.base_url());
    within(60, "bodies breaking off", async {
        let (_, body) = get(&url).await;
        assert!(body.is_err(), "a body that broke off was completed");
        assert!(!blob_path(&s.data_dir(), &d).exists());
        // The next request is not sent to that bucket: the upstream serves it.
        let before = asked.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(&url).await, (200, Ok(blob.clone())));
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), before);
        assert_eq!(sim.blob_gets(&d), 1);
        let page = s.metrics().await;
        assert_eq!(
            sum_labelled(
                &page,
                "sluice_shared_store_events_total",
                &["op=\"get\"", "result=\"skipped\""]
            ),
            Some(1.0),
            "{page}"
        );
    })
    .await;
}
