//! A real S3-compatible store for the shared tier's tests: Garage (the object store SPEC §6
//! names) as a one-node cluster on loopback ports, with a bucket and a key, in a temp dir.
//! `scripts/test` installs it (`cargo install garage`) into `target/test-tools/garage`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{file_tail, free_port, no_proxy_env, run_ok};

/// The bucket every test uses.
pub const BUCKET: &str = "sluice-shared";
/// The key's id and secret (Garage's formats: `GK` + 24 hex, 64 hex).
pub const KEY_ID: &str = "GK5a1ce0000000000000000001";
pub const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
/// The region Garage signs for.
pub const REGION: &str = "garage";

/// A running `garage server`; killed on drop.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    s3_port: u16,
}

/// The garage binary: `SLUICE_TEST_GARAGE`, `garage` on PATH, or the one `scripts/test`
/// installs.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_GARAGE") {
        return p.into();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/garage/bin/garage");
    if local.exists() {
        return local;
    }
    "garage".into()
}

impl Garage {
    /// Starts a one-node Garage with [`BUCKET`] readable and writable by [`KEY_ID`].
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("sluice-garage-")
            .tempdir()
            .expect("tempdir");
        let (s3_port, rpc_port) = (free_port(), free_port());
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let config = format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n",
            d = dir.path().display()
        );
        let config_path = dir.path().join("garage.toml");
        fs::write(&config_path, config).expect("write garage.toml");
        // Garage refuses a config file holding a secret that others can read.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let log = fs::File::create(dir.path().join("garage.log")).expect("log");
        let mut cmd = Command::new(binary());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        no_proxy_env(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start garage ({e}): scripts/test installs it into target/test-tools/garage"
            )
        });
        let mut g = Garage {
            child: Some(child),
            dir,
            s3_port,
        };
        g.setup();
        g
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(binary());
        cmd.arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args);
        no_proxy_env(&mut cmd);
        let out = run_ok(&mut cmd, Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the garage CLI with `args` until it succeeds (within 30 s); its stdout.
    fn cli_when_up(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = Command::new(binary());
            cmd.arg("-c")
                .arg(self.dir.path().join("garage.toml"))
                .args(args);
            no_proxy_env(&mut cmd);
            let out = cmd.output().expect("garage CLI");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} kept failing: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the node, gives it a layout, creates the bucket and the key.
    fn setup(&mut self) {
        let node = self.cli_when_up(&["node", "id", "-q"]);
        let id = node.split('@').next().expect("node id");
        // `node id` reads the key file; the server's RPC port may not be open yet.
        self.cli_when_up(&["status"]);
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", id]);
        self.cli(&["layout", "apply", "--version", "1"]);
        self.cli(&["bucket", "create", BUCKET]);
        self.cli(&["key", "import", "--yes", "-n", "sluice", KEY_ID, SECRET]);
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--key", "sluice", BUCKET,
        ]);
        // The S3 API answers once the layout is in effect.
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::raw_get_status(
            format!("127.0.0.1:{}", self.s3_port).parse().expect("addr"),
            "/",
        )
        .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "garage S3 API not up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:<port>` of the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The `[storage.s3]` table for sluice.
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\n\
             access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nprefix = \"{prefix}\"\n",
            self.endpoint()
        )
    }

    /// The last part of garage's log.
    pub fn log(&self) -> String {
        file_tail(&self.dir.path().join("garage.log"), 8000)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A signed request to the bucket (what the tests do behind sluice's back), with sluice's
/// own signer.
pub async fn request(
    garage: &Garage,
    method: reqwest::Method,
    key: &str,
    body: Option<Vec<u8>>,
) -> reqwest::Response {
    use sluice_proxy::store::sigv4::{Signer, UNSIGNED_PAYLOAD};
    let url = url::Url::parse(&format!("{}/{BUCKET}/{key}", garage.endpoint())).expect("url");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed =
        Signer::new(KEY_ID, SECRET, REGION).sign(method.as_str(), &url, &[], UNSIGNED_PAYLOAD, now);
    let mut req = super::http_client()
        .request(method, url)
        .header("x-amz-date", signed.amz_date)
        .header("x-amz-content-sha256", signed.content_sha256)
        .header("authorization", signed.authorization);
    if let Some(b) = body {
        req = req.header("content-length", b.len()).body(b);
    }
    req.send().await.expect("request to garage")
}
