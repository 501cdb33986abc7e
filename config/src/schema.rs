//! The configuration schema (SPEC §8). Every table rejects unknown keys, and every key has
//! a default, so an empty file is a valid configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::units::{ByteSize, Duration};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listener and public URL.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[storage]`: where the cache lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[auth]`: client authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[policy]`: the dependency firewall.
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// `[[upstream]]`: the registries sluice proxies.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// `[formats]`: which formats are turned on.
    #[serde(default)]
    pub formats: FormatsConfig,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `IP:PORT`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Base URL clients reach sluice at; defaults to `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Never contact any upstream: serve what is cached, fail clearly for the rest.
    #[serde(default)]
    pub offline: bool,
    /// Worker threads of the HTTP server (default: number of CPUs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Largest metadata document (manifest, tag list) held in memory.
    #[serde(default = "default_max_metadata_size")]
    pub max_metadata_size: ByteSize,
    /// Seconds pingora waits for in-flight requests on SIGTERM before exiting.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's headers (slow-loris protection);
    /// also how long an idle keep-alive connection waits for its next request.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Requests per client address (`"100/s"`; also the burst); over it, `429` at once.
    #[serde(default)]
    pub client_rate_limit: Option<RateLimit>,
    /// PEM certificate chain: with `tls_key`, sluice speaks HTTPS (TLS 1.2/1.3, rustls).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve the read-only dashboard at `/-/ui` (`false`: `404`).
    #[serde(default = "default_true")]
    pub dashboard: bool,
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of the content-addressed store, temp files and index.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Eviction keeps the stored bytes under this (absent: no limit).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// Eviction starts when the store exceeds this fraction of `max_size`.
    #[serde(default = "default_high_watermark")]
    pub high_watermark: f64,
    /// Eviction removes least recently used content down to this fraction of `max_size`.
    #[serde(default = "default_low_watermark")]
    pub low_watermark: f64,
    /// Content not served for this long is removed (absent: kept while space allows).
    #[serde(default)]
    pub idle_expiry: Option<Duration>,
    /// How often the background garbage collection (idle expiry, stale index records)
    /// runs; the size limit is checked every second regardless.
    #[serde(default = "default_gc_interval")]
    pub gc_interval: Duration,
    /// Content stored or served this recently is never evicted (it may be in use by a
    /// request that has not opened it yet). At least 1 s.
    #[serde(default = "default_eviction_grace")]
    pub eviction_grace: Duration,
    /// Memory mappings of recently served large files kept open for their next reader, at
    /// most this many bytes (`"0"`: none kept). Their pages are page cache, counted in RSS.
    #[serde(default = "default_keep_mapped")]
    pub keep_mapped: ByteSize,
    /// `[[storage.pin]]`: content never evicted.
    #[serde(default, rename = "pin")]
    pub pins: Vec<PinConfig>,
    /// `[[storage.cleanup]]`: retention policies for tags and versions.
    #[serde(default, rename = "cleanup")]
    pub cleanup: Vec<CleanupConfig>,
    /// `[storage.s3]`: an S3-compatible bucket shared by several sluice replicas (absent:
    /// none). Each replica's `data_dir` is its local hot cache.
    #[serde(default)]
    pub s3: Option<S3Config>,
}

/// `[storage.s3]`: the shared tier of the store. Immutable content (OCI blobs and
/// manifests by digest, npm tarballs, Python files) a replica is missing is looked for in
/// the bucket before the upstream is asked, and what a replica fetched from an upstream is
/// uploaded to it. Every byte read
/// from the bucket is verified against its digest as an upstream's would be.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port` of the S3 API (e.g. Garage's `:3900`).
    pub endpoint: String,
    /// The bucket, which must exist.
    pub bucket: String,
    /// The region requests are signed for (Garage's default is `"garage"`).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (use `${VAR}`).
    pub secret_access_key: String,
    /// Prefix of every object key, e.g. `"sluice/"`.
    #[serde(default)]
    pub prefix: String,
    /// `true`: `endpoint/bucket/key` (Garage, MinIO); `false`: `bucket.endpoint/key`.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// Uploads to the bucket running at once; further ones queue.
    #[serde(default = "default_s3_uploads")]
    pub upload_concurrency: usize,
}

impl std::fmt::Debug for S3Config {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("upload_concurrency", &self.upload_concurrency)
            .finish()
    }
}

/// `[[storage.cleanup]]`: a retention policy over the cached tags (OCI) or versions (npm,
/// PyPI) of each repository or package it matches, evaluated at every `gc_interval` and on
/// `POST /-/api/cleanup`. With both `keep_last` and `expire_after`, a tag is removed only
/// when both select it (it is not among the `keep_last` most recently pulled *and* it was
/// not pulled for `expire_after`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CleanupConfig {
    /// Names the policy in reports, logs and metrics.
    pub id: String,
    /// Only this format (absent: every format).
    #[serde(default)]
    pub format: Option<Format>,
    /// Only this upstream (absent: every upstream).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Glob over the repository (OCI, as `upstream/repo` or `repo`), package (npm) or
    /// project (PyPI) name, as for pins; each matching name is evaluated on its own.
    #[serde(default = "default_any")]
    pub name: String,
    /// Glob over the tags / versions the policy considers (absent: all).
    #[serde(default)]
    pub tag: Option<String>,
    /// Keep the N most recently pulled tags (versions) of each repository (package).
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Remove tags (versions) not pulled for this long.
    #[serde(default)]
    pub expire_after: Option<Duration>,
    /// `dry-run` (default: report what would be removed) or `enforce` (remove it).
    #[serde(default)]
    pub mode: CleanupMode,
}

/// Whether a cleanup policy removes what it selects.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CleanupMode {
    /// Report only.
    #[default]
    DryRun,
    /// Remove.
    Enforce,
}

impl CleanupMode {
    /// The name used in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupMode::DryRun => "dry-run",
            CleanupMode::Enforce => "enforce",
        }
    }
}

/// `[[storage.pin]]`: protects what a name (and optionally a tag or version) refers to
/// from eviction and garbage collection.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// The format of the name.
    pub format: Format,
    /// Glob over the repository (OCI, as `upstream/repo` or `repo`), package (npm) or
    /// project (PyPI) name.
    pub name: String,
    /// Glob over the tag (OCI) or version (npm, PyPI); absent = all.
    #[serde(default)]
    pub tag: Option<String>,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Role granted to requests without a token: `read` or `none`.
    #[serde(default = "default_anonymous")]
    pub anonymous: Role,
    /// `[[auth.token]]` entries.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
}

/// A client role.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// No access.
    None,
    /// Pull artifacts.
    Read,
    /// Pull artifacts and use the admin API.
    Admin,
}

/// `[[auth.token]]`: a bearer token clients send as `Authorization: Bearer <token>`
/// (or as the password of basic auth).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A label for logs.
    pub name: String,
    /// The secret.
    pub token: String,
    /// What the token may do.
    pub role: Role,
}

/// The protocol an upstream speaks. Only formats this build implements are accepted.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCI Distribution / Docker registry API.
    Oci,
    /// The npm registry API (packuments, tarballs), mounted at `/<name>/`.
    Npm,
    /// The Python package index (simple API, JSON API, files), mounted at `/<name>/`.
    Pypi,
    /// A Cargo sparse registry (index files, `.crate` downloads), mounted at `/<name>/`.
    /// An experiment: off unless `[formats] cargo = true`.
    Cargo,
}

impl Format {
    /// Every format this build implements.
    pub const ALL: [Format; 4] = [Format::Oci, Format::Npm, Format::Pypi, Format::Cargo];

    /// The lowercase name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Oci => "oci",
            Format::Npm => "npm",
            Format::Pypi => "pypi",
            Format::Cargo => "cargo",
        }
    }

    /// The ecosystem whose policy rules apply to the format's artifacts.
    pub fn ecosystem(self) -> crate::policy::Ecosystem {
        use crate::policy::Ecosystem;
        match self {
            Format::Oci => Ecosystem::Oci,
            Format::Npm => Ecosystem::Npm,
            Format::Pypi => Ecosystem::Pypi,
            Format::Cargo => Ecosystem::Cargo,
        }
    }

    /// How far along this build's support of the format is.
    pub fn maturity(self) -> Maturity {
        match self {
            Format::Oci | Format::Npm | Format::Pypi => Maturity::Ga,
            Format::Cargo => Maturity::Experiment,
        }
    }
}

/// How far along a format's support is: `experiment` formats are off unless `[formats]`
/// turns them on; `beta` and `ga` formats are on unless it turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maturity {
    /// New, incomplete or little used: off by default.
    Experiment,
    /// Complete, still gathering field use: on by default.
    Beta,
    /// Generally available.
    Ga,
}

impl Maturity {
    /// The lowercase name used in metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Maturity::Experiment => "experiment",
            Maturity::Beta => "beta",
            Maturity::Ga => "ga",
        }
    }
}

/// `[formats]`: one flag per format (`cargo = true`). A format left out is on when its
/// maturity is `beta` or `ga` and off when it is an `experiment`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatsConfig {
    /// OCI / Docker (`ga`).
    #[serde(default)]
    pub oci: Option<bool>,
    /// npm (`ga`).
    #[serde(default)]
    pub npm: Option<bool>,
    /// PyPI (`ga`).
    #[serde(default)]
    pub pypi: Option<bool>,
    /// Cargo sparse registries (`experiment`).
    #[serde(default)]
    pub cargo: Option<bool>,
}

impl FormatsConfig {
    /// Whether upstreams of `format` may be configured and served.
    pub fn enabled(&self, format: Format) -> bool {
        let flag = match format {
            Format::Oci => self.oci,
            Format::Npm => self.npm,
            Format::Pypi => self.pypi,
            Format::Cargo => self.cargo,
        };
        flag.unwrap_or(format.maturity() != Maturity::Experiment)
    }
}

/// `[[upstream]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name: path prefix (`/v2/<name>/...`) and label in metrics.
    pub name: String,
    /// Protocol.
    pub format: Format,
    /// Base URL, e.g. `https://registry-1.docker.io`; for npm the registry root, for PyPI
    /// the simple index URL. Empty for npm/PyPI: asked from the local `npm` / `pip`.
    #[serde(default)]
    pub url: String,
    /// Registry host name matched against containerd's `?ns=` (e.g. `docker.io`).
    #[serde(default)]
    pub host: Option<String>,
    /// The OCI upstream for names without an upstream prefix.
    #[serde(default)]
    pub default: bool,
    /// How long a cached tag → digest mapping is trusted before a `HEAD` revalidation.
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl: Duration,
    /// How long cached metadata (packuments, simple pages) is served without revalidation.
    #[serde(default = "default_metadata_ttl")]
    pub metadata_ttl: Duration,
    /// How long a 404 from the upstream is remembered.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
    /// Serve only from cache for this upstream.
    #[serde(default)]
    pub offline: bool,
    /// A public registry (default): `namespace` policy rules keep internal names from
    /// being fetched from it. Set `false` for an organisation's own registry.
    #[serde(default = "default_true")]
    pub public: bool,
    /// Username for the registry's token service.
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token for the registry's token service.
    #[serde(default)]
    pub password: Option<String>,
    /// TCP + TLS connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Longest wait for response headers, and for each chunk of a body.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Extra attempts for an idempotent request (GET/HEAD) after a connect error, a timeout,
    /// or a 408/429/5xx answer; other 4xx are never retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry delay; doubled per attempt, with full jitter.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Duration,
    /// Longest `Retry-After` (on 429/503) sluice waits out before retrying; an upstream
    /// asking for longer is not retried (stale copies are served instead).
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: Duration,
    /// Consecutive failed requests (connect error, timeout, 5xx, 429, after retries) that
    /// open the circuit breaker: requests then fail at once, so cached copies are served.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one probe request is let through.
    #[serde(default = "default_circuit_cooldown")]
    pub circuit_cooldown: Duration,
    /// Oldest cached metadata (tags, packuments, simple pages) served when the upstream
    /// fails; unset: however old.
    #[serde(default)]
    pub max_stale: Option<Duration>,
    /// Most requests sent to this upstream per second, minute or hour (`"50/s"`, `"600/m"`);
    /// requests over it wait, up to `queue_timeout`. Unset: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Most requests to this upstream in flight at once, a response body being streamed
    /// included; further requests wait, up to `queue_timeout`. 0 (default): no cap.
    #[serde(default)]
    pub max_concurrent: u32,
    /// Longest a request waits for `rate_limit` or `max_concurrent` before it fails as an
    /// upstream error (so stale-if-error can still answer from the cache).
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// Hosts a redirect from this upstream may lead to (blob CDNs), besides its own: exact
    /// names or `*.domain` (any subdomain). Empty (default): any host, over https.
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
}

/// A request rate written as `<count>/<unit>`, the unit one of `s`, `m`, `h`: `"50/s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per `per` (at least 1); also the burst size.
    pub count: u32,
    /// The period `count` applies to.
    pub per: std::time::Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid rate {s:?}: expected <count>/<unit> such as \"50/s\", \"600/m\", \"1000/h\"")
        };
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(RateLimit { count, per })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl UpstreamConfig {
    /// The `?ns=` host of this upstream: `host`, or the URL's host (with port) if unset.
    pub fn ns_host(&self) -> String {
        if let Some(h) = &self.host {
            return h.clone();
        }
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
            })
            .unwrap_or_default()
    }

    /// True for Docker Hub, whose single-segment names live under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        let h = self.ns_host();
        h == "docker.io" || h == "registry-1.docker.io" || h == "index.docker.io"
    }
}

impl Config {
    /// The embedded default: listen on 127.0.0.1:5080, store in `./sluice-data`, proxy
    /// Docker Hub (default OCI upstream), the npm registry (`/npmjs/`) and PyPI (`/pypi/`).
    /// The npm and PyPI URLs come from `SLUICE_NPM_UPSTREAM` / `SLUICE_PYPI_UPSTREAM`, else
    /// from the local clients (see [`crate::discover`]).
    pub fn embedded_default() -> Config {
        crate::load_str(EMBEDDED_DEFAULT, "<embedded default>", |k| {
            std::env::var(k).ok()
        })
        .expect("the embedded default config is valid")
    }

    /// The socket address to listen on (validated at load time).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .expect("listen address validated at load")
    }

    /// `https` when sluice serves TLS (`tls_cert`), else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Base URL clients reach sluice at: `server.public_url`, else `<scheme>://<listen>`
    /// with a wildcard address (`0.0.0.0`, `[::]`) replaced by loopback, which is at least
    /// reachable from this host. (Serving, sluice prefers the request's `Host` when
    /// `public_url` is unset: see `App::base_url`.)
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => match self.server.listen.parse::<SocketAddr>() {
                Ok(mut addr) => {
                    if addr.ip().is_unspecified() {
                        addr.set_ip(match addr.ip() {
                            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                        });
                    }
                    format!("{}://{addr}", self.scheme())
                }
                Err(_) => format!("{}://{}", self.scheme(), self.server.listen),
            },
        }
    }
}

/// The configuration `sluice serve` runs without a file.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = "127.0.0.1:5080"

[storage]
data_dir = "./sluice-data"

[[upstream]]
name = "dockerhub"
format = "oci"
url = "https://registry-1.docker.io"
host = "docker.io"
default = true
tag_ttl = "5m"

[[upstream]]
name = "npmjs"
format = "npm"
url = "${SLUICE_NPM_UPSTREAM:-}"
metadata_ttl = "5m"

[[upstream]]
name = "pypi"
format = "pypi"
url = "${SLUICE_PYPI_UPSTREAM:-}"
metadata_ttl = "10m"
"#;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            public_url: None,
            offline: false,
            threads: None,
            max_metadata_size: default_max_metadata_size(),
            shutdown_grace: default_grace(),
            header_timeout: default_header_timeout(),
            client_rate_limit: None,
            tls_cert: None,
            tls_key: None,
            dashboard: true,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
            max_size: None,
            high_watermark: default_high_watermark(),
            low_watermark: default_low_watermark(),
            idle_expiry: None,
            gc_interval: default_gc_interval(),
            eviction_grace: default_eviction_grace(),
            keep_mapped: default_keep_mapped(),
            pins: Vec::new(),
            cleanup: Vec::new(),
            s3: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: default_anonymous(),
            tokens: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:5080".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}
fn default_high_watermark() -> f64 {
    0.95
}
fn default_low_watermark() -> f64 {
    0.85
}
fn default_gc_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_eviction_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_mapped() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_any() -> String {
    "*".into()
}
fn default_anonymous() -> Role {
    Role::Read
}
fn default_s3_region() -> String {
    "us-east-1".into()
}
fn default_s3_uploads() -> usize {
    4
}
fn default_max_metadata_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
fn default_metadata_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff() -> Duration {
    Duration(std::time::Duration::from_millis(100))
}
fn default_retry_after_max() -> Duration {
    Duration::from_secs(10)
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod rate_tests {
    use super::RateLimit;

    #[test]
    fn rate_limits_parse_per_second_minute_hour_and_reject_garbage() {
        let r: RateLimit = "50/s".parse().unwrap();
        assert_eq!((r.count, r.per.as_secs()), (50, 1));
        let r: RateLimit = " 600 / m ".parse().unwrap();
        assert_eq!((r.count, r.per.as_secs()), (600, 60));
        assert_eq!("7/h".parse::<RateLimit>().unwrap().per.as_secs(), 3600);
        for bad in [
            "", "50", "50/", "/s", "0/s", "-1/s", "50/d", "fast", "1.5/s",
        ] {
            let e = bad.parse::<RateLimit>().unwrap_err();
            assert!(e.contains("rate"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_bad_rate_limit_is_reported_at_its_line() {
        let text = "[[upstream]]\nname = \"x\"\nformat = \"oci\"\nurl = \"http://127.0.0.1:1\"\nrate_limit = \"50 per second\"\n";
        let msg = crate::load_str(text, "t.toml", |_| None)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("t.toml:5:"), "{msg}");
        assert!(msg.contains("\"50/s\""), "{msg}");
    }
}

#[cfg(test)]
mod public_url_tests {
    fn cfg(server: &str) -> super::Config {
        crate::load_str(&format!("[server]\n{server}\n"), "t.toml", |_| None).unwrap()
    }

    #[test]
    fn public_url_wins_else_the_listen_address_with_wildcards_as_loopback() {
        let c = cfg("listen = \"0.0.0.0:5080\"\npublic_url = \"https://sluice.example/\"");
        assert_eq!(c.public_url(), "https://sluice.example");
        assert_eq!(
            cfg("listen = \"0.0.0.0:5080\"").public_url(),
            "http://127.0.0.1:5080"
        );
        assert_eq!(
            cfg("listen = \"[::]:5080\"").public_url(),
            "http://[::1]:5080"
        );
        assert_eq!(
            cfg("listen = \"10.1.2.3:81\"").public_url(),
            "http://10.1.2.3:81"
        );
    }
}
