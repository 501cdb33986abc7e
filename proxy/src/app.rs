//! The shared state of a running sluice: configuration, store, fills, upstream clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use sluice_config::{Config, Format, Role};

use crate::docs::Docs;
use crate::error::ProxyError;
use crate::fill::Fills;
use crate::flight::Flights;
use crate::formats::oci::Manifest;
use crate::names::RepoName;
use crate::policy::Policy;
use crate::store::Store;
use crate::upstream::Upstream;

/// Everything a request handler needs.
pub struct App {
    /// The configuration it was started with.
    pub config: Config,
    /// The content-addressed store.
    pub store: Arc<Store>,
    /// Blob fills in flight.
    pub fills: Fills,
    /// The shared tier of the store (`[storage.s3]`), if configured.
    pub shared: Option<Arc<crate::store::shared::Shared>>,
    /// Manifest fetches in flight.
    pub manifest_flights: Flights<Manifest>,
    /// Manifest reads from the shared store in flight.
    pub shared_manifests: Flights<Option<Manifest>>,
    /// OCI upstreams, in config order.
    pub oci: Vec<Arc<Upstream>>,
    /// Index into `oci` of the default upstream.
    pub default_oci: Option<usize>,
    /// npm and PyPI upstreams, by name (their mount point `/<name>/`).
    pub mounted: std::collections::HashMap<String, Arc<Upstream>>,
    /// Mutable metadata documents (packuments, simple pages).
    pub docs: Arc<Docs>,
    /// Remembered upstream 404s: key → expiry.
    pub negative: moka::sync::Cache<String, Instant>,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// The dependency firewall.
    pub policy: Arc<Policy>,
    /// Storage limits eviction enforces.
    pub limits: crate::store::evict::Limits,
    /// Request counters for `/-/api/stats`.
    pub stats: crate::stats::Stats,
    /// OCI tags served from memory (see [`crate::formats::oci::HotTags`]).
    pub oci_hot: crate::formats::oci::HotTags,
    /// Stale OCI tags being revalidated in the background.
    pub tag_revalidations: crate::revalidations::Revalidations,
    /// Upstream confirmations that a repository holds a cached digest, in flight.
    pub oci_confirms: Flights<()>,
    /// Repository links the upstream could not be asked about lately (served meanwhile).
    pub oci_unconfirmed: moka::sync::Cache<String, ()>,
    /// `[auth]` as last loaded: swapped on SIGHUP with the policy, so a token is revoked
    /// or added without a restart.
    pub auth: arc_swap::ArcSwap<sluice_config::AuthConfig>,
    /// The certificate served over TLS (`server.tls_cert`), reloaded on SIGHUP and when its
    /// files change.
    pub tls: Option<Arc<crate::tls::ServingCert>>,
    /// Hosts whose rendered documents are cached, with when each was last used
    /// ([`App::link_base`]), at most [`MAX_LINK_HOSTS`].
    link_hosts: parking_lot::Mutex<std::collections::HashMap<String, Instant>>,
    /// This `App` among those of the process (tests run several), for [`LastLinkBase`].
    id: u64,
}

/// The base of the links in an answer ([`App::link_base`]).
pub struct LinkBase {
    /// `scheme://authority`.
    pub url: String,
    /// Whether documents rendered on it may be kept in the render cache.
    pub cached: bool,
}

/// Request `Host`s whose rendered documents are cached at once (`public_url` unset).
pub const MAX_LINK_HOSTS: usize = 64;

/// Set by a TLS-terminating proxy in front of sluice.
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// How long a thread answers requests with the `Host` of its last admitted link base from
/// that base alone (no validation, no lock on the shared host list); the host's last use
/// there is then at most this much older than it really is.
const LINK_BASE_REUSE: Duration = Duration::from_secs(1);

/// The link base a thread last computed for an admitted host (see [`App::link_base`]).
struct LastLinkBase {
    /// Which `App` (its `id`).
    app: u64,
    /// The request's `Host` and `X-Forwarded-Proto` values, as received.
    host: Vec<u8>,
    proto: Option<Vec<u8>>,
    /// Whether that `App` serves TLS itself.
    tls: bool,
    url: String,
    at: Instant,
}

thread_local! {
    static LAST_LINK_BASE: std::cell::RefCell<Option<LastLinkBase>> =
        const { std::cell::RefCell::new(None) };
}

/// How long a cached `Host` keeps its place without being used.
pub const LINK_HOST_IDLE: Duration = Duration::from_secs(600);

impl App {
    /// Opens the store, builds the upstream clients and the policy engine. `config_path`
    /// is what a policy reload re-reads.
    pub fn new(
        config: Config,
        config_path: Option<std::path::PathBuf>,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<App> {
        // First: a bad pair stops sluice before the policy and the store are loaded.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::tls::ServingCert::load(cert, key)?)),
            _ => None,
        };
        let engine = sluice_policy::Engine::new(&config.policy)
            .map_err(|e| anyhow::anyhow!("[policy]: {e}"))?;
        let limits = crate::store::evict::Limits::from_config(&config.storage)?;
        let store = Arc::new(Store::open(&config.storage.data_dir)?);
        store.set_high_watermark(limits.high_bytes());
        store.set_keep_mapped(config.storage.keep_mapped.0);
        let stats = crate::stats::Stats::load(store.index().as_ref()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "persisted stats unreadable; starting from zero");
            crate::stats::Stats::default()
        });
        let refusals =
            crate::refusals::Refusals::load(store.index().as_ref()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "persisted policy refusals unreadable; starting empty");
                crate::refusals::Refusals::default()
            });
        let shared = match &config.storage.s3 {
            Some(s3) => Some(Arc::new(crate::store::shared::Shared::new(
                s3,
                store.clone(),
            )?)),
            None => None,
        };
        // Which formats this server speaks, with their maturity: whether an experiment is on.
        for f in Format::ALL {
            metrics::gauge!("sluice_format_enabled", "format" => f.as_str(), "maturity" => f.maturity().as_str())
                .set(if config.formats.enabled(f) { 1.0 } else { 0.0 });
        }
        let mut oci = Vec::new();
        let mut default_oci = None;
        let mut mounted = std::collections::HashMap::new();
        for up in &config.upstreams {
            match up.format {
                Format::Oci => {
                    if up.default {
                        default_oci = Some(oci.len());
                    }
                    oci.push(Arc::new(Upstream::new(up.clone(), config.server.offline)?));
                }
                Format::Npm | Format::Pypi | Format::Cargo if up.url.is_empty() => {
                    tracing::warn!(upstream = %up.name, "upstream has no url; /{}/ is not served", up.name);
                }
                Format::Npm | Format::Pypi | Format::Cargo => {
                    let u = Upstream::new(up.clone(), config.server.offline)?;
                    mounted.insert(up.name.clone(), Arc::new(u));
                }
            }
        }
        Ok(App {
            docs: Arc::new(Docs::new(store.clone())),
            mounted,
            fills: Fills::with_shared(store.clone(), shared.clone()),
            shared,
            store,
            manifest_flights: Flights::default(),
            shared_manifests: Flights::default(),
            oci,
            default_oci,
            negative: moka::sync::Cache::builder().max_capacity(100_000).build(),
            metrics,
            policy: Arc::new(Policy::new(engine, &config.policy, config_path, refusals)),
            limits,
            stats,
            oci_hot: Default::default(),
            tag_revalidations: Default::default(),
            oci_confirms: Flights::default(),
            oci_unconfirmed: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(crate::formats::oci::links::UNCONFIRMED_FOR)
                .build(),
            auth: arc_swap::ArcSwap::from_pointee(config.auth.clone()),
            tls,
            link_hosts: Default::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            config,
        })
    }

    /// Picks the OCI upstream for a `/v2/<name>` path: containerd's `?ns=` host when given
    /// (containerd has already named the registry, so the whole path is a repository there,
    /// even one whose first segment is another upstream's name), else a configured upstream
    /// name as first segment, else the default. A prefix naming the `ns` upstream itself is
    /// stripped (a mirror configured with `override_path` under `/v2/<upstream>`). Returns
    /// the upstream with the repository name as it knows it (`library/` added for Docker
    /// Hub).
    pub fn resolve_oci(
        &self,
        name: &str,
        ns: Option<&str>,
    ) -> Result<(Arc<Upstream>, RepoName), ProxyError> {
        let prefixed = name.split_once('/').and_then(|(first, tail)| {
            let up = self.oci.iter().find(|u| u.name() == first)?;
            Some((up.clone(), tail))
        });
        let (up, rest) = match ns.filter(|n| !n.is_empty()) {
            Some(ns) => {
                let hub = matches!(ns, "docker.io" | "registry-1.docker.io" | "index.docker.io");
                let up = self
                    .oci
                    .iter()
                    .find(|u| u.ns_host() == ns || (hub && u.is_docker_hub()))
                    .cloned()
                    .ok_or_else(|| ProxyError::NotFound {
                        code: "NAME_UNKNOWN",
                        message: format!("no upstream is configured for registry {ns:?}"),
                    })?;
                match prefixed {
                    Some((p, tail)) if Arc::ptr_eq(&p, &up) => (up, tail),
                    _ => (up, name),
                }
            }
            None => match prefixed {
                Some(p) => p,
                None => {
                    let up = self
                        .default_oci
                        .and_then(|i| self.oci.get(i).cloned())
                        .ok_or_else(|| ProxyError::NotFound {
                            code: "NAME_UNKNOWN",
                            message: "no default OCI upstream is configured".into(),
                        })?;
                    (up, name)
                }
            },
        };
        let repo = RepoName::parse(rest).map_err(|m| ProxyError::BadRequest {
            code: "NAME_INVALID",
            message: m,
        })?;
        let repo = if up.is_docker_hub() {
            repo.with_library_prefix()
        } else {
            repo
        };
        Ok((up, repo))
    }

    /// Freshness rules for metadata of upstream `up`.
    pub fn freshness(&self, up: &Upstream) -> crate::docs::Freshness {
        crate::docs::Freshness {
            ttl: up.cfg.metadata_ttl.get(),
            negative_ttl: up.cfg.negative_ttl.get(),
            offline: up.is_offline(),
            max_stale: up.cfg.max_stale.map(|d| d.get()),
        }
    }

    /// Base of the URLs sluice writes into documents for upstream `name`, answering a
    /// request with `headers`: `<base>/<name>` (see [`App::link_base`]).
    pub fn mount_url(&self, name: &str, headers: &http::HeaderMap) -> String {
        format!("{}/{}", self.link_base(headers).url, name)
    }

    /// sluice's base URL for links in an answer to a request with `headers`:
    /// `server.public_url` when set, else as the client reached sluice (as Verdaccio does):
    /// `X-Forwarded-Proto` (`http`/`https`, else `http`) `://` the `Host` header, when it is
    /// a plain host name, IPv4 address or `[IPv6]` address with an optional port; else the
    /// listen address (loopback for a wildcard), counted in `sluice_host_fallbacks_total`.
    /// Documents rendered on it are cached only for the hosts in use lately (see
    /// [`LinkBase::cached`]).
    pub fn link_base(&self, headers: &http::HeaderMap) -> LinkBase {
        let fallback = || LinkBase {
            url: self.config.public_url(),
            cached: true,
        };
        if self.config.server.public_url.is_some() {
            return fallback();
        }
        let raw_host = headers.get(http::header::HOST).map(|v| v.as_bytes());
        let raw_proto = headers.get(X_FORWARDED_PROTO).map(|v| v.as_bytes());
        let me = self.id;
        let now = Instant::now();
        let recent = LAST_LINK_BASE.with(|last| {
            let last = last.borrow();
            let b = last.as_ref()?;
            (b.app == me
                && b.tls == self.config.server.tls_cert.is_some()
                && Some(b.host.as_slice()) == raw_host
                && b.proto.as_deref() == raw_proto
                && now.duration_since(b.at) < LINK_BASE_REUSE)
                .then(|| b.url.clone())
        });
        if let Some(url) = recent {
            return LinkBase { url, cached: true };
        }
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::host::authority);
        let Some(host) = host else {
            metrics::counter!("sluice_host_fallbacks_total").increment(1);
            return fallback();
        };
        let cached = self.admit_host(&host, now);
        if !cached {
            metrics::counter!("sluice_link_hosts_uncached_total").increment(1);
        }
        let https = headers
            .get(X_FORWARDED_PROTO)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        // sluice's own TLS, or a TLS-terminating proxy in front that says so.
        let https = https || self.config.server.tls_cert.is_some();
        let url = format!("{}://{host}", if https { "https" } else { "http" });
        if cached {
            LAST_LINK_BASE.with(|last| {
                *last.borrow_mut() = Some(LastLinkBase {
                    app: me,
                    host: raw_host.unwrap_or_default().to_vec(),
                    proto: raw_proto.map(<[u8]>::to_vec),
                    tls: self.config.server.tls_cert.is_some(),
                    url: url.clone(),
                    at: now,
                })
            });
        }
        LinkBase { url, cached }
    }

    /// Whether documents rendered with links on `host` may be cached: yes for the hosts in
    /// use lately, at most [`MAX_LINK_HOSTS`] (one not used for [`LINK_HOST_IDLE`] gives its
    /// place up). Each cached host holds its own rendered copy of every document, so a
    /// client cycling through made-up names must not fill the render cache: past the bound,
    /// a new host's answers are rendered for it and not kept (its links stay right).
    fn admit_host(&self, host: &str, now: Instant) -> bool {
        let mut seen = self.link_hosts.lock();
        if let Some(used) = seen.get_mut(host) {
            *used = now;
            return true;
        }
        if seen.len() >= MAX_LINK_HOSTS {
            seen.retain(|_, used| now.duration_since(*used) < LINK_HOST_IDLE);
        }
        if seen.len() >= MAX_LINK_HOSTS {
            return false;
        }
        seen.insert(host.to_string(), now);
        true
    }

    /// Whether `key` had an upstream 404 recently.
    pub fn is_negative(&self, key: &str) -> bool {
        self.negative
            .get(key)
            .is_some_and(|exp| Instant::now() < exp)
    }

    /// Remembers an upstream 404 for `ttl`.
    pub fn remember_negative(&self, key: String, ttl: Duration) {
        if !ttl.is_zero() {
            self.negative.insert(key, Instant::now() + ttl);
        }
    }

    /// The role of a request with this `Authorization` header value.
    pub fn role_of(&self, authorization: Option<&str>) -> Role {
        let auth = self.auth.load();
        let Some(a) = authorization else {
            return auth.anonymous;
        };
        let secret = if let Some(t) = a.strip_prefix("Bearer ") {
            Some(t.trim().to_string())
        } else if let Some(b) = a.strip_prefix("Basic ") {
            decode_basic_password(b.trim())
        } else {
            None
        };
        secret
            .and_then(|s| token_role(&auth.tokens, &s))
            .unwrap_or(Role::None)
    }
}

/// The role of the configured token equal to `presented`. An empty secret (`Bearer `,
/// basic auth `user:`) matches nothing, even if an empty token slipped into the config.
fn token_role(tokens: &[sluice_config::TokenConfig], presented: &str) -> Option<Role> {
    if presented.trim().is_empty() {
        return None;
    }
    tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()))
        .map(|t| t.role)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The password of a basic-auth credential (`user:token`), where sluice expects a token.
fn decode_basic_password(b64: &str) -> Option<String> {
    let s = String::from_utf8(crate::b64::decode(b64)?).ok()?;
    s.split_once(':').map(|(_, p)| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_yield_the_password() {
        assert_eq!(
            decode_basic_password("dXNlcjpwYXNz").as_deref(),
            Some("pass")
        );
        assert_eq!(decode_basic_password("!!!"), None);
    }

    #[test]
    fn an_empty_presented_token_matches_no_token() {
        let tok = |token: &str, role| sluice_config::TokenConfig {
            name: "t".into(),
            token: token.into(),
            role,
        };
        let tokens = [
            tok("", Role::Admin),
            tok(" ", Role::Admin),
            tok("s3", Role::Read),
        ];
        // "anyone:" in basic auth.
        let empty = decode_basic_password("YW55b25lOg==").unwrap();
        assert_eq!(empty, "");
        assert_eq!(token_role(&tokens, &empty), None);
        assert_eq!(token_role(&tokens, " "), None);
        assert_eq!(token_role(&tokens, "s3"), Some(Role::Read));
        assert_eq!(token_role(&tokens, "s"), None);
    }
}
