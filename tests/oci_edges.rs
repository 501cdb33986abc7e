//! OCI edges: hostile names and digests, offline mode, client authentication. Upstream is
//! the in-process simulator (`common::sim`).

mod common;

use common::sim::Sim;
use common::{http_client, random_bytes, sluice_cache_header, within, Sluice};

fn upstream(sim: &Sim, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{}\"\nhost = \"{}\"\ndefault = true\ntag_ttl = \"1h\"\n{extra}\n",
        sim.url(),
        sim.host()
    )
}

async fn oci_error(c: &reqwest::Client, url: &str) -> (u16, String, serde_json::Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let cache = sluice_cache_header(&r);
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, cache, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_names_and_digests_get_oci_400s_and_never_reach_upstream() {
    let sim = Sim::start().await;
    let s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    let base = s.base_url();
    within(30, "hostile input", async {
        let before = sim.requests().len();
        let cases = [
            ("/v2/app/blobs/sha256:..%2F..%2Fetc%2Fpasswd", "DIGEST_INVALID"),
            ("/v2/app/blobs/sha256:abc", "DIGEST_INVALID"),
            ("/v2/app/blobs/md5:0123", "DIGEST_INVALID"),
            (
                "/v2/app/blobs/sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "DIGEST_INVALID",
            ),
            ("/v2/App/manifests/latest", "NAME_INVALID"),
            ("/v2/a/..%2F..%2Fb/manifests/latest", "NAME_INVALID"),
            ("/v2/a//b/manifests/latest", "NAME_INVALID"),
            ("/v2/app/manifests/-bad-tag", "TAG_INVALID"),
        ];
        for (path, code) in cases {
            let (status, _, body) = oci_error(&c, &format!("{base}{path}")).await;
            assert_eq!(status, 400, "{path}");
            assert_eq!(body["errors"][0]["code"], code, "{path}: {body}");
            assert!(body["errors"][0]["detail"]["request_id"].is_string(), "{path}: {body}");
        }
        let long = format!("{base}/v2/{}/manifests/latest", "a/".repeat(200) + "a");
        assert_eq!(oci_error(&c, &long).await.0, 400, "over-long name");
        assert_eq!(sim.requests().len(), before, "hostile input reached the upstream");
        assert!(common::tmp_files(&s.data_dir()).is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_upstream_serves_cache_and_refuses_the_rest_clearly() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "v1", &[random_bytes(50_000, 7)]);
    let other = sim.add_blob(random_bytes(1000, 8));
    let mut s = Sluice::start(&upstream(&sim, ""));
    let c = http_client();
    within(30, "warm", async {
        for p in [
            "/v2/app/manifests/v1".to_string(),
            format!("/v2/app/blobs/{}", img.layer_digests[0]),
        ] {
            let r = c
                .get(format!("{}{p}", s.base_url()))
                .header("Accept", common::images::OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{p}");
            r.bytes().await.unwrap();
        }
    })
    .await;
    // Same store, now offline (once the layer is committed, just after its body went out).
    s.settled().await;
    let data = s.data_dir();
    s.stop();
    let cfg = upstream(&sim, "offline = true");
    let s2 = Sluice::start_with(|port, _| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\ndata_dir = \"{}\"\n{cfg}",
            data.display()
        )
    });
    let before = sim.requests().len();
    within(30, "offline", async {
        let r = c
            .get(format!("{}/v2/app/manifests/v1", s2.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sluice_cache_header(&r), "HIT");
        let r = c
            .get(format!(
                "{}/v2/app/blobs/{}",
                s2.base_url(),
                img.layer_digests[0]
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 50_000);
        let (status, _, body) =
            oci_error(&c, &format!("{}/v2/app/blobs/{other}", s2.base_url())).await;
        assert_eq!(status, 503, "uncached blob while offline");
        let msg = body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(msg.contains("offline"), "{body}");
        assert_eq!(
            sim.requests().len(),
            before,
            "an offline upstream was contacted"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_token_are_refused_when_anonymous_is_none() {
    let sim = Sim::start().await;
    sim.push_image("app", "v1", &[random_bytes(100, 9)]);
    let s = Sluice::start(&format!(
        "[auth]\nanonymous = \"none\"\n[[auth.token]]\nname = \"ci\"\ntoken = \"s3cret\"\nrole = \"read\"\n{}",
        upstream(&sim, "")
    ));
    let c = http_client();
    let url = format!("{}/v2/app/manifests/v1", s.base_url());
    within(30, "auth", async {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(common::header(&r, "www-authenticate").starts_with("Basic"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let r = c.get(&url).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            sim.requests().len(),
            0,
            "unauthenticated requests reached the upstream"
        );
        let r = c.get(&url).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(r.status(), 200);
        // docker login sends basic auth: the token is the password.
        let r = c
            .get(&url)
            .basic_auth("anyone", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let h = c
            .get(format!("{}/-/healthz", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), 200, "health stays open for probes");

        // A token is revoked (and another issued) with SIGHUP, without a restart.
        let path = s.config_path();
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, text.replace("token = \"s3cret\"", "token = \"n3w\"")).unwrap();
        let pid = s.pid().expect("sluice runs");
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let mut revoked = false;
        for _ in 0..100 {
            let r = c.get(&url).bearer_auth("s3cret").send().await.unwrap();
            if r.status() == 401 {
                revoked = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(revoked, "the old token still worked after the reload");
        let r = c.get(&url).bearer_auth("n3w").send().await.unwrap();
        assert_eq!(r.status(), 200, "the new token");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negotiated_platform_manifest_is_policed_reported_and_optional() {
    use common::images::{ACCEPT_ALL_MANIFESTS, DOCKER_LIST, DOCKER_MANIFEST};
    let sim = Sim::start().await;
    // Docker manifest lists whose linux/amd64 image is a Docker v2 manifest.
    let image = |label: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                       "digest": common::sha256_digest(label.as_bytes())},
            "layers": [],
        }))
        .expect("json")
    };
    let list = |amd64: &str, arm64: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": arm64, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": DOCKER_MANIFEST, "digest": amd64, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
            ],
        }))
        .expect("json")
    };
    let arm = sim.add_manifest(DOCKER_MANIFEST, image("arm"));
    let amd = sim.add_manifest(DOCKER_MANIFEST, image("amd"));
    let app_list = sim.add_manifest(DOCKER_LIST, list(&amd, &arm));
    sim.tag("app", "v1", &app_list);
    sim.tag("again", "v1", &app_list);
    // A list whose amd64 manifest the upstream does not have.
    let missing = common::sha256_digest(b"never stored");
    let gone_list = sim.add_manifest(DOCKER_LIST, list(&missing, &arm));
    sim.tag("gone", "v1", &gone_list);
    // A list whose amd64 manifest the policy denies by digest.
    let denied = sim.add_manifest(DOCKER_MANIFEST, image("denied"));
    sim.tag(
        "held",
        "v1",
        &sim.add_manifest(DOCKER_LIST, list(&denied, &arm)),
    );
    let s = Sluice::start(&upstream(
        &sim,
        &format!(
            "\n[[policy.rule]]\nid = \"recalled-image\"\nkind = \"deny\"\nformat = \"oci\"\npackage = \"held\"\nversions = \"{denied}\"\nreason = \"recalled\"\n"
        ),
    ));
    let c = http_client();
    let base = s.base_url();
    let get = |repo: &'static str, accept: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let r = c
                .get(format!("{base}/v2/{repo}/manifests/v1"))
                .header("Accept", accept)
                .send()
                .await
                .expect("GET manifest");
            let digest = common::header(&r, "docker-content-digest");
            (r.status().as_u16(), digest, sluice_cache_header(&r))
        }
    };
    within(60, "negotiated platform manifest", async {
        assert_eq!(
            get("app", ACCEPT_ALL_MANIFESTS).await,
            (200, app_list.clone(), "MISS".into())
        );
        // The list is cached, its amd64 manifest is not yet: the answer is a miss.
        assert_eq!(
            get("app", DOCKER_MANIFEST).await,
            (200, amd.clone(), "MISS".into())
        );
        assert_eq!(
            get("app", DOCKER_MANIFEST).await,
            (200, amd.clone(), "HIT".into())
        );
        // A tag not cached yet whose amd64 manifest is: still a miss.
        assert_eq!(
            get("again", DOCKER_MANIFEST).await,
            (200, amd.clone(), "MISS".into())
        );
        // Not to be had upstream: the list, as before negotiation, not an error.
        let (status, digest, _) = get("gone", DOCKER_MANIFEST).await;
        assert_eq!((status, digest), (200, gone_list.clone()));
        // A denied platform manifest is refused, not swapped for the list.
        let (status, _, _) = get("held", DOCKER_MANIFEST).await;
        assert_eq!(status, 403, "a denied platform manifest was served");
        assert!(
            !sim.requests()
                .iter()
                .any(|r| r.path.contains(denied.as_str())),
            "the denied manifest was fetched"
        );
        let m = s.metrics().await;
        for (outcome, n) in [("platform", 3), ("as_is", 1)] {
            let line =
                format!("sluice_oci_manifest_negotiations_total{{outcome=\"{outcome}\"}} {n}");
            assert!(m.lines().any(|l| l == line), "{line} in {m}");
        }
    })
    .await;
}
