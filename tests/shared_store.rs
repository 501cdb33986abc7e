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

/// The object key of a sha256 digest (`sha256:<hex>`) fetched through `upstream`.
fn key_of(prefix: &str, upstream: &str, digest: &str) -> String {
    format!("{prefix}{upstream}/blobs/{}", digest.replacen(':', "/", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gets_from_the_bucket_what_another_fetched_from_the_upstream() {
    let garage = Garage::start();
    let (sim, npm) = (Sim::start().await, NpmSim::start().await);
    let blob = random_bytes(3 << 20, 71);
    let d = sim.add_blob(blob.clone());
    let image = sim.push_image("team/app", "1.0", &[random_bytes(1000, 78)]);
    // A Docker manifest without `mediaType` in its body: only its Content-Type says what
    // it is, so a replica serving the right type got it from what was uploaded.
    let untyped = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": image.config_digest, "size": 10},
        "layers": [],
    }))
    .unwrap();
    let untyped_digest = sim.add_manifest(common::images::DOCKER_MANIFEST, untyped.clone());
    let pkg = npm.publish("shared-pkg", "1.0.0", &[]);
    let config = format!(
        "{}\n{}\n{}",
        garage.storage_toml("ci/"),
        sim.upstream_toml(""),
        npm_upstream(&npm)
    );
    let (a, b) = (Sluice::start(&config), Sluice::start(&config));
    let blob_url = |s: &Sluice| format!("{}/v2/team/app/blobs/{d}", s.base_url());
    let packument_url = |s: &Sluice| format!("{}/npmjs/shared-pkg", s.base_url());
    let tarball_url = |s: &Sluice| format!("{}/npmjs/shared-pkg/-/{}", s.base_url(), pkg.file);
    let manifest_url =
        |s: &Sluice| format!("{}/v2/team/app/manifests/{}", s.base_url(), untyped_digest);
    within(120, "two replicas", async {
        // Replica A fetches the three from their upstreams, stores them, and uploads them.
        assert_eq!(get(&blob_url(&a)).await, (200, Ok(blob.clone())));
        assert_eq!(get(&packument_url(&a)).await.0, 200);
        assert_eq!(get(&tarball_url(&a)).await, (200, Ok(pkg.tarball.to_vec())));
        assert_eq!(get(&manifest_url(&a)).await, (200, Ok(untyped.clone())));
        let uploaded = metric_reaches(
            &a,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"uploaded\""],
            3.0,
        )
        .await;
        assert_eq!(
            uploaded,
            3.0,
            "A uploads the blob, the tarball and the manifest\n{}",
            a.log()
        );
        // Under the prefix and the upstream, keyed by the digest each was verified
        // against: the npm tarball by its packument's sha512.
        let object = garage::request(&garage, Method::GET, &key_of("ci/", "sim", &d), None).await;
        assert_eq!(object.status(), 200);
        assert_eq!(object.bytes().await.unwrap().to_vec(), blob);
        let sha512 = hex_of_integrity(&pkg.integrity);
        let object = garage::request(
            &garage,
            Method::HEAD,
            &format!("ci/npmjs/blobs/sha512/{sha512}"),
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
        assert_eq!(get(&packument_url(&b)).await.0, 200);
        assert_eq!(get(&tarball_url(&b)).await, (200, Ok(pkg.tarball.to_vec())));
        assert_eq!(
            npm.count("GET", "/-/shared-pkg-"),
            1,
            "one tarball GET, by A"
        );
        // A manifest by digest (an image pinned by digest, an index's platform manifest)
        // too, with its media type.
        sim.fault("/manifests/", Fault::Status(503));
        let r = http_client().get(manifest_url(&b)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(common::sluice_cache_header(&r), "MISS");
        assert_eq!(
            common::header(&r, "content-type"),
            common::images::DOCKER_MANIFEST
        );
        assert_eq!(common::header(&r, "docker-content-digest"), untyped_digest);
        assert_eq!(r.bytes().await.unwrap().to_vec(), untyped);
        assert_eq!(
            sim.count("GET", &untyped_digest),
            1,
            "one manifest GET, by A"
        );
        let page = b.metrics().await;
        let from_shared = |format: &str| {
            sum_labelled(
                &page,
                "sluice_bytes_total",
                &[&format!("format=\"{format}\""), "source=\"shared\""],
            )
        };
        assert_eq!(
            from_shared("oci"),
            Some((blob.len() + untyped.len()) as f64)
        );
        assert_eq!(from_shared("npm"), Some(pkg.tarball.len() as f64));
        assert_eq!(
            sum_labelled(
                &page,
                "sluice_shared_store_events_total",
                &["op=\"get\"", "result=\"hit\""]
            ),
            Some(3.0)
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
        // (Its file appears at the commit, just after the body went out.)
        assert!(
            common::eventually(std::time::Duration::from_secs(10), || blob_path(
                &b.data_dir(),
                &d
            )
            .exists())
            .await
        );
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

        // The bucket does not widen who gets what.
        let d_config = format!(
            "{config}\n[[upstream]]\nname = \"mirror\"\nformat = \"oci\"\nurl = \"{}\"\n",
            sim.url()
        );
        let d_replica = Sluice::start(&d_config);
        // Content one upstream sent is not read from the bucket for another: with the
        // upstream failing, the other upstream's request fails ...
        let (status, _) = get(&format!(
            "{}/v2/mirror/team/app/blobs/{d}",
            d_replica.base_url()
        ))
        .await;
        assert!((500..600).contains(&status), "{status}");
        // ... and a repository the upstream says does not hold the blob is refused it,
        // though the bucket has it.
        sim.clear_faults();
        sim.fault("/other/repo/", Fault::Status(404));
        let gets = sim.blob_gets(&d);
        let (status, _) = get(&format!("{}/v2/other/repo/blobs/{d}", d_replica.base_url())).await;
        assert_eq!(
            status, 404,
            "served from the bucket to a repository without it"
        );
        let (status, _) = get(&format!(
            "{}/v2/other/repo/manifests/{untyped_digest}",
            d_replica.base_url()
        ))
        .await;
        assert_eq!(status, 404, "a manifest from the bucket, likewise");
        assert_eq!(sim.blob_gets(&d), gets, "the bytes came from the bucket");
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
    let key = key_of("", "sim", &d);
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
    let refusing = common::refusing_port();
    let endpoint = format!("http://127.0.0.1:{}", refusing.port);
    let s = Sluice::start(&format!(
        "[storage.s3]\nendpoint = \"{endpoint}\"\nbucket = \"nowhere\"\n\
         access_key_id = \"id\"\nsecret_access_key = \"secret\"\n\n{}",
        sim.upstream_toml("")
    ));
    within(60, "unreachable bucket", async {
        let url = |d: &str| format!("{}/v2/team/app/blobs/{d}", s.base_url());
        assert_eq!(get(&url(&d1)).await, (200, Ok(one.clone())));
        // Its upload fails too (reads and writes rest separately).
        let upload_errors = metric_reaches(
            &s,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"error\""],
            1.0,
        )
        .await;
        assert_eq!(upload_errors, 1.0);
        // Left alone after those failures: not asked for the next one, nor given its
        // upload.
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
                1.0
            )
            .await,
            1.0
        );
        assert_eq!(
            sum_labelled(
                &s.metrics().await,
                "sluice_shared_store_events_total",
                &["op=\"upload\"", "result=\"error\""]
            ),
            Some(1.0)
        );
        let ready = http_client()
            .get(format!("{}/-/readyz", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "the bucket is not needed to serve");
        assert!(s.log().contains("shared store"), "{}", s.log());
        // The dashboard says both sides rest (the bucket's name is for admins).
        let ui = http_client()
            .get(format!("{}/-/ui", s.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = ui
            .lines()
            .find(|l| l.contains("[storage.s3]"))
            .unwrap_or_else(|| panic!("{ui}"));
        assert!(
            line.contains("reads <span class=\"bad\">resting</span> after a failure")
                && line.contains("uploads <span class=\"bad\">resting</span>")
                && line.contains("0 uploads queued")
                && !line.contains("nowhere"),
            "{line}"
        );
        assert_eq!(
            sum_labelled(&s.metrics().await, "sluice_shared_store_upload_queue", &[]),
            Some(0.0)
        );
    })
    .await;
}

/// How [`FakeBucket`] answers.
#[derive(Clone, Copy, PartialEq)]
enum Bucket {
    /// Every GET: the object's length announced, the connection closed after 10 bytes; a
    /// ranged GET: `206` with the rest, as S3 does.
    CutThenRanges,
    /// Like `CutThenRanges`, but a ranged GET is answered `200` with the whole object (a
    /// server that ignores ranges): continuing with it would repeat bytes.
    CutThenIgnoresRanges,
    /// HEAD: `404`; PUT: the answer comes after 6 s (an upload slower than
    /// [`ANSWER_TIMEOUT`](sluice_proxy::store::shared::ANSWER_TIMEOUT)).
    SlowPuts,
}

/// A minimal S3 endpoint on loopback with one object, for what Garage cannot be made to do.
/// Logs `METHOD path [range]` of each request.
struct FakeBucket {
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeBucket {
    async fn start(object: Vec<u8>, mode: Bucket) -> FakeBucket {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (object, log) = (object.clone(), log2.clone());
                tokio::spawn(async move {
                    let mut sock = tokio::io::BufReader::new(sock);
                    let (mut line, mut range, mut length) = (String::new(), None, 0usize);
                    sock.read_line(&mut line).await.ok()?;
                    loop {
                        let mut h = String::new();
                        sock.read_line(&mut h).await.ok()?;
                        let lower = h.trim().to_ascii_lowercase();
                        if lower.is_empty() {
                            break;
                        }
                        if let Some(v) = lower.strip_prefix("range: bytes=") {
                            range = v.trim_end_matches('-').parse::<usize>().ok();
                        }
                        if let Some(v) = lower.strip_prefix("content-length: ") {
                            length = v.parse().unwrap_or(0);
                        }
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
                    log.lock()
                        .unwrap()
                        .push(format!("{method} {path} {range:?}"));
                    let total = object.len();
                    let answer: Vec<u8> = match (mode, method.as_str(), range) {
                        (Bucket::SlowPuts, "PUT", _) => {
                            // From the reader: it may hold the body's first bytes.
                            let mut body = vec![0u8; length];
                            sock.read_exact(&mut body).await.ok()?;
                            tokio::time::sleep(std::time::Duration::from_secs(6)).await;
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
                        }
                        (Bucket::SlowPuts, _, _) | (_, "HEAD", _) => {
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
                        }
                        (Bucket::CutThenRanges, "GET", Some(from)) => {
                            let mut a = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                                 Content-Range: bytes {from}-{}/{total}\r\n\r\n",
                                total - from,
                                total - 1
                            )
                            .into_bytes();
                            a.extend_from_slice(&object[from..]);
                            a
                        }
                        (Bucket::CutThenIgnoresRanges, "GET", Some(_)) => {
                            let mut a =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
                                    .into_bytes();
                            a.extend_from_slice(&object);
                            a
                        }
                        (_, "GET", None) if path.contains("/blobs/") => {
                            let mut a =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
                                    .into_bytes();
                            a.extend_from_slice(&object[..10]);
                            a
                        }
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    let mut sock = sock.into_inner();
                    sock.write_all(&answer).await.ok()?;
                    sock.shutdown().await.ok()
                });
            }
        });
        FakeBucket { port, log }
    }

    /// The requests whose line contains `what`.
    fn requests(&self, what: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(what)).cloned().collect()
    }

    fn storage_toml(&self) -> String {
        format!(
            "[storage.s3]\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"fake\"\n\
             access_key_id = \"id\"\nsecret_access_key = \"secret\"\n",
            self.port
        )
    }
}

/// The OCI simulator holding a random blob (`seed`), a [`FakeBucket`] answering as `mode`
/// (holding that blob, unless `mode` is [`Bucket::SlowPuts`]), and sluice in front of
/// both; with the blob's bytes and its URL through sluice.
async fn behind_fake_bucket(seed: u64, mode: Bucket) -> (Sim, FakeBucket, Sluice, Vec<u8>, String) {
    let sim = Sim::start().await;
    let blob = random_bytes(100_000, seed);
    let d = sim.add_blob(blob.clone());
    let object = if mode == Bucket::SlowPuts {
        Vec::new()
    } else {
        blob.clone()
    };
    let bucket = FakeBucket::start(object, mode).await;
    let s = Sluice::start(&format!(
        "{}\n{}",
        bucket.storage_toml(),
        sim.upstream_toml("")
    ));
    let url = format!("{}/v2/team/app/blobs/{d}", s.base_url());
    (sim, bucket, s, blob, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_body_that_breaks_off_is_continued_with_a_range_once_for_all_clients() {
    let (sim, bucket, s, blob, url) = behind_fake_bucket(75, Bucket::CutThenRanges).await;
    let d = common::sha256_digest(&blob);
    within(60, "resumed from the bucket", async {
        let clients: Vec<_> = (0..8)
            .map(|_| tokio::spawn(get_owned(url.clone())))
            .collect();
        for c in clients {
            assert_eq!(c.await.unwrap(), (200, Ok(blob.clone())));
        }
        // One fill for the eight: one GET, continued once from byte 10.
        assert_eq!(
            bucket.requests("/blobs/"),
            vec![
                format!("GET /fake/sim/blobs/{} None", d.replacen(':', "/", 1)),
                format!("GET /fake/sim/blobs/{} Some(10)", d.replacen(':', "/", 1)),
            ]
        );
        assert_eq!(sim.blob_gets(&d), 0);
        // Stored once the followers are served (the fsync and rename come after).
        let stored = blob_path(&s.data_dir(), &d);
        assert!(common::eventually(std::time::Duration::from_secs(10), || stored.exists()).await);
    })
    .await;
}

async fn get_owned(url: String) -> (u16, Result<Vec<u8>, String>) {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_body_that_cannot_be_continued_fails_and_the_bucket_is_left_alone() {
    let (sim, bucket, s, blob, url) = behind_fake_bucket(76, Bucket::CutThenIgnoresRanges).await;
    let d = common::sha256_digest(&blob);
    within(60, "bodies breaking off", async {
        // The ranged answer is a 200 from byte 0: not taken as the rest of the body.
        let (_, body) = get(&url).await;
        assert!(body.is_err(), "a body that broke off was completed");
        assert!(!blob_path(&s.data_dir(), &d).exists());
        assert_eq!(
            bucket.requests("GET /fake/sim/blobs/").len(),
            2,
            "{:?}\n{}",
            bucket.requests(""),
            s.log()
        );
        // The next request is not sent to that bucket: the upstream serves it.
        assert_eq!(get(&url).await, (200, Ok(blob.clone())));
        assert_eq!(
            bucket.requests("GET /fake/sim/blobs/").len(),
            2,
            "{:?}\n{}",
            bucket.requests(""),
            s.log()
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_may_take_longer_than_a_read_answer() {
    let (_sim, bucket, s, blob, url) = behind_fake_bucket(77, Bucket::SlowPuts).await;
    within(60, "slow upload", async {
        assert_eq!(get(&url).await, (200, Ok(blob.clone())));
        let uploaded = metric_reaches(
            &s,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"uploaded\""],
            1.0,
        )
        .await;
        assert_eq!(uploaded, 1.0, "{}", s.metrics().await);
        assert_eq!(bucket.requests("PUT").len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_manifest_from_the_bucket_vouches_for_its_layers_in_a_repository_listing_it() {
    let garage = Garage::start();
    let sim = Sim::start().await;
    let image = sim.push_image("team/multi", "amd64-only", &[random_bytes(50_000, 79)]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::images::OCI_INDEX,
        "manifests": [{"mediaType": common::images::OCI_MANIFEST,
                       "digest": image.manifest_digest, "size": image.manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let index_digest = sim.add_manifest(common::images::OCI_INDEX, index);
    sim.tag("team/multi", "1.0", &index_digest);
    let config = format!("{}\n{}", garage.storage_toml(""), sim.upstream_toml(""));
    let (a, b) = (Sluice::start(&config), Sluice::start(&config));
    let pull = |s: &Sluice| {
        let base = format!("{}/v2/team/multi", s.base_url());
        let (manifest, layer) = (
            image.manifest_digest.clone(),
            image.layer_digests[0].clone(),
        );
        async move {
            for path in [
                "manifests/1.0".to_string(),
                format!("manifests/{manifest}"),
                format!("blobs/{layer}"),
            ] {
                let (status, _) = get(&format!("{base}/{path}")).await;
                assert_eq!(status, 200, "{path}");
            }
        }
    };
    within(60, "platform manifest", async {
        pull(&a).await;
        // The manifest and the layer reach the bucket (and the index, which B takes from
        // the upstream anyway: it asks by tag).
        metric_reaches(
            &a,
            "sluice_shared_store_events_total",
            &["op=\"upload\"", "result=\"uploaded\""],
            3.0,
        )
        .await;
        let layer_path = format!("/blobs/{}", image.layer_digests[0]);
        let heads = sim.count("HEAD", &layer_path);
        // B resolves the tag with the upstream (the index links its platform manifest to
        // team/multi), takes the platform manifest from the bucket and, since the
        // repository lists it, links its layers with it: the layer, from the bucket too,
        // needs no upstream check.
        pull(&b).await;
        assert_eq!(
            sim.blob_gets(&image.layer_digests[0]),
            1,
            "one layer GET, by A"
        );
        assert_eq!(
            sim.count("GET", &image.manifest_digest),
            1,
            "one manifest GET, by A"
        );
        assert_eq!(
            sim.count("HEAD", &layer_path),
            heads,
            "B asked the upstream about the layer"
        );
    })
    .await;
}
