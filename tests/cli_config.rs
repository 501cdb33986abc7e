//! `sluice config check`, `serve` and `policy check` on the inputs an audit found mishandled:
//! variables in comments, empty tokens, watermarks, sub-second grace, requirements files
//! with includes and without the usual name.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_CONFIG");
    c
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SPEC §8's and the README's own example: Docker Hub credentials commented out.
#[test]
fn config_check_leaves_variables_in_comments_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        r#"[auth]
anonymous = "read"
[[auth.token]]
name = "ops"
token = "${SLUICE_ADMIN_TOKEN}"  # ${NOT_SET_EITHER}
role = "admin"

[[upstream]]
name = "dockerhub"
format = "oci"
url = "https://registry-1.docker.io"
host = "docker.io"
default = true
tag_ttl = "5m"
# username = "${DOCKERHUB_USER}"  password = "${DOCKERHUB_TOKEN}"
"#,
    );
    let out = sluice()
        .args(["config", "check"])
        .arg(&cfg)
        .env("SLUICE_ADMIN_TOKEN", "s3cret")
        .env_remove("DOCKERHUB_USER")
        .env_remove("DOCKERHUB_TOKEN")
        .env_remove("NOT_SET_EITHER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_empty_token_is_refused_by_config_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "sluice.toml",
        &format!(
            "[storage]\ndata_dir = \"{}\"\n[[auth.token]]\nname = \"ops\"\ntoken = \"${{SLUICE_ADMIN_TOKEN:-}}\"\nrole = \"admin\"\n",
            dir.path().join("data").display()
        ),
    );
    let loc = format!("{}:5:9:", cfg.display());
    let out = sluice()
        .args(["config", "check"])
        .arg(&cfg)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(&loc) && t.contains("\"ops\" is empty"), "{t}");
    // serve never starts with it (so `curl -u anyone:` cannot become admin).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sluice()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&cfg)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started with an empty admin token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains(&loc), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn config_check_refuses_watermarks_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "w.toml",
        "[storage]\nmax_size = \"1GiB\"\nhigh_watermark = 0.5\nlow_watermark = 0.9\n",
    );
    let out = sluice()
        .args(["config", "check"])
        .arg(&cfg)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("{}:4:17:", cfg.display()))
            && t.contains("0 < low_watermark <= high_watermark <= 1"),
        "{t}"
    );
}

/// pingora takes whole seconds of grace: "500ms" used to become 0 (no drain at all).
#[test]
fn a_sub_second_shutdown_grace_is_rounded_up_not_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"500ms\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut child = sluice()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sluice did not listen");
        assert!(child.try_wait().unwrap().is_none(), "sluice exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status}");
    // The grace period (rounded up to 1 s) is waited out before exiting.
    assert!(took >= Duration::from_millis(950), "exited after {took:?}");
}

const POLICY: &str = r#"
[[policy.rule]]
id = "no-old-requests"
kind = "deny"
format = "pypi"
package = "requests"
versions = "<2.20"
reason = "CVE-2018-18074"

[[policy.rule]]
id = "no-old-idna"
kind = "deny"
format = "pypi"
package = "idna"
versions = "<3.7"
reason = "CVE-2024-3651"
"#;

#[test]
fn policy_check_follows_includes_and_knows_requirements_files_by_name_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write(d, "p.toml", POLICY);
    write(d, "requirements/base.txt", "requests==2.19.1\n");
    write(d, "constraints.txt", "idna==3.6\n");
    let prod = write(
        d,
        "requirements/prod.txt",
        "-r base.txt\n--constraint ../constraints.txt\nflask\n-e ./local-pkg\n",
    );
    let check = |files: &[&Path]| {
        sluice()
            .args(["policy", "check", "--config"])
            .arg(&cfg)
            .args(files)
            .output()
            .unwrap()
    };
    let out = check(&[&prod]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("BLOCK requests@2.19.1 [no-old-requests]"), "{t}");
    assert!(t.contains("BLOCK idna@3.6 [no-old-idna]"), "{t}");
    assert!(t.contains("3 checked, 2 blocked"), "{t}");
    // The editable line is named on stderr, with its file and line.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:")
            && err.contains("prod.txt: line 4:")
            && err.contains("-e ./local-pkg"),
        "{t}"
    );

    // constraints.txt on its own, and a pin list with no telling name, are requirements.
    let deps = write(d, "deps", "# pinned\nrequests==2.19.1 --hash=sha256:00\n");
    let out = check(&[&d.join("constraints.txt"), &deps]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("BLOCK idna@3.6") && t.contains("BLOCK requests@2.19.1"),
        "{t}"
    );
    assert!(!t.contains("library/"), "read as an image list: {t}");

    // An include that is not there stops the check.
    let broken = write(d, "ci-requirements.txt", "six==1.16.0\n-r missing.txt\n");
    let out = check(&[&broken]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("ci-requirements.txt: line 2: -r missing.txt") && t.contains("missing.txt"),
        "{t}"
    );

    // Image lists keep working; a line that is no image reference is warned about.
    let images = write(
        d,
        "images.txt",
        "alpine:3.19\nghcr.io/o/i:1.0\nNot An Image\n",
    );
    let out = check(&[&images]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("2 checked, 0 blocked"), "{t}");
    assert!(t.contains("images.txt: line 3:"), "{t}");
}
