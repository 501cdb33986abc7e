//! The dependency firewall on PyPI with the real `pip` against the fake index: a blocked
//! version disappears from the simple page (so an unpinned install picks the newest allowed
//! one), a pinned install of it fails with the rule's reason, and a direct file fetch gets
//! `403` naming the rule and the request id — also for files already cached.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pypi_sim::{Mode, PypiSim, SimFile};
use common::{http_client, run_with_timeout, within, Sluice};

fn pip(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip"])
        .args(args)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_CONFIG_FILE", "/dev/null");
    common::no_proxy_env(&mut cmd);
    run_with_timeout(&mut cmd, Duration::from_secs(120))
}

const POLICY: &str = r#"
[[policy.rule]]
id = "no-leaky-2"
kind = "deny"
format = "pypi"
package = "leaky_pkg"
versions = ">=2.0,<3"
reason = "leaks credentials"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_versions_vanish_from_pages_and_pinned_installs_fail_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = PypiSim::start(Mode::Json).await;
    let mut blocked_wheel = None;
    for v in ["1.0", "2.0", "2.1"] {
        let (f, bytes) = common::build_wheel(tmp.path(), "leaky_pkg", v);
        sim.add_file("leaky-pkg", SimFile::new(&f, v, bytes.clone()));
        blocked_wheel = Some((f, bytes));
    }
    let (blocked_file, blocked_bytes) = blocked_wheel.unwrap();
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\n{POLICY}",
        sim.simple_url()
    ));
    let index = format!("{}/pypi/simple/", s.base_url());
    let target = tmp.path().join("t1");
    within(240, "pip with policy", async {
        // Unpinned: the newest allowed version.
        let (i, t) = (index.clone(), target.clone());
        let out = tokio::task::spawn_blocking(move || {
            pip(&[
                "install",
                "--no-cache-dir",
                "--index-url",
                &i,
                "--target",
                t.to_str().unwrap(),
                "leaky-pkg",
            ])
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init = std::fs::read_to_string(target.join("leaky_pkg/__init__.py")).unwrap();
        assert!(init.contains("'1.0'"), "installed {init}");

        // The page does not list the blocked versions.
        let c = http_client();
        let page = c
            .get(format!("{index}leaky-pkg/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("leaky_pkg-1.0-")
                && !page.contains("leaky_pkg-2.0-")
                && !page.contains("leaky_pkg-2.1-"),
            "{page}"
        );

        // Pinned to a blocked version: pip cannot find it.
        let (i, t) = (index.clone(), tmp.path().join("t2"));
        let out = tokio::task::spawn_blocking(move || {
            pip(&[
                "install",
                "--no-cache-dir",
                "--index-url",
                &i,
                "--target",
                t.to_str().unwrap(),
                "leaky-pkg==2.1",
            ])
        })
        .await
        .unwrap();
        assert!(!out.status.success(), "a blocked version installed");

        // A direct file fetch (e.g. a lockfile URL) gets 403 with the rule and the reason.
        let (f, sha) = (&blocked_file, common::sha256_digest(&blocked_bytes));
        let url = format!(
            "{}/pypi/files/sha256/{}/{f}",
            s.base_url(),
            sha.trim_start_matches("sha256:")
        );
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let rid = common::header(&r, "x-request-id");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("no-leaky-2")
                && text.contains("leaks credentials")
                && text.contains(&rid),
            "{text}"
        );
    })
    .await;
}

/// The JSON API meets the policy like the simple pages: a release under cooldown is gone
/// from `releases` and is not the `info.version`/`urls` latest, its own document is a `403`,
/// and its file stays refused when the JSON API was the first thing asked (the files it
/// lists carry their upload time to the files route). A name the namespace rule keeps
/// internal never reaches the public upstream through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_meets_the_cooldown_and_keeps_internal_names_in() {
    let sim = PypiSim::start(Mode::Json).await;
    let now = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    sim.add_file(
        "freshpy",
        SimFile::new("freshpy-1.0-py3-none-any.whl", "1.0", &b"old wheel"[..]),
    );
    let mut fresh = SimFile::new("freshpy-1.1-py3-none-any.whl", "1.1", &b"new wheel"[..]);
    fresh.upload_time = Some(now.trim().to_string());
    let fresh_sha = fresh.sha256();
    sim.add_file("freshpy", fresh);
    sim.add_file(
        "corp-secret",
        SimFile::new("corp_secret-1.0-py3-none-any.whl", "1.0", &b"secret"[..]),
    );
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"{}\"\n{}",
        sim.simple_url(),
        r#"
[[policy.rule]]
id = "cooldown"
kind = "min_age"
format = "pypi"
age = "7d"

[[policy.rule]]
id = "internal"
kind = "namespace"
names = ["corp-*"]
"#
    ));
    let base = format!("{}/pypi", s.base_url());
    let c = http_client();
    within(60, "JSON API with policy", async {
        let doc: serde_json::Value = c
            .get(format!("{base}/pypi/freshpy/json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let releases = doc["releases"].as_object().unwrap();
        assert!(
            releases.contains_key("1.0") && !releases.contains_key("1.1"),
            "{doc}"
        );
        assert_eq!(doc["info"]["version"], "1.0", "{doc}");
        let urls = doc["urls"].as_array().unwrap();
        assert_eq!(urls.len(), 1, "{doc}");
        assert_eq!(urls[0]["filename"], "freshpy-1.0-py3-none-any.whl");

        let r = c
            .get(format!("{base}/pypi/freshpy/1.1/json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("cooldown"));

        // Nothing but the JSON API was asked: the file is still refused.
        let r = c
            .get(format!(
                "{base}/files/sha256/{fresh_sha}/freshpy-1.1-py3-none-any.whl"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("cooldown"));

        let r = c
            .get(format!("{base}/pypi/corp-secret/json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("internal"));
        assert_eq!(
            sim.count("corp"),
            0,
            "an internal name was asked of the public upstream"
        );
    })
    .await;
}
