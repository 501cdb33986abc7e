//! The upstream fault matrix for npm and PyPI (the OCI one is in `reliability_upstream.rs`,
//! `reliability_limits.rs` and `reliability_resume.rs`), against the fake registries
//! `common::npm_sim` and `common::pypi_sim`:
//!
//! - transient `5xx` retried, invisible to the client;
//! - `Retry-After` on `429`/`503` waited out up to `retry_after_max`, refused beyond;
//! - the circuit breaker: opens after `circuit_failures`, serves cached packuments and simple
//!   pages `STALE`, fails uncached requests fast with `503` + `Retry-After` in the format's own
//!   error body without touching the upstream, and a half-open probe closes it;
//! - per-upstream limits: `max_concurrent` never exceeded, `queue_timeout`, `rate_limit`;
//! - a cut tarball or wheel fill resumed with a `Range` request.
//!
//! Every case checks the client's result, the upstream request counts, and that the store
//! holds only verified content (every file under `blobs/` hashes to its name, `tmp/` empty).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::metrics;
use common::npm_sim::{NpmFault, NpmSim, Published};
use common::pypi_sim::{Mode, PyFault, PypiSim, SimFile};
use common::{
    blob_files, blob_path, eventually, http_client, random_bytes, sha256_digest,
    sluice_cache_header, tmp_files, within, Sluice,
};

const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";

fn npm_sluice(sim: &NpmSim, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\nretry_backoff = \"20ms\"\n{extra}\n",
        sim.registry_url()
    ))
}

fn pypi_sluice(sim: &PypiSim, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\nretry_backoff = \"20ms\"\n{extra}\n",
        sim.simple_url()
    ))
}

/// What a client got.
struct Got {
    status: u16,
    cache: String,
    content_type: String,
    retry_after: Option<String>,
    /// `None` when the body did not arrive whole.
    body: Option<Vec<u8>>,
}

async fn get(c: &reqwest::Client, url: &str, accept: Option<&str>) -> Got {
    let mut rb = c.get(url);
    if let Some(a) = accept {
        rb = rb.header("Accept", a);
    }
    let r = rb.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Got {
        status: r.status().as_u16(),
        cache: sluice_cache_header(&r),
        content_type: h("content-type").unwrap_or_default(),
        retry_after: h("retry-after"),
        body: r.bytes().await.ok().map(|b| b.to_vec()),
    }
}

/// The store holds only verified content: `tmp/` empties, every stored file hashes to its
/// name.
async fn assert_store_verified(data: &Path, what: &str) {
    assert!(
        eventually(Duration::from_secs(5), || tmp_files(data).is_empty()).await,
        "{what}: temp files left: {:?}",
        tmp_files(data)
    );
    for f in blob_files(data) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let bytes = std::fs::read(&f).expect("read stored file");
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{name}"),
            "{what}: {} does not hash to its name",
            f.display()
        );
    }
}

fn tarball_url(s: &Sluice, p: &Published) -> String {
    format!("{}/npmjs/{}/-/{}", s.base_url(), p.name, p.file)
}

fn sim_tarball(p: &Published) -> String {
    format!("/files/{}/-/{}", p.name, p.file)
}

/// A wheel of `len` random bytes for `project` (a name without separators).
fn wheel(project: &str, len: usize, seed: u64) -> SimFile {
    SimFile::new(
        &format!("{project}-1.0-py3-none-any.whl"),
        "1.0",
        random_bytes(len, seed),
    )
}

/// The sluice URL of a file that a fetched page of `project` lists.
fn file_url(s: &Sluice, f: &SimFile) -> String {
    format!(
        "{}/pypi/files/sha256/{}/{}",
        s.base_url(),
        f.sha256(),
        f.filename
    )
}

fn page_url(s: &Sluice, project: &str) -> String {
    format!("{}/pypi/simple/{project}/", s.base_url())
}

/// An open circuit's answer: `503`, a `Retry-After` of whole seconds no longer than the
/// cool-down, quickly. Returns the `Retry-After` seconds.
fn assert_circuit_open_answer(g: &Got, took: Duration, cooldown_secs: u64, what: &str) -> u64 {
    assert_eq!(g.status, 503, "{what}: an open circuit answers 503");
    let secs: u64 = g
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After {:?}", g.retry_after));
    assert!(
        (1..=cooldown_secs).contains(&secs),
        "{what}: Retry-After {secs}"
    );
    assert!(took < Duration::from_millis(500), "{what}: took {took:?}");
    secs
}

/// Polls the async `cond` every 100 ms for up to 5 s; whether it held.
async fn eventually_async<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------
// Retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_transient_5xx_is_retried_and_the_client_never_sees_it() {
    let sim = NpmSim::start().await;
    let p = sim.publish("flaky", "1.0.0", &[]);
    sim.fault("/registry/flaky", NpmFault::first(2, NpmFault::Status(503)));
    sim.fault(&sim_tarball(&p), NpmFault::first(2, NpmFault::Status(502)));
    let s = npm_sluice(&sim, "retries = 2\ncircuit_failures = 0");
    let c = http_client();
    within(30, "npm retries", async {
        let g = get(&c, &format!("{}/npmjs/flaky", s.base_url()), None).await;
        assert_eq!(g.status, 200, "two 503s then a 200 with retries = 2");
        let doc: serde_json::Value =
            serde_json::from_slice(g.body.as_deref().expect("packument")).expect("JSON");
        assert!(doc["versions"]["1.0.0"].is_object(), "{doc}");
        assert_eq!(sim.count("GET", "/registry/flaky"), 3, "one + two retries");

        let g = get(&c, &tarball_url(&s, &p), None).await;
        assert_eq!(g.status, 200, "two 502s then a 200");
        assert!(g.body.as_deref() == Some(&p.tarball[..]), "wrong tarball");
        assert_eq!(sim.count("GET", &sim_tarball(&p)), 3);
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_upstream_retries_total{upstream=\"npmjs\"}"),
            4.0,
            "{m}"
        );
        s.settled().await;
        assert!(blob_path(&s.data_dir(), &sha256_digest(&p.tarball)).exists());
        // Bounded: a persistent 503 is tried 1 + retries times, then the client gets a 5xx.
        sim.publish("down", "1.0.0", &[]);
        sim.fault("/registry/down", NpmFault::Status(503));
        let g = get(&c, &format!("{}/npmjs/down", s.base_url()), None).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert_eq!(sim.count("GET", "/registry/down"), 3);
        assert_store_verified(&s.data_dir(), "npm retries").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_transient_5xx_is_retried_and_the_client_never_sees_it() {
    let sim = PypiSim::start(Mode::Json).await;
    let f = wheel("flaky", 200_000, 7001);
    sim.add_file("flaky", f.clone());
    sim.fault("/simple/flaky/", PyFault::first(2, PyFault::Status(503)));
    sim.fault(
        &format!("/files/{}", f.filename),
        PyFault::first(2, PyFault::Status(500)),
    );
    let s = pypi_sluice(&sim, "retries = 2\ncircuit_failures = 0");
    let c = http_client();
    within(30, "pypi retries", async {
        let g = get(&c, &page_url(&s, "flaky"), Some(PIP_ACCEPT)).await;
        assert_eq!(g.status, 200, "two 503s then a 200");
        let page = String::from_utf8(g.body.expect("page")).expect("utf-8");
        assert!(page.contains(&f.filename), "{page}");
        assert_eq!(sim.count("/simple/flaky/"), 3);

        let g = get(&c, &file_url(&s, &f), None).await;
        assert_eq!(g.status, 200, "two 500s then a 200");
        assert!(g.body.as_deref() == Some(&f.bytes[..]), "wrong wheel");
        assert_eq!(sim.count(&format!("/files/{}", f.filename)), 3);
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_upstream_retries_total{upstream=\"pypi\"}"),
            4.0,
            "{m}"
        );
        s.settled().await;
        assert!(blob_path(&s.data_dir(), &sha256_digest(&f.bytes)).exists());
        assert_store_verified(&s.data_dir(), "pypi retries").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Retry-After

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_retry_after_is_waited_out_up_to_the_cap_and_not_beyond() {
    let sim = NpmSim::start().await;
    sim.publish("patient", "1.0.0", &[]);
    let p = sim.publish("refused", "1.0.0", &[]);
    sim.fault(
        "/registry/patient",
        NpmFault::first(1, NpmFault::RetryAfter(429, "1".into())),
    );
    sim.fault(&sim_tarball(&p), NpmFault::RetryAfter(503, "3600".into()));
    let s = npm_sluice(
        &sim,
        "retries = 2\nretry_after_max = \"5s\"\ncircuit_failures = 0",
    );
    let c = http_client();
    within(30, "npm retry-after", async {
        let t = Instant::now();
        let g = get(&c, &format!("{}/npmjs/patient", s.base_url()), None).await;
        assert_eq!(g.status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "Retry-After: 1 not honoured ({:?})",
            t.elapsed()
        );
        assert_eq!(sim.count("GET", "/registry/patient"), 2);

        let t = Instant::now();
        let g = get(&c, &tarball_url(&s, &p), None).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let err: serde_json::Value =
            serde_json::from_slice(g.body.as_deref().unwrap_or_default()).expect("npm error");
        assert!(err["error"].is_string(), "npm error body: {err}");
        assert_eq!(
            sim.count("GET", &sim_tarball(&p)),
            1,
            "Retry-After beyond retry_after_max: fail now, do not retry"
        );
        assert!(!blob_path(&s.data_dir(), &sha256_digest(&p.tarball)).exists());
        assert_store_verified(&s.data_dir(), "npm retry-after").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_retry_after_is_waited_out_up_to_the_cap_and_not_beyond() {
    let sim = PypiSim::start(Mode::Json).await;
    let f = wheel("patient", 50_000, 7002);
    sim.add_file("patient", f.clone());
    sim.add_file("refused", wheel("refused", 1000, 7003));
    sim.fault(
        "/simple/patient/",
        PyFault::first(1, PyFault::RetryAfter(429, "1".into())),
    );
    sim.fault(
        &format!("/files/{}", f.filename),
        PyFault::first(1, PyFault::RetryAfter(503, "1".into())),
    );
    sim.fault("/simple/refused/", PyFault::RetryAfter(503, "3600".into()));
    let s = pypi_sluice(
        &sim,
        "retries = 2\nretry_after_max = \"5s\"\ncircuit_failures = 0",
    );
    let c = http_client();
    within(30, "pypi retry-after", async {
        let t = Instant::now();
        let g = get(&c, &page_url(&s, "patient"), Some(PIP_ACCEPT)).await;
        assert_eq!(g.status, 200);
        let g = get(&c, &file_url(&s, &f), None).await;
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&f.bytes[..]));
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "two Retry-After: 1 not honoured ({:?})",
            t.elapsed()
        );
        assert_eq!(sim.count("/simple/patient/"), 2);
        assert_eq!(sim.count(&format!("/files/{}", f.filename)), 2);

        let t = Instant::now();
        let g = get(&c, &page_url(&s, "refused"), Some(PIP_ACCEPT)).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            g.content_type.starts_with("text/plain"),
            "{}",
            g.content_type
        );
        assert_eq!(sim.count("/simple/refused/"), 1, "not retried");
        assert_store_verified(&s.data_dir(), "pypi retry-after").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Circuit breaker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it() {
    let sim = NpmSim::start().await;
    let cached = sim.publish("cached", "1.0.0", &[]);
    let other = sim.publish("cached", "1.1.0", &[]);
    sim.publish("uncached", "1.0.0", &[]);
    let s = npm_sluice(
        &sim,
        "retries = 0\ncircuit_failures = 3\ncircuit_cooldown = \"2s\"\nmetadata_ttl = \"1s\"",
    );
    let c = http_client();
    let pack = format!("{}/npmjs/cached", s.base_url());
    let uncached = format!("{}/npmjs/uncached", s.base_url());
    within(60, "npm circuit", async {
        let g = get(&c, &pack, None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "MISS"));
        let g = get(&c, &tarball_url(&s, &cached), None).await;
        assert_eq!(g.status, 200);

        // Three consecutive failures open the circuit.
        sim.fault("/registry/", NpmFault::Status(503));
        sim.fault("/files/", NpmFault::Status(503));
        for _ in 0..3 {
            let g = get(&c, &uncached, None).await;
            assert!((500..600).contains(&g.status), "{}", g.status);
        }
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"npmjs\"}"),
            1.0,
            "{m}"
        );
        let seen = sim.requests().len();
        tokio::time::sleep(Duration::from_millis(1100)).await; // past metadata_ttl

        // Open: the cached packument is served stale, the stored tarball is a hit ...
        let g = get(&c, &pack, None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "STALE"));
        let doc: serde_json::Value =
            serde_json::from_slice(g.body.as_deref().expect("body")).expect("JSON");
        assert!(doc["versions"]["1.0.0"].is_object());
        let g = get(&c, &tarball_url(&s, &cached), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert!(g.body.as_deref() == Some(&cached.tarball[..]));
        // ... and what is not cached fails at once: 503, Retry-After, npm's error body.
        let t = Instant::now();
        let g = get(&c, &uncached, None).await;
        let wait = assert_circuit_open_answer(&g, t.elapsed(), 2, "uncached packument");
        assert!(
            g.content_type.starts_with("application/json"),
            "{}",
            g.content_type
        );
        let err: serde_json::Value =
            serde_json::from_slice(g.body.as_deref().expect("body")).expect("npm error JSON");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains("circuit open"), "{err}");
        let t = Instant::now();
        let g = get(&c, &tarball_url(&s, &other), None).await;
        assert_circuit_open_answer(&g, t.elapsed(), 2, "uncached tarball");
        assert_eq!(
            sim.requests().len(),
            seen,
            "upstream contacted while the circuit was open"
        );

        // After Retry-After one probe goes through; the upstream has recovered.
        sim.clear_faults();
        tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
        let g = get(&c, &uncached, None).await;
        assert_eq!(g.status, 200, "probe after the cool-down");
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"npmjs\"}"),
            0.0,
            "{m}"
        );
        // Closed: the expired packument is revalidated upstream again (in the background
        // of a stale answer), after which it is fresh.
        let before = sim.count("GET", "/registry/cached");
        assert_eq!(get(&c, &pack, None).await.status, 200);
        assert!(
            eventually(Duration::from_secs(5), || sim
                .count("GET", "/registry/cached")
                > before)
            .await,
            "no revalidation after the circuit closed"
        );
        assert!(
            eventually_async(|| async { get(&c, &pack, None).await.cache != "STALE" }).await,
            "closed circuit revalidates again"
        );
        let g = get(&c, &tarball_url(&s, &other), None).await;
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&other.tarball[..]));
        assert_store_verified(&s.data_dir(), "npm circuit").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it() {
    let sim = PypiSim::start(Mode::Json).await;
    let got = wheel("cached", 20_000, 7004);
    let later = SimFile::new("cached-1.0.tar.gz", "1.0", random_bytes(10_000, 7005));
    sim.add_file("cached", got.clone());
    sim.add_file("cached", later.clone());
    sim.add_file("uncached", wheel("uncached", 1000, 7006));
    let s = pypi_sluice(
        &sim,
        "retries = 0\ncircuit_failures = 3\ncircuit_cooldown = \"2s\"\nmetadata_ttl = \"1s\"",
    );
    let c = http_client();
    let page = page_url(&s, "cached");
    let uncached = page_url(&s, "uncached");
    within(60, "pypi circuit", async {
        let g = get(&c, &page, Some(PIP_ACCEPT)).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "MISS"));
        let g = get(&c, &file_url(&s, &got), None).await;
        assert_eq!(g.status, 200);

        sim.fault("/simple/", PyFault::Status(503));
        sim.fault("/files/", PyFault::Status(503));
        for _ in 0..3 {
            let g = get(&c, &uncached, Some(PIP_ACCEPT)).await;
            assert!((500..600).contains(&g.status), "{}", g.status);
        }
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"pypi\"}"),
            1.0,
            "{m}"
        );
        let seen = sim.requests().len();
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let g = get(&c, &page, Some(PIP_ACCEPT)).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "STALE"));
        let body = String::from_utf8(g.body.expect("page")).expect("utf-8");
        assert!(body.contains(&later.filename), "{body}");
        let g = get(&c, &file_url(&s, &got), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert!(g.body.as_deref() == Some(&got.bytes[..]));
        // Not cached: 503 with Retry-After, as plain text for pip.
        let t = Instant::now();
        let g = get(&c, &uncached, Some(PIP_ACCEPT)).await;
        let wait = assert_circuit_open_answer(&g, t.elapsed(), 2, "uncached page");
        assert!(
            g.content_type.starts_with("text/plain"),
            "{}",
            g.content_type
        );
        let text = String::from_utf8(g.body.expect("body")).expect("utf-8");
        assert!(text.contains("circuit open"), "{text}");
        let t = Instant::now();
        let g = get(&c, &file_url(&s, &later), None).await;
        assert_circuit_open_answer(&g, t.elapsed(), 2, "uncached file of a cached page");
        assert!(!blob_path(&s.data_dir(), &sha256_digest(&later.bytes)).exists());
        assert_eq!(
            sim.requests().len(),
            seen,
            "upstream contacted while the circuit was open"
        );

        sim.clear_faults();
        tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
        let g = get(&c, &uncached, Some(PIP_ACCEPT)).await;
        assert_eq!(g.status, 200, "probe after the cool-down");
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_circuit_state{upstream=\"pypi\"}"),
            0.0,
            "{m}"
        );
        let before = sim.count("/simple/cached/");
        assert_eq!(get(&c, &page, Some(PIP_ACCEPT)).await.status, 200);
        assert!(
            eventually(Duration::from_secs(5), || sim.count("/simple/cached/")
                > before)
            .await,
            "no revalidation after the circuit closed"
        );
        assert!(
            eventually_async(|| async { get(&c, &page, Some(PIP_ACCEPT)).await.cache != "STALE" })
                .await,
            "closed circuit revalidates again"
        );
        let g = get(&c, &file_url(&s, &later), None).await;
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&later.bytes[..]));
        assert_store_verified(&s.data_dir(), "pypi circuit").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Per-upstream limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_max_concurrent_queue_timeout_and_rate_limit() {
    let sim = NpmSim::start().await;
    let pkgs: Vec<Published> = (0..3)
        .map(|i| sim.publish(&format!("capped{i}"), "1.0.0", &[]))
        .collect();
    let held = sim.publish("held", "1.0.0", &[]);
    sim.publish("queued", "1.0.0", &[]);
    let s = npm_sluice(
        &sim,
        "retries = 0\ncircuit_failures = 0\nmax_concurrent = 1\nqueue_timeout = \"300ms\"",
    );
    let c = http_client();
    within(60, "npm limits", async {
        for p in pkgs.iter().chain([&held]) {
            let g = get(&c, &format!("{}/npmjs/{}", s.base_url(), p.name), None).await;
            assert_eq!(g.status, 200, "{}", p.name);
        }
        // Three slow tarballs at once: the upstream never serves two at a time.
        for p in &pkgs {
            sim.fault(
                &sim_tarball(p),
                NpmFault::Slow {
                    chunk: 32,
                    delay: Duration::from_millis(10),
                },
            );
        }
        let t = Instant::now();
        let results = futures_util::future::join_all(pkgs.iter().map(|p| {
            let (c, url) = (&c, tarball_url(&s, p));
            async move { get(c, &url, None).await }
        }))
        .await;
        for (g, p) in results.iter().zip(&pkgs) {
            assert_eq!(g.status, 200, "{}", p.name);
            assert!(g.body.as_deref() == Some(&p.tarball[..]), "{}", p.name);
            assert_eq!(sim.count("GET", &sim_tarball(p)), 1);
        }
        assert_eq!(
            sim.peak_inflight(),
            1,
            "max_concurrent = 1 but the upstream served several at once"
        );
        let one = pkgs[0].tarball.len().div_ceil(32) as u64 * 10;
        assert!(
            t.elapsed() >= Duration::from_millis(3 * one * 8 / 10),
            "{:?} for three trickles of ~{one} ms each",
            t.elapsed()
        );

        // A request that cannot get the slot within queue_timeout fails fast, unsent.
        sim.fault(
            &sim_tarball(&held),
            NpmFault::Slow {
                chunk: 16,
                delay: Duration::from_millis(100),
            },
        );
        let first = {
            let (c, url) = (c.clone(), tarball_url(&s, &held));
            tokio::spawn(async move { get(&c, &url, None).await })
        };
        assert!(
            eventually(Duration::from_secs(10), || sim
                .count("GET", &sim_tarball(&held))
                == 1)
            .await,
            "the held fetch never reached the upstream"
        );
        let t = Instant::now();
        let g = get(&c, &format!("{}/npmjs/queued", s.base_url()), None).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            sim.count("GET", "/registry/queued"),
            0,
            "sent despite the cap"
        );
        let g = first.await.expect("held fetch");
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&held.tarball[..]));
        let g = get(&c, &format!("{}/npmjs/queued", s.base_url()), None).await;
        assert_eq!(g.status, 200, "slot free again");
        assert_eq!(sim.peak_inflight(), 1);
        let m = s.metrics().await;
        assert!(
            metrics::sample(&m, "sluice_upstream_throttled_total{upstream=\"npmjs\"}") >= 2.0,
            "{m}"
        );
        assert_store_verified(&s.data_dir(), "npm limits").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_rate_limit_paces_requests_to_the_upstream() {
    let sim = NpmSim::start().await;
    for i in 0..6 {
        sim.publish(&format!("paced{i}"), "1.0.0", &[]);
    }
    let s = npm_sluice(&sim, "retries = 0\nrate_limit = \"4/s\"");
    let c = http_client();
    within(30, "npm rate limit", async {
        let t = Instant::now();
        for i in 0..6 {
            let g = get(&c, &format!("{}/npmjs/paced{i}", s.base_url()), None).await;
            assert_eq!(g.status, 200);
        }
        // A burst of 4, then one every 250 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(sim.count("GET", "/registry/paced"), 6);
        let m = s.metrics().await;
        assert!(
            metrics::sample(&m, "sluice_upstream_throttled_total{upstream=\"npmjs\"}") >= 2.0,
            "{m}"
        );
        assert_store_verified(&s.data_dir(), "npm rate limit").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_max_concurrent_queue_timeout_and_rate_limit() {
    let sim = PypiSim::start(Mode::Json).await;
    let files: Vec<SimFile> = (0..3)
        .map(|i| {
            let f = wheel(&format!("capped{i}"), 64 * 1024, 7100 + i);
            sim.add_file(&format!("capped{i}"), f.clone());
            f
        })
        .collect();
    let held = wheel("held", 30 * 1024, 7110);
    sim.add_file("held", held.clone());
    sim.add_file("queued", wheel("queued", 1000, 7111));
    let s = pypi_sluice(
        &sim,
        "retries = 0\ncircuit_failures = 0\nmax_concurrent = 1\nqueue_timeout = \"1s\"\nrate_limit = \"20/s\"",
    );
    let c = http_client();
    within(60, "pypi limits", async {
        for i in 0..3 {
            let g = get(&c, &page_url(&s, &format!("capped{i}")), Some(PIP_ACCEPT)).await;
            assert_eq!(g.status, 200);
        }
        assert_eq!(
            get(&c, &page_url(&s, "held"), Some(PIP_ACCEPT))
                .await
                .status,
            200
        );
        for f in &files {
            sim.fault(
                &format!("/files/{}", f.filename),
                PyFault::Slow {
                    chunk: 8 * 1024,
                    delay: Duration::from_millis(20),
                },
            );
        }
        let t = Instant::now();
        let results = futures_util::future::join_all(files.iter().map(|f| {
            let (c, url) = (&c, file_url(&s, f));
            async move { get(c, &url, None).await }
        }))
        .await;
        for (g, f) in results.iter().zip(&files) {
            assert_eq!(g.status, 200, "{}", f.filename);
            assert!(g.body.as_deref() == Some(&f.bytes[..]), "{}", f.filename);
            assert_eq!(sim.count(&format!("/files/{}", f.filename)), 1);
        }
        assert_eq!(
            sim.peak_inflight(),
            1,
            "max_concurrent = 1 but the upstream served several at once"
        );
        // Each trickles 8 chunks with 7 pauses of 20 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(3 * 140 * 8 / 10),
            "{:?}",
            t.elapsed()
        );

        sim.fault(
            &format!("/files/{}", held.filename),
            PyFault::Slow {
                chunk: 1024,
                delay: Duration::from_millis(100),
            },
        );
        let first = {
            let (c, url) = (c.clone(), file_url(&s, &held));
            tokio::spawn(async move { get(&c, &url, None).await })
        };
        assert!(
            eventually(Duration::from_secs(10), || sim
                .count(&format!("/files/{}", held.filename))
                == 1)
            .await,
            "the held fetch never reached the upstream"
        );
        let t = Instant::now();
        let g = get(&c, &page_url(&s, "queued"), Some(PIP_ACCEPT)).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        // queue_timeout = 1s, while the held body takes about 3 s.
        assert!(
            t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(sim.count("/simple/queued/"), 0, "sent despite the cap");
        let g = first.await.expect("held fetch");
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&held.bytes[..]));
        assert_eq!(
            get(&c, &page_url(&s, "queued"), Some(PIP_ACCEPT))
                .await
                .status,
            200
        );
        assert_eq!(sim.peak_inflight(), 1);

        // rate_limit = 20/s: a burst of 20, then one every 50 ms. 30 page requests for
        // projects the index does not have (each one upstream request, answered 404).
        let t = Instant::now();
        let before = sim.requests().len();
        for i in 0..30 {
            let g = get(&c, &page_url(&s, &format!("nothing{i}")), Some(PIP_ACCEPT)).await;
            assert_eq!(g.status, 404);
        }
        assert_eq!(sim.requests().len() - before, 30);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "30 requests at 20/s after the burst: {:?}",
            t.elapsed()
        );
        let m = s.metrics().await;
        assert!(
            metrics::sample(&m, "sluice_upstream_throttled_total{upstream=\"pypi\"}") >= 5.0,
            "{m}"
        );
        assert_store_verified(&s.data_dir(), "pypi limits").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Resume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_cut_tarball_fill_is_resumed_with_a_range_request() {
    let sim = NpmSim::start().await;
    sim.set_ranges(true);
    let p = sim.publish("resumed", "1.0.0", &[]);
    sim.fault(&sim_tarball(&p), NpmFault::first(1, NpmFault::CutMidBody));
    let s = npm_sluice(&sim, "retries = 0\ncircuit_failures = 0");
    let c = http_client();
    within(30, "npm resume", async {
        let g = get(&c, &tarball_url(&s, &p), None).await;
        assert_eq!(g.status, 200);
        let body = g
            .body
            .expect("the client's body was cut although the fill resumed");
        assert!(body == p.tarball, "resumed tarball differs");
        assert_eq!(
            sim.count("GET", &sim_tarball(&p)),
            2,
            "one cut GET, one range GET"
        );
        let ranges = sim.range_requests(&sim_tarball(&p));
        assert_eq!(ranges, vec![format!("bytes={}-", p.tarball.len() / 2)]);
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_fill_resumes_total{format=\"npm\"}"),
            1.0,
            "{m}"
        );
        s.settled().await;
        assert!(blob_path(&s.data_dir(), &sha256_digest(&p.tarball)).exists());
        let g = get(&c, &tarball_url(&s, &p), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert_eq!(sim.count("GET", &sim_tarball(&p)), 2);
        assert_store_verified(&s.data_dir(), "npm resume").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_cut_wheel_fill_is_resumed_with_a_range_request() {
    let sim = PypiSim::start(Mode::Html).await;
    sim.set_ranges(true);
    let f = wheel("resumed", 3 << 20, 7200);
    sim.add_file("resumed", f.clone());
    let path = format!("/files/{}", f.filename);
    sim.fault(&path, PyFault::first(1, PyFault::CutMidBody));
    let s = pypi_sluice(&sim, "retries = 0\ncircuit_failures = 0");
    let c = http_client();
    within(60, "pypi resume", async {
        assert_eq!(get(&c, &page_url(&s, "resumed"), None).await.status, 200);
        let g = get(&c, &file_url(&s, &f), None).await;
        assert_eq!(g.status, 200);
        let body = g
            .body
            .expect("the client's body was cut although the fill resumed");
        assert!(body == f.bytes, "resumed wheel differs");
        assert_eq!(sim.count(&path), 2, "one cut GET, one range GET");
        let ranges = sim.range_requests(&path);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let from: usize = ranges[0]
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("range {:?}", ranges[0]));
        assert!(from > 0 && from <= f.bytes.len() / 2, "resumed at {from}");
        let m = s.metrics().await;
        assert_eq!(
            metrics::sample(&m, "sluice_fill_resumes_total{format=\"pypi\"}"),
            1.0,
            "{m}"
        );
        s.settled().await;
        let stored = std::fs::read(blob_path(&s.data_dir(), &sha256_digest(&f.bytes)))
            .expect("stored wheel");
        assert!(stored == f.bytes);
        let g = get(&c, &file_url(&s, &f), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert_eq!(sim.count(&path), 2);
        assert_store_verified(&s.data_dir(), "pypi resume").await;
    })
    .await;
}
