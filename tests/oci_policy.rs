//! The dependency firewall on OCI: denied repositories and tags get `403 DENIED` naming the
//! rule, the reason and the request id (with the real `skopeo` and a real registry), are
//! never fetched, vanish from tag lists, and a policy reload (SIGHUP) applies to what is
//! already cached.

mod common;

use std::process::Command;
use std::time::Duration;

use common::images::{build_single_arch, pull_raw, push, PushFormat};
use common::registry::Registry;
use common::{http_client, sluice_cache_header, within, Sluice};

fn config(reg: &Registry, rules: &str) -> String {
    format!(
        "[[upstream]]\nname = \"local\"\nformat = \"oci\"\nurl = \"{}\"\nhost = \"{}\"\ndefault = true\ntag_ttl = \"1h\"\n{rules}",
        reg.url(),
        reg.host()
    )
}

const DENY_SECRET: &str = r#"
[[policy.rule]]
id = "no-secret-images"
kind = "deny"
format = "oci"
package = "team/secret*"
reason = "internal images only"

[[policy.rule]]
id = "no-debug-tags"
kind = "deny"
format = "oci"
package = "*"
versions = "debug-*"
reason = "debug builds are not for production"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_repositories_and_tags_fail_with_denied_and_are_never_fetched() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = build_single_arch(&tmp.path().join("src"), "v1", 31);
    for dest in ["team/secret-app:v1", "team/app:v1", "team/app:debug-1"] {
        push(&layout.dir, "v1", &reg.host(), dest, PushFormat::Oci);
    }
    let s = Sluice::start(&config(&reg, DENY_SECRET));
    let host = s.host();
    within(180, "policy on OCI", async {
        // The real client: a denied repository.
        let h = host.clone();
        let dest = format!("dir:{}", tmp.path().join("out1").display());
        let out = tokio::task::spawn_blocking(move || {
            pull_raw(&format!("{h}/team/secret-app:v1"), &dest)
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "skopeo pulled a denied repository");
        assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
        assert_eq!(
            reg.count("GET", "/v2/team/secret-app/"),
            0,
            "a denied repository was fetched"
        );

        // The error body names the rule, the reason and the request id.
        let c = http_client();
        let r = c
            .get(format!("{}/v2/team/secret-app/manifests/v1", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let rid = common::header(&r, "x-request-id");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        let msg = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            msg.contains("no-secret-images") && msg.contains("internal images only"),
            "{msg}"
        );
        assert_eq!(body["errors"][0]["detail"]["request_id"], rid.as_str());

        // A denied tag of an allowed repository; the allowed tag pulls.
        let r = c
            .get(format!("{}/v2/team/app/manifests/debug-1", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let h = host.clone();
        let dest = format!("dir:{}", tmp.path().join("out2").display());
        let out = tokio::task::spawn_blocking(move || pull_raw(&format!("{h}/team/app:v1"), &dest))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Tag lists do not show blocked tags.
        let r = c
            .get(format!("{}/v2/team/app/tags/list", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let tags: serde_json::Value = r.json().await.unwrap();
        assert_eq!(tags["tags"], serde_json::json!(["v1"]), "{tags}");

        // Decisions are counted.
        let m = c
            .get(format!("{}/-/metrics", s.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.lines()
                .any(|l| l.starts_with("sluice_policy_decisions_total{")
                    && l.contains("rule=\"no-secret-images\"")
                    && l.contains("decision=\"block\"")),
            "{m}"
        );
    })
    .await;
}

/// GETs a blob through `repo`, reads its body and waits until sluice has stored it: a request
/// for the same digest while its fill is still downloading joins the fill (a MISS) instead
/// of reading the store.
async fn fetch_until_stored(c: &reqwest::Client, s: &Sluice, repo: &str, digest: &str) {
    let r = c
        .get(format!("{}/v2/{repo}/blobs/{digest}", s.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let path = common::blob_path(&s.data_dir(), digest);
    assert!(
        common::eventually(Duration::from_secs(10), || path.exists()).await,
        "{digest} not stored at {}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_blocks_artifacts_that_are_already_cached() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = build_single_arch(&tmp.path().join("src"), "v1", 32);
    for dest in ["team/tool:v1", "team/copy:v1"] {
        push(&layout.dir, "v1", &reg.host(), dest, PushFormat::Oci);
    }
    let s = Sluice::start(&config(&reg, ""));
    let c = http_client();
    let url = format!("{}/v2/team/tool/manifests/v1", s.base_url());
    within(60, "reload", async {
        let r = c
            .get(&url)
            .header("Accept", common::images::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let digest = common::header(&r, "docker-content-digest");
        let manifest: serde_json::Value = r.json().await.unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(sluice_cache_header(&r), "HIT");
        fetch_until_stored(&c, &s, "team/tool", &layer).await;

        // The same content under a repository that also holds it upstream: served from
        // the cache once the upstream confirmed it (one HEAD), then without asking.
        let copy_blob = format!("{}/v2/team/copy/blobs/{layer}", s.base_url());
        let copy_path = format!("/v2/team/copy/blobs/{layer}");
        // skopeo's push asked too.
        let (heads, gets) = (reg.count("HEAD", &copy_path), reg.count("GET", &copy_path));
        for _ in 0..2 {
            let r = c.get(&copy_blob).send().await.unwrap();
            assert_eq!((r.status().as_u16(), sluice_cache_header(&r).as_str()), (200, "HIT"));
        }
        assert_eq!(reg.count("HEAD", &copy_path), heads + 1);
        assert_eq!(reg.count("GET", &copy_path), gets);
        // A manifest confirmed there vouches for what it refers to: its config, cached for
        // team/tool, is then served for team/copy without asking.
        let config = manifest["config"]["digest"].as_str().unwrap().to_string();
        fetch_until_stored(&c, &s, "team/tool", &config).await;
        let r = c
            .get(format!("{}/v2/team/copy/manifests/{digest}", s.base_url()))
            .header("Accept", common::images::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), sluice_cache_header(&r).as_str()), (200, "HIT"));
        let config_path = format!("/v2/team/copy/blobs/{config}");
        let heads = reg.count("HEAD", &config_path);
        let r = c
            .get(format!("{}{config_path}", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), sluice_cache_header(&r).as_str()), (200, "HIT"));
        assert_eq!(reg.count("HEAD", &config_path), heads, "the config was confirmed again");

        // Reload counters exist before the first reload (a first failure is an increase).
        let m = s.metrics().await;
        assert!(m.contains("sluice_policy_reloads_total{result=\"error\"} 0"), "{m}");
        // Same config plus a deny rule, then SIGHUP.
        let path = s.config_path();
        let mut text = std::fs::read_to_string(path).unwrap();
        text.push_str(
            "\n[[policy.rule]]\nid = \"tool-recalled\"\nkind = \"deny\"\nformat = \"oci\"\npackage = \"team/tool\"\nreason = \"recalled\"\n",
        );
        std::fs::write(path, text).unwrap();
        let pid = s.pid().expect("sluice runs");
        let ok = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success();
        assert!(ok);
        let addr = s.addr();
        let blocked = common::eventually(Duration::from_secs(10), || {
            common::raw_get_status(addr, "/v2/team/tool/manifests/v1") == Some(403)
        })
        .await;
        assert!(blocked, "the cached manifest was still served after the reload");
        // Nor is it served by digest under another name, where the upstream does not hold it.
        for path in [
            format!("/v2/team/other/manifests/{digest}"),
            format!("/v2/team/other/blobs/{layer}"),
            format!("/v2/anything/at-all/blobs/{layer}"),
        ] {
            let r = c.get(format!("{}{path}", s.base_url())).send().await.unwrap();
            assert_eq!(r.status(), 404, "{path}: cached content of a denied repository");
        }
        let m = s.metrics().await;
        assert_eq!(
            common::metrics::sample(&m, "sluice_oci_repository_checks_total{result=\"refused\"}"),
            3.0
        );
        assert_eq!(common::metrics::sample(&m, "sluice_policy_reloads_total{result=\"ok\"}"), 1.0);
        // Still running (SIGHUP must not terminate it).
        let h = c.get(format!("{}/-/healthz", s.base_url())).send().await.unwrap();
        assert_eq!(h.status(), 200);
    })
    .await;
}
