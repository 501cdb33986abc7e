//! `sluice warm`: the real binary prefetches an image list, a package-lock.json and a
//! requirements.txt through a running sluice (OCI simulator, fake npm registry and fake
//! PyPI index as upstreams), after which every artifact is a cache hit that costs the
//! upstreams nothing; and a lockfile naming what the upstream lacks or the policy blocks
//! fails with a line saying why.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::images::{ACCEPT_ALL_MANIFESTS, OCI_INDEX, OCI_MANIFEST};
use common::npm_sim::NpmSim;
use common::pypi_sim::{Mode, PypiSim, SimFile};
use common::sim::Sim;
use common::{http_client, random_bytes, run_with_timeout, sluice_cache_header, Sluice};
use serde_json::json;

const PYPI_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// sluice with all three fakes as upstreams (long TTLs: a later GET must not revalidate).
fn sluice_for(oci: &Sim, npm: &NpmSim, pypi: &PypiSim, extra: &str) -> Sluice {
    Sluice::start(&format!(
        r#"[[upstream]]
name = "sim"
format = "oci"
url = "{oci_url}"
host = "{oci_host}"
default = true
tag_ttl = "1h"

[[upstream]]
name = "npmjs"
format = "npm"
url = "{npm_url}"
metadata_ttl = "1h"

[[upstream]]
name = "pypi"
format = "pypi"
url = "{pypi_url}"
metadata_ttl = "1h"

{extra}
"#,
        oci_url = oci.url(),
        oci_host = oci.host(),
        npm_url = npm.registry_url(),
        pypi_url = pypi.simple_url(),
    ))
}

/// Runs `sluice warm --config <sluice's config> FILE...` off the async threads (the fakes
/// answer on them).
async fn warm(s: &Sluice, files: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("warm").arg("--config").arg(s.config_path());
    cmd.args(files);
    tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(120)))
        .await
        .expect("warm thread")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `[n/total] <label> ... <result>` lines, as (label, result).
fn progress_lines(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| {
            let (head, result) = l.split_once(" ... ").expect("progress line has ' ... '");
            let label = head.split_once("] ").expect("[n/total] prefix").1;
            (label.to_string(), result.to_string())
        })
        .collect()
}

async fn get_hit(c: &reqwest::Client, url: &str, accept: Option<&str>) -> bytes::Bytes {
    let mut r = c.get(url);
    if let Some(a) = accept {
        r = r.header("Accept", a);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    assert_eq!(sluice_cache_header(&resp), "HIT", "GET {url} after warm");
    resp.bytes().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fills_the_cache_from_an_image_list_a_package_lock_and_requirements() {
    let oci = Sim::start().await;
    let app = oci.push_image(
        "team/app",
        "1.0",
        &[random_bytes(300_000, 1), random_bytes(20_000, 2)],
    );
    // A two-platform index: warm must follow it to both manifests and their blobs.
    let amd = oci.push_image("team/multi", "amd64", &[random_bytes(50_000, 3)]);
    let arm = oci.push_image("team/multi", "arm64", &[random_bytes(60_000, 4)]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.manifest_digest, "size": amd.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.manifest_digest, "size": arm.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .expect("json");
    let index_digest = oci.add_manifest(OCI_INDEX, index);
    oci.tag("team/multi", "2.0", &index_digest);

    let npm = NpmSim::start().await;
    npm.publish("left-pad", "1.3.0", &[]);
    npm.publish("left-pad", "1.2.0", &[]);
    npm.publish("@scope/pkg", "2.0.0", &[("left-pad", "^1.3.0")]);

    let pypi = PypiSim::start(Mode::Json).await;
    let mut wheel = SimFile::new(
        "demo_pkg-1.0-py3-none-any.whl",
        "1.0",
        random_bytes(100_000, 5),
    );
    wheel.metadata = Some(bytes::Bytes::from_static(
        b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
    ));
    pypi.add_file("Demo_Pkg", wheel);
    pypi.add_file(
        "Demo_Pkg",
        SimFile::new("demo_pkg-1.0.tar.gz", "1.0", random_bytes(8_000, 6)),
    );
    // Another version: warm must leave it alone.
    pypi.add_file(
        "Demo_Pkg",
        SimFile::new("demo_pkg-0.9.tar.gz", "0.9", random_bytes(7_000, 7)),
    );
    pypi.add_file(
        "other",
        SimFile::new("other-3.0-py3-none-any.whl", "3.0", random_bytes(1_000, 8)),
    );

    let s = sluice_for(&oci, &npm, &pypi, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images.txt");
    std::fs::write(
        &images,
        format!(
            "# what CI pulls\n{h}/team/app:1.0\n{h}/team/multi:2.0\n",
            h = oci.host()
        ),
    )
    .expect("write images");
    let lock = dir.path().join("package-lock.json");
    std::fs::write(
        &lock,
        serde_json::to_vec_pretty(&json!({
            "name": "demo", "version": "1.0.0", "lockfileVersion": 3,
            "packages": {
                "": {"name": "demo", "version": "1.0.0"},
                "node_modules/left-pad": {"version": "1.3.0"},
                "node_modules/@scope/pkg": {"version": "2.0.0"},
                "node_modules/@scope/pkg/node_modules/left-pad": {"version": "1.2.0"},
            }
        }))
        .expect("json"),
    )
    .expect("write lock");
    let reqs = dir.path().join("requirements.txt");
    std::fs::write(&reqs, "Demo_Pkg==1.0 \\\n    --hash=sha256:00\nother\n").expect("write reqs");

    let out = warm(&s, &[&images, &lock, &reqs]).await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "warm failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nsluice log:\n{}",
        out.status,
        s.log()
    );
    let lines = progress_lines(&stderr);
    // app: manifest + config + 2 layers; multi: index + 2 × (manifest + config + layer);
    // npm: 3 tarballs; pypi: wheel, its metadata, sdist, and the unpinned page.
    assert_eq!(lines.len(), 4 + 7 + 3 + 4, "progress lines:\n{stderr}");
    for (label, result) in &lines {
        assert!(
            result.starts_with("ok (MISS, "),
            "{label}: {result}\n{stderr}"
        );
    }
    let total = format!("/{}] ", lines.len());
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with('['))
        .expect("a line");
    assert!(
        last.starts_with(&format!("[{}{total}", lines.len())),
        "the last line counts every artifact: {last}"
    );
    for want in [
        "npm left-pad@1.3.0",
        "npm left-pad@1.2.0",
        "npm @scope/pkg@2.0.0",
        "pypi demo-pkg==1.0 demo_pkg-1.0-py3-none-any.whl",
        "pypi demo-pkg==1.0 demo_pkg-1.0-py3-none-any.whl.metadata",
        "pypi demo-pkg==1.0 demo_pkg-1.0.tar.gz",
        "pypi other (index page)",
        "linux/arm64/v8",
    ] {
        assert!(
            lines.iter().any(|(l, _)| l.ends_with(want)),
            "no line for {want}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("demo_pkg-0.9"), "{stderr}");
    assert!(
        stdout.starts_with(&format!("sluice warm: {} ok, 0 failed", lines.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("({} MISS)", lines.len())),
        "{stdout}"
    );

    // Every artifact is now served from the store, and the upstreams hear nothing more.
    let (oci_seen, npm_seen, pypi_seen) = (
        oci.requests().len(),
        npm.requests().len(),
        pypi.requests().len(),
    );
    let c = http_client();
    let base = s.base_url();
    for (repo, tag) in [
        ("team/app", "1.0"),
        ("team/multi", "2.0"),
        ("team/multi", &amd.manifest_digest),
        ("team/multi", &arm.manifest_digest),
    ] {
        get_hit(
            &c,
            &format!("{base}/v2/{repo}/manifests/{tag}?ns={}", oci.host()),
            Some(ACCEPT_ALL_MANIFESTS),
        )
        .await;
    }
    for (img, repo) in [
        (&app, "team/app"),
        (&amd, "team/multi"),
        (&arm, "team/multi"),
    ] {
        for d in std::iter::once(&img.config_digest).chain(&img.layer_digests) {
            get_hit(&c, &format!("{base}/v2/{repo}/blobs/{d}"), None).await;
        }
    }
    for name in ["left-pad", "@scope%2fpkg"] {
        let doc: serde_json::Value =
            serde_json::from_slice(&get_hit(&c, &format!("{base}/npmjs/{name}"), None).await)
                .expect("packument");
        for v in doc["versions"].as_object().expect("versions").values() {
            get_hit(&c, v["dist"]["tarball"].as_str().expect("tarball"), None).await;
        }
    }
    let page = get_hit(
        &c,
        &format!("{base}/pypi/simple/demo-pkg/"),
        Some(PYPI_JSON),
    )
    .await;
    let page: serde_json::Value = serde_json::from_slice(&page).expect("page");
    for f in page["files"].as_array().expect("files") {
        let url = f["url"].as_str().expect("url");
        if f["filename"].as_str().is_some_and(|n| n.contains("-1.0")) {
            get_hit(&c, url, None).await;
        }
    }
    get_hit(
        &c,
        &format!(
            "{base}/pypi/files/sha256/{}/demo_pkg-1.0-py3-none-any.whl.metadata",
            {
                let w = page["files"]
                    .as_array()
                    .expect("files")
                    .iter()
                    .find(|f| f["filename"] == "demo_pkg-1.0-py3-none-any.whl")
                    .expect("wheel");
                w["hashes"]["sha256"].as_str().expect("sha256").to_string()
            }
        ),
        None,
    )
    .await;
    get_hit(&c, &format!("{base}/pypi/simple/other/"), Some(PYPI_JSON)).await;
    assert_eq!(
        oci.requests().len(),
        oci_seen,
        "OCI upstream contacted after warm"
    );
    assert_eq!(
        npm.requests().len(),
        npm_seen,
        "npm upstream contacted after warm"
    );
    assert_eq!(
        pypi.requests().len(),
        pypi_seen,
        "PyPI upstream contacted after warm"
    );

    // The access log names the package or repository of each request.
    let log = s.log();
    for name in [
        "sim/team/app",
        "team/multi",
        "@scope/pkg",
        "left-pad",
        "demo-pkg",
    ] {
        assert!(
            log.contains(&format!("\"name\":\"{name}\"")),
            "access log without name {name}"
        );
    }

    // A second run finds everything cached.
    let again = warm(&s, &[&images, &lock, &reqs]).await;
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "{stdout}\n{stderr}");
    assert!(
        progress_lines(&stderr)
            .iter()
            .all(|(_, r)| r.starts_with("ok (HIT, ")),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("({} HIT)", lines.len())),
        "{stdout}"
    );
    assert_eq!(oci.requests().len(), oci_seen);
    assert_eq!(npm.requests().len(), npm_seen);
    assert_eq!(pypi.requests().len(), pypi_seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_exits_1_and_says_why_when_an_artifact_is_missing_or_blocked() {
    let oci = Sim::start().await;
    oci.push_image("team/app", "1.0", &[random_bytes(1_000, 1)]);
    let npm = NpmSim::start().await;
    npm.publish("left-pad", "1.3.0", &[]);
    npm.publish("evil", "1.0.0", &[]);
    let pypi = PypiSim::start(Mode::Json).await;
    pypi.add_file(
        "demo",
        SimFile::new("demo-1.0-py3-none-any.whl", "1.0", random_bytes(1_000, 2)),
    );
    let s = sluice_for(
        &oci,
        &npm,
        &pypi,
        r#"[[policy.rule]]
id = "no-evil"
kind = "deny"
format = "npm"
package = "evil"
reason = "compromised release"
"#,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("package-lock.json");
    std::fs::write(
        &lock,
        serde_json::to_vec_pretty(&json!({
            "lockfileVersion": 3,
            "packages": {
                "": {"name": "demo"},
                "node_modules/left-pad": {"version": "1.3.0"},
                "node_modules/ghost": {"version": "9.9.9"},
                "node_modules/a/node_modules/left-pad": {"version": "9.9.9"},
                "node_modules/evil": {"version": "1.0.0"},
            }
        }))
        .expect("json"),
    )
    .expect("write lock");
    let reqs = dir.path().join("requirements.txt");
    std::fs::write(&reqs, "demo==2.0\n").expect("write reqs");
    let images = dir.path().join("images.txt");
    std::fs::write(&images, format!("{}/team/app:9.9\n", oci.host())).expect("write images");

    let out = warm(&s, &[&lock, &reqs, &images]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines = progress_lines(&stderr);
    let result = |label: &str| {
        lines
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no line for {label}:\n{stderr}"))
    };
    assert!(result("npm left-pad@1.3.0").starts_with("ok ("), "{stderr}");
    let missing = result("npm left-pad@9.9.9");
    assert!(missing.starts_with("failed: 404"), "{missing}");
    assert!(missing.contains("9.9.9"), "{missing}");
    assert!(
        result("npm ghost@9.9.9").starts_with("failed: 404"),
        "{stderr}"
    );
    let blocked = result("npm evil@1.0.0");
    assert!(blocked.starts_with("failed: 403"), "{blocked}");
    assert!(blocked.contains("compromised release"), "{blocked}");
    let py = result("pypi demo==2.0");
    assert!(
        py.starts_with("failed:") && py.contains("no file of demo 2.0"),
        "{py}"
    );
    let img = result(&format!("oci {}/team/app:9.9", oci.host()));
    assert!(img.starts_with("failed: 404"), "{img}");
    assert!(
        stdout.starts_with("sluice warm: 1 ok, 5 failed, 0 skipped"),
        "{stdout}\n{stderr}"
    );
}

/// On a terminal (`script` gives it a pty), warm draws one progress bar redrawn in place
/// and prints lines only for what failed, then the summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_on_a_terminal_draws_a_progress_bar() {
    let oci = Sim::start().await;
    oci.push_image(
        "team/app",
        "1.0",
        &[random_bytes(40_000, 31), random_bytes(30_000, 32)],
    );
    let s = Sluice::start(&format!(
        "[[upstream]]\nname = \"sim\"\nformat = \"oci\"\nurl = \"{}\"\nhost = \"{}\"\ndefault = true\n",
        oci.url(),
        oci.host()
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images.txt");
    std::fs::write(
        &images,
        format!("{h}/team/app:1.0\n{h}/team/app:9.9\n", h = oci.host()),
    )
    .expect("write images");
    let inner = format!(
        "'{}' warm --config '{}' '{}'",
        env!("CARGO_BIN_EXE_sluice"),
        s.config_path().display(),
        images.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("COLUMNS", "100");
    let out =
        tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(60)))
            .await
            .expect("script thread");
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{tty:?}");
    // Redrawn in place, ending full, with the bytes received.
    assert!(tty.matches("\r\x1b[2K[").count() >= 2, "{tty:?}");
    assert!(tty.contains("[========================] 5/5 "), "{tty:?}");
    assert!(tty.contains(" KiB "), "{tty:?}");
    // What went well has no line of its own; what failed does.
    assert!(!tty.contains("... ok ("), "{tty:?}");
    let failed = format!("oci {}/team/app:9.9 ... failed: 404", oci.host());
    assert!(tty.contains(&failed), "{tty:?}");
    assert!(
        tty.contains("sluice warm: 4 ok, 1 failed, 0 skipped"),
        "{tty:?}"
    );
    // Without a terminal, the same run writes one line per artifact (as tested above).
    let plain = warm(&s, &[&images]).await;
    let (_, stderr) = text(&plain);
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    let lines = progress_lines(&stderr);
    assert_eq!(lines.len(), 5, "{stderr}");
    assert_eq!(
        lines
            .iter()
            .filter(|(_, r)| r.starts_with("ok (HIT"))
            .count(),
        4,
        "{stderr}"
    );
}
