//! npm wire details against the fake registry (`common::npm_sim`): provenance attestations
//! (`npm audit signatures`), pnpm's audit endpoint, tarball URLs without a file name
//! (GitHub Packages style), exact versions blocked by a rule, and the full and abbreviated
//! packuments staying in step when one of them finds a new release.

mod common;

use std::process::Command;
use std::time::Duration;

use common::npm_sim::{NpmFault, NpmSim};
use common::{header, http_client, json_body, run_ok, sluice_cache_header, within, Sluice};
use serde_json::json;

const CORGI: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

fn upstream(sim: &NpmSim, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n{extra}\n",
        sim.registry_url()
    )
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

/// The value of the metric line starting with `prefix` (0 when absent).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_are_served_below_the_mount_and_cached() {
    let sim = NpmSim::start().await;
    sim.publish("prov", "1.0.0", &[]);
    sim.publish("@s/prov", "2.0.0", &[]);
    sim.publish("plain", "1.0.0", &[]);
    for (n, v) in [("prov", "1.0.0"), ("@s/prov", "2.0.0")] {
        sim.set_attestations(
            n,
            v,
            json!({"attestations": [{"predicateType": "https://slsa.dev/provenance/v1",
                "bundle": {"subject": format!("{n}@{v}")}}]}),
        );
    }
    let s = Sluice::start(&upstream(
        &sim,
        "metadata_ttl = \"1h\"\nnegative_ttl = \"1h\"",
    ));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    let registry = reqwest::Url::parse(&format!("{mount}/")).unwrap();
    within(60, "attestations", async {
        for (i, (name, enc, v)) in [("prov", "prov", "1.0.0"), ("@s/prov", "@s%2fprov", "2.0.0")]
            .into_iter()
            .enumerate()
        {
            let want = format!("{mount}/-/npm/v1/attestations/{enc}@{v}");
            // Full, abbreviated and version documents all point at sluice.
            for (path, accept) in [
                (format!("{mount}/{enc}"), "application/json"),
                (format!("{mount}/{enc}"), CORGI),
            ] {
                let doc = json_body(get(&c, &path, &[("Accept", accept)]).await).await;
                let a = &doc["versions"][v]["dist"]["attestations"];
                assert_eq!(a["url"], want.as_str(), "{path} {accept}");
                assert_eq!(
                    a["provenance"]["predicateType"],
                    "https://slsa.dev/provenance/v1"
                );
            }
            let doc = json_body(get(&c, &format!("{mount}/{enc}/{v}"), &[]).await).await;
            assert_eq!(doc["dist"]["attestations"]["url"], want.as_str());
            // pacote fetches the URL's path from the registry it is configured with.
            let path = reqwest::Url::parse(&want).unwrap().path().to_string();
            let fetched = registry.join(&path).unwrap();
            assert_eq!(fetched.as_str(), want, "pacote's URL");
            for round in 0..2 {
                let r = get(&c, fetched.as_str(), &[]).await;
                assert_eq!(r.status(), 200, "{fetched}");
                assert_eq!(
                    sluice_cache_header(&r),
                    if round == 0 { "MISS" } else { "HIT" }
                );
                let body = json_body(r).await;
                assert_eq!(
                    body["attestations"][0]["bundle"]["subject"],
                    format!("{name}@{v}")
                );
            }
            assert_eq!(
                sim.count("GET", "/-/npm/v1/attestations/"),
                i + 1,
                "attestations cached"
            );
        }
        // None upstream: a 404 in npm's format, remembered.
        for _ in 0..2 {
            let r = get(
                &c,
                &format!("{mount}/-/npm/v1/attestations/plain@1.0.0"),
                &[],
            )
            .await;
            assert_eq!(r.status(), 404);
            assert!(json_body(r).await["error"].as_str().is_some());
        }
        assert_eq!(sim.count("GET", "/-/npm/v1/attestations/plain@1.0.0"), 1);
        // Malformed: 400, nothing asked upstream.
        for bad in ["plain", "plain@", "..%2fx@1.0.0", "plain@1.0.0%2f.."] {
            let r = get(&c, &format!("{mount}/-/npm/v1/attestations/{bad}"), &[]).await;
            assert_eq!(r.status(), 400, "{bad}");
        }
        assert_eq!(sim.count("GET", "/-/npm/v1/attestations/"), 3);
    })
    .await;
}

/// `pnpm` on PATH (a failure under `CI=true`, where scripts/test installs it).
fn pnpm_available() -> bool {
    let ok = Command::new("pnpm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "pnpm is required under CI"
        );
        eprintln!("pnpm not found: skipping the pnpm part");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarballs_without_a_file_name_install_and_pnpm_audit_passes_through() {
    let sim = NpmSim::start().await;
    sim.set_github_urls(true);
    let lib = sim.publish("ghpkg", "1.0.0", &[]);
    let app = sim.publish("@o/ghapp", "1.2.0", &[("ghpkg", "^1.0.0")]);
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "file-less tarball URLs", async {
        let doc = json_body(get(&c, &format!("{mount}/@o%2fghapp"), &[]).await).await;
        let url = doc["versions"]["1.2.0"]["dist"]["tarball"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(url, format!("{mount}/@o/ghapp/-/ghapp-1.2.0.tgz"));
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), app.tarball);
        assert_eq!(sim.count("GET", "/download/@o/ghapp/1.2.0/"), 1);
        // The origin comes from the packument: a file no version has is still a 404.
        let r = get(&c, &format!("{mount}/@o/ghapp/-/ghapp-9.0.0.tgz"), &[]).await;
        assert_eq!(r.status(), 404);
        // pnpm's audit endpoint: passed through with its body.
        let body = br#"{"name":"x","version":"1.0.0","requires":{"ghpkg":"1.0.0"},"dependencies":{"ghpkg":{"version":"1.0.0"}}}"#;
        let r = c
            .post(format!("{mount}/-/npm/v1/security/audits"))
            .header("Content-Type", "application/json")
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(json_body(r).await["advisories"].is_object());
        let fwd = sim
            .requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .unwrap();
        assert_eq!(fwd.path, "/registry/-/npm/v1/security/audits");
        assert_eq!(&fwd.body[..], &body[..]);
    })
    .await;
    if !pnpm_available() {
        return;
    }
    // The real pnpm: install (abbreviated packuments, file-less origin URLs), then audit.
    let work = tempfile::tempdir().unwrap();
    let proj = work.path().join("proj");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(
        proj.join("package.json"),
        r#"{"name":"proj","version":"1.0.0","private":true,"dependencies":{"@o/ghapp":"^1.2.0"}}"#,
    )
    .unwrap();
    let registry = format!("{mount}/");
    std::fs::write(proj.join(".npmrc"), format!("registry={registry}\n")).unwrap();
    let pnpm = |args: &[&str]| {
        let mut cmd = Command::new("pnpm");
        cmd.current_dir(&proj)
            .args(args)
            .args(["--registry", &registry])
            .env("npm_config_store_dir", work.path().join("store"))
            .env("npm_config_cache_dir", work.path().join("cache"))
            .env("npm_config_userconfig", proj.join(".npmrc"))
            .env("XDG_DATA_HOME", work.path().join("xdg-data"))
            .env("XDG_CACHE_HOME", work.path().join("xdg-cache"));
        common::no_proxy_env(&mut cmd);
        cmd
    };
    let (mut install, mut audit) = (
        pnpm(&["install", "--reporter=append-only"]),
        pnpm(&["audit"]),
    );
    tokio::task::spawn_blocking(move || {
        run_ok(&mut install, Duration::from_secs(90));
        run_ok(&mut audit, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let installed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(proj.join("node_modules/@o/ghapp/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed["version"], "1.2.0");
    let lock = std::fs::read_to_string(proj.join("pnpm-lock.yaml")).unwrap();
    assert!(lock.contains(&format!("ghpkg@{}", lib.version)), "{lock}");
    assert!(lock.contains(&lib.integrity), "{lock}");
    let audits: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/registry/-/npm/v1/security/audits")
        .collect();
    assert_eq!(audits.len(), 2, "pnpm audit reached the upstream");
    assert!(String::from_utf8_lossy(&audits[1].body).contains("ghpkg"));
}

const POLICY: &str = r#"
[[policy.rule]]
id = "cooldown"
kind = "min_age"
format = "npm"
age = "7d"

[[policy.rule]]
id = "no-gpl"
kind = "license"
format = "npm"
deny = ["GPL-3.0-only"]
"#;

fn rfc3339_days_ago(days: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * 86_400;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S.000Z"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_version_a_rule_blocks_is_a_403_and_missing_ones_are_not_refetched() {
    let sim = NpmSim::start().await;
    sim.publish("fresh-lib", "1.0.0", &[]);
    sim.set_time("fresh-lib", "1.0.0", &rfc3339_days_ago(30));
    sim.publish("fresh-lib", "1.1.0", &[]);
    sim.set_time("fresh-lib", "1.1.0", &rfc3339_days_ago(0));
    sim.publish_with(
        "gpl-lib",
        "1.0.0",
        &[],
        json!({"license": "GPL-3.0-only"}),
        false,
    );
    sim.set_time("gpl-lib", "1.0.0", &rfc3339_days_ago(400));
    let s = Sluice::start(&format!(
        "{}{POLICY}",
        upstream(&sim, "metadata_ttl = \"1h\"\nnegative_ttl = \"1h\"")
    ));
    let c = http_client();
    let mount = format!("{}/npmjs", s.base_url());
    within(60, "blocked versions", async {
        for (path, rule) in [
            ("fresh-lib/1.1.0", "cooldown"),
            ("gpl-lib/1.0.0", "no-gpl"),
            // A tag whose every version is blocked: the rule of the one it names.
            ("gpl-lib/latest", "no-gpl"),
        ] {
            for _ in 0..3 {
                let r = get(&c, &format!("{mount}/{path}"), &[]).await;
                assert_eq!(r.status(), 403, "{path}");
                let rid = header(&r, "x-request-id");
                let e = json_body(r).await;
                let msg = e["error"].as_str().unwrap();
                assert!(msg.contains(rule) && msg.contains(&rid), "{path}: {msg}");
            }
        }
        let r = get(&c, &format!("{mount}/fresh-lib/1.0.0"), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(json_body(r).await["version"], "1.0.0");
        assert_eq!(
            sim.count("GET", "/registry/fresh-lib"),
            1,
            "blocked ≠ missing"
        );
        assert_eq!(
            sim.count("GET", "/registry/gpl-lib"),
            1,
            "blocked ≠ missing"
        );
        // Truly missing: one revalidation, then answered from what was learnt.
        for _ in 0..3 {
            let r = get(&c, &format!("{mount}/fresh-lib/9.9.9"), &[]).await;
            assert_eq!(r.status(), 404);
        }
        assert_eq!(sim.count("GET", "/registry/fresh-lib"), 2);
        // A release published since is still found (its own version, its own revalidation).
        sim.publish("fresh-lib", "1.0.1", &[]);
        sim.set_time("fresh-lib", "1.0.1", &rfc3339_days_ago(20));
        let r = get(&c, &format!("{mount}/fresh-lib/1.0.1"), &[]).await;
        assert_eq!(r.status(), 200);
        let m = s.metrics().await;
        let forced = "sluice_npm_forced_revalidations_total{reason=";
        assert_eq!(
            metric(&m, &format!("{forced}\"missing_version\"}}")),
            2.0,
            "{m}"
        );
        assert_eq!(metric(&m, &format!("{forced}\"suppressed\"}}")), 2.0, "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_found_through_one_form_reaches_the_other() {
    let sim = NpmSim::start().await;
    sim.set_corgi(true);
    sim.publish("pkg", "1.0.0", &[]);
    let s = Sluice::start(&upstream(&sim, "metadata_ttl = \"1h\""));
    let c = http_client();
    let url = format!("{}/npmjs/pkg", s.base_url());
    let corgi_fetches = || {
        sim.requests()
            .iter()
            .filter(|r| {
                r.path == "/registry/pkg"
                    && r.header("accept")
                        .is_some_and(|a| a.contains("vnd.npm.install-v1"))
            })
            .count()
    };
    within(60, "forms in step", async {
        for accept in [CORGI, "application/json"] {
            let r = get(&c, &url, &[("Accept", accept)]).await;
            assert_eq!(sluice_cache_header(&r), "MISS");
        }
        // A tarball of a release the cached full packument lacks: the full form is
        // revalidated (npm), and so is the abbreviated one on its next use (pnpm, yarn).
        let p = sim.publish("pkg", "1.1.0", &[]);
        let r = get(&c, &format!("{url}/-/{}", p.file), &[]).await;
        assert_eq!(r.status(), 200);
        let r = get(&c, &url, &[("Accept", CORGI)]).await;
        assert_ne!(sluice_cache_header(&r), "HIT");
        let doc = json_body(r).await;
        assert!(doc["versions"]["1.1.0"].is_object(), "{doc}");
        assert_eq!(corgi_fetches(), 2);
        // Once: both forms are hits now (no revalidations back and forth).
        for accept in [CORGI, "application/json"] {
            let r = get(&c, &url, &[("Accept", accept)]).await;
            assert_eq!(sluice_cache_header(&r), "HIT", "{accept}");
            assert!(json_body(r).await["versions"]["1.1.0"].is_object());
        }
        assert_eq!(corgi_fetches(), 2);
        // The other way: a client's no-cache on the abbreviated form finds 1.2.0; the
        // full form (the version route reads it) follows.
        sim.publish("pkg", "1.2.0", &[]);
        let r = get(
            &c,
            &url,
            &[("Accept", CORGI), ("Cache-Control", "no-cache")],
        )
        .await;
        assert!(json_body(r).await["versions"]["1.2.0"].is_object());
        let r = get(&c, &url, &[]).await;
        assert_ne!(sluice_cache_header(&r), "HIT");
        assert!(json_body(r).await["versions"]["1.2.0"].is_object());
        let m = s.metrics().await;
        assert_eq!(
            metric(
                &m,
                "sluice_npm_forced_revalidations_total{reason=\"other_form\"}"
            ),
            2.0,
            "{m}"
        );
        // A change found while the upstream then fails: the other form is tried once (a
        // stale answer), not again on every request.
        sim.publish("pkg", "1.3.0", &[]);
        let r = get(
            &c,
            &url,
            &[
                ("Accept", "application/json"),
                ("Cache-Control", "no-cache"),
            ],
        )
        .await;
        assert!(json_body(r).await["versions"]["1.3.0"].is_object());
        sim.fault("/registry/pkg", NpmFault::Status(503));
        let r = get(&c, &url, &[("Accept", CORGI)]).await;
        assert_eq!(sluice_cache_header(&r), "STALE");
        let seen = sim.requests().len();
        for _ in 0..3 {
            let r = get(&c, &url, &[("Accept", CORGI)]).await;
            assert_eq!(r.status(), 200);
        }
        assert_eq!(
            sim.requests().len(),
            seen,
            "the other form was revalidated again on every request"
        );
    })
    .await;
}
