//! sluice serving HTTPS (`server.tls_cert` / `tls_key`, rustls): a client that trusts the
//! certificate pulls through it, and so does the CLI (which trusts the configured
//! certificate); plain HTTP on that port gets no answer; a key that does not match its certificate, or a missing half of the pair, stops
//! sluice with a message (never a panic).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sim::Sim;
use common::{free_port, no_proxy_env, random_bytes, within};

/// A sluice process this test started, killed when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("SLUICE_CONFIG");
    no_proxy_env(&mut c);
    c
}

/// A config for `port` serving TLS with `cert` and `key`, the simulator as its upstream.
fn config(dir: &Path, port: u16, cert: &Path, key: &Path, sim: &Sim) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n\n[storage]\ndata_dir = \"{}\"\n\n{}",
            cert.display(),
            key.display(),
            dir.join("data").display(),
            sim.upstream_toml("")
        ),
    )
    .expect("write config");
    path
}

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (c.cert.pem(), c.key_pair.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_serves_https_with_the_configured_certificate() {
    let sim = Sim::start().await;
    let layer = random_bytes(100_000, 41);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("cert");
    std::fs::write(&key_path, &key).expect("key");
    let port = free_port();
    let cfg = config(dir.path(), port, &cert_path, &key_path, &sim);
    let _serving = Serving(
        sluice()
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).expect("pem"))
        .no_proxy()
        .build()
        .expect("client");
    let base = format!("https://localhost:{port}");
    within(60, "https", async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get(format!("{base}/-/healthz")).send().await {
                Ok(r) if r.status() == 200 => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("sluice never answered over https: {other:?}"),
            }
        }
        let r = client
            .get(format!("{base}/v2/app/blobs/{}", img.layer_digests[0]))
            .send()
            .await
            .expect("GET blob over https");
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.expect("body") == layer,
            "blob bytes over https"
        );
        // The CLI reaches it at https://127.0.0.1:<port>, trusting the configured
        // certificate (self-signed here).
        let cfg2 = cfg.clone();
        let out = tokio::task::spawn_blocking(move || {
            sluice()
                .args(["stats", "--config"])
                .arg(&cfg2)
                .output()
                .expect("sluice stats")
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "sluice stats over https: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("https://127.0.0.1"));
        // Plain HTTP on the TLS port: no HTTP answer.
        let plain = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let r = plain
            .get(format!("http://127.0.0.1:{port}/-/healthz"))
            .send()
            .await;
        assert!(
            r.as_ref().map_or(true, |r| r.status() != 200),
            "plain HTTP answered on the TLS port: {r:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_pair_stops_sluice_with_a_message() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, _) = self_signed();
    let (_, other_key) = self_signed();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("cert");
    std::fs::write(&key_path, &other_key).expect("key");
    let cfg = config(dir.path(), free_port(), &cert_path, &key_path, &sim);
    // Bounded: given the pair as is, pingora panics in a listener thread and the process
    // stays up, serving nothing.
    let log = dir.path().join("serve.log");
    let mut child = Serving(
        sluice()
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "serve with a mismatched key did not exit: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "serve started with a mismatched key");
    assert!(err.contains("tls_cert") && err.contains("key.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Half a pair is refused by `config check`, at its line.
    let half = dir.path().join("half.toml");
    std::fs::write(
        &half,
        format!("[server]\ntls_cert = \"{}\"\n", cert_path.display()),
    )
    .expect("write");
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&half)
        .output()
        .expect("config check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("half.toml:2:") && err.contains("tls_key"),
        "{err}"
    );
}
