//! The Cargo format (an experiment, behind `[formats] cargo = true`) against the in-process
//! fake sparse registry (`common::cargo_sim`): the real `cargo` client resolving, fetching
//! and building through sluice, a second machine served from the cache, a third offline, the firewall
//! (blocked versions yanked in the index, a locked blocked version refused naming the rule,
//! internal names never asked for, a reload applying to cached crates), verification,
//! single flight, revalidation of a release newer than the cached index, stale-if-error
//! and the refusals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cargo_client;
use common::cargo_sim::{index_path, CargoSim, SimCrate};
use common::faults::BodyFault;
use common::metrics::sample;
use common::{blob_path, header, http_client, sluice_cache_header, within, Sluice};

fn sluice_for(sim: &CargoSim, extra: &str) -> Sluice {
    Sluice::start(&format!(
        "[formats]\ncargo = true\n\n[[upstream]]\nname = \"crates\"\nformat = \"cargo\"\nurl = \"{}\"\n{extra}\n",
        sim.index_url()
    ))
}

/// A cargo project depending on `deps`, its crates-io source replaced by sluice's
/// `/crates/` mount.
fn project(root: &Path, s: &Sluice, deps: &str) -> PathBuf {
    cargo_client::project(
        root,
        &format!("{}/crates/", s.base_url()),
        deps,
        "fn main() {}\n",
    )
}

/// Runs `cargo <args>` in `dir` with `home` as `CARGO_HOME`; (success, stderr).
fn cargo(dir: &Path, home: &Path, args: &[&str]) -> (bool, String) {
    let out = cargo_client::run(dir, home, args, &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn locked_version(dir: &Path, name: &str) -> String {
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
    let at = lock
        .find(&format!("name = \"{name}\"\nversion = \""))
        .unwrap_or_else(|| panic!("{name} not in Cargo.lock:\n{lock}"));
    let rest = &lock[at..];
    let v = rest.split("version = \"").nth(1).unwrap();
    v[..v.find('"').unwrap()].to_string()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = http_client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    within(30, url, r.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn download_url(s: &Sluice, name: &str, version: &str) -> String {
    format!(
        "{}/crates/api/v1/crates/{name}/{version}/download",
        s.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_cargo_builds_through_sluice_and_a_second_machine_is_served_from_the_cache() {
    let sim = CargoSim::start().await;
    for v in ["1.0.0", "1.1.0"] {
        sim.publish(SimCrate::new("sluice-demo-a", v));
    }
    // Build metadata in a version: cargo sends the `+` as it is.
    let b_sha = sim.publish(SimCrate::new("sd", "0.2.0+build.7"));
    let mut s = sluice_for(&sim, "");
    let deps = "sluice-demo-a = \"1\"\nsd = \"0.2\"";

    let first = tempfile::tempdir().unwrap();
    let dir = project(first.path(), &s, deps);
    let (ok, err) = cargo(&dir, &first.path().join("home"), &["build"]);
    assert!(
        ok,
        "cargo build through sluice failed:\n{err}\nsluice log:\n{}",
        s.log()
    );
    assert_eq!(locked_version(&dir, "sluice-demo-a"), "1.1.0");
    assert_eq!(sim.count("/download"), 2, "{:?}", sim.requests());
    let b_path = blob_path(&s.data_dir(), &format!("sha256:{b_sha}"));
    assert!(common::eventually(Duration::from_secs(10), || b_path.exists()).await);

    // Another machine (empty CARGO_HOME, same lockfile): every crate from sluice's store.
    let second = tempfile::tempdir().unwrap();
    let dir2 = project(second.path(), &s, deps);
    std::fs::copy(dir.join("Cargo.lock"), dir2.join("Cargo.lock")).unwrap();
    let (ok, err) = cargo(&dir2, &second.path().join("home"), &["build", "--locked"]);
    assert!(ok, "second build failed:\n{err}");
    assert_eq!(
        sim.count("/download"),
        2,
        "a cached crate was fetched again"
    );

    let m = s.metrics().await;
    for (format, maturity) in [("cargo", "experiment"), ("npm", "ga")] {
        let series =
            format!("sluice_format_enabled{{format=\"{format}\",maturity=\"{maturity}\"}}");
        assert_eq!(sample(&m, &series), 1.0, "{series}");
    }
    let hits = sample(
        &m,
        "sluice_cache_events_total{format=\"cargo\",result=\"hit\"}",
    );
    assert!(hits >= 2.0, "cargo cache hits: {hits}\n{m}");
    assert!(sample(&m, "sluice_requests_total{format=\"cargo\",status=\"200\"}") >= 6.0);
    let stats = common::json_body(get(&format!("{}/-/api/stats", s.base_url()), &[]).await).await;
    assert_eq!(stats["total"]["artifacts_served"]["cargo"], 4, "{stats}");

    // `sluice warm Cargo.lock` fills another sluice's store with the lockfile's crates.
    let s2 = sluice_for(&sim, "");
    let out = common::run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("warm")
            .arg("--config")
            .arg(s2.config_path())
            .arg(dir.join("Cargo.lock")),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.count("/download"), 4, "warm did not fetch both crates");
    let b_path = blob_path(&s2.data_dir(), &format!("sha256:{b_sha}"));
    assert!(common::eventually(Duration::from_secs(10), || b_path.exists()).await);

    // Offline (`[server] offline = true`): a third machine builds from sluice's cache alone;
    // what was never cached is refused saying so.
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(
        s.config_path(),
        cfg.replacen("[server]\n", "[server]\noffline = true\n", 1),
    )
    .unwrap();
    s.restart();
    let asked = sim.requests().len();
    let third = tempfile::tempdir().unwrap();
    let dir3 = project(third.path(), &s, deps);
    std::fs::copy(dir.join("Cargo.lock"), dir3.join("Cargo.lock")).unwrap();
    let (ok, err) = cargo(&dir3, &third.path().join("home"), &["build", "--locked"]);
    assert!(ok, "offline build failed:\n{err}");
    assert_eq!(
        sim.requests().len(),
        asked,
        "offline sluice asked the upstream"
    );
    let r = get(&download_url(&s, "sluice-demo-a", "1.0.0"), &[]).await;
    assert_eq!(r.status(), 503);
    let body = common::json_body(r).await;
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("offline"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_versions_are_yanked_for_resolution_and_refused_by_name_when_locked() {
    let sim = CargoSim::start().await;
    for v in ["1.0.0", "1.1.0"] {
        sim.publish(SimCrate::new("sluice-demo-a", v));
    }
    let s = sluice_for(&sim, "");
    let deps = "sluice-demo-a = \"1\"";
    let locked = tempfile::tempdir().unwrap();
    let dir = project(locked.path(), &s, deps);
    let (ok, err) = cargo(&dir, &locked.path().join("home"), &["generate-lockfile"]);
    assert!(ok, "{err}");
    assert_eq!(locked_version(&dir, "sluice-demo-a"), "1.1.0");

    // A deny rule in Cargo's own requirement syntax, applied by a reload.
    let path = s.config_path();
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(
        "\n[[policy.rule]]\nid = \"demo-a-recalled\"\nkind = \"deny\"\nformat = \"cargo\"\npackage = \"sluice_demo_a\"\nversions = \">=1.1.0, <2\"\nreason = \"recalled release\"\n",
    );
    std::fs::write(path, text).unwrap();
    // Checked offline first: the lockfile pins the version the rule denies.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["policy", "check", "--config"])
        .arg(path)
        .arg(dir.join("Cargo.lock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("BLOCK sluice-demo-a@1.1.0 [demo-a-recalled] recalled release"),
        "{text}"
    );
    let pid = s.pid().expect("sluice runs").to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let reloaded = common::eventually_async(|| async {
        sample(
            &s.metrics().await,
            "sluice_policy_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    assert!(reloaded, "the policy was not reloaded:\n{}", s.log());
    let r = get(&download_url(&s, "sluice-demo-a", "1.1.0"), &[]).await;
    assert_eq!(r.status(), 403);
    let body = common::json_body(r).await;
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("demo-a-recalled") && detail.contains("recalled release"),
        "{detail}"
    );

    // The index keeps the line, yanked: new resolutions take the newest allowed version.
    let index = get(
        &format!("{}/crates/{}", s.base_url(), index_path("sluice-demo-a")),
        &[],
    )
    .await
    .text()
    .await
    .unwrap();
    let lines: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{index}");
    for l in &lines {
        assert_eq!(l["yanked"], l["vers"] == "1.1.0", "{l}");
    }
    let fresh = tempfile::tempdir().unwrap();
    let dir2 = project(fresh.path(), &s, deps);
    let (ok, err) = cargo(&dir2, &fresh.path().join("home"), &["generate-lockfile"]);
    assert!(ok, "{err}");
    assert_eq!(locked_version(&dir2, "sluice-demo-a"), "1.0.0");

    // A lockfile pinning the blocked version: cargo's error shows the rule and reason.
    let (ok, err) = cargo(&dir, &locked.path().join("home2"), &["fetch", "--locked"]);
    assert!(!ok, "a blocked locked version was fetched");
    assert!(
        err.contains("403") && err.contains("demo-a-recalled") && err.contains("recalled release"),
        "cargo did not show why:\n{err}"
    );
    assert_eq!(sim.count("/sluice-demo-a/1.1.0/download"), 0);
    let m = s.metrics().await;
    assert!(
        sample(
            &m,
            "sluice_cargo_withheld_versions_total{upstream=\"crates\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &m,
            "sluice_policy_decisions_total{rule=\"demo-a-recalled\",decision=\"block\"}"
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_index_and_downloads_over_http() {
    let sim = CargoSim::start().await;
    let sha = sim.publish(SimCrate::new("Mixed_Case", "0.1.0"));
    let s = sluice_for(
        &sim,
        "metadata_ttl = \"3s\"\n\n[[policy.rule]]\nid = \"internal\"\nkind = \"namespace\"\nnames = [\"myorg-*\"]\n\n\
         [[policy.rule]]\nid = \"cooldown\"\nkind = \"min_age\"\nformat = \"cargo\"\nage = \"7d\"\n",
    );
    let base = s.base_url();

    // The flag: `config check` names the experiment; without the flag the upstream is refused.
    let check = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["config", "check"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(s.config_path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("experiment formats turned on: cargo"),
        "{text}"
    );
    let off = tempfile::tempdir().unwrap();
    let off_path = off.path().join("off.toml");
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(&off_path, cfg.replace("cargo = true", "")).unwrap();
    let out = check(&off_path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("add [formats] cargo = true"), "{err}");

    // config.json: downloads from sluice, no publish API.
    let cfg = common::json_body(get(&format!("{base}/crates/config.json"), &[]).await).await;
    assert_eq!(cfg["dl"], format!("{base}/crates/api/v1/crates"), "{cfg}");
    assert!(cfg.get("api").is_none(), "{cfg}");

    // Index file: lower-case path, MISS then HIT, ETag and 304.
    let idx = format!("{base}/crates/{}", index_path("Mixed_Case"));
    assert_eq!(index_path("Mixed_Case"), "mi/xe/mixed_case");
    let r = get(&idx, &[]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "MISS")
    );
    let etag = header(&r, "etag");
    assert!(r.text().await.unwrap().contains(&sha));
    let r = get(&idx, &[("If-None-Match", &etag)]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (304, "HIT")
    );

    // Download: verified, stored by digest, then a HIT with an immutable ETag.
    let dl = download_url(&s, "Mixed_Case", "0.1.0");
    let r = get(&dl, &[]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "MISS")
    );
    assert_eq!(
        common::sha256_digest(&r.bytes().await.unwrap()),
        format!("sha256:{sha}")
    );
    let r = get(&dl, &[]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "HIT")
    );
    assert_eq!(header(&r, "etag"), format!("\"{sha}\""));
    assert_eq!(sim.count("/download"), 1);

    // A version the cached index lacks: the index is revalidated once, then it is served.
    let index_fetches = sim.count(&index_path("Mixed_Case"));
    let newer = sim.publish(SimCrate::new("Mixed_Case", "0.2.0+meta.1"));
    // HEAD starts no fill: the origin is asked, nothing is stored.
    let r = http_client()
        .head(download_url(&s, "Mixed_Case", "0.2.0+meta.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "BYPASS")
    );
    assert_eq!(sim.count(&index_path("Mixed_Case")), index_fetches + 1);
    assert!(!blob_path(&s.data_dir(), &format!("sha256:{newer}")).exists());
    // `+` as cargo sends it, or percent-encoded.
    for version in ["0.2.0+meta.1", "0.2.0%2Bmeta.1"] {
        let r = get(&download_url(&s, "Mixed_Case", version), &[]).await;
        assert_eq!(r.status(), 200, "{version}");
        assert_eq!(
            common::sha256_digest(&r.bytes().await.unwrap()),
            format!("sha256:{newer}")
        );
    }
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            "sluice_cargo_forced_revalidations_total{upstream=\"crates\"}"
        ),
        1.0,
        "{m}"
    );
    let r = http_client().head(&idx).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // One that does not exist: 404 in Cargo's error format, remembered (no second refresh).
    let before = sim.count(&index_path("Mixed_Case"));
    for _ in 0..2 {
        let r = get(&download_url(&s, "Mixed_Case", "9.9.9"), &[]).await;
        assert_eq!(r.status(), 404);
        let body = common::json_body(r).await;
        assert!(body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("9.9.9"));
    }
    assert_eq!(sim.count(&index_path("Mixed_Case")), before + 1);

    // Stale-if-error: the index upstream fails; the cached copy is served.
    sim.fault(&index_path("Mixed_Case"), BodyFault::Status(503));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = get(&idx, &[]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "STALE")
    );
    sim.clear_faults();

    // Internal names never reach the upstream.
    let r = get(
        &format!("{base}/crates/{}", index_path("myorg-secret")),
        &[],
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = get(&download_url(&s, "myorg-secret", "1.0.0"), &[]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(sim.count("myorg"), 0);

    // A cooldown reads the index's `pubtime`: a release of today is yanked in the index and
    // refused by name; one without `pubtime` is served (the cooldown cannot be enforced).
    let now = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut fresh = SimCrate::new("cooling", "2.0.0");
    fresh.pubtime = Some(now.trim().to_string());
    let mut old = SimCrate::new("cooling", "1.0.0");
    old.pubtime = Some("2020-01-01T00:00:00Z".into());
    sim.publish(old);
    sim.publish(fresh);
    sim.publish(SimCrate::new("cooling", "1.5.0"));
    let index = get(&format!("{base}/crates/{}", index_path("cooling")), &[])
        .await
        .text()
        .await
        .unwrap();
    let yanked: Vec<(String, bool)> = index
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["vers"].as_str().unwrap().to_string(), v["yanked"] == true))
        .collect();
    assert_eq!(
        yanked,
        [
            ("1.0.0".into(), false),
            ("2.0.0".into(), true),
            ("1.5.0".into(), false)
        ]
    );
    let r = get(&download_url(&s, "cooling", "2.0.0"), &[]).await;
    assert_eq!(r.status(), 403);
    assert!(common::json_body(r).await["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("cooldown"));
    assert_eq!(
        get(&download_url(&s, "cooling", "1.5.0"), &[])
            .await
            .status(),
        200
    );

    // Writes and unknown endpoints.
    let r = http_client()
        .put(format!("{base}/crates/api/v1/crates/new"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    let body = common::json_body(r).await;
    assert!(body["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    for bad in [
        "xx/yy/mixed_case",
        "api/v1/crates?q=x",
        "api/v1/crates/a%2fb/1.0.0/download",
    ] {
        assert_eq!(
            get(&format!("{base}/crates/{bad}"), &[]).await.status(),
            404,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_verified_single_flight_and_follow_dl_templates() {
    let sim = CargoSim::start().await;
    let good = SimCrate::new("shared", "1.0.0");
    let sha = sim.publish(good.clone());
    let s = sluice_for(
        &sim,
        "\n[[auth.token]]\nname = \"ops\"\ntoken = \"cargo-admin-token\"\nrole = \"admin\"\n",
    );
    let dl = download_url(&s, "shared", "1.0.0");
    let stored = blob_path(&s.data_dir(), &format!("sha256:{sha}"));

    // Wrong bytes: the client does not get a complete good answer; nothing is stored.
    sim.fault("/shared/1.0.0/download", BodyFault::WrongBytes);
    let r = http_client().get(&dl).send().await.unwrap();
    let complete = r.status() == 200 && r.bytes().await.is_ok_and(|b| b == good.bytes);
    assert!(!complete, "wrong bytes were served as the crate");
    assert!(
        !stored.exists(),
        "a crate that failed verification was stored"
    );

    // Twenty clients at once on a slow download: one upstream fetch, every body whole.
    sim.clear_faults();
    sim.fault(
        "/shared/1.0.0/download",
        BodyFault::Slow {
            chunk: 64,
            delay: Duration::from_millis(20),
        },
    );
    let before = sim.count("/shared/1.0.0/download");
    let all = futures_util::future::join_all((0..20).map(|_| {
        let dl = dl.clone();
        async move {
            let r = http_client().get(&dl).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }
    }))
    .await;
    assert!(all.iter().all(|b| *b == good.bytes));
    assert_eq!(sim.count("/shared/1.0.0/download"), before + 1);
    // Committed once verified, which may be just after the last byte reached the clients.
    assert!(
        common::eventually(Duration::from_secs(10), || stored.exists()).await,
        "the verified crate was not stored"
    );

    // The admin listing knows the index file and the stored crate; a purge of the version
    // removes the crate, and the next download fetches it again.
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth("cargo-admin-token").send();
    let base = s.base_url();
    let v = common::json_body(
        admin(http_client().get(format!("{base}/-/api/cache?format=cargo")))
            .await
            .unwrap(),
    )
    .await;
    let items = v["items"].as_array().expect("items");
    let version = items
        .iter()
        .find(|i| i["tag"] == "1.0.0")
        .unwrap_or_else(|| panic!("no crate version listed: {v}"));
    assert_eq!(
        (&version["name"], &version["files_stored"]),
        (&"shared".into(), &1.into()),
        "{v}"
    );
    assert!(
        items
            .iter()
            .any(|i| i["name"] == "shared" && i["tag"].is_null()),
        "{v}"
    );
    let r = admin(
        http_client()
            .post(format!("{base}/-/api/purge"))
            .body(r#"{"format":"cargo","name":"shared","tag":"1.0.0"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!stored.exists(), "the purged crate is still stored");
    sim.clear_faults();
    let r = get(&dl, &[]).await;
    assert_eq!(
        (r.status().as_u16(), sluice_cache_header(&r).as_str()),
        (200, "MISS")
    );
    assert_eq!(r.bytes().await.unwrap(), good.bytes);

    // Listed in the index but missing on the download host: 404, and not asked again
    // within negative_ttl.
    sim.publish(SimCrate::new("vanished", "1.0.0"));
    sim.fault("/vanished/1.0.0/download", BodyFault::Status(404));
    for _ in 0..2 {
        let r = get(&download_url(&s, "vanished", "1.0.0"), &[]).await;
        assert_eq!(r.status(), 404);
    }
    assert_eq!(sim.count("/vanished/1.0.0/download"), 1);

    // A `dl` with markers (another registry's layout) is expanded as cargo would.
    sim.clear_faults();
    sim.set_dl("http://localhost:{port}/dl/{crate}-{version}.crate");
    let other = sim.publish(SimCrate::new("templated", "2.0.0"));
    let s2 = sluice_for(&sim, "");
    let r = get(&download_url(&s2, "templated", "2.0.0"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        common::sha256_digest(&r.bytes().await.unwrap()),
        format!("sha256:{other}")
    );
    assert_eq!(sim.count("/dl/templated-2.0.0.crate"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sluice_that_requires_a_token_tells_cargo_to_send_it_for_downloads_too() {
    let sim = CargoSim::start().await;
    sim.publish(SimCrate::new("sluice-auth-demo", "0.1.0"));
    let s = sluice_for(
        &sim,
        "\n[auth]\nanonymous = \"none\"\n[[auth.token]]\nname = \"ci\"\ntoken = \"cargo-test-token-1\"\nrole = \"read\"\n",
    );
    let cfg_url = format!("{}/crates/config.json", s.base_url());
    assert_eq!(get(&cfg_url, &[]).await.status(), 401);
    let cfg =
        common::json_body(get(&cfg_url, &[("Authorization", "Bearer cargo-test-token-1")]).await)
            .await;
    assert_eq!(cfg["auth-required"], true, "{cfg}");

    // cargo's authenticated-registry setup: a named registry replacing crates-io, the
    // token (as it is sent) from the environment.
    let root = tempfile::tempdir().unwrap();
    let dir = project(root.path(), &s, "sluice-auth-demo = \"0.1\"");
    std::fs::write(
        dir.join(".cargo/config.toml"),
        format!(
            "[registry]\nglobal-credential-providers = [\"cargo:token\"]\n\n[registries.sluice]\nindex = \"sparse+{}/crates/\"\n\n[source.crates-io]\nreplace-with = \"sluice\"\n",
            s.base_url()
        ),
    )
    .unwrap();
    let token = [("CARGO_REGISTRIES_SLUICE_TOKEN", "Bearer cargo-test-token-1")];
    let out = cargo_client::run(&dir, &root.path().join("home"), &["fetch"], &token);
    assert!(
        out.status.success(),
        "cargo fetch with a token failed:\n{}\nsluice log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    assert_eq!(sim.count("/sluice-auth-demo/0.1.0/download"), 1);
}
