//! The PyPI format with the real clients against the real index: `pip` (and `uv`, when it
//! is installed) install through sluice from pip's own index, discovered at run time (sluice
//! asks pip; no index host is written here). Then sluice restarts offline on the same data
//! dir and the same installs succeed from its cache alone.
//!
//! Package choices are tiny: `six` and `idna` (wheels), `docopt` (sdist only: pip builds it,
//! fetching setuptools through sluice too), `pluggy` 1.1.0 (a yanked release), and a
//! `--require-hashes` requirements file pinning `six`. Under `CI=true` a missing
//! `python3`/`pip`/`uv` fails the test instead of skipping it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{http_client, json_body, run_with_timeout, within, Sluice};

const JSON: &str = "application/vnd.pypi.simple.v1+json";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `cmd args` runs; under CI a missing tool is a failure.
fn have(cmd: &str, args: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "CI=true and `{cmd} {}` does not run", args.join(" "));
        eprintln!("skipping: `{cmd} {}` does not run", args.join(" "));
    }
    ok
}

fn start_sluice() -> Sluice {
    // url = "": sluice asks pip for its index at start.
    Sluice::start("[[upstream]]\nname = \"pypi\"\nformat = \"pypi\"\nurl = \"\"\n")
}

fn go_offline(s: &mut Sluice) {
    let cfg = std::fs::read_to_string(s.config_path()).expect("config");
    std::fs::write(
        s.config_path(),
        cfg.replace("format = \"pypi\"", "format = \"pypi\"\noffline = true"),
    )
    .expect("write config");
    s.restart();
}

/// `pip install` into `target` with nothing of the machine's configuration: only sluice's
/// index.
fn pip_install(index: &str, target: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--index-url",
        index,
        "--target",
    ])
    .arg(target)
    .args(args);
    for v in [
        "PIP_FIND_LINKS",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_NO_INDEX",
    ] {
        c.env_remove(v);
    }
    c.env("PIP_CONFIG_FILE", "/dev/null");
    c
}

fn run(mut c: Command, what: &str) -> String {
    let out = run_with_timeout(&mut c, Duration::from_secs(120));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn dist_infos(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".dist-info"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The sha256 of every file of `project` `version`, from sluice's own JSON page.
async fn hashes(s: &Sluice, project: &str, version: &str) -> Vec<String> {
    let r = within(
        60,
        "simple JSON page",
        http_client()
            .get(format!("{}/pypi/simple/{project}/", s.base_url()))
            .header("Accept", JSON)
            .send(),
    )
    .await
    .expect("GET page");
    assert_eq!(r.status(), 200);
    let v = json_body(r).await;
    let prefix = format!("{project}-{version}");
    v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| {
            f["filename"].as_str().is_some_and(|n| {
                n.starts_with(&prefix)
                    && !n[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
        .filter_map(|f| f["hashes"]["sha256"].as_str().map(str::to_string))
        .collect()
}

/// Installs the whole set into fresh dirs under `work/<tag>-*`; returns pip's output for
/// the yanked pin.
fn install_set(index: &str, work: &Path, tag: &str, req_file: &Path) -> String {
    let dir = |n: &str| -> PathBuf { work.join(format!("{tag}-{n}")) };
    let wheels = dir("wheels");
    run(
        pip_install(index, &wheels, &["six", "idna"]),
        "pip install six idna",
    );
    let names = dist_infos(&wheels);
    assert!(names.iter().any(|n| n.starts_with("six-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("idna-")), "{names:?}");

    let sdist = dir("sdist");
    run(
        pip_install(index, &sdist, &["docopt==0.6.2"]),
        "pip install docopt (sdist only)",
    );
    assert!(dist_infos(&sdist)
        .iter()
        .any(|n| n.starts_with("docopt-0.6.2")));

    let yanked = dir("yanked");
    let out = run(
        pip_install(index, &yanked, &["--no-deps", "pluggy==1.1.0"]),
        "pip install pluggy==1.1.0 (yanked, pinned)",
    );
    assert!(dist_infos(&yanked)
        .iter()
        .any(|n| n.starts_with("pluggy-1.1.0")));
    let avoid = dir("avoid");
    run(
        pip_install(index, &avoid, &["--no-deps", "pluggy>=1.0,<1.2"]),
        "pip install pluggy>=1.0,<1.2",
    );
    let got = dist_infos(&avoid);
    assert!(
        got.iter().any(|n| n.starts_with("pluggy-1.0.0")),
        "pip chose a yanked release for a range: {got:?}"
    );

    let hashed = dir("hashed");
    let mut c = pip_install(index, &hashed, &["--require-hashes", "--no-deps", "-r"]);
    c.arg(req_file);
    run(c, "pip install --require-hashes");
    assert!(dist_infos(&hashed)
        .iter()
        .any(|n| n.starts_with("six-1.16.0")));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_through_sluice_then_again_offline_from_cache() {
    if !have("python3", &["-m", "pip", "--version"]) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let mut s = start_sluice();
    let index = format!("{}/pypi/simple/", s.base_url());

    // The yanked release, as the index states it, through sluice.
    let r = within(
        60,
        "pluggy page",
        http_client()
            .get(format!("{index}pluggy/"))
            .header("Accept", JSON)
            .send(),
    )
    .await
    .expect("GET");
    let v = json_body(r).await;
    let yanked: Vec<_> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| {
            f["filename"]
                .as_str()
                .is_some_and(|n| n.starts_with("pluggy-1.1.0"))
        })
        .map(|f| f["yanked"].clone())
        .collect();
    assert!(
        !yanked.is_empty() && yanked.iter().all(|y| y.is_string() || y == true),
        "{yanked:?}"
    );

    let six = hashes(&s, "six", "1.16.0").await;
    assert!(!six.is_empty());
    let req = work.path().join("requirements.txt");
    let hash_args: Vec<String> = six.iter().map(|h| format!("--hash=sha256:{h}")).collect();
    std::fs::write(&req, format!("six==1.16.0 {}\n", hash_args.join(" "))).expect("write req");

    let out = install_set(&index, work.path(), "online", &req);
    assert!(
        out.to_lowercase().contains("yanked"),
        "pip did not warn about the yanked pin:\n{out}"
    );

    let seen = s.log().len();
    go_offline(&mut s);
    install_set(&index, work.path(), "offline", &req);
    let offline_log = s.log().split_off(seen);
    assert!(
        !offline_log.contains("\"status\":5"),
        "an offline request failed with 5xx:\n{offline_log}"
    );
}

/// `uv`: where `scripts/test` installs it, or on PATH.
fn uv_path() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/uv-venv/bin/uv");
    if local.exists() {
        return Some(local);
    }
    if Command::new("uv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::from("uv"));
    }
    assert!(
        !ci(),
        "CI=true and uv is not installed (scripts/test installs it)"
    );
    eprintln!("skipping: uv is not installed (scripts/test installs it)");
    None
}

fn uv(bin: &Path, index: &str, target: &Path, pkgs: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "pip",
        "install",
        "--no-cache",
        "--python",
        "python3",
        "--index-url",
        index,
        "--target",
    ])
    .arg(target)
    .args(pkgs);
    for v in [
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "UV_INDEX",
        "UV_DEFAULT_INDEX",
        "UV_FIND_LINKS",
        "PIP_FIND_LINKS",
    ] {
        c.env_remove(v);
    }
    c.env("UV_NO_CONFIG", "1");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uv_installs_through_sluice_then_again_offline_from_cache() {
    let Some(bin) = uv_path() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let mut s = start_sluice();
    let index = format!("{}/pypi/simple/", s.base_url());
    let pkgs = ["six==1.16.0", "idna", "pluggy>=1.0,<1.2"];
    let t = work.path().join("online");
    run(uv(&bin, &index, &t, &pkgs), "uv pip install");
    let got = dist_infos(&t);
    assert!(got.iter().any(|n| n.starts_with("six-1.16.0")), "{got:?}");
    assert!(
        got.iter().any(|n| n.starts_with("pluggy-1.0.0")),
        "uv chose a yanked release: {got:?}"
    );
    go_offline(&mut s);
    let t = work.path().join("offline");
    run(
        uv(&bin, &index, &t, &pkgs),
        "uv pip install (offline sluice)",
    );
    assert!(dist_infos(&t).iter().any(|n| n.starts_with("idna-")));
}
