//! OCI pull-through against a real upstream (Debian's `docker-registry`, CNCF distribution
//! 2.8) with the real client (`skopeo`): byte-exact images of every manifest family, caching
//! proven by the registry's access log, tag movement and ttl, routing, push rejection.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::images::{
    build_large, build_multi_arch, build_single_arch, pull, pull_oci_exact, pull_raw, push, skopeo,
    tree, Layout, PushFormat, ACCEPT_ALL_MANIFESTS,
};
use common::registry::Registry;
use common::{
    header, http_client, json_body, run_with_timeout, sha256_digest, sluice_cache_header, Sluice,
};

/// One `[[upstream]]` table for a registry.
fn upstream(name: &str, reg: &Registry, default: bool, tag_ttl: &str) -> String {
    format!(
        r#"[[upstream]]
name = "{name}"
format = "oci"
url = "{url}"
host = "{host}"
default = {default}
tag_ttl = "{tag_ttl}"

"#,
        url = reg.url(),
        host = reg.host()
    )
}

fn sluice_for(reg: &Registry) -> Sluice {
    Sluice::start(&upstream("local", reg, true, "2s"))
}

/// A manifest or blob as fetched over HTTP.
#[derive(Debug)]
struct Obj {
    kind: &'static str,
    /// The reference it was fetched by (a tag for the top manifest, else its digest).
    by: String,
    content_type: String,
    bytes: Vec<u8>,
    cache: Option<String>,
}

/// Fetches `repo:reference` and everything it references (child manifests, configs,
/// layers) over plain HTTP, checking each digest; keyed by digest. `sluice` checks the
/// headers sluice adds to every response.
async fn walk(base: &str, repo: &str, reference: &str, sluice: bool) -> BTreeMap<String, Obj> {
    let c = http_client();
    let mut out = BTreeMap::new();
    let mut todo = vec![("manifests", reference.to_string())];
    while let Some((kind, reference)) = todo.pop() {
        let url = format!("{base}/v2/{repo}/{kind}/{reference}");
        let resp = c
            .get(&url)
            .header("Accept", ACCEPT_ALL_MANIFESTS)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), 200, "GET {url}");
        let cache = sluice.then(|| sluice_cache_header(&resp));
        let content_type = header(&resp, "content-type");
        let dcd = header(&resp, "docker-content-digest");
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
            .to_vec();
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") {
            assert_eq!(
                digest, reference,
                "GET {url}: body does not match its digest"
            );
        }
        if kind == "manifests" {
            assert_eq!(dcd, digest, "GET {url}: Docker-Content-Digest vs body");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("manifest JSON");
            for m in v["manifests"].as_array().into_iter().flatten() {
                todo.push(("manifests", m["digest"].as_str().expect("digest").into()));
            }
            if let Some(cfg) = v["config"]["digest"].as_str() {
                todo.push(("blobs", cfg.into()));
            }
            for l in v["layers"].as_array().into_iter().flatten() {
                todo.push(("blobs", l["digest"].as_str().expect("digest").into()));
            }
        }
        out.insert(
            digest,
            Obj {
                kind,
                by: reference.clone(),
                content_type,
                bytes,
                cache,
            },
        );
    }
    out
}

fn assert_same_objects(via: &BTreeMap<String, Obj>, direct: &BTreeMap<String, Obj>) {
    assert_eq!(
        via.keys().collect::<Vec<_>>(),
        direct.keys().collect::<Vec<_>>(),
        "sluice and the registry serve different object sets"
    );
    for (d, o) in via {
        let r = &direct[d];
        assert!(o.bytes == r.bytes, "{} {d} differs through sluice", o.kind);
        if o.kind == "manifests" {
            assert_eq!(
                o.content_type, r.content_type,
                "Content-Type of manifest {d}"
            );
        }
    }
}

/// Blob files of two OCI layouts are identical, byte for byte.
fn assert_same_layout_blobs(got: &Path, want: &Layout) {
    let got = tree(&got.join("blobs"));
    let want = tree(&want.dir.join("blobs"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "pulled layout holds different blobs than the source layout"
    );
    for (k, v) in &got {
        assert!(*v == want[k], "{k} differs from the source layout");
    }
}

/// The whole pull-through story for `repo:tag` already pushed to `reg`: a skopeo pull
/// through sluice is byte-exact (against the source layout when given, and against a direct
/// pull), fetches each blob from upstream at most once, and a second pull fetches none.
async fn check_pull_through(
    reg: &Registry,
    s: &Sluice,
    repo: &str,
    tag: &str,
    src: Option<&Layout>,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let via = format!("{}/{repo}:{tag}", s.host());
    let direct = format!("{}/{repo}:{tag}", reg.host());
    let n0 = reg.blob_gets(repo);

    // First pull: cold.
    match src {
        Some(layout) => {
            let dir = tmp.path().join("first");
            pull_oci_exact(&via, &dir, tag);
            assert_same_layout_blobs(&dir, layout);
        }
        None => {
            pull(&via, &format!("dir:{}", tmp.path().join("first").display()));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n1 = reg.blob_gets(repo);
    assert!(n1 > n0, "the cold pull fetched no blob from the registry");

    // Second pull: warm, nothing from the registry's blob store.
    let second = tmp.path().join("second");
    pull(&via, &format!("dir:{}", second.display()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reg.blob_gets(repo),
        n1,
        "the second pull through sluice fetched blobs from the registry again"
    );

    // Every manifest and blob over HTTP: byte-exact, and the blobs are cache hits.
    let via_http = walk(&s.base_url(), repo, tag, true).await;
    for (d, o) in &via_http {
        if o.by.starts_with("sha256:") {
            assert_eq!(
                o.cache.as_deref(),
                Some("HIT"),
                "{} {d} after two pulls",
                o.kind
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        reg.blob_gets(repo),
        n1,
        "warm HTTP walk fetched blobs from the registry"
    );
    let blobs = via_http.values().filter(|o| o.kind == "blobs").count();
    eprintln!(
        "{repo}:{tag}: {} upstream blob GETs for {blobs} distinct blobs over two pulls",
        n1 - n0
    );
    assert!(
        n1 - n0 <= blobs,
        "{} upstream blob GETs for {blobs} distinct blobs",
        n1 - n0
    );

    // Against the registry directly.
    let direct_dir = tmp.path().join("direct");
    pull(&direct, &format!("dir:{}", direct_dir.display()));
    let (a, b) = (tree(&second), tree(&direct_dir));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "skopeo dir: copies through sluice and direct differ in files"
    );
    for (k, v) in &a {
        assert!(
            *v == b[k],
            "{k} differs between the pull through sluice and the direct pull"
        );
    }
    let direct_http = walk(&reg.url(), repo, tag, false).await;
    assert_same_objects(&via_http, &direct_http);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_oci_image_byte_exact_and_second_pull_is_served_from_cache() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, _m) = build_single_arch(&tmp.path().join("src"), "v1", 1);
    push(&layout.dir, "v1", &reg.host(), "app:v1", PushFormat::Oci);
    let s = sluice_for(&reg);
    common::within(300, "OCI single-arch pull-through", async {
        let c = http_client();
        for url in [format!("{}/v2/", s.base_url())] {
            let r = c.get(&url).send().await.expect("GET /v2/");
            assert_eq!(r.status(), 200, "GET /v2/");
            sluice_cache_header(&r);
            let r = c.head(&url).send().await.expect("HEAD /v2/");
            assert_eq!(r.status(), 200, "HEAD /v2/");
        }
        check_pull_through(&reg, &s, "app", "v1", Some(&layout)).await;
        let r = c
            .get(format!("{}/v2/app/tags/list", s.base_url()))
            .send()
            .await
            .expect("tags/list");
        assert_eq!(r.status(), 200, "tags/list through sluice");
        sluice_cache_header(&r);
        let v = json_body(r).await;
        assert_eq!(v["name"], "app");
        assert_eq!(v["tags"], serde_json::json!(["v1"]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_docker_schema2_image_byte_exact() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, _m) = build_single_arch(&tmp.path().join("src"), "v1", 2);
    push(
        &layout.dir,
        "v1",
        &reg.host(),
        "dockerimg:v1",
        PushFormat::V2s2,
    );
    let s = sluice_for(&reg);
    common::within(300, "Docker schema 2 pull-through", async {
        let direct = walk(&reg.url(), "dockerimg", "v1", false).await;
        let top = direct
            .values()
            .find(|o| o.kind == "manifests")
            .expect("manifest");
        assert_eq!(
            top.content_type,
            common::images::DOCKER_MANIFEST,
            "the push did not produce a Docker schema 2 manifest"
        );
        check_pull_through(&reg, &s, "dockerimg", "v1", None).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_multi_arch_index_byte_exact() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, idx) = build_multi_arch(&tmp.path().join("src"), "v1", 3);
    push(&layout.dir, "v1", &reg.host(), "multi:v1", PushFormat::Oci);
    let s = sluice_for(&reg);
    common::within(300, "multi-arch pull-through", async {
        check_pull_through(&reg, &s, "multi", "v1", Some(&layout)).await;
        let via = walk(&s.base_url(), "multi", "v1", true).await;
        assert_eq!(
            via.values().filter(|o| o.kind == "manifests").count(),
            3,
            "index + two platform manifests"
        );
        assert_eq!(via[&idx.digest].content_type, common::images::OCI_INDEX);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_image_with_100mb_layer_byte_exact() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, _m) = build_large(&tmp.path().join("src"), "v1", 100 << 20, 4);
    push(&layout.dir, "v1", &reg.host(), "large:v1", PushFormat::Oci);
    let s = sluice_for(&reg);
    common::within(600, "large-layer pull-through", async {
        let t = Instant::now();
        check_pull_through(&reg, &s, "large", "v1", Some(&layout)).await;
        eprintln!("large pull-through checks took {:?}", t.elapsed());
        let stored = common::blob_files(&s.data_dir());
        assert!(
            stored
                .iter()
                .any(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) >= 100 << 20),
            "no ≥100 MiB file in sluice's store: {stored:?}"
        );
        assert!(
            common::tmp_files(&s.data_dir()).is_empty(),
            "tmp/ not empty"
        );
    })
    .await;
}

/// GETs `repo:tag`'s manifest through sluice: (digest, X-Sluice-Cache).
async fn tag_digest(s: &Sluice, repo: &str, tag: &str) -> (String, String) {
    let r = http_client()
        .get(format!("{}/v2/{repo}/manifests/{tag}", s.base_url()))
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(r.status(), 200, "GET {repo}:{tag}");
    let cache = sluice_cache_header(&r);
    let d = header(&r, "docker-content-digest");
    let body = r.bytes().await.expect("body");
    assert_eq!(
        sha256_digest(&body),
        d,
        "{repo}:{tag} body vs Docker-Content-Digest"
    );
    (d, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_served_after_tag_ttl_and_not_before() {
    const TTL: Duration = Duration::from_secs(3);
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (old_layout, old) = build_single_arch(&tmp.path().join("old"), "latest", 5);
    let (new_layout, new) = build_single_arch(&tmp.path().join("new"), "latest", 6);
    push(
        &old_layout.dir,
        "latest",
        &reg.host(),
        "app:latest",
        PushFormat::Oci,
    );
    let s = Sluice::start(&upstream("local", &reg, true, "3s"));
    common::within(120, "moving tag", async {
        let (d, _) = tag_digest(&s, "app", "latest").await;
        let fetched = Instant::now();
        assert_eq!(d, old.digest);
        let tag_reqs = || {
            reg.count("HEAD", "/v2/app/manifests/latest")
                + reg.count("GET", "/v2/app/manifests/latest")
        };

        // Move the tag upstream; within the ttl sluice keeps serving the old digest.
        let layout_dir = new_layout.dir.clone();
        let host = reg.host();
        tokio::task::spawn_blocking(move || {
            push(&layout_dir, "latest", &host, "app:latest", PushFormat::Oci)
        })
        .await
        .expect("push new image");
        let direct = walk(&reg.url(), "app", "latest", false).await;
        assert!(
            direct.contains_key(&new.digest),
            "the registry did not move the tag"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reqs_before = tag_reqs();
        let (d, cache) = tag_digest(&s, "app", "latest").await;
        assert!(
            fetched.elapsed() < TTL,
            "test too slow: the ttl passed before the within-ttl check"
        );
        assert_eq!(
            d, old.digest,
            "within the ttl sluice must serve the cached tag"
        );
        assert_eq!(cache, "HIT");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            tag_reqs(),
            reqs_before,
            "a fresh tag was revalidated upstream"
        );
        let heads_before = reg.count("HEAD", "/v2/app/manifests/latest");

        // After the ttl: revalidated (HEAD), and the new digest is served — at once, or
        // after one stale-while-revalidate answer of the old one.
        tokio::time::sleep(TTL.saturating_sub(fetched.elapsed()) + Duration::from_millis(300))
            .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            let (d, cache) = tag_digest(&s, "app", "latest").await;
            assert!(d == old.digest || d == new.digest, "unknown digest {d}");
            seen.push(format!("{d} {cache}"));
            if d == new.digest {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice still serves the old digest 5 s after the ttl: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("answers after the ttl: {seen:?}");
        // The old digest only as STALE answers while the one revalidation runs (how many
        // depends on how long its fetch and fsync take on a loaded machine), never as a
        // HIT; and one revalidation, however many stale answers started it.
        let (last, stale) = seen.split_last().expect("at least one answer");
        assert!(
            last.ends_with(" HIT") || last.ends_with(" MISS"),
            "{seen:?}"
        );
        assert!(
            stale.iter().all(|a| a == &format!("{} STALE", old.digest)),
            "the old digest after the ttl, not marked stale: {seen:?}"
        );
        assert_eq!(
            reg.count("HEAD", "/v2/app/manifests/latest"),
            heads_before + 1,
            "not one revalidation (a HEAD) for the stale tag: {seen:?}"
        );

        // A real client gets the new image through sluice.
        let out = tmp.path().join("pulled");
        let via = format!("{}/app:latest", s.host());
        tokio::task::spawn_blocking(move || pull_oci_exact(&via, &out, "latest"))
            .await
            .expect("pull");
        assert_same_layout_blobs(&tmp.path().join("pulled"), &new_layout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_query_and_name_prefix_route_to_the_right_upstream() {
    let first = Registry::start();
    let second = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (l1, m1) = build_single_arch(&tmp.path().join("one"), "v1", 7);
    let (l2, m2) = build_single_arch(&tmp.path().join("two"), "v1", 8);
    push(&l1.dir, "v1", &first.host(), "app:v1", PushFormat::Oci);
    push(&l2.dir, "v1", &second.host(), "app:v1", PushFormat::Oci);
    push(
        &l2.dir,
        "v1",
        &second.host(),
        "local/app:v1",
        PushFormat::Oci,
    );
    let s = Sluice::start(&format!(
        "{}{}",
        upstream("local", &first, true, "2s"),
        upstream("second", &second, false, "2s")
    ));
    common::within(120, "routing", async {
        assert_eq!(
            tag_digest(&s, "app", "v1").await.0,
            m1.digest,
            "un-prefixed name → default upstream"
        );
        assert_eq!(
            tag_digest(&s, "local/app", "v1").await.0,
            m1.digest,
            "default upstream by its name prefix"
        );
        assert_eq!(
            tag_digest(&s, "second/app", "v1").await.0,
            m2.digest,
            "name prefix → second upstream"
        );
        let ns = format!("v1?ns={}", second.host());
        assert_eq!(
            tag_digest(&s, "app", &ns).await.0,
            m2.digest,
            "?ns= → second upstream"
        );
        // With ?ns= the whole path is a repository of that registry, even one whose first
        // segment is another upstream's name ...
        assert_eq!(
            tag_digest(&s, "local/app", &ns).await.0,
            m2.digest,
            "?ns= names the registry: local/app there, not app at upstream local"
        );
        // ... and a prefix naming the ns upstream itself is its mount point.
        assert_eq!(
            tag_digest(&s, "second/app", &ns).await.0,
            m2.digest,
            "own prefix with ?ns="
        );

        // Blobs follow the same routing.
        let c = http_client();
        let cfg2 = serde_json::from_slice::<serde_json::Value>(&l2.blob(&m2.digest)).expect("json")
            ["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_string();
        for url in [
            format!("{}/v2/second/app/blobs/{cfg2}", s.base_url()),
            format!("{}/v2/app/blobs/{cfg2}?ns={}", s.base_url(), second.host()),
        ] {
            let r = c.get(&url).send().await.expect("GET blob");
            assert_eq!(r.status(), 200, "{url}");
            sluice_cache_header(&r);
            assert!(r.bytes().await.expect("body") == l2.blob(&cfg2), "{url}");
        }
        // The upstreams saw the repository name without sluice's prefix.
        assert!(
            second.count("GET", "/v2/app/manifests/v1")
                + second.count("HEAD", "/v2/app/manifests/v1")
                >= 1
        );
        assert_eq!(
            first.count("GET", "/v2/second/"),
            0,
            "prefix leaked to the default upstream"
        );
        assert_eq!(
            second.count("GET", "/v2/second/"),
            0,
            "prefix sent to the second upstream"
        );

        // And the real client through the prefix.
        let out = tmp.path().join("pulled");
        let via = format!("{}/second/app:v1", s.host());
        let out2 = out.clone();
        tokio::task::spawn_blocking(move || pull_oci_exact(&via, &out2, "v1"))
            .await
            .expect("pull");
        assert_same_layout_blobs(&out, &l2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_through_sluice_is_rejected_with_unsupported() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, m) = build_single_arch(&tmp.path().join("src"), "v1", 9);
    let s = sluice_for(&reg);
    common::within(120, "push rejection", async {
        // The real client.
        let mut cmd = skopeo();
        cmd.args(["copy", "--retry-times", "0", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.dir.display()))
            .arg(format!("docker://{}/pushed:v1", s.host()));
        let out = tokio::task::spawn_blocking(move || {
            run_with_timeout(&mut cmd, Duration::from_secs(120))
        })
        .await
        .expect("skopeo");
        assert!(
            !out.status.success(),
            "skopeo push through sluice succeeded:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Nothing reached the registry.
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert_eq!(
                reg.count(method, "/v2/"),
                0,
                "{method} reached the upstream"
            );
        }

        // Every write method, raw.
        let c = http_client();
        let base = s.base_url();
        let cases = [
            (
                reqwest::Method::POST,
                format!("{base}/v2/pushed/blobs/uploads/"),
            ),
            (
                reqwest::Method::PATCH,
                format!("{base}/v2/pushed/blobs/uploads/some-uuid"),
            ),
            (
                reqwest::Method::PUT,
                format!(
                    "{base}/v2/pushed/blobs/uploads/some-uuid?digest={}",
                    m.digest
                ),
            ),
            (
                reqwest::Method::PUT,
                format!("{base}/v2/pushed/manifests/v1"),
            ),
            (
                reqwest::Method::DELETE,
                format!("{base}/v2/pushed/manifests/{}", m.digest),
            ),
            (
                reqwest::Method::DELETE,
                format!("{base}/v2/pushed/blobs/{}", m.digest),
            ),
        ];
        for (method, url) in cases {
            let r = c
                .request(method.clone(), &url)
                .header("Content-Type", common::images::OCI_MANIFEST)
                .body(layout.blob(&m.digest))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            assert_eq!(r.status(), 405, "{method} {url}");
            // Upload endpoints serve no method at all; manifests and blobs serve reads.
            let allow = if url.contains("/blobs/uploads/") {
                ""
            } else {
                "GET, HEAD"
            };
            assert_eq!(
                r.headers().get("allow").and_then(|v| v.to_str().ok()),
                Some(allow),
                "{method} {url}: a 405 says what is allowed"
            );
            sluice_cache_header(&r);
            let v = json_body(r).await;
            assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{method} {url}: {v}");
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert_eq!(
                reg.count(method, "/v2/"),
                0,
                "{method} reached the upstream"
            );
        }
        let out = pull_raw(
            &format!("{}/pushed:v1", reg.host()),
            &format!("dir:{}", tmp.path().join("x").display()),
        );
        assert!(
            !out.status.success(),
            "the image exists upstream after a rejected push"
        );
    })
    .await;
}

/// One manifest answer, as compared between distribution and sluice.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: String,
    digest: String,
    body: Vec<u8>,
}

/// `method` on `base/v2/repo/manifests/reference` with one `Accept` header per entry.
async fn manifest_answer(
    method: reqwest::Method,
    base: &str,
    repo: &str,
    reference: &str,
    accept: &[&str],
) -> Answer {
    let mut req = http_client().request(method, format!("{base}/v2/{repo}/manifests/{reference}"));
    for a in accept {
        req = req.header("Accept", *a);
    }
    let r = req.send().await.expect("manifest request");
    let status = r.status().as_u16();
    let content_type = header(&r, "content-type");
    let digest = header(&r, "docker-content-digest");
    Answer {
        status,
        content_type,
        digest,
        body: r.bytes().await.expect("body").to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_accept_manifest_lists_gets_what_distribution_gives_it() {
    use common::images::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
    let reg = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A Docker manifest list (linux/amd64, linux/arm64) and an OCI index.
    let (docker, _) = build_multi_arch(&tmp.path().join("docker"), "v1", 31);
    push(&docker.dir, "v1", &reg.host(), "list:v1", PushFormat::V2s2);
    let (oci, oci_idx) = build_multi_arch(&tmp.path().join("oci"), "v1", 32);
    push(&oci.dir, "v1", &reg.host(), "index:v1", PushFormat::Oci);
    let s = sluice_for(&reg);
    let (direct, via) = (reg.url(), s.base_url());
    common::within(120, "manifest negotiation", async {
        let list = manifest_answer(
            reqwest::Method::GET,
            &direct,
            "list",
            "v1",
            &[ACCEPT_ALL_MANIFESTS],
        )
        .await;
        assert_eq!(
            list.content_type, DOCKER_LIST,
            "skopeo pushed a Docker manifest list"
        );
        // Through sluice as from distribution: the list when it is accepted (also named
        // among others, one header per type as Docker's client sends them), the
        // linux/amd64 image manifest when only image manifests are; GET and HEAD.
        for accept in [
            vec![ACCEPT_ALL_MANIFESTS],
            vec![DOCKER_MANIFEST, DOCKER_LIST],
            vec![DOCKER_MANIFEST],
        ] {
            for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                let want = manifest_answer(method.clone(), &direct, "list", "v1", &accept).await;
                let got = manifest_answer(method.clone(), &via, "list", "v1", &accept).await;
                assert_eq!(want.status, 200, "{method} {accept:?} from distribution");
                assert_eq!(got, want, "{method} list:v1 with Accept {accept:?}");
            }
        }
        let amd64 =
            manifest_answer(reqwest::Method::GET, &via, "list", "v1", &[DOCKER_MANIFEST]).await;
        // `q=0` refuses a type (RFC 9110 §12.4.2): honoured, where distribution, which
        // ignores `q`, would send the list.
        let refusing = manifest_answer(
            reqwest::Method::GET,
            &via,
            "list",
            "v1",
            &[&format!("{DOCKER_MANIFEST}; q=0.9, {DOCKER_LIST}; q=0")],
        )
        .await;
        assert_eq!(refusing, amd64, "q=0 on the list type");
        assert_eq!(amd64.content_type, DOCKER_MANIFEST);
        assert_ne!(amd64.digest, list.digest);
        assert_eq!(sha256_digest(&amd64.body), amd64.digest);
        let config: serde_json::Value = serde_json::from_slice(&amd64.body).expect("json");
        let cfg = http_client()
            .get(format!(
                "{via}/v2/list/blobs/{}",
                config["config"]["digest"].as_str().expect("config")
            ))
            .send()
            .await
            .expect("config blob");
        let cfg: serde_json::Value =
            serde_json::from_slice(&cfg.bytes().await.expect("body")).expect("json");
        assert_eq!(cfg["architecture"], "amd64", "the default platform's image");
        // By digest the bytes are named: the list itself, whatever the Accept (as from
        // distribution).
        let by_digest = manifest_answer(
            reqwest::Method::GET,
            &via,
            "list",
            &list.digest,
            &[DOCKER_MANIFEST],
        )
        .await;
        assert_eq!(
            by_digest,
            manifest_answer(
                reqwest::Method::GET,
                &direct,
                "list",
                &list.digest,
                &[DOCKER_MANIFEST]
            )
            .await
        );
        assert_eq!(by_digest.digest, list.digest);

        // An OCI index of OCI manifests, for a client naming only Docker's types (no
        // manifest it accepts) or OCI image manifests but not the index (distribution picks
        // a platform only from a Docker manifest list, and so does sluice): distribution
        // answers 404; sluice serves the index as it is and lets the client decide.
        for accept in [[DOCKER_MANIFEST], [common::images::OCI_MANIFEST]] {
            let get = |base| manifest_answer(reqwest::Method::GET, base, "index", "v1", &accept);
            let refused = get(&direct).await;
            assert_eq!(
                refused.status, 404,
                "distribution's answer changed: {refused:?}"
            );
            let as_is = get(&via).await;
            assert_eq!(
                (as_is.status, as_is.content_type.as_str()),
                (200, OCI_INDEX),
                "{accept:?}"
            );
            assert_eq!(as_is.digest, oci_idx.digest);
        }

        let m = s.metrics().await;
        let count = |outcome: &str| {
            common::metrics::sample(
                &m,
                &format!("sluice_oci_manifest_negotiations_total{{outcome=\"{outcome}\"}}"),
            )
        };
        // GET and HEAD with only the image type, the two GETs after: 4 platform picks.
        assert_eq!(count("platform"), 4.0, "{m}");
        assert_eq!(count("as_is"), 2.0, "{m}");
    })
    .await;
}
