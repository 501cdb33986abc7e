//! npm format against the in-process fake registry (`common::npm_sim`): deterministic
//! protocol behaviour, faults and cache semantics, plus the real `npm` CLI installing,
//! auditing and reinstalling offline from the fake through sluice.

mod common;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use common::npm_sim::{NpmFault, NpmSim};
use common::{
    blob_files, header, http_client, json_body, run_ok, run_with_timeout, sha256_digest,
    sluice_cache_header, within, Sluice,
};
use serde_json::json;

const CORGI: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

fn upstream(sim: &NpmSim, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n{extra}\n",
        sim.registry_url()
    )
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packuments_full_and_abbreviated_point_tarballs_at_sluice_and_keep_everything_else() {
    let sim = NpmSim::start().await;
    sim.publish("plain", "1.0.0", &[]);
    sim.publish_with(
        "@scope/pkg",
        "2.0.0",
        &[("plain", "^1.0.0")],
        json!({"scripts": {"postinstall": "node x.js", "test": "t"}}),
        false,
    );
    let s = Sluice::start(&upstream(&sim, "metadata_ttl = \"1h\""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "packuments", async {
        // Every spelling of a scoped name reaches the same cached document.
        let mut etag = String::new();
        for (i, p) in ["@scope%2fpkg", "@scope%2Fpkg", "@scope/pkg"]
            .iter()
            .enumerate()
        {
            let r = get(&c, &format!("{mount}/{p}"), &[]).await;
            assert_eq!(r.status(), 200, "{p}");
            let cache = sluice_cache_header(&r);
            assert_eq!(cache, if i == 0 { "MISS" } else { "HIT" }, "{p}");
            assert_eq!(header(&r, "content-type"), "application/json");
            etag = header(&r, "etag");
            let doc = json_body(r).await;
            let up = sim.packument("@scope/pkg").unwrap();
            let v = &doc["versions"]["2.0.0"];
            assert_eq!(
                v["dist"]["tarball"],
                format!("{mount}/@scope/pkg/-/pkg-2.0.0.tgz"),
                "tarball URL rewritten to sluice"
            );
            // Everything else is the upstream's: integrity, signatures, readme, unknown keys.
            let mut expected = up.clone();
            expected["versions"]["2.0.0"]["dist"]["tarball"] = v["dist"]["tarball"].clone();
            assert_eq!(doc, expected);
        }
        assert_eq!(
            sim.count("GET", "/registry/@scope%2fpkg"),
            1,
            "one upstream fetch"
        );

        // ETag → 304; gzip when accepted.
        let r = get(
            &c,
            &format!("{mount}/@scope/pkg"),
            &[("If-None-Match", &etag)],
        )
        .await;
        assert_eq!(r.status(), 304);
        let plain = get(&c, &format!("{mount}/@scope/pkg"), &[])
            .await
            .bytes()
            .await
            .unwrap();
        let r = get(
            &c,
            &format!("{mount}/@scope/pkg"),
            &[("Accept-Encoding", "gzip")],
        )
        .await;
        assert_eq!(header(&r, "content-encoding"), "gzip");
        assert_eq!(gunzip(&r.bytes().await.unwrap()), plain.to_vec());

        // Abbreviated: upstream asked with the corgi Accept; an upstream that answers with the
        // full document anyway is abbreviated by sluice.
        let r = get(&c, &format!("{mount}/@scope/pkg"), &[("Accept", CORGI)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "MISS");
        assert_eq!(
            header(&r, "content-type"),
            "application/vnd.npm.install-v1+json"
        );
        let corgi = json_body(r).await;
        let keys: Vec<_> = corgi.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["dist-tags", "modified", "name", "versions"]);
        let v = &corgi["versions"]["2.0.0"];
        assert_eq!(v["hasInstallScript"], true, "computed from scripts");
        assert!(v.get("readme").is_none() && v.get("scripts").is_none());
        assert_eq!(v["dependencies"]["plain"], "^1.0.0");
        assert_eq!(
            v["dist"]["tarball"],
            format!("{mount}/@scope/pkg/-/pkg-2.0.0.tgz")
        );
        assert_eq!(
            v["dist"]["signatures"],
            sim.packument("@scope/pkg").unwrap()["versions"]["2.0.0"]["dist"]["signatures"]
        );
        let reqs = sim.requests();
        let corgi_req = reqs
            .iter()
            .rev()
            .find(|r| r.path.contains("@scope%2fpkg"))
            .unwrap();
        assert!(corgi_req
            .header("accept")
            .unwrap()
            .starts_with("application/vnd.npm.install-v1+json"));

        // An upstream that does serve corgi documents: passed on as they are (rewritten).
        sim.set_corgi(true);
        let r = get(&c, &format!("{mount}/plain"), &[("Accept", CORGI)]).await;
        assert_eq!(r.status(), 200);
        let corgi = json_body(r).await;
        assert_eq!(
            corgi["versions"]["1.0.0"]["dist"]["tarball"],
            format!("{mount}/plain/-/plain-1.0.0.tgz")
        );
        assert!(corgi.get("time").is_none());

        // Version documents and dist-tags come from the cached packument.
        let r = get(&c, &format!("{mount}/@scope/pkg/latest"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_body(r).await["version"], "2.0.0");
        let r = get(
            &c,
            &format!("{mount}/-/package/@scope%2fpkg/dist-tags"),
            &[],
        )
        .await;
        assert_eq!(json_body(r).await, json!({"latest": "2.0.0"}));

        // Unknown package: npm-style 404, remembered.
        let r = get(&c, &format!("{mount}/nope"), &[]).await;
        assert_eq!(r.status(), 404);
        assert!(json_body(r).await["error"]
            .as_str()
            .unwrap()
            .contains("sluice request id"));
        get(&c, &format!("{mount}/nope"), &[]).await;
        assert_eq!(sim.count("GET", "/registry/nope"), 1, "404 cached");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarballs_are_verified_stored_by_sha256_and_served_byte_exact_from_one_fetch() {
    let sim = NpmSim::start().await;
    let p = sim.publish("@scope/pkg", "1.0.0", &[]);
    let legacy = sim.publish_with("old", "0.1.0", &[], json!({}), true);
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "tarballs", async {
        let url = format!("{mount}/@scope/pkg/-/{}", p.file);
        // A HEAD before anything is stored: the origin's length, and no download.
        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "BYPASS");
        assert_eq!(header(&r, "content-length"), p.tarball.len().to_string());
        assert_eq!(
            sim.count("GET", "/files/"),
            0,
            "a HEAD downloaded the tarball"
        );
        // Many clients at once on a slow upstream: exactly one fetch, every body exact.
        sim.fault(
            &format!("/files/@scope/pkg/-/{}", p.file),
            NpmFault::Slow {
                chunk: 64,
                delay: Duration::from_millis(5),
            },
        );
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let r = c.get(&url).send().await.expect("get");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body")
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), p.tarball);
        }
        sim.clear_faults();
        assert_eq!(sim.count("GET", "/files/"), 1, "single flight");
        s.settled().await;
        assert!(
            blob_files(&s.data_dir())
                .iter()
                .any(|f| f.ends_with(&sha256_digest(&p.tarball)[7..])),
            "stored under its sha256"
        );
        let r = get(&c, &url, &[]).await;
        assert_eq!(sluice_cache_header(&r), "HIT");
        assert_eq!(header(&r, "content-length"), p.tarball.len().to_string());
        assert_eq!(r.bytes().await.unwrap(), p.tarball);
        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), p.tarball.len().to_string());

        // A legacy version with only a sha1 shasum is verified against it.
        let r = get(&c, &format!("{mount}/old/-/{}", legacy.file), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), legacy.tarball);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_with_wrong_integrity_or_cut_body_is_refused_and_never_stored() {
    let sim = NpmSim::start().await;
    let p = sim.publish("liar", "1.0.0", &[]);
    let q = sim.publish("cut", "1.0.0", &[]);
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "integrity", async {
        sim.fault("/files/liar/", NpmFault::WrongBytes);
        sim.fault("/files/cut/", NpmFault::CutMidBody);
        for (pub_, name) in [(&p, "liar"), (&q, "cut")] {
            let url = format!("{mount}/{name}/-/{}", pub_.file);
            for _ in 0..2 {
                let r = get(&c, &url, &[]).await;
                let complete = if r.status() == 200 {
                    r.bytes().await.is_ok_and(|b| b.len() == pub_.tarball.len())
                } else {
                    assert!(r.status().is_server_error(), "{}", r.status());
                    false
                };
                assert!(!complete, "{name}: a wrong body must never complete");
            }
        }
        // Nothing but the two packuments is stored; no temp files are left.
        let stored = blob_files(&s.data_dir());
        assert_eq!(stored.len(), 2, "{stored:?}");
        for t in [&p.tarball, &q.tarball] {
            assert!(!stored.iter().any(|f| f.ends_with(&sha256_digest(t)[7..])));
        }
        assert!(
            common::eventually(Duration::from_secs(5), || common::tmp_files(&s.data_dir())
                .is_empty())
            .await
        );
        let m = s.metrics().await;
        assert!(
            m.contains("sluice_digest_mismatches_total{format=\"npm\"}"),
            "{m}"
        );
        // Once the upstream behaves, the tarball is served.
        sim.clear_faults();
        let r = get(&c, &format!("{mount}/liar/-/{}", p.file), &[]).await;
        assert_eq!(r.bytes().await.unwrap(), p.tarball);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_serves_the_stale_packument() {
    let sim = NpmSim::start().await;
    sim.publish("pkg", "1.0.0", &[]);
    let s = Sluice::start(&upstream(&sim, "metadata_ttl = \"1s\""));
    let c = http_client();
    let url = format!("{}/npmjs/pkg", s.base_url());
    within(60, "stale", async {
        let first = get(&c, &url, &[]).await.bytes().await.unwrap();
        sim.fault("/registry/pkg", NpmFault::Status(503));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // Past the TTL: served at once, revalidated in the background (which fails).
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "STALE");
        assert_eq!(r.bytes().await.unwrap(), first);
        // A client demanding revalidation still gets the cached copy while upstream is down.
        let r = get(&c, &url, &[("Cache-Control", "no-cache")]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "STALE");
        assert_eq!(r.bytes().await.unwrap(), first);
        // The abbreviated form was never fetched: the cached full one stands in.
        let r = get(&c, &url, &[("Accept", CORGI)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "STALE");
        assert!(json_body(r).await["versions"]["1.0.0"]["dist"]["integrity"].is_string());
        // Upstream back: a changed document replaces the cached one.
        sim.clear_faults();
        sim.publish("pkg", "1.1.0", &[]);
        let r = get(&c, &url, &[("Cache-Control", "no-cache")]).await;
        assert_eq!(sluice_cache_header(&r), "MISS");
        assert!(json_body(r).await["versions"]["1.1.0"].is_object());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_release_is_picked_up_without_waiting_for_the_ttl() {
    let sim = NpmSim::start().await;
    sim.publish("pkg", "1.0.0", &[]);
    let s = Sluice::start(&upstream(
        &sim,
        "metadata_ttl = \"1h\"\nnegative_ttl = \"1h\"",
    ));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "new release", async {
        let doc = json_body(get(&c, &format!("{mount}/pkg"), &[]).await).await;
        assert!(doc["versions"]["1.1.0"].is_null());
        let p = sim.publish("pkg", "1.1.0", &[]);
        // The tarball of a version the cached packument lacks: one forced revalidation.
        let r = get(&c, &format!("{mount}/pkg/-/{}", p.file), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), p.tarball);
        let r = get(&c, &format!("{mount}/pkg"), &[]).await;
        assert_eq!(sluice_cache_header(&r), "HIT");
        assert!(json_body(r).await["versions"]["1.1.0"].is_object());
        // Same through a version document.
        sim.publish("pkg", "1.2.0", &[]);
        let r = get(&c, &format!("{mount}/pkg/1.2.0"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_body(r).await["version"], "1.2.0");
        // A file no version has: 404 after one revalidation, then remembered.
        let before = sim.count("GET", "/registry/pkg");
        for _ in 0..3 {
            let r = get(&c, &format!("{mount}/pkg/-/pkg-9.9.9.tgz"), &[]).await;
            assert_eq!(r.status(), 404);
        }
        assert_eq!(sim.count("GET", "/registry/pkg"), before + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_urls_come_only_from_the_packument_and_writes_are_refused() {
    let sim = NpmSim::start().await;
    let p = sim.publish("pkg", "1.0.0", &[]);
    sim.publish("other", "1.0.0", &[]);
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "no open proxy", async {
        // Another package's file under this name: not in this packument → 404.
        let r = get(&c, &format!("{mount}/pkg/-/other-1.0.0.tgz"), &[]).await;
        assert_eq!(r.status(), 404);
        assert_eq!(sim.count("GET", "/files/"), 0);
        for bad in ["..%2f..%2fetc", "a%00b", "@x", "pkg/-/..%2fx.tgz"] {
            let r = get(&c, &format!("{mount}/{bad}"), &[]).await;
            assert!(
                r.status() == 400 || r.status() == 404,
                "{bad}: {}",
                r.status()
            );
        }
        assert!(sim.requests().iter().all(|r| !r.path.contains("etc")));
        // Writes: 405 with an npm-style JSON error.
        for (m, path) in [
            (reqwest::Method::PUT, "pkg"),
            (reqwest::Method::DELETE, "pkg/-rev/1-abc"),
            (reqwest::Method::PUT, "-/package/pkg/dist-tags/beta"),
            (reqwest::Method::PUT, "-/user/org.couchdb.user:me"),
        ] {
            let r = c
                .request(m.clone(), format!("{mount}/{path}"))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{m} {path}");
            assert_eq!(
                r.headers().get("allow").and_then(|v| v.to_str().ok()),
                Some("GET, HEAD"),
                "{m} {path}"
            );
            let e = json_body(r).await;
            assert!(e["error"].as_str().unwrap().contains("read-only"), "{e}");
        }
        assert!(sim.requests().iter().all(|r| r.method == "GET"));
        let r = get(&c, &format!("{mount}/pkg/-/{}", p.file), &[]).await;
        assert_eq!(r.bytes().await.unwrap(), p.tarball);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_pass_through_and_keys_are_cached() {
    let sim = NpmSim::start().await;
    sim.set_advisories(json!({"pkg": [{"id": 1, "severity": "high"}]}));
    sim.publish("pkg", "1.0.0", &[]);
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "api", async {
        let r = get(&c, &format!("{mount}/-/ping"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "BYPASS");
        let r = get(&c, &format!("{mount}/-/v1/search?text=abc&size=2"), &[]).await;
        assert_eq!(
            json_body(r).await["query"],
            "/registry/-/v1/search?text=abc&size=2"
        );
        // A relayed endpoint's 429 is that client's answer, passed on with its wait; it
        // does not pause the upstream for everyone else.
        sim.fault("/-/v1/search", NpmFault::RetryAfter(429, "600".into()));
        let r = get(&c, &format!("{mount}/-/v1/search?text=abc"), &[]).await;
        assert_eq!(r.status(), 429);
        assert_eq!(common::header(&r, "retry-after"), "600");
        // Nor is it retried on the client's behalf (a short wait would be waited out for
        // content sluice caches).
        sim.clear_faults();
        sim.fault(
            "/-/v1/search",
            NpmFault::first(1, NpmFault::RetryAfter(429, "1".into())),
        );
        let before = sim.count("GET", "/-/v1/search");
        let r = get(&c, &format!("{mount}/-/v1/search?text=abc"), &[]).await;
        assert_eq!(r.status(), 429, "a relayed 429 was retried");
        assert_eq!(sim.count("GET", "/-/v1/search"), before + 1);
        sim.clear_faults();
        let r = get(&c, &format!("{mount}/pkg"), &[]).await;
        assert_eq!(r.status(), 200, "the upstream was paused by a search 429");
        let m = s.metrics().await;
        assert!(
            !m.contains("sluice_upstream_pauses_total"),
            "a relayed 429 paused the upstream: {m}"
        );
        for _ in 0..2 {
            let r = get(&c, &format!("{mount}/-/npm/v1/keys"), &[]).await;
            assert_eq!(r.status(), 200);
            assert_eq!(json_body(r).await["keys"][0]["keyid"], "SHA256:fake-key");
        }
        assert_eq!(sim.count("GET", "/-/npm/v1/keys"), 1, "keys cached");
        let body = br#"{"pkg":["1.0.0"]}"#;
        let r = c
            .post(format!("{mount}/-/npm/v1/security/advisories/bulk"))
            .header("Content-Type", "application/json")
            .header("Cookie", "session=client-secret")
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(json_body(r).await["pkg"][0]["severity"], "high");
        let fwd = sim
            .requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .unwrap();
        assert_eq!(&fwd.body[..], &body[..]);
        assert_eq!(fwd.header("content-type"), Some("application/json"));
        assert_eq!(
            fwd.header("cookie"),
            None,
            "client cookies stay with sluice"
        );

        // An audit body over the limit is refused in npm's format and never forwarded
        // (it used to go upstream with an empty body). Three times the limit: sluice
        // discards the rest before answering, so the client gets the 413, not a reset.
        let r = c
            .post(format!("{mount}/-/npm/v1/security/advisories/bulk"))
            .header("Content-Type", "application/json")
            .body(vec![b' '; 3 * (16 << 20)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let e = json_body(r).await;
        assert!(e["error"].as_str().unwrap().contains("larger than"), "{e}");
        let posts = sim.requests().iter().filter(|r| r.method == "POST").count();
        assert_eq!(posts, 1, "the oversized audit reached the upstream");
    })
    .await;
}

/// `npm` on PATH, or `None` (a failure under `CI=true`).
pub fn npm_available() -> bool {
    let ok = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "npm is required under CI (scripts/test installs it)"
        );
        eprintln!("npm not found: skipping the npm CLI test");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_cli_installs_audits_and_reinstalls_offline_from_the_fake_registry() {
    if !npm_available() {
        return;
    }
    let sim = NpmSim::start().await;
    sim.publish("dep", "1.0.0", &[]);
    sim.publish("dep", "1.1.0", &[]);
    sim.publish("@scope/app-lib", "3.0.0", &[("dep", "^1.0.0")]);
    sim.set_advisories(json!({"dep": [{
        "id": 4242, "url": "https://example.invalid/advisory/4242",
        "title": "Fake advisory for dep", "severity": "high",
        "vulnerable_versions": "<2.0.0", "cwe": [], "cvss": {"score": 7.5, "vectorString": null}
    }]}));
    let mut s = Sluice::start(&upstream(&sim, "metadata_ttl = \"1h\"\noffline = false"));
    let registry = format!("{}/npmjs/", s.base_url());
    let work = tempfile::tempdir().unwrap();
    let proj = work.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(
        proj.join("package.json"),
        r#"{"name":"proj","version":"1.0.0","private":true,"dependencies":{"@scope/app-lib":"^3.0.0","dep":"^1.0.0"}}"#,
    )
    .unwrap();
    let t = Duration::from_secs(90);
    let (reg, cache) = (registry.clone(), work.path().join("cache1"));
    let p2 = proj.clone();
    tokio::task::spawn_blocking(move || {
        run_ok(
            &mut common::npm(&p2, &reg, &cache, &["install", "--no-audit"]),
            t,
        )
    })
    .await
    .unwrap();
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(proj.join("package-lock.json")).unwrap()).unwrap();
    let dep = &lock["packages"]["node_modules/dep"];
    assert_eq!(dep["version"], "1.1.0");
    assert_eq!(dep["resolved"], format!("{registry}dep/-/dep-1.1.0.tgz"));
    assert!(dep["integrity"].as_str().unwrap().starts_with("sha512-"));
    assert_eq!(
        lock["packages"]["node_modules/@scope/app-lib"]["resolved"],
        format!("{registry}@scope/app-lib/-/app-lib-3.0.0.tgz")
    );
    assert!(proj.join("node_modules/@scope/app-lib/index.js").exists());

    // npm audit: the advisory comes from the upstream, through sluice.
    let (reg, cache, p2) = (registry.clone(), work.path().join("cache1"), proj.clone());
    let out = tokio::task::spawn_blocking(move || {
        run_with_timeout(&mut common::npm(&p2, &reg, &cache, &["audit", "--json"]), t)
    })
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "npm audit --json: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report["vulnerabilities"]["dep"]["via"][0]["source"], 4242,
        "the upstream's advisory, through sluice: {report}"
    );
    assert_eq!(sim.count("POST", "/-/npm/v1/security/advisories/bulk"), 1);

    // Offline: same data dir, upstream never contacted; npm ci with an empty cache.
    let cfg = std::fs::read_to_string(s.config_path()).unwrap();
    std::fs::write(
        s.config_path(),
        cfg.replace("offline = false", "offline = true"),
    )
    .unwrap();
    s.restart();
    let before = sim.requests().len();
    std::fs::remove_dir_all(proj.join("node_modules")).unwrap();
    let (reg, cache, p2) = (registry.clone(), work.path().join("cache2"), proj.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(
            &mut common::npm(&p2, &reg, &cache, &["ci", "--no-audit"]),
            t,
        )
    })
    .await
    .unwrap();
    assert!(proj.join("node_modules/dep/package.json").exists());
    assert_eq!(sim.requests().len(), before, "offline: no upstream contact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_packument_with_thousands_of_versions_is_served_and_indexed() {
    let sim = NpmSim::start().await;
    let mut last = None;
    for i in 0..2500 {
        last = Some(sim.publish("big", &format!("1.0.{i}"), &[]));
    }
    let last = last.unwrap();
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "big packument", async {
        let up_len = serde_json::to_vec(&sim.packument("big").unwrap())
            .unwrap()
            .len();
        assert!(up_len > 4 << 20, "upstream document is {up_len} bytes");
        for expect in ["MISS", "HIT"] {
            let r = get(&c, &format!("{mount}/big"), &[("Accept-Encoding", "gzip")]).await;
            assert_eq!(r.status(), 200);
            assert_eq!(sluice_cache_header(&r), expect);
            let doc: serde_json::Value =
                serde_json::from_slice(&gunzip(&r.bytes().await.unwrap())).unwrap();
            assert_eq!(doc["versions"].as_object().unwrap().len(), 2500);
        }
        let r = get(&c, &format!("{mount}/big"), &[("Accept", CORGI)]).await;
        let corgi = r.bytes().await.unwrap();
        assert!(
            corgi.len() < up_len / 4,
            "abbreviated: {} bytes",
            corgi.len()
        );
        let r = get(&c, &format!("{mount}/big/-/{}", last.file), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), last.tarball);
        let r = get(&c, &format!("{mount}/big/-/big-1.0.7.tgz"), &[]).await;
        assert_eq!(r.status(), 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_urls_follow_the_host_the_client_used_unless_public_url_is_set() {
    let sim = NpmSim::start().await;
    let p = sim.publish("plain", "1.0.0", &[]);
    // No `public_url`: links follow each client's Host.
    let s = Sluice::start_with(|port, data_dir| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n\n\
             [storage]\ndata_dir = \"{}\"\n\n{}",
            data_dir.display(),
            upstream(&sim, "")
        )
    });
    let c = http_client();
    let own = s.base_url();
    let tail = format!("/npmjs/plain/-/{}", p.file);
    within(60, "host-derived tarball URLs", async {
        for (host, proto, want) in [
            ("sluice.example:5080", None, "http://sluice.example:5080"),
            (
                "sluice.example:5080",
                Some("https"),
                "https://sluice.example:5080",
            ),
            ("10.9.8.7", None, "http://10.9.8.7"),
            ("evil.com/x", None, own.as_str()),
            ("evil.com x", Some("https"), own.as_str()),
            ("evil.com:0", None, own.as_str()),
        ] {
            let mut h = vec![("Host", host)];
            if let Some(pr) = proto {
                h.push(("X-Forwarded-Proto", pr));
            }
            let full = json_body(get(&c, &format!("{own}/npmjs/plain"), &h).await).await;
            assert_eq!(
                full["versions"]["1.0.0"]["dist"]["tarball"],
                format!("{want}{tail}"),
                "{host}"
            );
            h.push(("Accept", CORGI));
            let corgi = json_body(get(&c, &format!("{own}/npmjs/plain"), &h).await).await;
            assert_eq!(
                corgi["versions"]["1.0.0"]["dist"]["tarball"],
                format!("{want}{tail}"),
                "{host}"
            );
            h.pop();
            let v = json_body(get(&c, &format!("{own}/npmjs/plain/1.0.0"), &h).await).await;
            assert_eq!(v["dist"]["tarball"], format!("{want}{tail}"), "{host}");
        }
        // Userinfo in Host: refused by the HTTP layer, nothing served.
        let r = get(
            &c,
            &format!("{own}/npmjs/plain"),
            &[("Host", "me@evil.com")],
        )
        .await;
        assert_eq!(r.status(), 400);
        // Each base has its own rendered copy: the client's own Host gets its own links.
        let full = json_body(get(&c, &format!("{own}/npmjs/plain"), &[]).await).await;
        let link = full["versions"]["1.0.0"]["dist"]["tarball"]
            .as_str()
            .expect("tarball")
            .to_string();
        assert_eq!(link, format!("{own}{tail}"));
        let r = get(&c, &link, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.expect("body")[..], &p.tarball[..]);
    })
    .await;

    // `public_url` set: it always wins.
    let s2 = Sluice::start(&upstream(&sim, ""));
    let full = json_body(
        get(
            &c,
            &format!("{}/npmjs/plain", s2.base_url()),
            &[("Host", "sluice.example:5080")],
        )
        .await,
    )
    .await;
    assert_eq!(
        full["versions"]["1.0.0"]["dist"]["tarball"],
        format!("{}{tail}", s2.base_url())
    );
}
