//! The outage drill: warm the cache with the real clients (`skopeo` against a real
//! `docker-registry`, `npm` against the fake npm registry, `pip` against the fake index with
//! real wheels), then take every upstream away — processes killed, listeners closed, so
//! every upstream connection is refused; not offline mode — let every metadata TTL expire,
//! and repeat all three installs with empty client caches. Each must succeed from sluice's
//! cache alone.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::images::{build_single_arch, pull, push, tree, PushFormat};
use common::npm_sim::NpmSim;
use common::pypi_sim::{Mode, PypiSim, SimFile};
use common::registry::Registry;
use common::{raw_get_status, run_ok, run_with_timeout, within, Sluice};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `pip install --no-cache-dir --target target` of `reqs` from `index`.
fn pip_install(index: &str, target: &Path, reqs: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--index-url",
        index,
    ])
    .arg("--target")
    .arg(target)
    .args(reqs)
    .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    .env("PIP_CONFIG_FILE", "/dev/null");
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_installs_from_cache_when_every_upstream_is_gone() {
    let work = tempfile::tempdir().expect("tempdir");

    // Upstreams: a real registry with one image, the fake npm registry, the fake index.
    let reg = Registry::start();
    let (layout, _) = build_single_arch(&work.path().join("src"), "v1", 77);
    push(&layout.dir, "v1", &reg.host(), "app:v1", PushFormat::Oci);
    let npm_sim = NpmSim::start().await;
    npm_sim.publish("dep", "1.0.0", &[]);
    npm_sim.publish("dep", "1.1.0", &[]);
    npm_sim.publish("@scope/app-lib", "3.0.0", &[("dep", "^1.0.0")]);
    let py = PypiSim::start(Mode::Json).await;
    for (name, v) in [
        ("calm_pkg", "1.0"),
        ("calm_pkg", "1.1"),
        ("other_pkg", "0.3"),
    ] {
        let (f, bytes) = common::build_wheel(work.path(), name, v);
        py.add_file(&name.replace('_', "-"), SimFile::new(&f, v, bytes));
    }
    let up_addrs = [
        reg.addr(),
        std::net::SocketAddr::from(([127, 0, 0, 1], npm_port(&npm_sim))),
        std::net::SocketAddr::from(([127, 0, 0, 1], py_port(&py))),
    ];

    let s = Sluice::start(&format!(
        r#"[[upstream]]
name = "local"
format = "oci"
url = "{reg_url}"
host = "{reg_host}"
default = true
tag_ttl = "1s"
retries = 1
retry_backoff = "20ms"
connect_timeout = "1s"

[[upstream]]
name = "npmjs"
format = "npm"
url = "{npm_url}"
metadata_ttl = "1s"
retries = 1
retry_backoff = "20ms"
connect_timeout = "1s"

[[upstream]]
name = "pypi"
format = "pypi"
url = "{py_url}"
metadata_ttl = "1s"
retries = 1
retry_backoff = "20ms"
connect_timeout = "1s"
"#,
        reg_url = reg.url(),
        reg_host = reg.host(),
        npm_url = npm_sim.registry_url(),
        py_url = py.simple_url(),
    ));
    let image = format!("{}/app:v1", s.host());
    let registry = format!("{}/npmjs/", s.base_url());
    let index = format!("{}/pypi/simple/", s.base_url());
    let proj = work.path().join("proj");
    std::fs::create_dir(&proj).expect("mkdir proj");
    std::fs::write(
        proj.join("package.json"),
        r#"{"name":"proj","version":"1.0.0","private":true,"dependencies":{"@scope/app-lib":"^3.0.0","dep":"^1.0.0"}}"#,
    )
    .expect("write package.json");

    within(120, "outage drill", async {
        // Warm: every client once through sluice while the upstreams are up.
        let (w, i, img, reg_url, p) = (
            work.path().to_path_buf(),
            index.clone(),
            image.clone(),
            registry.clone(),
            proj.clone(),
        );
        let warm = tokio::task::spawn_blocking(move || {
            pull(&img, &format!("dir:{}", w.join("pull-warm").display()));
            run_ok(
                &mut common::npm(
                    &p,
                    &reg_url,
                    &w.join("npm-cache-1"),
                    &["install", "--no-audit"],
                ),
                CLIENT_TIMEOUT,
            );
            assert_ok(
                &pip_install(&i, &w.join("py-warm"), &["calm-pkg", "other-pkg==0.3"]),
                "warm pip install",
            );
        });
        warm.await.expect("warm clients");
        assert!(proj.join("package-lock.json").exists());
        let warm_tree = tree(&work.path().join("pull-warm"));

        // Outage: every upstream process or listener gone.
        drop(reg);
        drop(npm_sim);
        drop(py);
        for a in up_addrs {
            assert!(
                common::eventually(Duration::from_secs(5), || raw_get_status(a, "/").is_none())
                    .await,
                "upstream {a} still answers"
            );
        }
        // Every TTL (1 s) long past.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let (w, i, img, reg_url, p) = (
            work.path().to_path_buf(),
            index.clone(),
            image.clone(),
            registry.clone(),
            proj.clone(),
        );
        tokio::task::spawn_blocking(move || {
            pull(&img, &format!("dir:{}", w.join("pull-cold").display()));
            std::fs::remove_dir_all(p.join("node_modules")).expect("rm node_modules");
            run_ok(
                &mut common::npm(&p, &reg_url, &w.join("npm-cache-2"), &["ci", "--no-audit"]),
                CLIENT_TIMEOUT,
            );
            assert_ok(
                &pip_install(&i, &w.join("py-cold"), &["calm-pkg", "other-pkg==0.3"]),
                "pip install during the outage",
            );
        })
        .await
        .expect("clients during the outage");

        assert_eq!(
            tree(&work.path().join("pull-cold")),
            warm_tree,
            "the image pulled during the outage differs from the warm pull"
        );
        assert!(proj.join("node_modules/dep/package.json").exists());
        assert!(proj
            .join("node_modules/@scope/app-lib/package.json")
            .exists());
        let init = std::fs::read_to_string(work.path().join("py-cold/calm_pkg/__init__.py"))
            .expect("calm_pkg installed during the outage");
        assert!(init.contains("'1.1'"), "installed {init}");
        assert!(work.path().join("py-cold/other_pkg/__init__.py").exists());

        // The metadata really came from the cache past its TTL, not from anywhere live.
        let c = common::http_client();
        for (url, accept) in [
            (
                format!("{}/v2/app/manifests/v1", s.base_url()),
                common::images::ACCEPT_ALL_MANIFESTS,
            ),
            (format!("{registry}dep"), "application/json"),
            (format!("{index}calm-pkg/"), "text/html"),
        ] {
            let r = c
                .get(&url)
                .header("Accept", accept)
                .send()
                .await
                .expect("GET metadata");
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(common::sluice_cache_header(&r), "STALE", "{url}");
        }
    })
    .await;
    drop(s);
}

/// The fake npm registry's port, from its registry URL.
fn npm_port(sim: &NpmSim) -> u16 {
    port_of(&sim.registry_url())
}

/// The fake index's port, from its simple URL.
fn py_port(sim: &PypiSim) -> u16 {
    port_of(&sim.simple_url())
}

fn port_of(url: &str) -> u16 {
    let u = url.strip_prefix("http://127.0.0.1:").expect("loopback URL");
    u.split('/').next().expect("port").parse().expect("port")
}
