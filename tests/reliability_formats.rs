//! The upstream fault matrix for npm and PyPI (the OCI one is in `reliability_upstream.rs`,
//! `reliability_limits.rs` and `reliability_resume.rs`), against the fake registries
//! `common::npm_sim` and `common::pypi_sim`:
//!
//! - transient `5xx` retried, invisible to the client; a persistent one tried `1 + retries`
//!   times;
//! - `Retry-After` on `429`/`503` waited out up to `retry_after_max`, refused beyond;
//! - the circuit breaker: opens after `circuit_failures`, serves cached packuments and simple
//!   pages `STALE`, fails uncached requests fast with `503` + `Retry-After` in the format's own
//!   error body without touching the upstream, and a half-open probe closes it;
//! - per-upstream limits: `max_concurrent` never exceeded, `queue_timeout`, `rate_limit`;
//! - a cut tarball or wheel fill resumed with a `Range` request.
//!
//! Each scenario is written once, against a [`Format`] (the simulator, the URLs of a
//! document and of a file, the format's error body), and run as one test per format.
//! Every case checks the client's result, the upstream request counts, and that the store
//! holds only verified content (every file under `blobs/` hashes to its name, `tmp/` empty).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::BodyFault as Fault;
use common::metrics;
use common::npm_sim::NpmSim;
use common::pypi_sim::{Mode, PypiSim, SimFile};
use common::{
    blob_files, blob_path, eventually, eventually_async, http_client, random_bytes, sha256_digest,
    sluice_cache_header, tmp_files, within, Sluice,
};

const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";

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
    // Generous for a loaded machine; that the upstream was not asked is checked by
    // counting its requests.
    assert!(took < Duration::from_millis(2000), "{what}: took {took:?}");
    secs
}

// ---------------------------------------------------------------------------------------
// The formats under test

/// A published file: an npm tarball or a PyPI wheel/sdist.
#[derive(Clone)]
struct File {
    version: String,
    filename: String,
    bytes: Vec<u8>,
    /// Its path on the simulator.
    sim_path: String,
    /// Its path on sluice.
    sluice_path: String,
}

impl File {
    fn url(&self, s: &Sluice) -> String {
        format!("{}{}", s.base_url(), self.sluice_path)
    }

    fn stored(&self, s: &Sluice) -> bool {
        blob_path(&s.data_dir(), &sha256_digest(&self.bytes)).exists()
    }
}

/// A format under test: its simulator, and how its documents (packuments, simple pages),
/// files and error bodies look.
enum Format {
    Npm(NpmSim),
    Pypi(PypiSim),
}

impl Format {
    async fn npm() -> Format {
        Format::Npm(NpmSim::start().await)
    }

    async fn pypi(mode: Mode) -> Format {
        Format::Pypi(PypiSim::start(mode).await)
    }

    /// A value that differs between the formats.
    fn pick<T>(&self, npm: T, pypi: T) -> T {
        match self {
            Format::Npm(_) => npm,
            Format::Pypi(_) => pypi,
        }
    }

    /// The format's name, as in `sluice_fill_resumes_total{format=…}`.
    fn name(&self) -> &'static str {
        self.pick("npm", "pypi")
    }

    /// The upstream's name in sluice's config and metrics.
    fn upstream(&self) -> &'static str {
        self.pick("npmjs", "pypi")
    }

    fn sluice(&self, extra: &str) -> Sluice {
        let url = match self {
            Format::Npm(sim) => sim.registry_url(),
            Format::Pypi(sim) => sim.simple_url(),
        };
        Sluice::start(&format!(
            "[[upstream]]\nname = \"{}\"\nformat = \"{}\"\nurl = \"{url}\"\nretry_backoff = \"20ms\"\n{extra}\n",
            self.upstream(),
            self.name()
        ))
    }

    /// Publishes `project` with one file (for PyPI a wheel of `len` random bytes from
    /// `seed`; an npm tarball is what the simulator packs).
    fn publish(&self, project: &str, len: usize, seed: u64) -> File {
        match self {
            Format::Npm(sim) => {
                let p = sim.publish(project, "1.0.0", &[]);
                npm_file(&p)
            }
            Format::Pypi(sim) => {
                let f = SimFile::new(
                    &format!("{project}-1.0-py3-none-any.whl"),
                    "1.0",
                    random_bytes(len, seed),
                );
                sim.add_file(project, f.clone());
                pypi_file(&f)
            }
        }
    }

    /// Adds a second file to a published `project` (npm: version 1.1.0; PyPI: an sdist).
    fn publish_another(&self, project: &str, len: usize, seed: u64) -> File {
        match self {
            Format::Npm(sim) => npm_file(&sim.publish(project, "1.1.0", &[])),
            Format::Pypi(sim) => {
                let f = SimFile::new(
                    &format!("{project}-1.0.tar.gz"),
                    "1.0",
                    random_bytes(len, seed),
                );
                sim.add_file(project, f.clone());
                pypi_file(&f)
            }
        }
    }

    /// The path of `project`'s document on the simulator.
    fn doc_path(&self, project: &str) -> String {
        match self {
            Format::Npm(_) => format!("/registry/{project}"),
            Format::Pypi(_) => format!("/simple/{project}/"),
        }
    }

    /// What every document path on the simulator starts with.
    fn docs_prefix(&self) -> &'static str {
        self.pick("/registry/", "/simple/")
    }

    fn doc_url(&self, s: &Sluice, project: &str) -> String {
        match self {
            Format::Npm(_) => format!("{}/npmjs/{project}", s.base_url()),
            Format::Pypi(_) => format!("{}/pypi/simple/{project}/", s.base_url()),
        }
    }

    /// GET `project`'s document as the format's client asks for it.
    async fn get_doc(&self, c: &reqwest::Client, s: &Sluice, project: &str) -> Got {
        get(
            c,
            &self.doc_url(s, project),
            self.pick(None, Some(PIP_ACCEPT)),
        )
        .await
    }

    fn fault(&self, pattern: &str, f: Fault) {
        match self {
            Format::Npm(sim) => sim.fault(pattern, f),
            Format::Pypi(sim) => sim.fault(pattern, f),
        }
    }

    fn clear_faults(&self) {
        match self {
            Format::Npm(sim) => sim.clear_faults(),
            Format::Pypi(sim) => sim.clear_faults(),
        }
    }

    /// Upstream GETs whose path contains `path`.
    fn count(&self, path: &str) -> usize {
        match self {
            Format::Npm(sim) => sim.count("GET", path),
            Format::Pypi(sim) => sim.count(path),
        }
    }

    /// All upstream requests so far.
    fn requests(&self) -> usize {
        match self {
            Format::Npm(sim) => sim.requests().len(),
            Format::Pypi(sim) => sim.requests().len(),
        }
    }

    fn peak_inflight(&self) -> usize {
        match self {
            Format::Npm(sim) => sim.peak_inflight(),
            Format::Pypi(sim) => sim.peak_inflight(),
        }
    }

    fn set_ranges(&self, on: bool) {
        match self {
            Format::Npm(sim) => sim.set_ranges(on),
            Format::Pypi(sim) => sim.set_ranges(on),
        }
    }

    fn range_requests(&self, path: &str) -> Vec<String> {
        match self {
            Format::Npm(sim) => sim.range_requests(path),
            Format::Pypi(sim) => sim.range_requests(path),
        }
    }

    /// `g` is a document that lists `f`.
    fn assert_lists(&self, g: &Got, f: &File) {
        let body = g.body.as_deref().expect("document body");
        match self {
            Format::Npm(_) => {
                let doc: serde_json::Value = serde_json::from_slice(body).expect("JSON");
                assert!(doc["versions"][&f.version].is_object(), "{doc}");
            }
            Format::Pypi(_) => {
                let page = std::str::from_utf8(body).expect("utf-8");
                assert!(page.contains(&f.filename), "{page}");
            }
        }
    }

    /// `g` carries the format's error body (npm: JSON with an `error` string; pip: plain
    /// text), which holds `says` when given.
    fn assert_error_body(&self, g: &Got, says: Option<&str>, what: &str) {
        let body = g.body.as_deref().unwrap_or_default();
        let text = match self {
            Format::Npm(_) => {
                assert!(
                    g.content_type.starts_with("application/json"),
                    "{what}: {}",
                    g.content_type
                );
                let err: serde_json::Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("{what}: npm error JSON: {e}"));
                err["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: npm error body: {err}"))
                    .to_string()
            }
            Format::Pypi(_) => {
                assert!(
                    g.content_type.starts_with("text/plain"),
                    "{what}: {}",
                    g.content_type
                );
                String::from_utf8(body.to_vec()).expect("utf-8")
            }
        };
        if let Some(says) = says {
            assert!(text.contains(says), "{what}: {text}");
        }
    }
}

fn npm_file(p: &common::npm_sim::Published) -> File {
    File {
        version: p.version.clone(),
        filename: p.file.clone(),
        bytes: p.tarball.to_vec(),
        sim_path: format!("/files/{}/-/{}", p.name, p.file),
        sluice_path: format!("/npmjs/{}/-/{}", p.name, p.file),
    }
}

fn pypi_file(f: &SimFile) -> File {
    File {
        version: f.version.clone(),
        filename: f.filename.clone(),
        bytes: f.bytes.to_vec(),
        sim_path: format!("/files/{}", f.filename),
        sluice_path: format!("/pypi/files/sha256/{}/{}", f.sha256(), f.filename),
    }
}

/// One test per format for a scenario: `scenario!(fn_for_npm, fn_for_pypi(pypi mode) =
/// scenario_fn)`.
macro_rules! scenario {
    ($npm:ident, $pypi:ident($mode:expr) = $run:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $npm() {
            $run(Format::npm().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pypi() {
            $run(Format::pypi($mode).await).await;
        }
    };
}

// ---------------------------------------------------------------------------------------
// Retries

scenario!(
    npm_transient_5xx_is_retried_and_the_client_never_sees_it,
    pypi_transient_5xx_is_retried_and_the_client_never_sees_it(Mode::Json) =
        transient_5xx_is_retried_and_the_client_never_sees_it
);

async fn transient_5xx_is_retried_and_the_client_never_sees_it(fmt: Format) {
    let f = fmt.publish("flaky", 200_000, 7001);
    fmt.publish("down", 1000, 7009);
    fmt.fault(&fmt.doc_path("flaky"), Fault::first(2, Fault::Status(503)));
    fmt.fault(
        &f.sim_path,
        Fault::first(2, Fault::Status(fmt.pick(502, 500))),
    );
    let s = fmt.sluice("retries = 2\ncircuit_failures = 0");
    let c = http_client();
    let what = format!("{} retries", fmt.name());
    within(30, &what, async {
        let g = fmt.get_doc(&c, &s, "flaky").await;
        assert_eq!(g.status, 200, "two 503s then a 200 with retries = 2");
        fmt.assert_lists(&g, &f);
        assert_eq!(fmt.count(&fmt.doc_path("flaky")), 3, "one + two retries");

        let g = get(&c, &f.url(&s), None).await;
        assert_eq!(g.status, 200, "two 5xx then a 200");
        assert!(g.body.as_deref() == Some(&f.bytes[..]), "wrong file");
        assert_eq!(fmt.count(&f.sim_path), 3);
        let m = s.metrics().await;
        let series = format!(
            "sluice_upstream_retries_total{{upstream=\"{}\"}}",
            fmt.upstream()
        );
        assert_eq!(metrics::sample(&m, &series), 4.0, "{m}");
        s.settled().await;
        assert!(f.stored(&s));
        // Bounded: a persistent 503 is tried 1 + retries times, then the client gets a 5xx.
        fmt.fault(&fmt.doc_path("down"), Fault::Status(503));
        let g = fmt.get_doc(&c, &s, "down").await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert_eq!(fmt.count(&fmt.doc_path("down")), 3);
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Retry-After

scenario!(
    npm_retry_after_is_waited_out_up_to_the_cap_and_not_beyond,
    pypi_retry_after_is_waited_out_up_to_the_cap_and_not_beyond(Mode::Json) =
        retry_after_is_waited_out_up_to_the_cap_and_not_beyond
);

async fn retry_after_is_waited_out_up_to_the_cap_and_not_beyond(fmt: Format) {
    let f = fmt.publish("patient", 50_000, 7002);
    fmt.publish("refused", 1000, 7003);
    let withheld = fmt.publish("withheld", 1000, 7008);
    fmt.fault(
        &fmt.doc_path("patient"),
        Fault::first(1, Fault::RetryAfter(429, "1".into())),
    );
    fmt.fault(
        &f.sim_path,
        Fault::first(1, Fault::RetryAfter(503, "1".into())),
    );
    fmt.fault(
        &fmt.doc_path("refused"),
        Fault::RetryAfter(503, "3600".into()),
    );
    fmt.fault(&withheld.sim_path, Fault::RetryAfter(503, "3600".into()));
    let s = fmt.sluice("retries = 2\nretry_after_max = \"5s\"\ncircuit_failures = 0");
    let c = http_client();
    let what = format!("{} retry-after", fmt.name());
    within(30, &what, async {
        let t = Instant::now();
        let g = fmt.get_doc(&c, &s, "patient").await;
        assert_eq!(g.status, 200);
        let g = get(&c, &f.url(&s), None).await;
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&f.bytes[..]));
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "two Retry-After: 1 not honoured ({:?})",
            t.elapsed()
        );
        assert_eq!(fmt.count(&fmt.doc_path("patient")), 2);
        assert_eq!(fmt.count(&f.sim_path), 2);

        // Retry-After beyond retry_after_max: fail now, in the format's error body, do not
        // retry; for a document and for a file.
        let t = Instant::now();
        let g = fmt.get_doc(&c, &s, "refused").await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        fmt.assert_error_body(&g, None, "refused document");
        assert_eq!(fmt.count(&fmt.doc_path("refused")), 1, "not retried");

        assert_eq!(fmt.get_doc(&c, &s, "withheld").await.status, 200);
        let t = Instant::now();
        let g = get(&c, &withheld.url(&s), None).await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        fmt.assert_error_body(&g, None, "refused file");
        assert_eq!(fmt.count(&withheld.sim_path), 1, "not retried");
        assert!(!withheld.stored(&s));
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Circuit breaker

scenario!(
    npm_open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it,
    pypi_open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it(Mode::Json) =
        open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it
);

async fn open_circuit_serves_stale_fails_fast_with_503_and_a_probe_closes_it(fmt: Format) {
    let got = fmt.publish("cached", 20_000, 7004);
    let later = fmt.publish_another("cached", 10_000, 7005);
    fmt.publish("uncached", 1000, 7006);
    let s = fmt.sluice(
        "retries = 0\ncircuit_failures = 3\ncircuit_cooldown = \"5s\"\nmetadata_ttl = \"1s\"",
    );
    let c = http_client();
    let state = format!("sluice_circuit_state{{upstream=\"{}\"}}", fmt.upstream());
    let cached_path = fmt.doc_path("cached");
    let what = format!("{} circuit", fmt.name());
    within(60, &what, async {
        let g = fmt.get_doc(&c, &s, "cached").await;
        assert_eq!((g.status, g.cache.as_str()), (200, "MISS"));
        let g = get(&c, &got.url(&s), None).await;
        assert_eq!(g.status, 200);

        // Three consecutive failures open the circuit.
        fmt.fault(fmt.docs_prefix(), Fault::Status(503));
        fmt.fault("/files/", Fault::Status(503));
        for _ in 0..3 {
            let g = fmt.get_doc(&c, &s, "uncached").await;
            assert!((500..600).contains(&g.status), "{}", g.status);
        }
        let m = s.metrics().await;
        assert_eq!(metrics::sample(&m, &state), 1.0, "{m}");
        let seen = fmt.requests();
        tokio::time::sleep(Duration::from_millis(1100)).await; // past metadata_ttl

        // Open: the cached document is served stale, the stored file is a hit ...
        let g = fmt.get_doc(&c, &s, "cached").await;
        assert_eq!((g.status, g.cache.as_str()), (200, "STALE"));
        fmt.assert_lists(&g, &got);
        fmt.assert_lists(&g, &later);
        let g = get(&c, &got.url(&s), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert!(g.body.as_deref() == Some(&got.bytes[..]));
        // ... and what is not cached fails at once: 503, Retry-After, the format's error
        // body.
        let t = Instant::now();
        let g = fmt.get_doc(&c, &s, "uncached").await;
        let wait = assert_circuit_open_answer(&g, t.elapsed(), 5, "uncached document");
        fmt.assert_error_body(&g, Some("circuit open"), "uncached document");
        let t = Instant::now();
        let g = get(&c, &later.url(&s), None).await;
        assert_circuit_open_answer(&g, t.elapsed(), 5, "uncached file of a cached document");
        assert!(!later.stored(&s));
        assert_eq!(
            fmt.requests(),
            seen,
            "upstream contacted while the circuit was open"
        );

        // After Retry-After one probe goes through; the upstream has recovered.
        fmt.clear_faults();
        tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
        let g = fmt.get_doc(&c, &s, "uncached").await;
        assert_eq!(g.status, 200, "probe after the cool-down");
        let m = s.metrics().await;
        assert_eq!(metrics::sample(&m, &state), 0.0, "{m}");
        // Closed: the expired document is revalidated upstream again (in the background of
        // a stale answer), after which it is fresh.
        let before = fmt.count(&cached_path);
        assert_eq!(fmt.get_doc(&c, &s, "cached").await.status, 200);
        assert!(
            eventually(Duration::from_secs(5), || fmt.count(&cached_path) > before).await,
            "no revalidation after the circuit closed"
        );
        assert!(
            eventually_async(|| async { fmt.get_doc(&c, &s, "cached").await.cache != "STALE" })
                .await,
            "closed circuit revalidates again"
        );
        let g = get(&c, &later.url(&s), None).await;
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&later.bytes[..]));
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Per-upstream limits

scenario!(
    npm_max_concurrent_and_queue_timeout,
    pypi_max_concurrent_and_queue_timeout(Mode::Json) = max_concurrent_and_queue_timeout
);

async fn max_concurrent_and_queue_timeout(fmt: Format) {
    let files: Vec<File> = (0..3)
        .map(|i| fmt.publish(&format!("capped{i}"), 64 * 1024, 7100 + i))
        .collect();
    let held = fmt.publish("held", 30 * 1024, 7110);
    fmt.publish("queued", 1000, 7111);
    // queue_timeout, and how long a queued request may take at the most.
    let (queue_timeout, queued_max) = fmt.pick(
        ("queue_timeout = \"300ms\"", Duration::from_millis(2000)),
        (
            "queue_timeout = \"1s\"\nrate_limit = \"20/s\"",
            Duration::from_millis(2500),
        ),
    );
    // ... and at the least: nine tenths of queue_timeout.
    let queued_min = fmt.pick(Duration::from_millis(270), Duration::from_millis(900));
    let s = fmt.sluice(&format!(
        "retries = 0\ncircuit_failures = 0\nmax_concurrent = 1\n{queue_timeout}"
    ));
    let c = http_client();
    let what = format!("{} limits", fmt.name());
    within(60, &what, async {
        for p in ["capped0", "capped1", "capped2", "held"] {
            assert_eq!(fmt.get_doc(&c, &s, p).await.status, 200, "{p}");
        }
        // Three slow files at once: the upstream never serves two at a time.
        let (chunk, delay_ms) = fmt.pick((32, 10), (8 * 1024, 20));
        for f in &files {
            let delay = Duration::from_millis(delay_ms);
            fmt.fault(&f.sim_path, Fault::Slow { chunk, delay });
        }
        let t = Instant::now();
        let results = futures_util::future::join_all(files.iter().map(|f| {
            let (c, url) = (&c, f.url(&s));
            async move { get(c, &url, None).await }
        }))
        .await;
        for (g, f) in results.iter().zip(&files) {
            assert_eq!(g.status, 200, "{}", f.filename);
            assert!(g.body.as_deref() == Some(&f.bytes[..]), "{}", f.filename);
            assert_eq!(fmt.count(&f.sim_path), 1);
        }
        assert_eq!(
            fmt.peak_inflight(),
            1,
            "max_concurrent = 1 but the upstream served several at once"
        );
        let one = files[0].bytes.len().div_ceil(chunk) as u64 * delay_ms;
        assert!(
            t.elapsed() >= Duration::from_millis(3 * one * 8 / 10),
            "{:?} for three trickles of ~{one} ms each",
            t.elapsed()
        );

        // A request that cannot get the slot within queue_timeout fails fast, unsent.
        fmt.fault(
            &held.sim_path,
            Fault::Slow {
                chunk: fmt.pick(16, 1024),
                delay: Duration::from_millis(100),
            },
        );
        let first = {
            let (c, url) = (c.clone(), held.url(&s));
            tokio::spawn(async move { get(&c, &url, None).await })
        };
        assert!(
            eventually(Duration::from_secs(10), || fmt.count(&held.sim_path) == 1).await,
            "the held fetch never reached the upstream"
        );
        let t = Instant::now();
        let g = fmt.get_doc(&c, &s, "queued").await;
        assert!((500..600).contains(&g.status), "{}", g.status);
        // npm: queue_timeout = 300ms; PyPI: 1s, while the held body takes about 3 s.
        assert!(
            t.elapsed() >= queued_min && t.elapsed() < queued_max,
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            fmt.count(&fmt.doc_path("queued")),
            0,
            "sent despite the cap"
        );
        let g = first.await.expect("held fetch");
        assert_eq!(g.status, 200);
        assert!(g.body.as_deref() == Some(&held.bytes[..]));
        let g = fmt.get_doc(&c, &s, "queued").await;
        assert_eq!(g.status, 200, "slot free again");
        assert_eq!(fmt.peak_inflight(), 1);
        let m = s.metrics().await;
        let series = format!(
            "sluice_upstream_throttled_total{{upstream=\"{}\"}}",
            fmt.upstream()
        );
        assert!(metrics::sample(&m, &series) >= 2.0, "{m}");
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}

scenario!(
    npm_rate_limit_paces_requests_to_the_upstream,
    pypi_rate_limit_paces_requests_to_the_upstream(Mode::Json) =
        rate_limit_paces_requests_to_the_upstream
);

async fn rate_limit_paces_requests_to_the_upstream(fmt: Format) {
    // `n` document requests at once, at `rate`/s: a burst of `rate`, then one every
    // 1/`rate` s, so (n - rate) / rate = 500 ms. Every other one is for a project the
    // upstream does not have (one upstream request, answered 404).
    let (rate, n, min_throttled) = fmt.pick((4, 6, 2.0), (20, 30, 5.0));
    for i in (0..n).step_by(2) {
        fmt.publish(&format!("paced{i}"), 1000, 7300 + i);
    }
    let s = fmt.sluice(&format!("retries = 0\nrate_limit = \"{rate}/s\""));
    let c = http_client();
    let what = format!("{} rate limit", fmt.name());
    within(30, &what, async {
        // All at once: the limiter, not how long each fill takes, must do the pacing.
        let t = Instant::now();
        let names: Vec<String> = (0..n).map(|i| format!("paced{i}")).collect();
        let gets =
            futures_util::future::join_all(names.iter().map(|name| fmt.get_doc(&c, &s, name)));
        for (i, g) in gets.await.into_iter().enumerate() {
            assert_eq!(g.status, if i % 2 == 0 { 200 } else { 404 }, "paced{i}");
        }
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{n} requests at {rate}/s after the burst: {:?}",
            t.elapsed()
        );
        let paced = format!("{}paced", fmt.docs_prefix());
        assert_eq!(fmt.count(&paced), n as usize);
        let m = s.metrics().await;
        let series = format!(
            "sluice_upstream_throttled_total{{upstream=\"{}\"}}",
            fmt.upstream()
        );
        assert!(metrics::sample(&m, &series) >= min_throttled, "{m}");
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Resume

scenario!(
    npm_cut_tarball_fill_is_resumed_with_a_range_request,
    pypi_cut_wheel_fill_is_resumed_with_a_range_request(Mode::Html) =
        cut_file_fill_is_resumed_with_a_range_request
);

async fn cut_file_fill_is_resumed_with_a_range_request(fmt: Format) {
    fmt.set_ranges(true);
    let f = fmt.publish("resumed", 3 << 20, 7200);
    fmt.fault(&f.sim_path, Fault::first(1, Fault::CutMidBody));
    let s = fmt.sluice("retries = 0\ncircuit_failures = 0");
    let c = http_client();
    let what = format!("{} resume", fmt.name());
    within(fmt.pick(30, 60), &what, async {
        assert_eq!(fmt.get_doc(&c, &s, "resumed").await.status, 200);
        let g = get(&c, &f.url(&s), None).await;
        assert_eq!(g.status, 200);
        let body = g
            .body
            .expect("the client's body was cut although the fill resumed");
        assert!(body == f.bytes, "resumed file differs");
        assert_eq!(fmt.count(&f.sim_path), 2, "one cut GET, one range GET");
        let ranges = fmt.range_requests(&f.sim_path);
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        let from: usize = ranges[0]
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("range {:?}", ranges[0]));
        assert!(from > 0 && from <= f.bytes.len() / 2, "resumed at {from}");
        if let Format::Npm(_) = fmt {
            // A tarball is small: all of its first half arrives before the cut.
            assert_eq!(from, f.bytes.len() / 2, "resumed at {from}");
        }
        let m = s.metrics().await;
        let series = format!("sluice_fill_resumes_total{{format=\"{}\"}}", fmt.name());
        assert_eq!(metrics::sample(&m, &series), 1.0, "{m}");
        s.settled().await;
        let stored =
            std::fs::read(blob_path(&s.data_dir(), &sha256_digest(&f.bytes))).expect("stored file");
        assert!(stored == f.bytes);
        let g = get(&c, &f.url(&s), None).await;
        assert_eq!((g.status, g.cache.as_str()), (200, "HIT"));
        assert_eq!(fmt.count(&f.sim_path), 2);
        assert_store_verified(&s.data_dir(), &what).await;
    })
    .await;
}
