//! npm format with the real clients against the real npm registry (its URL discovered at
//! run time with `npm config get registry`, never written down): `npm install` of scoped,
//! unscoped and many-version packages, `npm ci` from the lockfile with an empty cache, `npm
//! ci` again with sluice restarted offline, `npm audit` / `npm audit signatures` compared
//! with the same commands run directly against the registry, and `pnpm install`
//! (abbreviated metadata). Kept small: a handful of tiny packages.
//!
//! Under `CI=true` a missing `npm` or `pnpm` fails the test; elsewhere it is skipped with a
//! message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{http_client, run_ok, run_with_timeout, sluice_cache_header, Sluice};

const T: Duration = Duration::from_secs(120);

/// Whether `tool` runs; under `CI=true` its absence is a failure.
fn tool_available(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI (scripts/test installs it)"
        );
        eprintln!("{tool} not found: skipping");
    }
    ok
}

/// The registry npm uses here, asked from npm itself.
fn registry() -> String {
    sluice_config::discover::npm_registry()
        .expect("`npm config get registry` names no http(s) registry")
}

/// A client for the registry itself, trusting what sluice trusts (`SSL_CERT_FILE`, set
/// where TLS is inspected).
fn direct_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(pem) = std::env::var_os("SSL_CERT_FILE").and_then(|p| std::fs::read(p).ok()) {
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().expect("client")
}

fn upstream(offline: bool) -> String {
    // `url` empty: sluice asks npm for the registry, as its embedded default does.
    format!(
        "[[upstream]]\nname = \"npmjs\"\nformat = \"npm\"\nmetadata_ttl = \"1h\"\noffline = {offline}\n"
    )
}

/// An `npm` command in `dir` with its own userconfig (only `registry=`) and cache.
fn npm(dir: &Path, registry: &str, cache: &Path, args: &[&str]) -> Command {
    let rc = cache.with_extension("npmrc");
    std::fs::write(&rc, format!("registry={registry}\n")).expect("write npmrc");
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir)
        .args(args)
        .arg("--userconfig")
        .arg(&rc)
        .arg("--cache")
        .arg(cache)
        .args([
            "--no-fund",
            "--no-update-notifier",
            "--omit-lockfile-registry-resolved=false",
        ]);
    cmd
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn project(root: &Path, name: &str, deps: &str) -> PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::write(
        p.join("package.json"),
        format!(r#"{{"name":"{name}","version":"1.0.0","private":true,"dependencies":{deps}}}"#),
    )
    .expect("package.json");
    p
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const DEPS: &str =
    r#"{"@isaacs/string-locale-compare":"^1.1.0","semver":"7.5.4","is-number":"^7.0.0"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_install_then_ci_then_offline_ci_and_audits_through_sluice() {
    if !tool_available("npm") {
        return;
    }
    let direct = registry();
    let mut s = Sluice::start(&upstream(false));
    let via = format!("{}/npmjs/", s.base_url());
    let work = tempfile::tempdir().expect("tempdir");
    let proj = project(work.path(), "proj", DEPS);

    let (p, r, c) = (proj.clone(), via.clone(), work.path().join("cache1"));
    blocking(move || run_ok(&mut npm(&p, &r, &c, &["install", "--no-audit"]), T)).await;
    let lock: serde_json::Value = serde_json::from_slice(
        &std::fs::read(proj.join("package-lock.json")).expect("package-lock.json"),
    )
    .expect("lockfile JSON");
    let pkgs = lock["packages"].as_object().expect("packages");
    // semver 7.5.4 depends on lru-cache, which depends on yallist: transitive deps too.
    for name in [
        "@isaacs/string-locale-compare",
        "semver",
        "is-number",
        "lru-cache",
        "yallist",
    ] {
        let e = &pkgs[&format!("node_modules/{name}")];
        let resolved = e["resolved"].as_str().unwrap_or("");
        assert!(
            resolved.starts_with(&format!("{via}{name}/-/")),
            "{name} resolved through sluice: {resolved:?}"
        );
        assert!(e["integrity"].as_str().unwrap_or("").starts_with("sha512-"));
        assert!(proj
            .join("node_modules")
            .join(name)
            .join("package.json")
            .exists());
    }
    // The many-version packument is served whole from cache; dist.integrity untouched.
    let c = http_client();
    let r = c.get(format!("{via}semver")).send().await.expect("get");
    assert_eq!(sluice_cache_header(&r), "HIT");
    let doc: serde_json::Value = r.json().await.expect("json");
    let versions = doc["versions"].as_object().expect("versions");
    assert!(versions.len() > 100, "{} versions", versions.len());
    let up: serde_json::Value = direct_client()
        .get(format!("{direct}semver"))
        .send()
        .await
        .expect("direct")
        .json()
        .await
        .expect("json");
    assert_eq!(
        doc["versions"]["7.5.4"]["dist"]["integrity"],
        up["versions"]["7.5.4"]["dist"]["integrity"]
    );
    assert_eq!(
        doc["versions"]["7.5.4"]["dist"]["signatures"],
        up["versions"]["7.5.4"]["dist"]["signatures"]
    );

    // npm ci from the lockfile with an empty npm cache.
    std::fs::remove_dir_all(proj.join("node_modules")).expect("rm node_modules");
    let (p, r, c2) = (proj.clone(), via.clone(), work.path().join("cache2"));
    blocking(move || run_ok(&mut npm(&p, &r, &c2, &["ci", "--no-audit"]), T)).await;
    assert!(proj.join("node_modules/semver/package.json").exists());

    // npm audit and npm audit signatures: through sluice exactly as directly against the
    // registry (whatever the registry supports here, sluice must not change the outcome).
    // No retries: where the registry or sigstore cannot answer, both fail fast.
    for args in [
        &["audit", "--json", "--fetch-retries=0"][..],
        &["audit", "signatures", "--json", "--fetch-retries=0"][..],
    ] {
        let (p, r, c) = (proj.clone(), via.clone(), work.path().join("cache-a1"));
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let through = blocking(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            run_with_timeout(&mut npm(&p, &r, &c, &a), T)
        })
        .await;
        let (p, r, c) = (proj.clone(), direct.clone(), work.path().join("cache-a2"));
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let straight = blocking(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            run_with_timeout(&mut npm(&p, &r, &c, &a), T)
        })
        .await;
        eprintln!(
            "npm {}: through sluice {} / direct {}",
            args.join(" "),
            through.status,
            straight.status
        );
        assert_eq!(
            through.status.code(),
            straight.status.code(),
            "npm {args:?} through sluice:\n{}\ndirect:\n{}",
            text(&through),
            text(&straight)
        );
        let j = |o: &Output| -> serde_json::Value {
            serde_json::from_slice(&o.stdout).unwrap_or_default()
        };
        let (t, d) = (j(&through), j(&straight));
        if straight.status.success() {
            assert_eq!(t["metadata"], d["metadata"], "{args:?}");
        } else {
            // The registry's own refusal (e.g. its status code) reaches npm unchanged.
            assert_eq!(t["statusCode"], d["statusCode"], "{args:?}: {t} vs {d}");
        }
    }

    // Upstream unreachable: sluice restarted offline on the same data dir; npm ci with yet
    // another empty cache succeeds from sluice's store alone.
    let cfg = std::fs::read_to_string(s.config_path()).expect("config");
    std::fs::write(
        s.config_path(),
        cfg.replace("offline = false", "offline = true"),
    )
    .expect("config");
    s.restart();
    std::fs::remove_dir_all(proj.join("node_modules")).expect("rm node_modules");
    let (p, r, c3) = (proj.clone(), via.clone(), work.path().join("cache3"));
    blocking(move || run_ok(&mut npm(&p, &r, &c3, &["ci", "--no-audit"]), T)).await;
    for name in ["@isaacs/string-locale-compare", "semver", "yallist"] {
        assert!(proj
            .join("node_modules")
            .join(name)
            .join("package.json")
            .exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pnpm_installs_through_sluice_with_abbreviated_metadata() {
    if !tool_available("pnpm") {
        return;
    }
    let s = Sluice::start(&upstream(false));
    let via = format!("{}/npmjs/", s.base_url());
    let work = tempfile::tempdir().expect("tempdir");
    let proj = project(work.path(), "pproj", DEPS);
    std::fs::write(proj.join(".npmrc"), format!("registry={via}\n")).expect(".npmrc");
    let (p, r, w) = (proj.clone(), via.clone(), work.path().to_path_buf());
    blocking(move || {
        let mut cmd = Command::new("pnpm");
        cmd.current_dir(&p)
            .args(["install", "--reporter=append-only", "--registry", &r])
            .arg("--store-dir")
            .arg(w.join("pnpm-store"))
            .arg("--cache-dir")
            .arg(w.join("pnpm-cache"))
            .env("npm_config_userconfig", p.join(".npmrc"))
            .env("XDG_DATA_HOME", w.join("xdg-data"))
            .env("XDG_CACHE_HOME", w.join("xdg-cache"));
        run_ok(&mut cmd, T)
    })
    .await;
    let lock = std::fs::read_to_string(proj.join("pnpm-lock.yaml")).expect("pnpm-lock.yaml");
    assert!(lock.contains("semver@7.5.4"), "{lock}");
    assert!(lock.contains("integrity: sha512-"), "{lock}");
    assert!(proj.join("node_modules/semver/package.json").exists());
    assert!(proj
        .join("node_modules/@isaacs/string-locale-compare/package.json")
        .exists());
    // pnpm asked for abbreviated packuments: they are cached now, as their own documents.
    let r = http_client()
        .get(format!("{via}semver"))
        .header(
            "Accept",
            "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(sluice_cache_header(&r), "HIT");
    assert_eq!(
        common::header(&r, "content-type"),
        "application/vnd.npm.install-v1+json"
    );
}
