//! The `sluice` command line: `config check`, `serve` on the embedded default, signals, and
//! `policy check`.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_CONFIG");
    c
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_healthy(addr: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(r) = http_get(addr, "/-/healthz") {
            if r.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("sluice exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sluice did not become healthy on {addr}");
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_check_rejects_unknown_key_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.toml",
        "[server]\nlisten = \"127.0.0.1:5080\"\nlisten_port = 1\n",
    );
    let out = sluice().args(["config", "check"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:1:", p.display())), "{err}");
    assert!(err.contains("listen_port"), "{err}");
}

#[test]
fn config_check_accepts_a_valid_file_and_names_its_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "ok.toml",
        "[[upstream]]\nname = \"hub\"\nformat = \"oci\"\nurl = \"${HUB_URL:-https://registry-1.docker.io}\"\nhost = \"docker.io\"\ndefault = true\ntag_ttl = \"5m\"\n",
    );
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 upstream"));
}

#[test]
fn the_scale_out_replica_config_of_docker_compose_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sluice-scale-out.toml");
    let check = |secret: Option<&str>| {
        let mut cmd = sluice();
        cmd.args(["config", "check", "--config"])
            .arg(&file)
            .env("SLUICE_S3_KEY_ID", "GK0123456789abcdef01234567")
            .env("SLUICE_NPM_UPSTREAM", "http://127.0.0.1:9/npm/")
            .env("SLUICE_PYPI_UPSTREAM", "http://127.0.0.1:9/simple/")
            .env_remove("SLUICE_S3_SECRET");
        if let Some(s) = secret {
            cmd.env("SLUICE_S3_SECRET", s);
        }
        cmd.output().unwrap()
    };
    let out = check(Some("5ec7e7"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 upstream"));
    let out = check(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SLUICE_S3_SECRET"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_refuses_an_invalid_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.toml",
        "[storage]\ndata_dir = \"x\"\nmax_sise = \"1GiB\"\n",
    );
    let out = sluice()
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":3:1:"));
}

/// The README's first command: `sluice serve` with no config at all.
#[test]
fn serve_without_config_runs_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        std::net::TcpListener::bind("127.0.0.1:5080").is_ok(),
        "port 5080 is busy: this test checks the embedded default listener"
    );
    // Killed on drop: a failed assertion must not leave a sluice holding port 5080.
    let mut child = Reap(
        sluice()
            .arg("serve")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    wait_healthy("127.0.0.1:5080", child);
    let v2 = http_get("127.0.0.1:5080", "/v2/").unwrap();
    assert!(v2.starts_with("HTTP/1.1 200"), "{v2}");
    // Header names are case-insensitive (sluice sends its own in lower case).
    assert!(
        v2.to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0"),
        "{v2}"
    );
    assert!(dir.path().join("sluice-data/blobs/sha256").is_dir());
    assert!(dir.path().join("sluice-data/tmp").is_dir());
    signal(child, "-TERM");
    let st = wait_exit(child, Duration::from_secs(15));
    assert!(st.success(), "exit status after SIGTERM: {st}");
}

/// A child process killed and reaped when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigint_shuts_down_gracefully_and_flushes_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write(
        dir.path(),
        "s.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = sluice()
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_healthy(&addr, &mut child);
    signal(&child, "-INT");
    let st = wait_exit(&mut child, Duration::from_secs(10));
    assert!(st.success(), "exit status after SIGINT: {st}");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(
        log.contains("shutting down gracefully") && log.contains("index flushed"),
        "{log}"
    );
}

#[test]
fn policy_check_blocks_denied_lockfile_entries_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        r#"
[policy]
mode = "enforce"

[[policy.rule]]
id = "no-bad-release"
kind = "deny"
format = "npm"
package = "event-stream"
versions = "3.3.6"
reason = "compromised release"

[[policy.rule]]
id = "no-old-requests"
kind = "deny"
format = "pypi"
package = "requests"
versions = "<2.20"
reason = "CVE-2018-18074"

[[policy.rule]]
id = "no-latest"
kind = "deny"
format = "oci"
package = "library/*"
versions = "latest"
reason = "pin your images"
"#,
    );
    let lock = write(
        dir.path(),
        "package-lock.json",
        r#"{"lockfileVersion":3,"packages":{"":{"name":"app"},
            "node_modules/event-stream":{"version":"3.3.6"},
            "node_modules/left-pad":{"version":"1.3.0"}}}"#,
    );
    let reqs = write(
        dir.path(),
        "requirements.txt",
        "requests==2.19.1\nsix==1.16.0\n",
    );
    let images = write(dir.path(), "images.txt", "alpine\nghcr.io/o/i:1.0\n");
    let clean = write(dir.path(), "clean-requirements.txt", "requests==2.31.0\n");

    let out = sluice()
        .args(["policy", "check", "--config"])
        .arg(&cfg)
        .args([&lock, &reqs, &images])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("BLOCK event-stream@3.3.6 [no-bad-release] compromised release"),
        "{text}"
    );
    assert!(
        text.contains("BLOCK requests@2.19.1 [no-old-requests]"),
        "{text}"
    );
    assert!(
        text.contains("BLOCK library/alpine@latest [no-latest]"),
        "{text}"
    );
    assert!(
        !text.contains("left-pad") && !text.contains("six"),
        "{text}"
    );
    assert!(text.contains("2 checked, 1 blocked"), "{text}");

    let out = sluice()
        .args(["policy", "check", "--config"])
        .arg(&cfg)
        .arg(&clean)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn config_check_rejects_an_invalid_policy_rule() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad-policy.toml",
        "[[policy.rule]]\nid = \"cooldown\"\nkind = \"min_age\"\n",
    );
    let out = sluice().args(["config", "check"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cooldown"), "{err}");
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// The inputs an audit found mishandled: variables in comments, empty tokens, watermarks,
// sub-second grace, requirements files with includes and without the usual name.

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
    wait_healthy(&format!("127.0.0.1:{port}"), &mut child);
    let sent = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
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
    // Run from the project's root, as CI does: ../constraints.txt is below it.
    let check = |files: &[&Path]| {
        sluice()
            .current_dir(d)
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
    // The editable line is named on stderr by its file and line (its text is not repeated).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:")
            && err.contains("prod.txt: line 4:")
            && err.contains("editable")
            && !err.contains("local-pkg"),
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
