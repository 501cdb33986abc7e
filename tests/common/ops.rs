//! Operations tests (`ops_*.rs`) against the OCI simulator: a config with an admin and a
//! read token, pulling a whole image through sluice, and what the store holds on disk.

use std::path::Path;

use super::sim::{Sim, SimImage};
use super::{blob_files, http_client, json_body, sha256_digest, sluice_cache_header, Sluice};

/// The admin token of [`config`].
pub const ADMIN: &str = "admin-secret";
/// The read-only token of [`config`].
pub const READER: &str = "read-secret";

/// sluice on `port` with the simulator as its default OCI upstream, the tokens [`ADMIN`]
/// and [`READER`]; `storage` adds `[storage]` keys (and may add tables after it).
pub fn config(port: u16, data_dir: &Path, sim: &Sim, storage: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
shutdown_grace = "1s"

[storage]
data_dir = "{data}"
{storage}

[[auth.token]]
name = "ops"
token = "{ADMIN}"
role = "admin"

[[auth.token]]
name = "ci"
token = "{READER}"
role = "read"

[[upstream]]
name = "sim"
format = "oci"
url = "{url}"
host = "{host}"
default = true
tag_ttl = "1h"
"#,
        data = data_dir.display(),
        url = sim.url(),
        host = sim.host()
    )
}

/// Sum of the sizes of the files under `blobs/`.
pub fn stored_on_disk(data_dir: &Path) -> u64 {
    blob_files(data_dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// `GET /-/api/stats` with the [`READER`] token (checked: 200).
pub async fn stats(s: &Sluice) -> serde_json::Value {
    let r = http_client()
        .get(format!("{}/-/api/stats", s.base_url()))
        .bearer_auth(READER)
        .send()
        .await
        .expect("stats");
    assert_eq!(r.status(), 200);
    json_body(r).await
}

/// Pulls `repo:tag` through sluice (manifest, config, layers), checking every status and
/// body against `img`; returns the `X-Sluice-Cache` of each response.
pub async fn pull(s: &Sluice, repo: &str, tag: &str, img: &SimImage) -> Vec<String> {
    let c = http_client();
    let base = s.base_url();
    let r = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", super::images::OCI_MANIFEST)
        .send()
        .await
        .expect("manifest");
    assert_eq!(r.status(), 200, "manifest of {repo}:{tag}");
    let mut caches = vec![sluice_cache_header(&r)];
    let manifest = r.bytes().await.expect("body");
    assert_eq!(sha256_digest(&manifest), img.manifest_digest);
    assert_eq!(manifest, img.manifest);
    for d in std::iter::once(&img.config_digest).chain(&img.layer_digests) {
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .expect("blob");
        assert_eq!(r.status(), 200, "blob {d} of {repo}:{tag}");
        caches.push(sluice_cache_header(&r));
        assert_eq!(&sha256_digest(&r.bytes().await.expect("body")), d);
    }
    caches
}
