//! Operations: cleanup policies (`[[storage.cleanup]]`) against the OCI simulator:
//! keep_last in dry-run then enforce (only unshared blobs go, pins win, pull order survives
//! a restart, a removed tag is refetched byte-exact), expire_after evaluated online by the
//! background collection, exact accounting afterwards, and admin auth on the routes; npm
//! versions ranked by their tarballs' last access, against the npm simulator; PyPI versions
//! (all their files) against the PyPI simulator, with a per-request `dry_run` first.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::metrics;
use common::ops::{pull, stored_on_disk, ADMIN, READER};
use common::sim::{Sim, SimImage};
use common::{
    blob_files, blob_path, eventually, http_client, json_body, random_bytes, sha256_digest,
    sluice_cache_header, Sluice,
};

/// The ops config with `eviction_grace = "1s"`; `storage` adds more `[storage]` keys.
fn config(port: u16, data_dir: &Path, sim: &Sim, storage: &str) -> String {
    common::ops::config(
        port,
        data_dir,
        sim,
        &format!("eviction_grace = \"1s\"\n{storage}"),
    )
}

async fn storage_bytes(s: &Sluice) -> Option<u64> {
    metrics::sum_labelled(&s.metrics().await, "sluice_storage_bytes", &[]).map(|v| v as u64)
}

async fn cleanup(s: &Sluice, method: reqwest::Method, token: Option<&str>) -> reqwest::Response {
    let mut req = http_client().request(method, format!("{}/-/api/cleanup", s.base_url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("cleanup request")
}

async fn run_cleanup(s: &Sluice) -> serde_json::Value {
    let r = cleanup(s, reqwest::Method::POST, Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    json_body(r).await
}

/// `(name, tag, status)` of a policy report's selection, least recently pulled first.
fn selection(report: &serde_json::Value, policy: &str) -> Vec<(String, String, String)> {
    let p = report["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["policy"] == policy)
        .unwrap_or_else(|| panic!("no report for {policy}: {report}"));
    p["selected"]
        .as_array()
        .expect("selected")
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap_or("").to_string(),
                x["tag"].as_str().unwrap_or("").to_string(),
                x["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn sel(name: &str, tag: &str, status: &str) -> (String, String, String) {
    (name.into(), tag.into(), status.into())
}

fn files_of(img: &SimImage) -> Vec<String> {
    let mut v = vec![img.manifest_digest.clone(), img.config_digest.clone()];
    v.extend(img.layer_digests.iter().cloned());
    v
}

fn policies(mode: &str) -> String {
    format!(
        "gc_interval = \"1h\"\n\
         [[storage.pin]]\nformat = \"oci\"\nname = \"base\"\ntag = \"b1\"\n\
         [[storage.cleanup]]\nid = \"keep2\"\nformat = \"oci\"\nupstream = \"sim\"\nname = \"*\"\nkeep_last = 2\nmode = \"{mode}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_reports_in_dry_run_then_enforce_removes_only_unshared_files_of_the_oldest_pulled_tags(
) {
    let sim = Sim::start().await;
    let shared = random_bytes(40_000, 1);
    let shared_other_repo = random_bytes(30_000, 2);
    let mut app = Vec::new();
    for (i, t) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
        let mut layers = vec![random_bytes(50_000 + i * 1000, 10 + i as u64)];
        match *t {
            "t2" | "t4" => layers.push(shared.clone()),
            "t1" => layers.push(shared_other_repo.clone()),
            _ => {}
        }
        app.push(sim.push_image("app", t, &layers));
    }
    let mut base = Vec::new();
    for (i, t) in ["b1", "b2", "b3"].iter().enumerate() {
        let mut layers = vec![random_bytes(20_000 + i * 1000, 20 + i as u64)];
        if *t == "b3" {
            layers.push(shared_other_repo.clone());
        }
        base.push(sim.push_image("base", t, &layers));
    }
    let mut s = Sluice::start_with(|port, dir| config(port, dir, &sim, &policies("dry-run")));
    let data = s.data_dir();

    // Pull order: app t3, t1, t4, t2 (not the names' order: ties would be broken by
    // name), then base b1..b3 (b1 is pinned).
    for i in [2, 0, 3, 1] {
        pull(&s, "app", &format!("t{}", i + 1), &app[i]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (t, img) in ["b1", "b2", "b3"].iter().zip(&base) {
        pull(&s, "base", t, img).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let every file leave eviction_grace.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // Auth on both routes.
    for m in [reqwest::Method::GET, reqwest::Method::POST] {
        assert_eq!(cleanup(&s, m.clone(), None).await.status(), 401);
        assert_eq!(cleanup(&s, m.clone(), Some(READER)).await.status(), 403);
        assert_eq!(cleanup(&s, m, Some("wrong")).await.status(), 401);
    }

    // Dry-run: the two least recently pulled of each repository, nothing removed.
    let files_before: BTreeSet<_> = blob_files(&data).into_iter().collect();
    let bytes_before = stored_on_disk(&data);
    let report = run_cleanup(&s).await;
    assert_eq!(
        selection(&report, "keep2")
            .into_iter()
            .filter(|x| x.0 == "app")
            .collect::<Vec<_>>(),
        [
            sel("app", "t3", "would-remove"),
            sel("app", "t1", "would-remove")
        ],
        "{report:#}"
    );
    assert!(
        selection(&report, "keep2").contains(&sel("base", "b1", "pinned")),
        "{report:#}"
    );
    let p = &report["policies"][0];
    assert_eq!(p["mode"], "dry-run");
    assert_eq!(p["items"], 2);
    assert_eq!(p["kept_pinned"], 1);
    let files_after: BTreeSet<_> = blob_files(&data).into_iter().collect();
    assert_eq!(files_before, files_after, "dry-run removed files");
    assert_eq!(stored_on_disk(&data), bytes_before);
    // GET answers the last evaluation.
    let r = cleanup(&s, reqwest::Method::GET, Some(ADMIN)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        selection(&json_body(r).await, "keep2"),
        selection(&report, "keep2")
    );

    // t3 pulled again (HEAD counts): now t1 and t4 are the oldest. The pull is only in
    // memory until the graceful stop flushes it: the restart proves it persisted.
    let r = http_client()
        .head(format!("{}/v2/app/manifests/t3", s.base_url()))
        .header("Accept", common::images::OCI_MANIFEST)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    std::fs::write(
        s.config_path(),
        config(s.addr().port(), &data, &sim, &policies("enforce")),
    )
    .expect("rewrite config");
    s.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let report = run_cleanup(&s).await;
    let app_sel: Vec<_> = selection(&report, "keep2")
        .into_iter()
        .filter(|x| x.0 == "app")
        .collect();
    assert_eq!(
        app_sel,
        [sel("app", "t1", "removed"), sel("app", "t4", "removed")],
        "{report:#}"
    );
    assert!(selection(&report, "keep2").contains(&sel("base", "b1", "pinned")));
    let p = &report["policies"][0];
    assert_eq!(p["mode"], "enforce");
    assert_eq!(p["items"], 2);

    // Exactly t1's and t4's own files are gone; the layer t4 shares with t2 and the one t1
    // shares with base:b3 stay, as do the other tags and the pinned one.
    let shared_d = sha256_digest(&shared);
    let shared_other_d = sha256_digest(&shared_other_repo);
    let mut gone = Vec::new();
    for img in [&app[0], &app[3]] {
        for d in files_of(img) {
            if d != shared_d && d != shared_other_d {
                gone.push(d);
            }
        }
    }
    for d in &gone {
        assert!(!blob_path(&data, d).exists(), "{d} should be removed");
    }
    let disappeared: BTreeSet<String> = files_before
        .iter()
        .filter(|f| !f.exists())
        .map(|f| {
            format!(
                "sha256:{}",
                f.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    assert_eq!(disappeared, gone.iter().cloned().collect::<BTreeSet<_>>());
    for img in [&app[1], &app[2], &base[0], &base[1], &base[2]] {
        for d in files_of(img) {
            assert!(blob_path(&data, &d).exists(), "{d} should stay");
        }
    }
    let removed_bytes = bytes_before - stored_on_disk(&data);
    assert_eq!(p["bytes"].as_u64(), Some(removed_bytes), "{report:#}");

    // Accounting is exact, and the metrics say what was removed.
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));
    let m = s.metrics().await;
    let labels = ["policy=\"keep2\"", "mode=\"enforce\""];
    assert_eq!(
        metrics::sum_labelled(&m, "sluice_cleanup_items_total", &labels),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metrics::sum_labelled(&m, "sluice_cleanup_bytes_total", &labels),
        Some(removed_bytes as f64)
    );
    assert!(
        s.log().contains("\"policy\":\"keep2\""),
        "no cleanup log line"
    );

    // A removed tag is fetched again, byte-exact.
    let manifest_gets = sim.count("GET", "/manifests/t4");
    let caches = pull(&s, "app", "t4", &app[3]).await;
    assert_eq!(caches[0], "MISS");
    assert_eq!(caches[1], "MISS", "config of t4 refetched");
    assert_eq!(caches[2], "MISS", "own layer of t4 refetched");
    assert_eq!(caches[3], "HIT", "the layer shared with t2 stayed");
    assert_eq!(sim.count("GET", "/manifests/t4"), manifest_gets + 1);
    // The refetched layer is committed (and counted) after its response.
    s.settled().await;
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_after_removes_tags_not_pulled_since_in_the_background_collection() {
    let sim = Sim::start().await;
    let old = sim.push_image("svc", "old", &[random_bytes(30_000, 31)]);
    let new = sim.push_image("svc", "new", &[random_bytes(30_000, 32)]);
    let s = Sluice::start_with(|port, dir| {
        config(
            port,
            dir,
            &sim,
            "gc_interval = \"1s\"\n[[storage.cleanup]]\nid = \"expire\"\nname = \"svc\"\nexpire_after = \"3s\"\nmode = \"enforce\"\n",
        )
    });
    let data = s.data_dir();
    pull(&s, "svc", "old", &old).await;
    pull(&s, "svc", "new", &new).await;
    // Keep pulling `new` (HEAD) while waiting for the collection to expire `old`.
    let c = http_client();
    let url = format!("{}/v2/svc/manifests/new", s.base_url());
    let mut removed = false;
    for _ in 0..40 {
        let r = c
            .head(&url)
            .header("Accept", common::images::OCI_MANIFEST)
            .send()
            .await
            .expect("head");
        assert_eq!(r.status(), 200);
        // The manifest goes first, then what only it used.
        if files_of(&old).iter().all(|d| !blob_path(&data, d).exists()) {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(removed, "old was not expired\n{}", s.log());
    for d in files_of(&old) {
        assert!(
            !blob_path(&data, &d).exists(),
            "{d} of old should be removed"
        );
    }
    for d in files_of(&new) {
        assert!(blob_path(&data, &d).exists(), "{d} of new should stay");
    }
    // Removal happens in the collection right after `old` expired; `new` was never selected.
    assert!(
        eventually(Duration::from_secs(5), || s
            .log()
            .contains("\"policy\":\"expire\""))
        .await
    );
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));
    let m = s.metrics().await;
    let labels = ["policy=\"expire\"", "mode=\"enforce\""];
    assert_eq!(
        metrics::sum_labelled(&m, "sluice_cleanup_items_total", &labels),
        Some(1.0),
        "{m}"
    );
    // The expired tag comes back from the upstream.
    let caches = pull(&s, "svc", "old", &old).await;
    assert!(caches.iter().all(|c| c == "MISS"), "{caches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_keep_last_removes_the_tarballs_of_the_least_recently_pulled_versions() {
    use common::npm_sim::NpmSim;
    let sim = NpmSim::start().await;
    let pubs: Vec<_> = ["1.0.0", "2.0.0", "3.0.0"]
        .iter()
        .map(|v| sim.publish("leftish", v, &[]))
        .collect();
    let s = Sluice::start(&format!(
        "eviction_grace = \"1s\"\ngc_interval = \"1h\"\n\
         [[storage.cleanup]]\nid = \"npm1\"\nformat = \"npm\"\nname = \"left*\"\nkeep_last = 1\nmode = \"enforce\"\n\
         [[auth.token]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
         [[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\nmetadata_ttl = \"1h\"\n",
        sim.registry_url()
    ));
    let data = s.data_dir();
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    let r = c
        .get(format!("{mount}/leftish"))
        .send()
        .await
        .expect("packument");
    assert_eq!(r.status(), 200);
    let get = |p: &common::npm_sim::Published| {
        let url = format!("{mount}/leftish/-/{}", p.file);
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.expect("tarball");
            assert_eq!(r.status(), 200);
            let cache = sluice_cache_header(&r);
            (cache, r.bytes().await.expect("body"))
        }
    };
    // Pull order 2.0.0, 3.0.0, 1.0.0, a second apart (npm pulls are the tarballs' access
    // times, kept in whole seconds).
    for (i, p) in [&pubs[1], &pubs[2], &pubs[0]].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(get(p).await.1, p.tarball);
        // Its access time is its commit's, just after the body went out.
        s.settled().await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let tarball_file =
        |p: &common::npm_sim::Published| blob_path(&data, &sha256_digest(&p.tarball));
    let report = run_cleanup(&s).await;
    assert_eq!(
        selection(&report, "npm1"),
        [
            sel("leftish", "2.0.0", "removed"),
            sel("leftish", "3.0.0", "removed")
        ],
        "{report:#}"
    );
    assert!(!tarball_file(&pubs[1]).exists() && !tarball_file(&pubs[2]).exists());
    assert!(tarball_file(&pubs[0]).exists());
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));
    // The packument is still cached (no upstream request) and the version comes back.
    let packument_gets = sim.count("GET", "/leftish");
    let (cache, body) = get(&pubs[1]).await;
    assert_eq!((cache.as_str(), body), ("MISS", pubs[1].tarball.clone()));
    let (cache, _) = get(&pubs[0]).await;
    assert_eq!(cache, "HIT");
    assert_eq!(
        sim.count("GET", "/leftish") - packument_gets,
        1,
        "only the removed tarball was fetched again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_keep_last_removes_the_files_of_the_least_recently_pulled_versions() {
    use common::pypi_sim::{Mode, PypiSim, SimFile};
    let sim = PypiSim::start(Mode::Json).await;
    // 2.0 has a wheel and an sdist: a version is all its files.
    let files = [
        SimFile::new(
            "cleanpy-1.0-py3-none-any.whl",
            "1.0",
            random_bytes(40_000, 41),
        ),
        SimFile::new(
            "cleanpy-2.0-py3-none-any.whl",
            "2.0",
            random_bytes(50_000, 42),
        ),
        SimFile::new("cleanpy-2.0.tar.gz", "2.0", random_bytes(20_000, 43)),
        SimFile::new(
            "cleanpy-3.0-py3-none-any.whl",
            "3.0",
            random_bytes(60_000, 44),
        ),
    ];
    for f in &files {
        sim.add_file("cleanpy", f.clone());
    }
    let s = Sluice::start(&format!(
        "eviction_grace = \"1s\"\ngc_interval = \"1h\"\n\
         [[storage.cleanup]]\nid = \"py1\"\nformat = \"pypi\"\nname = \"CleanPy\"\nkeep_last = 1\nmode = \"enforce\"\n\
         [[auth.token]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
         [[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\nmetadata_ttl = \"1h\"\n",
        sim.simple_url()
    ));
    let data = s.data_dir();
    let c = http_client();
    let page_url = format!("{}/pypi/simple/cleanpy/", s.base_url());
    let page = |c: reqwest::Client| {
        let url = page_url.clone();
        async move {
            let r = c
                .get(url)
                .header("Accept", "application/vnd.pypi.simple.v1+json")
                .send()
                .await
                .expect("page");
            assert_eq!(r.status(), 200);
            let cache = sluice_cache_header(&r);
            (cache, json_body(r).await)
        }
    };
    let (_, listing) = page(c.clone()).await;
    let url_of = |f: &SimFile| {
        listing["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|x| x["filename"] == f.filename.as_str())
            .and_then(|x| x["url"].as_str())
            .unwrap_or_else(|| panic!("{} not listed: {listing}", f.filename))
            .to_string()
    };
    let get = |f: &SimFile| {
        let (url, c) = (url_of(f), c.clone());
        async move {
            let r = c.get(url).send().await.expect("file");
            assert_eq!(r.status(), 200);
            let cache = sluice_cache_header(&r);
            (cache, r.bytes().await.expect("body"))
        }
    };
    // Pull order 2.0 (both files), 3.0, 1.0, a second apart (a version's last pull is its
    // files' access time, kept in whole seconds).
    for (i, group) in [&files[1..3], &files[3..4], &files[0..1]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        for f in group {
            let (cache, body) = get(f).await;
            assert_eq!((cache.as_str(), &body), ("MISS", &f.bytes));
        }
        // Their access times are their commits', just after the bodies went out.
        s.settled().await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let file_path = |f: &SimFile| blob_path(&data, &sha256_digest(&f.bytes));
    for f in &files {
        assert!(file_path(f).exists(), "{} stored", f.filename);
    }

    // Dry-run first (forced for this call on an enforce policy): reported, nothing removed.
    // A dry_run that is not a boolean is refused before anything runs.
    let files_before: BTreeSet<_> = blob_files(&data).into_iter().collect();
    let r = http_client()
        .post(format!("{}/-/api/cleanup?dry_run=maybe", s.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("bad dry run");
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap_or_default()
        .contains("dry_run must be true or false"),);
    let r = http_client()
        .post(format!("{}/-/api/cleanup?dry_run=true", s.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("dry run");
    assert_eq!(r.status(), 200);
    let report = json_body(r).await;
    assert_eq!(
        selection(&report, "py1"),
        [
            sel("cleanpy", "2.0", "would-remove"),
            sel("cleanpy", "3.0", "would-remove")
        ],
        "{report:#}"
    );
    let p = &report["policies"][0];
    assert_eq!(p["mode"], "dry-run");
    assert_eq!(
        (p["considered"].as_u64(), p["items"].as_u64()),
        (Some(3), Some(2))
    );
    let would_bytes: u64 = files[1..].iter().map(|f| f.bytes.len() as u64).sum();
    assert_eq!(p["bytes"].as_u64(), Some(would_bytes), "{report:#}");
    let files_after: BTreeSet<_> = blob_files(&data).into_iter().collect();
    assert_eq!(files_before, files_after, "a dry run removed files");

    // Enforce: exactly the files of 2.0 and 3.0 leave the disk and the accounting.
    let report = run_cleanup(&s).await;
    assert_eq!(
        selection(&report, "py1"),
        [
            sel("cleanpy", "2.0", "removed"),
            sel("cleanpy", "3.0", "removed")
        ],
        "{report:#}"
    );
    assert_eq!(report["policies"][0]["mode"], "enforce");
    assert_eq!(report["policies"][0]["bytes"].as_u64(), Some(would_bytes));
    for f in &files[1..] {
        assert!(!file_path(f).exists(), "{} should be removed", f.filename);
    }
    assert!(file_path(&files[0]).exists(), "1.0 should stay");
    let disappeared: BTreeSet<_> = files_before
        .difference(&blob_files(&data).into_iter().collect())
        .cloned()
        .collect();
    assert_eq!(
        disappeared,
        files[1..].iter().map(file_path).collect::<BTreeSet<_>>()
    );
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));

    // The simple page is still cached (no upstream request); a removed file comes back
    // from the upstream byte-exact, a kept one is a hit.
    let page_gets = sim.count("/simple/cleanpy/");
    let (cache, _) = page(c.clone()).await;
    assert_eq!(cache, "HIT");
    let file_gets = sim.count(&files[3].filename);
    let (cache, body) = get(&files[3]).await;
    assert_eq!((cache.as_str(), &body), ("MISS", &files[3].bytes));
    assert_eq!(sim.count(&files[3].filename), file_gets + 1);
    let (cache, body) = get(&files[0]).await;
    assert_eq!((cache.as_str(), &body), ("HIT", &files[0].bytes));
    assert_eq!(
        sim.count("/simple/cleanpy/"),
        page_gets,
        "the page was fetched again"
    );
    // The refetched 3.0 wheel is committed (and counted) after its response.
    s.settled().await;
    assert_eq!(storage_bytes(&s).await, Some(stored_on_disk(&data)));
}
