//! Repository lists through sluice, against the simulator: tag-list pagination (the
//! upstream's `Link` answered on sluice's own path, upstream prefix included) and the OCI
//! 1.1 referrers API (cached, filtered by `artifactType`, a `404` remembered).

mod common;

use common::sim::Sim;
use common::{http_client, json_body, random_bytes, sluice_cache_header, within, Sluice};
use serde_json::json;

/// GET `url`: status, `X-Sluice-Cache`, `Link`, and the JSON body.
async fn get(url: &str) -> (u16, String, String, serde_json::Value) {
    let r = http_client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    let cache = sluice_cache_header(&r);
    let link = common::header(&r, "link");
    (status, cache, link, json_body(r).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_pages_link_to_sluice_with_the_upstream_prefix() {
    // The simulator paginates as Docker Hub and GHCR do (Debian's registry 2.8 ignores `n`).
    let sim = Sim::start().await;
    let img = sim.push_image("team/app", "a1", &[random_bytes(2000, 31)]);
    for tag in ["b2", "c3"] {
        sim.tag("team/app", tag, &img.manifest_digest);
    }
    let s = Sluice::start(&sim.upstream_toml("tag_ttl = \"1h\""));
    within(120, "tag pages", async {
        // Through the upstream prefix, two at a time.
        let first = format!("{}/v2/sim/team/app/tags/list?n=2", s.base_url());
        let (status, cache, link, body) = get(&first).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        assert_eq!(body["tags"], json!(["a1", "b2"]));
        assert_eq!(
            link, "</v2/sim/team/app/tags/list?n=2&last=b2>; rel=\"next\"",
            "the next page on sluice's path, prefix kept"
        );
        let next = link
            .trim_start_matches('<')
            .split_once('>')
            .expect("link target")
            .0;
        let (status, _, link, body) = get(&format!("{}{next}", s.base_url())).await;
        assert_eq!(status, 200);
        assert_eq!(body["tags"], json!(["c3"]));
        assert_eq!(link, "", "the last page links nowhere");
        // A cached page keeps its link.
        let (_, cache, link, _) = get(&first).await;
        assert_eq!(cache, "HIT");
        assert!(link.contains("last=b2"), "{link}");
        // The whole list, unpaginated, as before.
        let (status, _, link, body) = get(&format!("{}/v2/team/app/tags/list", s.base_url())).await;
        assert_eq!(status, 200);
        assert_eq!(body["tags"], json!(["a1", "b2", "c3"]));
        assert_eq!(link, "");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_cached_filtered_and_an_unsupported_api_is_a_remembered_404() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "v1", &[random_bytes(2000, 32)]);
    let other = sim.push_image("app", "v2", &[random_bytes(2000, 33)]);
    let subject = &img.manifest_digest;
    let sig = "application/vnd.dev.cosign.artifact.sig.v1+json";
    let sbom = "application/spdx+json";
    for (n, t) in [(1, sig), (2, sbom)] {
        sim.add_referrer(
            subject,
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", format!("{n}").repeat(64)),
                "size": 500,
                "artifactType": t,
            }),
        );
    }
    let s = Sluice::start(&sim.upstream_toml("tag_ttl = \"1h\"\nnegative_ttl = \"1h\""));
    within(60, "referrers", async {
        let url = |d: &str, q: &str| format!("{}/v2/app/referrers/{d}{q}", s.base_url());
        let r = http_client()
            .get(url(subject, ""))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
        assert_eq!(
            common::header(&r, "content-type"),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(sluice_cache_header(&r), "MISS");
        let all = json_body(r).await;
        assert_eq!(all["manifests"].as_array().expect("manifests").len(), 2);

        // Filtered here, from the same cached list: no second upstream request.
        let q = format!("?artifactType={}", sbom.replace('+', "%2B"));
        let r = http_client()
            .get(url(subject, &q))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
        assert_eq!(common::header(&r, "oci-filters-applied"), "artifactType");
        assert_eq!(sluice_cache_header(&r), "HIT");
        let only = json_body(r).await;
        assert_eq!(only["manifests"].as_array().expect("manifests").len(), 1);
        assert_eq!(only["manifests"][0]["artifactType"], sbom);
        assert_eq!(sim.count("GET", "/referrers/"), 1, "one upstream fetch");

        // No referrers list upstream (a registry without the API): 404, remembered.
        for _ in 0..2 {
            let (status, _, _, err) = get(&url(&other.manifest_digest, "")).await;
            assert_eq!(status, 404);
            assert_eq!(err["errors"][0]["code"], "MANIFEST_UNKNOWN", "{err}");
        }
        assert_eq!(sim.count("GET", "/referrers/"), 2, "the 404 was remembered");

        // Bad input: the client's error, nothing asked upstream.
        let (status, _, _, err) = get(&url("sha256:nothex", "")).await;
        assert_eq!(status, 400);
        assert_eq!(err["errors"][0]["code"], "DIGEST_INVALID");
        let (status, _, _, _) = get(&url(subject, "?artifactType=nonsense")).await;
        assert_eq!(status, 400);
        assert_eq!(sim.count("GET", "/referrers/"), 2);
    })
    .await;
}
