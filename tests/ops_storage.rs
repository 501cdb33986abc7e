//! Operations: storage limits (LRU eviction to the low watermark, pins, a reader of an
//! evicted blob, exact accounting across restarts, offline `sluice gc`) and the admin API
//! (auth, stats, cache listing, purge then refetch, run-time pins), against the OCI
//! simulator.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::metrics;
use common::ops::{config, pull, stats, stored_on_disk, ADMIN, READER};
use common::sim::{Sim, SimImage};
use common::{
    blob_files, blob_path, eventually, http_client, json_body, random_bytes, run_with_timeout,
    sha256_digest, sluice_cache_header, within, Sluice,
};

const MIB: u64 = 1 << 20;

async fn storage_bytes_metric(s: &Sluice) -> u64 {
    metrics::sum_prefixed(&s.metrics().await, "sluice_storage_bytes").unwrap_or(-1.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_past_max_size_evicts_lru_to_low_watermark_keeping_pins_and_readers() {
    let sim = Sim::start().await;
    let pinned = sim.push_image("keep/app", "1", &[random_bytes(512 * 1024, 1)]);
    let big = sim.push_image("old/big", "1", &[random_bytes(3 * MIB as usize, 2)]);
    let churn: Vec<SimImage> = (0..6)
        .map(|i| {
            sim.push_image(
                &format!("churn/c{i}"),
                "1",
                &[random_bytes(MIB as usize, 10 + i)],
            )
        })
        .collect();
    let storage = r#"max_size = "6MiB"
high_watermark = 0.9
low_watermark = 0.5
eviction_grace = "1s"
gc_interval = "1h"

[[storage.pin]]
format = "oci"
name = "keep/*"
"#;
    let mut s = Sluice::start_with(|port, dir| config(port, dir, &sim, storage));
    let data = s.data_dir();
    pull(&s, "keep/app", "1", &pinned).await;
    pull(&s, "old/big", "1", &big).await;

    // A reader of the big layer gets its first bytes, then stalls while the layer is
    // evicted.
    let big_layer = big.layer_digests[0].clone();
    let mut reader = http_client()
        .get(format!("{}/v2/old/big/blobs/{big_layer}", s.base_url()))
        .send()
        .await
        .expect("reader");
    assert_eq!(sluice_cache_header(&reader), "HIT");
    let mut got = reader
        .chunk()
        .await
        .expect("first chunk")
        .expect("some bytes")
        .to_vec();
    // Everything pulled from now on is more recent than the big image.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for (i, img) in churn.iter().enumerate() {
        pull(&s, &format!("churn/c{i}"), "1", img).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let limit = 6 * MIB;
    let settled = eventually(Duration::from_secs(15), || {
        stored_on_disk(&data) <= (limit as f64 * 0.9) as u64
    })
    .await;
    assert!(
        settled,
        "store did not get under the high watermark: {} bytes",
        stored_on_disk(&data)
    );
    assert!(
        !blob_path(&data, &big_layer).exists(),
        "the least recently used layer was not evicted"
    );
    // The stalled reader still gets the whole, correct body.
    while let Some(c) = within(30, "reader body", reader.chunk())
        .await
        .expect("reader body")
    {
        got.extend_from_slice(&c);
    }
    assert_eq!(sha256_digest(&got), big_layer);
    // Pinned content survived, the newest image is stored, the oldest churn image is gone.
    for d in std::iter::once(&pinned.manifest_digest)
        .chain([&pinned.config_digest])
        .chain(&pinned.layer_digests)
    {
        assert!(blob_path(&data, d).exists(), "pinned {d} was evicted");
    }
    assert!(blob_path(&data, &churn[5].layer_digests[0]).exists());
    assert!(!blob_path(&data, &churn[0].layer_digests[0]).exists());
    let m = s.metrics().await;
    assert!(
        metrics::sum_prefixed(&m, "sluice_evictions_total{reason=\"lru\"}").unwrap_or(0.0) >= 3.0
    );
    assert!(
        metrics::sum_prefixed(&m, "sluice_evicted_bytes_total").unwrap_or(0.0) >= (3 * MIB) as f64
    );

    // Accounting is exact: files on disk == metric == stats API, before and after a restart.
    let on_disk = stored_on_disk(&data);
    assert_eq!(storage_bytes_metric(&s).await, on_disk);
    assert_eq!(stats(&s).await["storage"]["stored_bytes"], on_disk);
    s.restart();
    assert_eq!(storage_bytes_metric(&s).await, on_disk);
    assert_eq!(stats(&s).await["storage"]["stored_bytes"], on_disk);

    // An evicted image is fetched again, byte-exact.
    let caches = pull(&s, "old/big", "1", &big).await;
    assert!(caches.contains(&"MISS".to_string()), "{caches:?}");

    // Offline `sluice gc` with sluice running refuses (the index is in use)...
    let gc = |cfg: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("gc").arg("--config").arg(cfg);
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    };
    let out = gc(s.config_path());
    assert!(!out.status.success(), "gc ran against a live index");
    // ...and with sluice stopped, a smaller max_size takes everything but the pin.
    s.stop();
    let cfg = std::fs::read_to_string(s.config_path())
        .expect("config")
        .replace("max_size = \"6MiB\"", "max_size = \"1MiB\"")
        .replace("eviction_grace = \"1s\"", "eviction_grace = \"0s\"");
    std::fs::write(s.config_path(), cfg).expect("write config");
    let out = gc(s.config_path());
    assert!(
        out.status.success(),
        "sluice gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned_bytes: u64 = std::iter::once(&pinned.manifest_digest)
        .chain([&pinned.config_digest])
        .chain(&pinned.layer_digests)
        .map(|d| {
            std::fs::metadata(blob_path(&data, d))
                .expect("pinned kept")
                .len()
        })
        .sum();
    assert_eq!(stored_on_disk(&data), pinned_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_an_admin_token_and_purge_makes_the_next_pull_refetch() {
    let sim = Sim::start().await;
    let img = sim.push_image("team/app", "v1", &[random_bytes(300 * 1024, 7)]);
    let s = Sluice::start_with(|port, dir| config(port, dir, &sim, ""));
    let base = s.base_url();
    let c = http_client();
    assert!(pull(&s, "team/app", "v1", &img)
        .await
        .iter()
        .all(|c| c == "MISS"));
    // The cold layer is committed after its response: the cache listing counts it.
    s.settled().await;

    // Auth: no token 401, unknown token 401, read token 403, admin token 200.
    for ep in ["gc", "purge?digest=sha256:00", "pin?format=oci&name=x"] {
        let url = format!("{base}/-/api/{ep}");
        assert_eq!(c.post(&url).send().await.unwrap().status(), 401, "{ep}");
        let r = c.post(&url).bearer_auth("nope").send().await.unwrap();
        assert_eq!(r.status(), 401, "{ep}");
        let r = c.post(&url).bearer_auth(READER).send().await.unwrap();
        assert_eq!(r.status(), 403, "{ep}");
    }
    let r = c
        .get(format!("{base}/-/api/cache"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{base}/-/api/gc"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await["evicted_lru"], 0);

    // Stats are readable anonymously (auth.anonymous = read) and count the pull.
    let r = c.get(format!("{base}/-/api/stats")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v = json_body(r).await;
    assert_eq!(v["today"]["counters"]["images_served"], 1, "{v}");
    assert_eq!(v["today"]["counters"]["artifacts_served"]["oci"], 3, "{v}");
    assert_eq!(v["today"]["distinct_clients"], 1, "{v}");
    assert_eq!(v["today"]["lighthouse"], 1.0, "{v}");

    // The cache listing shows the tag with all its files and their size.
    let r = c
        .get(format!("{base}/-/api/cache?format=oci&name=team/*"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let v = json_body(r).await;
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["name"], "sim/team/app");
    assert_eq!(items[0]["tag"], "v1");
    assert_eq!(items[0]["files_stored"], 3);
    let expected = img.manifest.len() as u64 + 300 * 1024;
    assert!(items[0]["size"].as_u64().unwrap() > expected, "{v}");

    // Run-time pins are listed and removable.
    let r = c
        .post(format!("{base}/-/api/pin"))
        .bearer_auth(ADMIN)
        .body(r#"{"format":"oci","name":"team/*","tag":"v*"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/-/api/pins"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(r).await["runtime"][0]["name"], "team/*");
    let r = c
        .post(format!("{base}/-/api/unpin?format=oci&name=team/*&tag=v*"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A stored layer over 256 KiB served again stays mapped for its next reader
    // (storage.keep_mapped); purging it closes that mapping, so nothing keeps the removed
    // file's disk space in use.
    let mapped = || async { metrics::sum_prefixed(&s.metrics().await, "sluice_mapped_bytes") };
    assert_eq!(mapped().await, Some(0.0));
    assert_eq!(
        pull(&s, "team/app", "v1", &img).await,
        ["HIT", "HIT", "HIT"]
    );
    assert_eq!(mapped().await, Some((300 * 1024) as f64));

    // Purge by digest removes one file; the next request for it is a MISS.
    let layer = &img.layer_digests[0];
    let r = c
        .post(format!("{base}/-/api/purge?digest={layer}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(r).await["removed_files"], 1);
    assert_eq!(mapped().await, Some(0.0));
    assert!(!blob_path(&s.data_dir(), layer).exists());
    let caches = pull(&s, "team/app", "v1", &img).await;
    assert_eq!(caches, ["HIT", "HIT", "MISS"]);
    // The refetched layer must be in the store before the purge counts its files.
    s.settled().await;

    // A method an admin route does not take: 405 saying which it does.
    for (method, route, allow) in [
        (reqwest::Method::GET, "purge", "POST"),
        (reqwest::Method::DELETE, "stats", "GET"),
        (reqwest::Method::PUT, "cleanup", "GET, POST"),
    ] {
        let r = c
            .request(method.clone(), format!("{base}/-/api/{route}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {route}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {route}"
        );
    }

    // Purge by name removes the manifest, config and layer and the tag record.
    let r = c
        .post(format!("{base}/-/api/purge"))
        .bearer_auth(ADMIN)
        .body(r#"{"format":"oci","name":"team/app"}"#)
        .send()
        .await
        .unwrap();
    let v = json_body(r).await;
    assert_eq!(v["removed_files"], 3, "{v}");
    assert_eq!(v["removed_records"], 1, "{v}");
    assert_eq!(v["stored_bytes"], 0, "{v}");
    assert!(blob_files(&s.data_dir()).is_empty());
    let caches = pull(&s, "team/app", "v1", &img).await;
    assert_eq!(caches, ["MISS", "MISS", "MISS"]);
    s.settled().await;
    assert_eq!(
        storage_bytes_metric(&s).await,
        stored_on_disk(&s.data_dir())
    );
    let m = s.metrics().await;
    assert_eq!(
        metrics::sum_prefixed(&m, "sluice_evictions_total{reason=\"purge\"}"),
        Some(4.0)
    );

    // Policy check answers for any name.
    let r = c
        .get(format!(
            "{base}/-/api/policy/check?format=npm&name=left-pad&version=1.3.0"
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(r).await["decision"], "allow");
}

/// sluice with the [`ADMIN`] token and one `[[upstream]]` made of `upstream` (with a 1 h
/// metadata TTL).
fn admin_config(port: u16, dir: &Path, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
         shutdown_grace = \"1s\"\n\n[storage]\ndata_dir = \"{}\"\n\n\
         [[auth.token]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\n\
         [[upstream]]\n{upstream}\nmetadata_ttl = \"1h\"\n",
        dir.display()
    )
}

/// `POST /-/api/purge` with a JSON body and the admin token; checks 200.
async fn purge(s: &Sluice, body: serde_json::Value) -> serde_json::Value {
    let r = http_client()
        .post(format!("{}/-/api/purge", s.base_url()))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    json_body(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_keeps_what_other_tags_and_pins_use_and_a_streaming_reader_finishes() {
    let sim = Sim::start().await;
    let (l1, l2) = (random_bytes(200 * 1024, 31), random_bytes(200 * 1024, 32));
    let a = sim.push_image(
        "team/a",
        "1",
        &[l1.clone(), l2.clone(), random_bytes(2 * MIB as usize, 33)],
    );
    // b shares a's first layer, pinned c its second.
    let b = sim.push_image("team/b", "1", &[l1]);
    let c = sim.push_image("team/c", "1", &[l2]);
    let storage = "[[storage.pin]]\nformat = \"oci\"\nname = \"team/c\"\n";
    let s = Sluice::start_with(|port, dir| config(port, dir, &sim, storage));
    for (repo, img) in [("team/a", &a), ("team/b", &b), ("team/c", &c)] {
        pull(&s, repo, "1", img).await;
    }
    s.settled().await;
    let data = s.data_dir();

    // A reader of a's own big layer has its first bytes when the purge runs.
    let big = a.layer_digests[2].clone();
    let mut reader = http_client()
        .get(format!("{}/v2/team/a/blobs/{big}", s.base_url()))
        .send()
        .await
        .expect("reader");
    assert_eq!(sluice_cache_header(&reader), "HIT");
    let mut got = reader
        .chunk()
        .await
        .expect("chunk")
        .expect("bytes")
        .to_vec();

    let v = purge(
        &s,
        serde_json::json!({"format": "oci", "name": "team/a", "tag": "1"}),
    )
    .await;
    // a's manifest, config and big layer go; the layers b and pinned c use stay.
    assert_eq!(v["matched_items"], 1, "{v}");
    assert_eq!(v["removed_files"], 3, "{v}");
    assert_eq!(v["removed_records"], 1, "{v}");
    assert_eq!(v["kept_files"], 2, "{v}");
    assert!(!blob_path(&data, &big).exists());
    assert!(!blob_path(&data, &a.manifest_digest).exists());
    for d in [&b.layer_digests[0], &c.layer_digests[0]] {
        assert!(blob_path(&data, d).exists(), "{d} was purged");
    }
    while let Some(chunk) = within(30, "reader body", reader.chunk())
        .await
        .expect("reader body")
    {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(sha256_digest(&got), big, "the streaming reader's body");

    // A pinned tag is left alone, by name and by digest.
    let v = purge(&s, serde_json::json!({"format": "oci", "name": "team/c"})).await;
    assert_eq!(
        (&v["matched_items"], &v["kept_pinned"], &v["removed_files"]),
        (&1.into(), &1.into(), &0.into()),
        "{v}"
    );
    let v = purge(&s, serde_json::json!({"digest": c.layer_digests[0]})).await;
    assert_eq!(
        (&v["removed_files"], &v["kept_files"]),
        (&0.into(), &1.into()),
        "{v}"
    );
    let m = s.metrics().await;
    assert_eq!(
        metrics::sum_prefixed(&m, "sluice_evictions_total{reason=\"purge\"}"),
        Some(3.0)
    );

    // With the upstream gone, b and c are still served whole from the store.
    drop(sim);
    assert_eq!(pull(&s, "team/b", "1", &b).await, ["HIT"; 3]);
    assert_eq!(pull(&s, "team/c", "1", &c).await, ["HIT"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_an_npm_version_keeps_the_packument_and_purging_the_package_makes_it_a_miss() {
    use common::npm_sim::NpmSim;
    let sim = NpmSim::start().await;
    sim.publish("leftish", "1.0.0", &[]);
    sim.publish("leftish", "2.0.0", &[]);
    let s = Sluice::start_with(|port, dir| {
        admin_config(
            port,
            dir,
            &format!(
                "name = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"",
                sim.registry_url()
            ),
        )
    });
    let c = http_client();
    let doc_url = format!("{}/npmjs/leftish", s.base_url());
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(&url).send().await.expect("GET");
            assert_eq!(r.status(), 200, "{url}");
            let cache = sluice_cache_header(&r);
            (cache, r.bytes().await.expect("body"))
        }
    };
    let (cache, doc) = get(doc_url.clone()).await;
    assert_eq!(cache, "MISS");
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("packument");
    let tarball = |v: &str| {
        doc["versions"][v]["dist"]["tarball"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for v in ["1.0.0", "2.0.0"] {
        assert_eq!(get(tarball(v)).await.0, "MISS");
    }
    s.settled().await;
    assert_eq!(get(doc_url.clone()).await.0, "HIT");
    let doc_fetches = || {
        sim.requests()
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && r.path
                        .split('?')
                        .next()
                        .is_some_and(|p| p.ends_with("/leftish"))
            })
            .count()
    };
    let fetched = doc_fetches();
    assert_eq!(fetched, 1);

    // A version that does not exist matches nothing, through the CLI too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["purge", "--url", &s.base_url(), "--token", ADMIN])
        .args(["--format", "npm", "leftish@9.9.9", "--json"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (
            &v["matched_items"],
            &v["removed_files"],
            &v["removed_records"]
        ),
        (&0.into(), &0.into(), &0.into()),
        "{v}"
    );
    assert_eq!(get(doc_url.clone()).await.0, "HIT");

    // One version: its tarball only; the packument is still a HIT.
    let v = purge(
        &s,
        serde_json::json!({"format": "npm", "name": "leftish", "version": "1.0.0"}),
    )
    .await;
    assert_eq!(
        (
            &v["matched_items"],
            &v["removed_files"],
            &v["removed_records"]
        ),
        (&1.into(), &1.into(), &0.into()),
        "{v}"
    );
    assert_eq!(get(doc_url.clone()).await.0, "HIT");
    assert_eq!(get(tarball("2.0.0")).await.0, "HIT");
    assert_eq!(get(tarball("1.0.0")).await.0, "MISS");
    assert_eq!(doc_fetches(), fetched);
    s.settled().await;

    // The package: its packument is fetched again (not served from memory).
    let v = purge(&s, serde_json::json!({"format": "npm", "name": "leftish"})).await;
    assert_eq!(v["removed_records"], 1, "{v}");
    assert_eq!(v["removed_files"], 3, "{v}");
    let (cache, again) = get(doc_url.clone()).await;
    assert_eq!(cache, "MISS");
    assert_eq!(doc_fetches(), fetched + 1);
    let again: serde_json::Value = serde_json::from_slice(&again).expect("packument");
    assert_eq!(again["versions"], doc["versions"]);
    assert_eq!(get(doc_url).await.0, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_content_over_max_size_is_reported_once_and_exported() {
    let sim = Sim::start().await;
    let img = sim.push_image("keep/app", "1", &[random_bytes(2 * MIB as usize, 41)]);
    let storage = "max_size = \"1MiB\"\neviction_grace = \"1s\"\ngc_interval = \"1h\"\n\n\
                   [[storage.pin]]\nformat = \"oci\"\nname = \"keep/*\"\n";
    let s = Sluice::start_with(|port, dir| config(port, dir, &sim, storage));
    pull(&s, "keep/app", "1", &img).await;
    s.settled().await;
    let warning = "store is over max_size and nothing more can be evicted";
    let sr = &s;
    let gauge = move |name: &'static str| async move {
        metrics::sum_prefixed(&sr.metrics().await, name).unwrap_or(-1.0)
    };
    // Eviction retries every second; the warning comes once.
    let over = common::eventually_async(move || async move {
        gauge("sluice_storage_over_limit").await == 1.0 && sr.log().contains(warning)
    })
    .await;
    assert!(over, "no over-limit gauge or warning:\n{}", s.log());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.log().matches(warning).count(), 1, "{}", s.log());
    assert!(gauge("sluice_storage_pinned_bytes").await >= (2 * MIB) as f64);
    assert!(blob_path(&s.data_dir(), &img.layer_digests[0]).exists());
    let r = http_client()
        .post(format!("{}/-/api/gc", s.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let v = json_body(r).await;
    assert_eq!(v["over_limit"], true, "{v}");
    assert!(v["pinned_bytes"].as_u64().unwrap() >= 2 * MIB, "{v}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["gc", "--now", "--url", &s.base_url(), "--token", ADMIN]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("still over max_size"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_pypi_project_makes_its_simple_page_and_json_document_a_miss() {
    use common::pypi_sim::{Mode, PypiSim, SimFile};
    let sim = PypiSim::start(Mode::Json).await;
    let sdist = SimFile::new("demo-1.0.tar.gz", "1.0", random_bytes(3_000, 51));
    sim.add_file("demo", sdist);
    let s = Sluice::start_with(|port, dir| {
        admin_config(
            port,
            dir,
            &format!(
                "name = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"",
                sim.simple_url()
            ),
        )
    });
    let page = format!("{}/pypi/simple/demo/", s.base_url());
    let api = format!("{}/pypi/pypi/demo/json", s.base_url());
    let cache = |url: String| async move {
        let r = http_client().get(&url).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{url}");
        sluice_cache_header(&r)
    };
    for url in [&page, &api] {
        assert_eq!(cache(url.clone()).await, "MISS", "{url}");
        assert_eq!(cache(url.clone()).await, "HIT", "{url}");
    }
    let before = sim.requests().len();
    let v = purge(&s, serde_json::json!({"format": "pypi", "name": "Demo"})).await;
    assert_eq!(v["removed_records"], 2, "{v}");
    assert_eq!(v["removed_files"], 2, "{v}");
    for url in [&page, &api] {
        assert_eq!(cache(url.clone()).await, "MISS", "{url}");
    }
    assert_eq!(sim.requests().len(), before + 2);
}
