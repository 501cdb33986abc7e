//! The dependency firewall on npm with the real `npm` CLI against the fake registry: a
//! denied version fails with the rule's reason shown by npm, a release under cooldown is
//! skipped in favour of the newest allowed one (dist-tags repointed), and internal names
//! never reach the public upstream.

mod common;

use std::process::Command;
use std::time::Duration;

use common::npm_sim::NpmSim;
use common::{http_client, run_with_timeout, within, Sluice};

const POLICY: &str = r#"
[[policy.rule]]
id = "no-bad-release"
kind = "deny"
format = "npm"
package = "evt-stream"
versions = "3.3.6"
reason = "compromised release"

[[policy.rule]]
id = "cooldown"
kind = "min_age"
format = "npm"
age = "7d"
exempt = ["@trusted/*"]

[[policy.rule]]
id = "internal-names"
kind = "namespace"
names = ["@myorg/*"]

[[policy.rule]]
id = "watch-fresh"
kind = "deny"
mode = "audit"
format = "npm"
package = "fresh-lib"
reason = "under review"
"#;

/// `GET /-/api/blocks` with the admin token the tests here configure (`adm`).
async fn blocks(s: &Sluice) -> serde_json::Value {
    http_client()
        .get(format!("{}/-/api/blocks", s.base_url()))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

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
async fn npm_sees_denials_cooldowns_and_namespace_protection() {
    assert!(
        Command::new("npm")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "npm is required (scripts/test installs it)"
    );
    let sim = NpmSim::start().await;
    for v in ["3.3.5", "3.3.6"] {
        sim.publish("evt-stream", v, &[]);
        sim.set_time("evt-stream", v, &rfc3339_days_ago(400));
    }
    // fresh-lib: 1.0.0 is old, 1.1.0 was published an hour ago (under the 7-day cooldown).
    sim.publish("fresh-lib", "1.0.0", &[]);
    sim.set_time("fresh-lib", "1.0.0", &rfc3339_days_ago(30));
    sim.publish("fresh-lib", "1.1.0", &[]);
    sim.set_time("fresh-lib", "1.1.0", &rfc3339_days_ago(0));
    sim.publish("@myorg/secret", "1.0.0", &[]);

    let s = Sluice::start(&format!(
        "[[auth.token]]\nname = \"ops\"\ntoken = \"adm\"\nrole = \"admin\"\n\n\
         [[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n{POLICY}",
        sim.registry_url()
    ));
    let registry = format!("{}/npmjs/", s.base_url());
    let work = tempfile::tempdir().unwrap();
    let t = Duration::from_secs(90);
    within(300, "npm with policy", async {
        // A denied version: npm fails and shows the rule and reason.
        let proj = work.path().join("p1");
        std::fs::create_dir(&proj).unwrap();
        std::fs::write(
            proj.join("package.json"),
            r#"{"name":"p1","version":"1.0.0","private":true}"#,
        )
        .unwrap();
        let (reg, cache, p) = (registry.clone(), work.path().join("c1"), proj.clone());
        let out = tokio::task::spawn_blocking(move || {
            run_with_timeout(
                &mut common::npm(
                    &p,
                    &reg,
                    &cache,
                    &["install", "--no-audit", "evt-stream@3.3.6"],
                ),
                t,
            )
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a denied version installed");
        assert!(
            err.contains("no-bad-release") && err.contains("compromised release"),
            "{err}"
        );

        // Unpinned install under cooldown: the newest allowed version, and latest repointed.
        let (reg, cache, p) = (registry.clone(), work.path().join("c2"), proj.clone());
        let out = tokio::task::spawn_blocking(move || {
            run_with_timeout(
                &mut common::npm(
                    &p,
                    &reg,
                    &cache,
                    &["install", "--no-audit", "fresh-lib", "evt-stream"],
                ),
                t,
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let installed: serde_json::Value = serde_json::from_slice(
            &std::fs::read(proj.join("node_modules/fresh-lib/package.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            installed["version"], "1.0.0",
            "a release under cooldown was installed"
        );
        let evt: serde_json::Value = serde_json::from_slice(
            &std::fs::read(proj.join("node_modules/evt-stream/package.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            evt["version"], "3.3.5",
            "latest was not repointed away from the denied release"
        );
        let c = http_client();
        let doc: serde_json::Value = c
            .get(format!("{registry}fresh-lib"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0");
        assert!(doc["versions"].get("1.1.0").is_none());

        // A direct tarball fetch of a blocked version: 403 in npm's JSON format.
        let r = c
            .get(format!("{registry}evt-stream/-/evt-stream-3.3.6.tgz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let rid = common::header(&r, "x-request-id");
        let body: serde_json::Value = r.json().await.unwrap();
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains("no-bad-release") && msg.contains(&rid),
            "{msg}"
        );

        // Internal names: 404 with a reason, and the upstream never asked.
        let r = c
            .get(format!("{registry}@myorg%2fsecret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("internal-names"),
            "{body}"
        );
        assert_eq!(
            sim.count("GET", "myorg"),
            0,
            "an internal name was fetched from the public upstream"
        );

        // What was refused is recorded per name and version; a version only dropped from
        // a packument (fresh-lib 1.1.0, under the cooldown) was never asked for. Asking for
        // a refused version document again counts again.
        let count = |v: &serde_json::Value, name: &str| {
            v["blocks"]
                .as_array()
                .and_then(|l| l.iter().find(|b| b["name"] == name))
                .and_then(|b| b["count"].as_u64())
        };
        let before = count(&blocks(&s).await, "evt-stream").expect("evt-stream refused");
        for _ in 0..2 {
            let r = c
                .get(format!("{registry}evt-stream/3.3.6"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
        }
        let v = blocks(&s).await;
        assert_eq!(count(&v, "evt-stream"), Some(before + 2), "{v}");
        let list = v["blocks"].as_array().expect("blocks");
        let find = |name: &str| list.iter().find(|b| b["name"] == name);
        let evt = find("evt-stream").unwrap_or_else(|| panic!("{v}"));
        assert_eq!(
            (&evt["version"], &evt["rule"], &evt["outcome"]),
            (
                &serde_json::json!("3.3.6"),
                &serde_json::json!("no-bad-release"),
                &serde_json::json!("block")
            ),
            "{v}"
        );
        assert!(
            evt["count"].as_u64() >= Some(1) && evt["format"] == "npm",
            "{v}"
        );
        let secret = find("@myorg/secret").unwrap_or_else(|| panic!("{v}"));
        assert_eq!(
            (&secret["rule"], &secret["version"]),
            (
                &serde_json::json!("internal-names"),
                &serde_json::Value::Null
            ),
            "{v}"
        );
        // fresh-lib: its packument requests (version null) and its one tarball request
        // (1.0.0, counted once though the name is checked before the version).
        let fresh: Vec<_> = list.iter().filter(|b| b["name"] == "fresh-lib").collect();
        assert_eq!(fresh.len(), 2, "{v}");
        assert!(
            fresh
                .iter()
                .all(|b| b["outcome"] == "audit" && b["rule"] == "watch-fresh"),
            "{v}"
        );
        let tarball = fresh
            .iter()
            .find(|b| b["version"] == "1.0.0")
            .unwrap_or_else(|| panic!("{v}"));
        assert_eq!(tarball["count"], 1, "{v}");
        assert!(fresh.iter().any(|b| b["version"].is_null()), "{v}");
    })
    .await;
}

/// A tarball fetched before any packument (`npm ci` from a lockfile asks for nothing else)
/// is checked against the full packument's publish times and licenses, also when the
/// upstream would answer the smaller abbreviated form, which has neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_fetched_first_meets_the_cooldown_and_license_rules() {
    let sim = NpmSim::start().await;
    sim.set_corgi(true);
    sim.publish("fresh-lib", "1.0.0", &[]);
    sim.set_time("fresh-lib", "1.0.0", &rfc3339_days_ago(30));
    sim.publish("fresh-lib", "1.1.0", &[]);
    sim.set_time("fresh-lib", "1.1.0", &rfc3339_days_ago(0));
    sim.publish_with(
        "gpl-lib",
        "1.0.0",
        &[],
        serde_json::json!({"license": "GPL-3.0-only"}),
        false,
    );
    sim.set_time("gpl-lib", "1.0.0", &rfc3339_days_ago(400));
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n{}",
        sim.registry_url(),
        r#"
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
"#
    ));
    let registry = format!("{}/npmjs/", s.base_url());
    let c = http_client();
    within(60, "tarballs first", async {
        for (path, status, rule) in [
            ("fresh-lib/-/fresh-lib-1.1.0.tgz", 403, Some("cooldown")),
            ("gpl-lib/-/gpl-lib-1.0.0.tgz", 403, Some("no-gpl")),
            ("fresh-lib/-/fresh-lib-1.0.0.tgz", 200, None),
        ] {
            let r = c.get(format!("{registry}{path}")).send().await.unwrap();
            assert_eq!(r.status(), status, "{path}");
            let body = r.text().await.unwrap();
            if let Some(rule) = rule {
                assert!(body.contains(rule), "{path}: {body}");
            }
        }
    })
    .await;
}

/// An offline OSV database: a `MAL-` advisory blocks exactly the versions it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osv_malware_advisory_blocks_exactly_its_versions() {
    let sim = NpmSim::start().await;
    for v in ["1.0.0", "1.0.1", "1.0.2"] {
        sim.publish("mal-pkg", v, &[]);
    }
    let osv = tempfile::tempdir().unwrap();
    std::fs::write(
        osv.path().join("MAL-2025-0001.json"),
        r#"{"id":"MAL-2025-0001","modified":"2025-01-01T00:00:00Z","summary":"Malicious code in mal-pkg",
            "affected":[{"package":{"ecosystem":"npm","name":"mal-pkg"},"versions":["1.0.1"]}]}"#,
    )
    .unwrap();
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n[policy]\nosv = [\"{}\"]\n",
        sim.registry_url(),
        osv.path().display()
    ));
    let registry = format!("{}/npmjs/", s.base_url());
    within(60, "osv", async {
        let c = http_client();
        let doc: serde_json::Value = c
            .get(format!("{registry}mal-pkg"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let versions: Vec<&String> = doc["versions"].as_object().unwrap().keys().collect();
        assert_eq!(versions, ["1.0.0", "1.0.2"], "{doc}");
        assert_eq!(doc["dist-tags"]["latest"], "1.0.2");
        for (v, status) in [("1.0.0", 200), ("1.0.1", 403), ("1.0.2", 200)] {
            let r = c
                .get(format!("{registry}mal-pkg/-/mal-pkg-{v}.tgz"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "mal-pkg@{v}");
            if status == 403 {
                let body: serde_json::Value = r.json().await.unwrap();
                let msg = body["error"].as_str().unwrap();
                assert!(msg.contains("MAL-2025-0001"), "{msg}");
            }
        }
    })
    .await;
}

/// Audit mode: a version two OSV advisories and a package-level rule name is served. Its
/// packument request is one `audit` refusal of the package rule (version null); its
/// tarball request one of each rule with the version: OSV's counted once with both
/// advisories in the reason, the package rule once though the name is checked first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_findings_are_recorded_once_per_request_and_rule() {
    let sim = NpmSim::start().await;
    sim.publish("two-mal", "1.0.0", &[]);
    let osv = tempfile::tempdir().unwrap();
    for id in ["MAL-2025-0002", "MAL-2025-0003"] {
        std::fs::write(
            osv.path().join(format!("{id}.json")),
            format!(
                r#"{{"id":"{id}","modified":"2025-01-01T00:00:00Z","summary":"Malicious code in two-mal",
                    "affected":[{{"package":{{"ecosystem":"npm","name":"two-mal"}},"versions":["1.0.0"]}}]}}"#
            ),
        )
        .unwrap();
    }
    let s = Sluice::start(&format!(
        "[[auth.token]]\nname = \"ops\"\ntoken = \"adm\"\nrole = \"admin\"\n\n\
         [[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nurl = \"{}\"\n\
         [policy]\nosv = [\"{}\"]\nosv_mode = \"audit\"\n\n\
         [[policy.rule]]\nid = \"watch-two\"\nkind = \"deny\"\nmode = \"audit\"\n\
         package = \"two-mal\"\nreason = \"under review\"\n",
        sim.registry_url(),
        osv.path().display()
    ));
    let registry = format!("{}/npmjs/", s.base_url());
    within(60, "osv audit", async {
        let c = http_client();
        let r = c.get(format!("{registry}two-mal")).send().await.unwrap();
        assert_eq!(r.status(), 200, "audit mode serves");
        let r = c
            .get(format!("{registry}two-mal/-/two-mal-1.0.0.tgz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "audit mode serves");
        let v = blocks(&s).await;
        let list = v["blocks"].as_array().expect("blocks");
        assert_eq!(list.len(), 3, "{v}");
        let one = |rule: &str, version: serde_json::Value| {
            let e = list
                .iter()
                .find(|e| e["rule"] == rule && e["version"] == version)
                .unwrap_or_else(|| panic!("no {rule} {version}: {v}"));
            assert_eq!(
                (&e["outcome"], &e["count"]),
                (&serde_json::json!("audit"), &serde_json::json!(1)),
                "{v}"
            );
        };
        one("watch-two", serde_json::Value::Null);
        one("watch-two", serde_json::json!("1.0.0"));
        let e = list.iter().find(|e| e["rule"] == "osv").unwrap();
        assert_eq!(
            (&e["rule"], &e["outcome"], &e["version"], &e["count"]),
            (
                &serde_json::json!("osv"),
                &serde_json::json!("audit"),
                &serde_json::json!("1.0.0"),
                &serde_json::json!(1)
            ),
            "{v}"
        );
        assert!(
            e["reason"].as_str().unwrap().ends_with("(and 1 more)"),
            "{v}"
        );
    })
    .await;
}
