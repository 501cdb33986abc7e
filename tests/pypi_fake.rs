//! The PyPI format against the in-process fake index (`common::pypi_sim`): page rendering
//! from JSON and from HTML upstreams, negotiation, redirects, file verification and
//! single flight, metadata files, stale-if-error, revalidation, offline, and the refusals
//! (uploads, files no page listed).

mod common;

use std::time::Duration;

use common::pypi_sim::{Mode, PyFault, PypiSim, SimFile};
use common::{
    blob_files, blob_path, eventually, eventually_async, header, http_client, json_body,
    random_bytes, sluice_cache_header, tmp_files, within, Sluice,
};

const PIP_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
const JSON: &str = "application/vnd.pypi.simple.v1+json";

fn sluice_for(sim: &PypiSim, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\n{extra}\n",
        sim.simple_url()
    ))
}

struct Demo {
    wheel: SimFile,
    wheel_sha: String,
    sdist_sha: String,
    metadata: bytes::Bytes,
}

/// sluice's URL of the demo wheel.
fn wheel_url(s: &Sluice, d: &Demo) -> String {
    format!(
        "{}/pypi/files/sha256/{}/{}",
        s.base_url(),
        d.wheel_sha,
        d.wheel.filename
    )
}

/// Project `Demo_Pkg`: a wheel with core metadata and a yanked sdist with an awkward
/// `requires-python` and yank reason (both need HTML escaping).
fn demo(sim: &PypiSim) -> Demo {
    let metadata = bytes::Bytes::from_static(
        b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nRequires-Python: >=3.8\n",
    );
    let mut wheel = SimFile::new(
        "demo_pkg-1.0-py3-none-any.whl",
        "1.0",
        random_bytes(300_000, 1),
    );
    wheel.requires_python = Some(">=3.8".into());
    wheel.metadata = Some(metadata.clone());
    let mut sdist = SimFile::new("demo_pkg-0.9.tar.gz", "0.9", random_bytes(5_000, 2));
    sdist.requires_python = Some("<4,>=3.7".into());
    sdist.yanked = Some("broken <build> & bad".into());
    let sdist_sha = sim.add_file("Demo_Pkg", sdist);
    let wheel_sha = sim.add_file("Demo_Pkg", wheel.clone());
    Demo {
        wheel,
        wheel_sha,
        sdist_sha,
        metadata,
    }
}

async fn get(url: &str, accept: Option<&str>) -> reqwest::Response {
    let mut r = http_client().get(url);
    if let Some(a) = accept {
        r = r.header("Accept", a);
    }
    within(30, url, r.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn page_requests(sim: &PypiSim, project: &str) -> usize {
    sim.count(&format!("/simple/{project}/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_upstream_page_renders_as_json_and_html_with_files_on_a_second_host() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());

    let r = get(&base, Some(PIP_ACCEPT)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sluice_cache_header(&r), "MISS");
    assert_eq!(header(&r, "content-type"), JSON);
    let v = json_body(r).await;
    assert_eq!(v["name"], "Demo_Pkg");
    assert_eq!(v["meta"]["api-version"], "1.1");
    assert_eq!(v["versions"], serde_json::json!(["0.9", "1.0"]));
    let files = v["files"].as_array().expect("files");
    let wheel = files
        .iter()
        .find(|f| f["filename"] == d.wheel.filename)
        .expect("wheel listed");
    let wheel_url = format!(
        "{}/pypi/files/sha256/{}/{}",
        s.base_url(),
        d.wheel_sha,
        d.wheel.filename
    );
    assert_eq!(wheel["url"], wheel_url.as_str());
    assert_eq!(wheel["hashes"]["sha256"], d.wheel_sha.as_str());
    assert_eq!(wheel["size"], 300_000);
    assert_eq!(wheel["upload-time"], "2024-01-02T03:04:05.000000Z");
    assert_eq!(wheel["requires-python"], ">=3.8");
    let meta_sha = common::sha256_digest(&d.metadata);
    assert_eq!(
        wheel["core-metadata"]["sha256"],
        meta_sha.trim_start_matches("sha256:")
    );
    assert_eq!(wheel["data-dist-info-metadata"], wheel["core-metadata"]);
    let sdist = files
        .iter()
        .find(|f| f["filename"] == "demo_pkg-0.9.tar.gz")
        .expect("sdist listed");
    assert_eq!(sdist["yanked"], "broken <build> & bad");
    assert_eq!(sdist["requires-python"], "<4,>=3.7");

    // HTML from the same cached document: no second upstream request.
    let r = get(&base, None).await;
    assert_eq!(sluice_cache_header(&r), "HIT");
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    let html = r.text().await.expect("html");
    assert!(
        html.contains(&format!("href=\"{wheel_url}#sha256={}\"", d.wheel_sha)),
        "{html}"
    );
    assert!(
        html.contains("data-requires-python=\"&lt;4,&gt;=3.7\""),
        "{html}"
    );
    assert!(html.contains("data-requires-python=\"&gt;=3.8\""), "{html}");
    assert!(
        html.contains("data-yanked=\"broken &lt;build&gt; &amp; bad\""),
        "{html}"
    );
    assert!(html.contains(&format!(
        "data-core-metadata=\"sha256={}\"",
        meta_sha.trim_start_matches("sha256:")
    )));
    assert!(html.contains(&format!(
        "/files/sha256/{}/demo_pkg-0.9.tar.gz",
        d.sdist_sha
    )));
    assert_eq!(page_requests(&sim, "demo-pkg"), 1);
    let page_req = &sim.requests()[0];
    assert!(page_req.header("accept").unwrap_or("").starts_with(JSON));

    // The wheel: fetched from the files host, verified, stored; then a hit.
    let r = get(&wheel_url, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sluice_cache_header(&r), "MISS");
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    assert!(sim.requests().iter().any(|q| q.files_host));
    assert!(
        eventually(Duration::from_secs(5), || blob_path(
            &s.data_dir(),
            &format!("sha256:{}", d.wheel_sha)
        )
        .exists())
        .await
    );
    let r = get(&wheel_url, None).await;
    assert_eq!(sluice_cache_header(&r), "HIT");
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    assert_eq!(sim.count(&format!("/files/{}", d.wheel.filename)), 1);

    // PEP 658 metadata, verified against the hash the page stated.
    let r = get(&format!("{wheel_url}.metadata"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &d.metadata[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_only_upstream_is_parsed_and_served_as_json_too() {
    let sim = PypiSim::start(Mode::Html).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let r = get(&base, Some(JSON)).await;
    assert_eq!(r.status(), 200);
    let v = json_body(r).await;
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 2);
    let sdist = files
        .iter()
        .find(|f| f["filename"] == "demo_pkg-0.9.tar.gz")
        .expect("sdist");
    assert_eq!(sdist["yanked"], "broken <build> & bad");
    assert_eq!(sdist["requires-python"], "<4,>=3.7");
    assert_eq!(sdist["hashes"]["sha256"], d.sdist_sha.as_str());
    let wheel = files
        .iter()
        .find(|f| f["filename"] == d.wheel.filename)
        .expect("wheel");
    assert!(wheel["core-metadata"]["sha256"].is_string());
    let url = wheel["url"].as_str().expect("url").to_string();
    let r = get(&url, None).await;
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    let r = get(&format!("{url}.metadata"), None).await;
    assert_eq!(&r.bytes().await.expect("body")[..], &d.metadata[..]);
    // And the HTML page escapes what it unescaped.
    let html = get(&base, Some("text/html"))
        .await
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("data-requires-python=\"&lt;4,&gt;=3.7\""),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_normalised_names_redirect_to_the_normalised_url() {
    let sim = PypiSim::start(Mode::Json).await;
    demo(&sim);
    let s = sluice_for(&sim, "");
    for (path, to) in [
        ("simple/Demo_Pkg/", "simple/demo-pkg/"),
        (
            "simple/demo.pkg/?format=text/html",
            "simple/demo-pkg/?format=text/html",
        ),
        ("simple/demo-pkg", "simple/demo-pkg/"),
        ("simple", "simple/"),
        ("pypi/Demo__Pkg/json", "pypi/demo-pkg/json"),
    ] {
        let r = get(&format!("{}/pypi/{path}", s.base_url()), None).await;
        assert_eq!(r.status(), 301, "{path}");
        assert_eq!(
            header(&r, "location"),
            format!("{}/pypi/{to}", s.base_url()),
            "{path}"
        );
    }
    assert_eq!(page_requests(&sim, "demo-pkg"), 0);
    let r = get(&format!("{}/pypi/simple/no%2Fslash/", s.base_url()), None).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_etag_304_and_gzip() {
    let sim = PypiSim::start(Mode::Json).await;
    demo(&sim);
    for i in 0..20 {
        sim.add_file(
            "demo-pkg",
            SimFile::new(
                &format!("demo_pkg-2.{i}.tar.gz"),
                &format!("2.{i}"),
                vec![i as u8; 10],
            ),
        );
    }
    let s = sluice_for(&sim, "");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let ct = |r: &reqwest::Response| header(r, "content-type");
    let r = get(
        &base,
        Some("text/html;q=0.9, application/vnd.pypi.simple.v1+json;q=0.5"),
    )
    .await;
    assert_eq!(ct(&r), "text/html; charset=utf-8");
    let r = get(
        &base,
        Some("application/vnd.pypi.simple.v1+html, */*;q=0.1"),
    )
    .await;
    assert_eq!(ct(&r), "application/vnd.pypi.simple.v1+html");
    let r = get(
        &format!("{base}?format=application/vnd.pypi.simple.v1%2Bjson"),
        Some("text/html"),
    )
    .await;
    assert_eq!(ct(&r), JSON);
    let r = get(&base, Some("application/json")).await;
    assert_eq!(r.status(), 406);
    let r = get(&base, Some("*/*")).await;
    assert_eq!(ct(&r), "text/html; charset=utf-8");
    assert!(header(&r, "vary").contains("Accept"));
    let etag = header(&r, "etag");
    assert!(!etag.is_empty());
    let r = within(
        10,
        "conditional GET",
        http_client()
            .get(&base)
            .header("If-None-Match", &etag)
            .send(),
    )
    .await
    .expect("GET");
    assert_eq!(r.status(), 304);
    let r = within(
        10,
        "gzip GET",
        http_client()
            .get(&base)
            .header("Accept", JSON)
            .header("Accept-Encoding", "gzip")
            .send(),
    )
    .await
    .expect("GET");
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let gz = r.bytes().await.expect("body");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2_decoder(&gz), &mut plain).expect("gunzip");
    let v: serde_json::Value = serde_json::from_slice(&plain).expect("json");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(22));
    assert_eq!(page_requests(&sim, "demo-pkg"), 1);
}

/// A minimal gzip reader via the system `gzip` would add a tool; the test crate has no
/// flate2, so gunzip with a child process reading stdin.
fn flate2_decoder(gz: &[u8]) -> std::io::Cursor<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(gz)
        .expect("write");
    let out = child.wait_with_output().expect("gzip output");
    assert!(out.status.success(), "gzip -dc failed");
    std::io::Cursor::new(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_file_bytes_are_refused_and_nothing_is_stored() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    get(&format!("{}/pypi/simple/demo-pkg/", s.base_url()), None).await;
    sim.fault(&d.wheel.filename, PyFault::WrongBytes);
    let url = wheel_url(&s, &d);
    let r = get(&url, None).await;
    let status = r.status();
    let body = r.bytes().await;
    // Either refused before the body started, or the body was cut: never complete.
    if let Ok(b) = body {
        assert!(
            status != 200 || b.len() < d.wheel.bytes.len(),
            "client got a complete body ({status}, {} bytes)",
            b.len()
        );
    }
    assert!(!blob_path(&s.data_dir(), &format!("sha256:{}", d.wheel_sha)).exists());
    assert!(
        eventually(Duration::from_secs(5), || tmp_files(&s.data_dir())
            .is_empty())
        .await
    );
    assert!(s.log().contains("fill failed"), "no fill failure logged");
    // The upstream fixed: the same URL now works.
    sim.clear_faults();
    let r = get(&url, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503_serves_the_stale_page() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "metadata_ttl = \"1s\"");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let first = get(&base, Some(JSON)).await.text().await.expect("body");
    sim.fault("/simple/demo-pkg/", PyFault::Status(503));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..3 {
        let r = get(&base, Some(JSON)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "STALE");
        assert_eq!(r.text().await.expect("body"), first);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The revalidation runs in the background: given time on a loaded machine.
    assert!(
        common::eventually(Duration::from_secs(5), || page_requests(&sim, "demo-pkg")
            >= 2)
        .await,
        "no revalidation was attempted"
    );
    // Files of the stale page stay reachable.
    let r = get(
        &format!(
            "{}/pypi/files/sha256/{}/{}",
            s.base_url(),
            d.wheel_sha,
            d.wheel.filename
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// An HTML maintenance page answered with `200` is not a project page: an uncached project
/// gets an error, and a cached page stays served (`STALE`) instead of being replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_page_with_200_does_not_replace_the_cached_page() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "metadata_ttl = \"1s\"");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let first = get(&base, Some(JSON)).await.text().await.expect("body");
    assert!(first.contains(&d.wheel.filename));
    let maintenance = PyFault::Page(
        "text/html",
        "<html><body><h1>Maintenance</h1><a href=\"/status\">status</a></body></html>".into(),
    );
    sim.fault("/simple/", maintenance);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut caches = Vec::new();
    for _ in 0..4 {
        let r = get(&base, Some(JSON)).await;
        assert_eq!(r.status(), 200);
        caches.push(sluice_cache_header(&r));
        assert_eq!(r.text().await.expect("body"), first);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(caches.iter().all(|c| c == "STALE"), "{caches:?}");
    let r = get(
        &format!("{}/pypi/simple/other-pkg/", s.base_url()),
        Some(JSON),
    )
    .await;
    assert_eq!(
        r.status(),
        502,
        "a maintenance page served as a project page"
    );
    assert!(r.text().await.expect("body").contains("not a project page"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pages_revalidate_with_etag_and_304() {
    let sim = PypiSim::start(Mode::Json).await;
    demo(&sim);
    let s = sluice_for(&sim, "metadata_ttl = \"1s\"");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    get(&base, None).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = get(&base, None).await;
    assert_eq!(sluice_cache_header(&r), "STALE");
    assert!(
        eventually(Duration::from_secs(5), || page_requests(&sim, "demo-pkg")
            == 2)
        .await
    );
    let reval = sim
        .requests()
        .into_iter()
        .rev()
        .find(|q| q.path == "/simple/demo-pkg/");
    assert!(reval
        .and_then(|q| q.header("if-none-match").map(str::to_string))
        .is_some());
    // The sim counts the revalidation when it arrives; sluice applies the 304 just after
    // it answers. From then on the page is fresh again (HIT).
    assert!(
        eventually_async(|| async { sluice_cache_header(&get(&base, None).await) == "HIT" }).await
    );
    // Fresh again by revalidation: every page request after the first was conditional.
    let pages: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|q| q.path == "/simple/demo-pkg/")
        .collect();
    assert!(pages.len() >= 2);
    assert!(pages[1..]
        .iter()
        .all(|q| q.header("if-none-match").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_only_fetched_from_origins_a_page_listed() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    let unknown = "ab".repeat(32);
    for path in [
        // Unknown: the page of the project its name belongs to (`x`) is asked, nothing else.
        format!("files/sha256/{unknown}/x-1.0.tar.gz"),
        "files/sha256/zz/x.whl".to_string(),
        "files/url/../../etc/passwd".to_string(),
        format!("files/sha256/{unknown}/..%2F..%2Fetc-1.0.tar.gz"),
    ] {
        let r = get(&format!("{}/pypi/{path}", s.base_url()), None).await;
        assert!(
            r.status() == 404 || r.status() == 400,
            "{path}: {}",
            r.status()
        );
    }
    let asked: Vec<String> = sim.requests().into_iter().map(|q| q.path).collect();
    assert_eq!(asked, vec!["/simple/x/".to_string()]);
    // A digest the project's page does not list: that page is fetched, the file is not.
    let r = get(
        &format!(
            "{}/pypi/files/sha256/{unknown}/{}",
            s.base_url(),
            d.wheel.filename
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(page_requests(&sim, "demo-pkg"), 1);
    get(&format!("{}/pypi/simple/demo-pkg/", s.base_url()), None).await;
    // The right digest with another file name is not that file.
    let r = get(
        &format!(
            "{}/pypi/files/sha256/{}/evil.whl",
            s.base_url(),
            d.wheel_sha
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(sim.requests().iter().filter(|q| q.files_host).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_file_fetch_it_once() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    get(&format!("{}/pypi/simple/demo-pkg/", s.base_url()), None).await;
    let url = wheel_url(&s, &d);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = http_client().get(&url).send().await.expect("GET");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body")
            })
        })
        .collect();
    for t in tasks {
        let b = within(30, "concurrent GET", t).await.expect("task");
        assert_eq!(&b[..], &d.wheel.bytes[..]);
    }
    assert_eq!(sim.count(&format!("/files/{}", d.wheel.filename)), 1);
}

/// A HEAD of a file not stored asks the upstream with a HEAD and downloads nothing; once a
/// GET stored it, a HEAD is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_of_an_uncached_file_downloads_nothing() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    get(&format!("{}/pypi/simple/demo-pkg/", s.base_url()), None).await;
    let url = wheel_url(&s, &d);
    let c = http_client();
    let file_requests = || {
        sim.requests()
            .into_iter()
            .filter(|q| q.path.contains(&d.wheel.filename))
            .map(|q| q.method)
            .collect::<Vec<_>>()
    };
    let stored = blob_path(&s.data_dir(), &format!("sha256:{}", d.wheel_sha));
    within(30, "head, get, head", async {
        let r = c.head(&url).send().await.expect("HEAD");
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "content-length"),
            d.wheel.bytes.len().to_string()
        );
        assert_eq!(sluice_cache_header(&r), "BYPASS");
        assert_eq!(file_requests(), ["HEAD"], "a HEAD started a download");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!stored.exists(), "a HEAD stored the file");

        let r = get(&url, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &d.wheel.bytes[..]);
        assert!(eventually(std::time::Duration::from_secs(5), || stored.exists()).await);
        let r = c.head(&url).send().await.expect("HEAD");
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "HIT");
        assert_eq!(
            header(&r, "content-length"),
            d.wheel.bytes.len().to_string()
        );
        assert_eq!(file_requests(), ["HEAD", "GET"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_refused_with_405() {
    let sim = PypiSim::start(Mode::Json).await;
    let s = sluice_for(&sim, "");
    // The last: an upload of a big wheel gets the 405 too (its body is discarded, not
    // refused as too large, and not cut off with a reset).
    for (path, size) in [
        ("/pypi/", 1),
        ("/pypi/legacy/", 1),
        ("/pypi/simple/demo-pkg/", 1),
        ("/pypi/legacy/", 40 << 20),
    ] {
        let r = within(
            20,
            "POST",
            http_client()
                .post(format!("{}{path}", s.base_url()))
                .body(vec![b'x'; size])
                .send(),
        )
        .await
        .expect("POST");
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("GET, HEAD"),
            "{path}"
        );
    }
    assert!(sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_without_sha256_pass_through_uncached() {
    let sim = PypiSim::start(Mode::Json).await;
    let mut f = SimFile::new("legacy-1.0.tar.gz", "1.0", random_bytes(4000, 9));
    f.md5_only = true;
    let bytes = f.bytes.clone();
    sim.add_file("legacy", f);
    let s = sluice_for(&sim, "");
    let html = get(&format!("{}/pypi/simple/legacy/", s.base_url()), None)
        .await
        .text()
        .await
        .expect("html");
    let href = html
        .split("href=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .expect("a link")
        .to_string();
    assert!(href.contains("/pypi/files/url/"), "{href}");
    assert!(href.contains("#md5="), "{href}");
    let url = href.split('#').next().expect("url");
    let before = blob_files(&s.data_dir()).len();
    for _ in 0..2 {
        let r = get(url, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "BYPASS");
        assert_eq!(&r.bytes().await.expect("body")[..], &bytes[..]);
    }
    assert_eq!(sim.count("/files/legacy-1.0.tar.gz"), 2);
    assert_eq!(blob_files(&s.data_dir()).len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_and_index_root_are_served_with_sluice_urls() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    sim.add_file(
        "Other.Project",
        SimFile::new("other.project-1.0.zip", "1.0", vec![1; 10]),
    );
    let s = sluice_for(&sim, "");
    let r = get(&format!("{}/pypi/pypi/demo-pkg/json", s.base_url()), None).await;
    assert_eq!(r.status(), 200);
    let v = json_body(r).await;
    let u = v["urls"][0]["url"].as_str().expect("url").to_string();
    assert_eq!(
        u,
        format!(
            "{}/pypi/files/sha256/{}/{}",
            s.base_url(),
            d.wheel_sha,
            d.wheel.filename
        )
    );
    assert!(v["releases"]["0.9"][0]["url"]
        .as_str()
        .expect("url")
        .contains(&d.sdist_sha));
    // The JSON API alone is enough to know a file's origin.
    let r = get(&u, None).await;
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    let r = get(&format!("{}/pypi/pypi/nope/json", s.base_url()), None).await;
    assert_eq!(r.status(), 404);

    let html = get(&format!("{}/pypi/simple/", s.base_url()), None)
        .await
        .text()
        .await
        .expect("root");
    assert!(
        html.contains("<a href=\"other-project/\">Other.Project</a>"),
        "{html}"
    );
    let v = json_body(get(&format!("{}/pypi/simple/", s.base_url()), Some(JSON)).await).await;
    let names: Vec<_> = v["projects"]
        .as_array()
        .expect("projects")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, vec!["Demo_Pkg", "Other.Project"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_restart_serves_cached_pages_and_files() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let mut s = sluice_for(&sim, "");
    let base = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let url = wheel_url(&s, &d);
    get(&base, Some(PIP_ACCEPT)).await;
    get(&url, None).await.bytes().await.expect("body");
    s.settled().await; // the wheel is committed just after its body went out
    let cfg = std::fs::read_to_string(s.config_path()).expect("config");
    std::fs::write(
        s.config_path(),
        cfg.replace("format = \"pypi\"", "format = \"pypi\"\noffline = true"),
    )
    .expect("write config");
    s.restart();
    let before = sim.requests().len();
    let r = get(&base, Some(PIP_ACCEPT)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sluice_cache_header(&r), "HIT");
    let r = get(&url, None).await;
    assert_eq!(sluice_cache_header(&r), "HIT");
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    let r = get(&format!("{}/pypi/simple/other/", s.base_url()), None).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.expect("body").contains("offline"));
    assert_eq!(
        sim.requests().len(),
        before,
        "offline sluice contacted the upstream"
    );
}

/// sluice with no `public_url`: its links follow how each client reached it.
fn sluice_without_public_url(sim: &PypiSim) -> Sluice {
    Sluice::start_with(|port, data_dir| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n\n\
             [storage]\ndata_dir = \"{}\"\n\n\
             [[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\n",
            data_dir.display(),
            sim.simple_url()
        )
    })
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = http_client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    within(30, url, r.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn file_url(page: &serde_json::Value, filename: &str) -> String {
    page["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["filename"] == filename)
        .unwrap_or_else(|| panic!("{filename} not listed: {page}"))["url"]
        .as_str()
        .expect("url")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_redirects_follow_the_host_the_client_used_unless_public_url_is_set() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_without_public_url(&sim);
    let page = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let wheel_path = format!("/pypi/files/sha256/{}/{}", d.wheel_sha, d.wheel.filename);
    let own = s.base_url();
    for (host, proto, want) in [
        ("sluice.example:5080", None, "http://sluice.example:5080"),
        (
            "Sluice.Example:5080",
            Some("https"),
            "https://sluice.example:5080",
        ),
        ("10.9.8.7", Some("ftp"), "http://10.9.8.7"),
        ("[::1]:5080", None, "http://[::1]:5080"),
        // Hostile or malformed: the listen address (or refused outright, see below).
        ("evil.com/x", None, own.as_str()),
        ("evil.com x", Some("https"), own.as_str()),
        ("evil.com:99999", None, own.as_str()),
        // Userinfo: the HTTP layer refuses the request (400), nothing is served.
        ("user@evil.com", None, ""),
        ("sluice.example:5080@evil.com", None, ""),
    ] {
        let mut h = vec![("Host", host)];
        if let Some(p) = proto {
            h.push(("X-Forwarded-Proto", p));
        }
        let mut hj = h.clone();
        hj.push(("Accept", JSON));
        let r = get_with(&page, &hj).await;
        if want.is_empty() {
            assert_eq!(r.status(), 400, "{host}");
            continue;
        }
        assert_eq!(r.status(), 200, "{host}");
        let v = json_body(r).await;
        assert_eq!(
            file_url(&v, &d.wheel.filename),
            format!("{want}{wheel_path}"),
            "{host}"
        );
        let html = get_with(&page, &h).await.text().await.expect("html");
        assert!(
            html.contains(&format!("href=\"{want}{wheel_path}#sha256=")),
            "{host}: {html}"
        );
        let r = get_with(&format!("{}/pypi/simple/Demo_Pkg/", s.base_url()), &h).await;
        assert_eq!(r.status(), 301, "{host}");
        assert_eq!(
            header(&r, "location"),
            format!("{want}/pypi/simple/demo-pkg/"),
            "{host}"
        );
        let r = get_with(&format!("{}/pypi/pypi/demo-pkg/json", s.base_url()), &h).await;
        assert_eq!(r.status(), 200, "{host}");
        let api = json_body(r).await;
        let url = api["urls"][0]["url"].as_str().expect("url").to_string();
        assert!(
            url.starts_with(&format!("{want}/pypi/files/")),
            "{host}: {url}"
        );
    }
    // Rendered pages are cached per base: the client's own Host still gets its own links.
    let v = json_body(get(&page, Some(JSON)).await).await;
    let link = file_url(&v, &d.wheel.filename);
    assert_eq!(link, format!("{own}{wheel_path}"));
    assert_eq!(page_requests(&sim, "demo-pkg"), 1);
    let r = get(&link, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    let m = s.metrics().await;
    let fallbacks = m
        .lines()
        .find(|l| l.starts_with("sluice_host_fallbacks_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // Three malformed Hosts served, four requests each.
    assert_eq!(fallbacks, 12.0, "{m}");

    // Made-up Hosts cannot fill the render cache: past MAX_LINK_HOSTS (64) hosts in use,
    // a new name's page is rendered for it and not kept; its links are still its own.
    let mut last = String::new();
    for i in 0..70 {
        let name = format!("h{i}.example");
        let v =
            json_body(get_with(&page, &[("Host", name.as_str()), ("Accept", JSON)]).await).await;
        last = file_url(&v, &d.wheel.filename);
    }
    assert_eq!(
        last,
        format!("http://h69.example{wheel_path}"),
        "the 70th made-up host"
    );
    let m = s.metrics().await;
    let uncached = m
        .lines()
        .find(|l| l.starts_with("sluice_link_hosts_uncached_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(uncached >= 6.0, "{m}");
    let v = json_body(get_with(&page, &[("Host", "sluice.example:5080"), ("Accept", JSON)]).await)
        .await;
    assert_eq!(
        file_url(&v, &d.wheel.filename),
        format!("http://sluice.example:5080{wheel_path}")
    );

    // `public_url` set: it always wins.
    let s2 = sluice_for(&sim, "");
    let h = [("Host", "sluice.example:5080"), ("Accept", JSON)];
    let page2 = format!("{}/pypi/simple/demo-pkg/", s2.base_url());
    let v = json_body(get_with(&page2, &h).await).await;
    assert_eq!(
        file_url(&v, &d.wheel.filename),
        format!("{}{wheel_path}", s2.base_url())
    );
    let r = get_with(&format!("{}/pypi/simple/Demo_Pkg/", s2.base_url()), &h[..1]).await;
    assert_eq!(
        header(&r, "location"),
        format!("{}/pypi/simple/demo-pkg/", s2.base_url())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_newer_than_the_cached_page_revalidates_it_once() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    let s = sluice_for(&sim, "metadata_ttl = \"1h\"\nnegative_ttl = \"1h\"");
    let page = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    assert_eq!(get(&page, Some(JSON)).await.status(), 200);
    assert_eq!(page_requests(&sim, "demo-pkg"), 1);
    // Released after the page was cached; another replica (or a lockfile) links it.
    let newer = SimFile::new(
        "demo_pkg-1.1-py3-none-any.whl",
        "1.1",
        random_bytes(2_000, 78),
    );
    let sha = sim.add_file("Demo_Pkg", newer.clone());
    let url = format!(
        "{}/pypi/files/sha256/{sha}/{}",
        s.base_url(),
        newer.filename
    );
    let r = get(&url, None).await;
    assert_eq!(r.status(), 200, "a file newer than the cached page");
    assert_eq!(&r.bytes().await.expect("body")[..], &newer.bytes[..]);
    assert_eq!(page_requests(&sim, "demo-pkg"), 2, "one revalidation");
    // A digest no page lists: the page was just revalidated for this project, and is not
    // again within negative_ttl (made-up digests cannot make sluice refetch it each time).
    let unknown = format!(
        "{}/pypi/files/sha256/{}/{}",
        s.base_url(),
        "ab".repeat(32),
        d.wheel.filename
    );
    for _ in 0..3 {
        assert_eq!(get(&unknown, None).await.status(), 404);
    }
    assert_eq!(
        page_requests(&sim, "demo-pkg"),
        2,
        "at most one per negative_ttl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_link_another_sluice_rendered_is_served_by_a_fresh_one() {
    let sim = PypiSim::start(Mode::Json).await;
    let d = demo(&sim);
    // The links as one sluice renders them (a lockfile, another replica)...
    let first = sluice_for(&sim, "");
    let v = json_body(
        get(
            &format!("{}/pypi/simple/demo-pkg/", first.base_url()),
            Some(JSON),
        )
        .await,
    )
    .await;
    let path = |f: &str| file_url(&v, f)[first.base_url().len()..].to_string();
    let (wheel, sdist) = (path(&d.wheel.filename), path("demo_pkg-0.9.tar.gz"));
    drop(first);
    let sdist_bytes = random_bytes(5_000, 2);

    // ...asked of a sluice that never saw the page: it fetches that page once.
    let s = sluice_for(&sim, "");
    let before = page_requests(&sim, "demo-pkg");
    let r = get(&format!("{}{wheel}", s.base_url()), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sluice_cache_header(&r), "MISS");
    assert_eq!(&r.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    assert_eq!(page_requests(&sim, "demo-pkg"), before + 1);
    let r = get(&format!("{}{wheel}.metadata", s.base_url()), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &d.metadata[..]);
    let r = get(&format!("{}{sdist}", s.base_url()), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &sdist_bytes[..]);
    assert_eq!(page_requests(&sim, "demo-pkg"), before + 1);

    // Concurrent cold requests on another fresh sluice, an sdist among them (its project is
    // the name before the version): one page fetch between them.
    let s3 = sluice_for(&sim, "");
    let before = page_requests(&sim, "demo-pkg");
    let (u1, u2) = (
        format!("{}{sdist}", s3.base_url()),
        format!("{}{wheel}", s3.base_url()),
    );
    let (a, b) = tokio::join!(get(&u1, None), get(&u2, None));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(&a.bytes().await.expect("body")[..], &sdist_bytes[..]);
    assert_eq!(&b.bytes().await.expect("body")[..], &d.wheel.bytes[..]);
    assert_eq!(page_requests(&sim, "demo-pkg"), before + 1);

    // A digest the page does not list: the same 404 as ever, nothing fetched but the page.
    let s4 = sluice_for(&sim, "");
    let files_before = sim.requests().iter().filter(|q| q.files_host).count();
    let unknown = "cd".repeat(32);
    let r = get(
        &format!(
            "{}/pypi/files/sha256/{unknown}/{}",
            s4.base_url(),
            d.wheel.filename
        ),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("not known to sluice"));
    assert_eq!(
        sim.requests().iter().filter(|q| q.files_host).count(),
        files_before
    );
    let m = s4.metrics().await;
    assert!(
        m.contains("sluice_pypi_cold_file_lookups_total{upstream=\"pypi\",result=\"unknown\"} 1"),
        "{m}"
    );
    let m = s3.metrics().await;
    assert!(
        m.contains("sluice_pypi_cold_file_lookups_total{upstream=\"pypi\",result=\"found\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_pep_691_metadata_key_becomes_pep_714s() {
    let sim = PypiSim::start(Mode::Json).await;
    sim.set_metadata_key("dist-info-metadata");
    let d = demo(&sim);
    let s = sluice_for(&sim, "");
    let page = format!("{}/pypi/simple/demo-pkg/", s.base_url());
    let v = json_body(get(&page, Some(JSON)).await).await;
    let wheel = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["filename"] == d.wheel.filename)
        .expect("wheel")
        .clone();
    let meta_sha = common::sha256_digest(&d.metadata);
    let meta_sha = meta_sha.trim_start_matches("sha256:");
    assert_eq!(wheel["core-metadata"]["sha256"], meta_sha, "{wheel}");
    assert_eq!(wheel["data-dist-info-metadata"], wheel["core-metadata"]);
    assert!(wheel.get("dist-info-metadata").is_none(), "{wheel}");
    let html = get(&page, None).await.text().await.expect("html");
    assert!(
        html.contains(&format!("data-core-metadata=\"sha256={meta_sha}\"")),
        "{html}"
    );
    let r = get(&format!("{}.metadata", wheel_url(&s, &d)), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("body")[..], &d.metadata[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_a_locked_file_url_from_a_sluice_that_never_saw_the_page() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sim = PypiSim::start(Mode::Json).await;
    let (f, bytes) = common::build_wheel(tmp.path(), "locked_pkg", "1.0");
    let sha = sim.add_file("locked-pkg", SimFile::new(&f, "1.0", bytes));
    let s = sluice_for(&sim, "");
    // A lockfile's entry (as `pip freeze`-style hashes, pylock.toml or uv.lock carry it): the
    // file URL another sluice rendered, with its hash; no index is consulted.
    let req = tmp.path().join("requirements.txt");
    std::fs::write(
        &req,
        format!(
            "locked_pkg @ {}/pypi/files/sha256/{sha}/{f} --hash=sha256:{sha}\n",
            s.base_url()
        ),
    )
    .expect("write requirements");
    let target = tmp.path().join("t");
    let (r, t) = (req.clone(), target.clone());
    let out = within(
        150,
        "pip install from a locked URL",
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new("python3");
            cmd.args([
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--no-index",
                "--no-deps",
                "--require-hashes",
                "-r",
            ])
            .arg(&r)
            .arg("--target")
            .arg(&t)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_CONFIG_FILE", "/dev/null");
            common::no_proxy_env(&mut cmd);
            common::run_with_timeout(&mut cmd, Duration::from_secs(120))
        }),
    )
    .await
    .expect("pip task");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let init = std::fs::read_to_string(target.join("locked_pkg/__init__.py")).expect("installed");
    assert!(init.contains("'1.0'"), "{init}");
    assert_eq!(page_requests(&sim, "locked-pkg"), 1);
}
