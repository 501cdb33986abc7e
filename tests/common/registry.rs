//! A real upstream: Debian's `docker-registry` (CNCF distribution 2.8) on a loopback port
//! with filesystem storage in a temp dir. Its access log (one line per request) is how tests
//! count what sluice asked the upstream for.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{file_tail, free_port, no_proxy_env, raw_get_status};

/// A running `docker-registry serve` child; killed on drop.
pub struct Registry {
    child: Option<Child>,
    /// Storage, config and log; removed on drop (after the child is killed).
    _dir: tempfile::TempDir,
    port: u16,
    log_path: PathBuf,
}

/// One access-log request line: `"GET /v2/... HTTP/1.1" 200 ...`.
#[derive(Debug, Clone)]
pub struct AccessLine {
    pub method: String,
    pub target: String,
    pub status: u16,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("sluice-registry-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("mkdir storage");
        let config = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"#,
            storage = storage.display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let log = fs::File::create(&log_path).expect("create registry log");
        let log2 = log.try_clone().expect("clone log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        no_proxy_env(&mut cmd);
        let child = cmd
            .spawn()
            .expect("spawn docker-registry (is it installed? scripts/test installs it)");
        let mut reg = Registry {
            child: Some(child),
            _dir: dir,
            port,
            log_path,
        };
        reg.wait_ready(Duration::from_secs(20));
        reg
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited ({st}):\n{}", self.log());
            }
            if raw_get_status(self.addr(), "/v2/") == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry not ready after {timeout:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`, as used in image references and sluice's `host`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        file_tail(&self.log_path, usize::MAX)
    }

    /// Every access-log request line so far.
    pub fn access_lines(&self) -> Vec<AccessLine> {
        self.log()
            .lines()
            .filter(|l| !l.starts_with("time="))
            .filter_map(|l| {
                let start = l.find('"')? + 1;
                let rest = &l[start..];
                let end = rest.find('"')?;
                let mut req = rest[..end].split_whitespace();
                let method = req.next()?.to_string();
                let target = req.next()?.to_string();
                let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
                Some(AccessLine {
                    method,
                    target,
                    status,
                })
            })
            .collect()
    }

    /// How many requests with `method` had a target containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.access_lines()
            .iter()
            .filter(|a| a.method == method && a.target.contains(path_contains))
            .count()
    }

    /// Blob GETs for `repo` so far (`GET /v2/<repo>/blobs/...`).
    pub fn blob_gets(&self, repo: &str) -> usize {
        self.count("GET", &format!("/v2/{repo}/blobs/"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- docker-registry access log tail ({}) ----",
                self.log_path.display()
            );
            for a in self.access_lines().iter().rev().take(40).rev() {
                eprintln!("{} {} {}", a.method, a.target, a.status);
            }
            eprintln!("---- end registry log ----");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
