//! sluice serving HTTPS (`server.tls_cert` / `tls_key`, rustls): a client that trusts the
//! certificate pulls through it, and so does the CLI (which trusts the configured
//! certificate); plain HTTP on that port gets no answer; a key that does not match its certificate, or a missing half of the pair, stops
//! sluice with a message (never a panic).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::sample;
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

/// `sluice serve --config cfg`, its stderr to `stderr`, killed when dropped.
fn serve(cfg: &Path, stderr: Stdio) -> Serving {
    Serving(
        sluice()
            .args(["serve", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn"),
    )
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
    let _serving = serve(&cfg, Stdio::null());
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
    let (cert, cert_key) = self_signed();
    let (_, other_key) = self_signed();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("cert");
    std::fs::write(&key_path, &other_key).expect("key");
    let cfg = config(dir.path(), free_port(), &cert_path, &key_path, &sim);
    // Bounded: given the pair as is, pingora panics in a listener thread and the process
    // stays up, serving nothing.
    let log = dir.path().join("serve.log");
    let mut child = serve(&cfg, std::fs::File::create(&log).expect("log").into());
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

    // `config check` reads the pair too (an operator checks a renewal before SIGHUP).
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .expect("config check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "config check passed a mismatched pair"
    );
    assert!(err.contains("tls_key") && err.contains("key.pem"), "{err}");
    std::fs::write(&key_path, &cert_key).expect("key");
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .expect("config check");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("TLS certificate") && said.contains("valid until"),
        "{said}"
    );

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

/// A self-signed certificate for localhost, valid until midnight UTC of `until` (y, m, d).
fn self_signed_until(until: (i32, u8, u8)) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A client that trusts only `pem` and keeps no connection between requests.
fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// Whether a new connection to `url` is accepted by a client trusting only `pem`.
async fn presents(pem: &str, url: &str) -> bool {
    matches!(trusting(pem).get(url).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let write_pair = |sub: &str, (cert, key): &(String, String)| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("cert.pem"), cert).expect("cert");
        std::fs::write(d.join("key.pem"), key).expect("key");
        (d.join("cert.pem"), d.join("key.pem"))
    };
    let a = self_signed_until((2031, 1, 2));
    let b = self_signed_until((2032, 2, 3));
    let c = self_signed_until((2033, 3, 4));
    let (a_cert, a_key) = write_pair("a", &a);
    let port = free_port();
    let cfg = config(dir.path(), port, &a_cert, &a_key, &sim);
    let log = dir.path().join("serve.log");
    let serving = serve(&cfg, std::fs::File::create(&log).expect("log").into());
    let pid = serving.0.id().to_string();
    let base = format!("https://localhost:{port}");
    let health = format!("{base}/-/healthz");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Polls until `pem` is presented to new connections, for at most `secs`.
    let until_presented = |pem: String, secs: u64, what: &'static str| {
        let health = health.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !presents(&pem, &health).await {
                assert!(Instant::now() < deadline, "{what}: {}", log_text());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // GET `path`'s text over a new connection trusting only `pem`.
    let fetch = |pem: String, path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            trusting(&pem)
                .get(url)
                .send()
                .await
                .expect(path)
                .text()
                .await
                .expect("text")
        }
    };
    let metrics = |pem: String| fetch(pem, "/-/metrics");
    within(90, "certificate renewal", async {
        until_presented(a.0.clone(), 20, "sluice never served the first certificate").await;
        let m = metrics(a.0.clone()).await;
        assert_eq!(
            sample(&m, "sluice_tls_certificate_expiry_timestamp_seconds"),
            1_925_078_400.0,
            "the expiry gauge is the certificate's notAfter"
        );
        // Present from the start, so that a first failure is an increase.
        assert!(
            m.contains("sluice_tls_reloads_total{result=\"error\"} 0"),
            "{m}"
        );
        // A connection opened before the renewal, kept open across it.
        let kept = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(a.0.as_bytes()).expect("pem"))
            .no_proxy()
            .build()
            .expect("client");
        assert_eq!(kept.get(&health).send().await.expect("kept").status(), 200);

        // 1. The renewal lands in other files and the config is changed to name them;
        // SIGHUP. Only the signal can pick these up: the watch is on the old files.
        let (b_cert, b_key) = write_pair("b", &b);
        config(dir.path(), port, &b_cert, &b_key, &sim);
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        until_presented(
            b.0.clone(),
            10,
            "SIGHUP did not serve the renewed certificate",
        )
        .await;
        assert!(
            !presents(&a.0, &health).await,
            "new connections still get the old certificate"
        );
        assert_eq!(
            kept.get(&health)
                .send()
                .await
                .expect("kept connection")
                .status(),
            200,
            "a connection opened before the renewal stops working"
        );
        let m = metrics(b.0.clone()).await;
        assert_eq!(
            sample(&m, "sluice_tls_certificate_expiry_timestamp_seconds"),
            1_959_379_200.0
        );
        assert!(sample(&m, "sluice_tls_reloads_total{result=\"ok\"}") >= 1.0);

        // 2. A renewal caught half-written (the new certificate, the old key): refused,
        // the current pair stays in service, the dashboard says so. No signal: the files
        // are watched.
        std::fs::write(&b_cert, &c.0).expect("write");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = metrics(b.0.clone()).await;
            if sample(&m, "sluice_tls_reloads_total{result=\"error\"}") >= 1.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the mismatched pair was never tried: {}",
                log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            presents(&b.0, &health).await,
            "a mismatched pair replaced a good one"
        );
        assert!(
            log_text().contains("still serving the previous certificate"),
            "{}",
            log_text()
        );
        let page = fetch(b.0.clone(), "/-/ui").await;
        assert!(page.contains("the last reload failed"), "{page}");
        assert!(
            !page.contains("key.pem"),
            "the failure's text (file paths) is for admins only: {page}"
        );

        // 3. The key follows: picked up from the files alone.
        std::fs::write(&b_key, &c.1).expect("write");
        until_presented(c.0.clone(), 15, "the completed renewal was not picked up").await;
        let m = metrics(c.0.clone()).await;
        assert_eq!(
            sample(&m, "sluice_tls_certificate_expiry_timestamp_seconds"),
            1_993_507_200.0
        );
        let page = fetch(c.0.clone(), "/-/ui").await;
        assert!(page.contains("valid until 2033-03-04"), "{page}");
        assert!(!page.contains("the last reload failed"), "{page}");
    })
    .await;
    drop(serving);
}
