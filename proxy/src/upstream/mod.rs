//! One client per upstream: timeouts, retries with backoff ([`retry`]), a circuit breaker
//! ([`breaker`]), a rate limit and a concurrency cap ([`limits`]), registry auth (bearer
//! flow, basic), redirects that never leak credentials, continuing a cut body with a range
//! request ([`resume`]), and metrics for every upstream request.
//!
//! URLs only ever come from configuration (the upstream's base URL), from the upstream's own
//! answers (token realm, redirect `Location`), never from a client's request: the formats
//! pass a path that they built from validated names and digests.

pub mod activity;
pub mod auth;
pub mod breaker;
pub mod limits;
pub mod resume;
pub mod retry;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sluice_config::UpstreamConfig;
use url::Url;

use crate::error::ProxyError;
use auth::{Challenge, TokenCache, TokenResponse};
use breaker::{Breaker, Outcome};
use limits::Limits;

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// A configured upstream registry.
pub struct Upstream {
    /// Its configuration.
    pub cfg: UpstreamConfig,
    base: Url,
    http: reqwest::Client,
    tokens: TokenCache,
    /// One token refresh per scope at a time: requests that got the same challenge wait for
    /// it and use its token (a cold pull's parallel layer requests all get a 401).
    token_refreshes:
        parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    offline: bool,
    ns_host: String,
    docker_hub: bool,
    breaker: Breaker,
    limits: Limits,
    /// Requests sent and how they went, for the dashboard.
    pub activity: activity::Activity,
}

impl Upstream {
    /// Builds the client for `cfg`; `offline` forbids any upstream contact.
    pub fn new(cfg: UpstreamConfig, offline: bool) -> anyhow::Result<Upstream> {
        let base = Url::parse(&cfg.url)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout.get())
            .read_timeout(cfg.read_timeout.get())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        for cert in extra_roots() {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build()?;
        Ok(Upstream {
            breaker: Breaker::new(&cfg.name, cfg.circuit_failures, cfg.circuit_cooldown.get()),
            limits: Limits::new(&cfg),
            offline: offline || cfg.offline,
            ns_host: cfg.ns_host(),
            docker_hub: cfg.is_docker_hub(),
            cfg,
            base,
            http,
            tokens: TokenCache::default(),
            token_refreshes: Default::default(),
            activity: Default::default(),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The registry host containerd names in `?ns=`.
    pub fn ns_host(&self) -> &str {
        &self.ns_host
    }

    /// Docker Hub, whose single-segment names live under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        self.docker_hub
    }

    /// Whether this upstream may be contacted.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    fn err(&self, message: impl Into<String>, status: Option<u16>) -> ProxyError {
        ProxyError::Upstream {
            upstream: self.cfg.name.clone(),
            message: message.into(),
            status,
        }
    }

    /// The base URL from the configuration.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Sends `method path` (path starting with `/`, built by the caller from validated
    /// parts, appended to the base URL) with `headers` and an optional `body`,
    /// authenticating for `scope` if challenged (OCI bearer flow) and following redirects.
    /// Returns the final response whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        scope: Option<&str>,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, ProxyError> {
        self.send_url(method, self.url_of(path)?, headers, scope, body)
            .await
    }

    /// `path` (starting with `/`) below the base URL.
    fn url_of(&self, path: &str) -> Result<Url, ProxyError> {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        Url::parse(&url).map_err(|e| ProxyError::internal(format!("bad upstream url: {e}")))
    }

    /// Like [`Upstream::send`] for an absolute URL that this upstream's own documents named
    /// (npm tarball, PyPI file link): never one taken from a client's request.
    pub async fn send_url(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: Option<&str>,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, ProxyError> {
        self.request(method, url, headers, scope, body, Traffic::Cache)
            .await
    }

    /// Like [`Upstream::send`] for a request a client drives and sluice only relays (npm
    /// search and audits): its `429` is the client's answer, passed on as it came; it
    /// neither pauses the upstream for everyone nor counts against the circuit.
    pub async fn relay(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, ProxyError> {
        let url = self.url_of(path)?;
        self.request(method, url, headers, None, body, Traffic::Relayed)
            .await
    }

    async fn request(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: Option<&str>,
        body: Option<bytes::Bytes>,
        traffic: Traffic,
    ) -> Result<reqwest::Response, ProxyError> {
        if self.offline {
            return Err(ProxyError::Offline(format!(
                "upstream {} is offline and {} is not cached",
                self.cfg.name,
                url.path()
            )));
        }
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.err(
                format!("refusing non-http URL scheme {:?}", url.scheme()),
                None,
            ));
        }
        let circuit_open = |r: breaker::Refusal| ProxyError::CircuitOpen {
            upstream: self.cfg.name.clone(),
            // Whole seconds, rounded up, at least 1 (a probe in flight: try again soon).
            retry_after: r.wait.as_millis().div_ceil(1000).max(1) as u64,
            asked: r.asked,
        };
        // An open circuit refuses before the queue: a request must not wait up to
        // `queue_timeout` for a slot only to be refused.
        if let Some(r) = self.breaker.refusing() {
            return Err(circuit_open(r));
        }
        // Queue for a concurrency slot: held for the whole response body, it is what bounds
        // the transfers in flight to this upstream.
        let slot = self.limits.slot().await.map_err(|t| self.throttled(&t))?;
        let permit = self.breaker.admit().map_err(circuit_open)?;
        let result = self
            .send_authenticated(method, url, headers, scope, body, traffic)
            .await;
        let relayed = traffic == Traffic::Relayed;
        match &result {
            // Never sent (our own rate limit): says nothing about the upstream; a probe
            // dropped unrecorded frees the half-open slot.
            Err(ProxyError::Throttled { .. }) => drop(permit),
            // A relayed request's 429 limits that client's use of that endpoint.
            Ok(r) if relayed && r.status() == StatusCode::TOO_MANY_REQUESTS => {
                self.activity.succeeded();
                permit.record(Outcome::Success)
            }
            Ok(r) if is_failure_status(r.status()) => {
                self.activity.failed(&format!("answered {}", r.status()));
                permit.record(Outcome::Failure)
            }
            Err(e) if e.is_upstream_failure() => {
                self.activity.failed(&activity::describe(e));
                permit.record(Outcome::Failure)
            }
            _ => {
                self.activity.succeeded();
                permit.record(Outcome::Success)
            }
        }
        // A 429 that says how long to wait, from the upstream itself (not a CDN it redirected
        // to) for what sluice caches, after the retries: the upstream asked to be left alone,
        // so nothing goes to it for that long; the client gets the 429 and the wait.
        let pause = result
            .as_ref()
            .ok()
            .filter(|r| !relayed && same_origin(r.url(), &self.base))
            .and_then(retry::asked_to_pause);
        if let Some(wait) = pause {
            let wait = self.breaker.pause(wait);
            return Err(circuit_open(breaker::Refusal { wait, asked: true }));
        }
        let mut resp = match slot {
            Some(slot) => limits::hold_until_body_ends(result?, slot),
            None => result?,
        };
        resp.extensions_mut()
            .insert(resume::RequestScope(scope.map(str::to_string)));
        Ok(resp)
    }

    /// Whether a cached copy of metadata `age_ms` old may stand in for this upstream when it
    /// fails (`max_stale`; unset: any age).
    pub fn stale_allowed(&self, age_ms: u64) -> bool {
        self.cfg
            .max_stale
            .is_none_or(|m| u128::from(age_ms) <= m.get().as_millis())
    }

    /// The error of a request its own limits held back past `queue_timeout`.
    fn throttled(&self, t: &limits::Throttled) -> ProxyError {
        ProxyError::Throttled {
            upstream: self.cfg.name.clone(),
            message: t.to_string(),
            retry_after: t.1.as_millis().div_ceil(1000).max(1) as u64,
        }
    }

    /// State of this upstream's circuit breaker: 0 closed, 1 open, 2 half-open.
    pub fn circuit_state(&self) -> u8 {
        self.breaker.state_code()
    }

    /// What this upstream's circuit breaker is doing now.
    pub fn circuit(&self) -> breaker::Status {
        self.breaker.status()
    }

    /// The request with the bearer/basic auth flow around [`Upstream::send_retrying`].
    async fn send_authenticated(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        scope: Option<&str>,
        body: Option<bytes::Bytes>,
        traffic: Traffic,
    ) -> Result<reqwest::Response, ProxyError> {
        let mut auth = scope
            .and_then(|s| self.tokens.get(s))
            .map(|t| format!("Bearer {t}"));
        let mut retried = false;
        loop {
            let resp = self
                .send_retrying(
                    &method,
                    url.clone(),
                    &headers,
                    auth.as_deref(),
                    body.clone(),
                    traffic,
                )
                .await?;
            let Some(scope) = scope else { return Ok(resp) };
            // Only the upstream's own challenge is answered: a 401 from a redirect target (a
            // CDN) must not choose where the credentials, or the token it yields, go.
            if resp.status() != StatusCode::UNAUTHORIZED
                || retried
                || !same_origin(resp.url(), &self.base)
            {
                return Ok(resp);
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(http::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            auth = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: ch_scope,
                }) => {
                    let sent = auth
                        .as_deref()
                        .and_then(|a| a.strip_prefix("Bearer "))
                        .map(str::to_string);
                    let refresh = self.token_refresh(scope);
                    let held = refresh.lock().await;
                    // Another request refreshed this scope's token while this one waited
                    // (or after this one was sent): use it rather than ask again.
                    let token = match self.tokens.get(scope).filter(|t| Some(t) != sent.as_ref()) {
                        Some(t) => Ok(t),
                        None => {
                            self.tokens.forget(scope);
                            let fetched = self
                                .fetch_token(
                                    &realm,
                                    service.as_deref(),
                                    ch_scope.as_deref().unwrap_or(scope),
                                )
                                .await;
                            fetched.map(|(t, ttl)| {
                                self.tokens.put(scope, t.clone(), ttl);
                                t
                            })
                        }
                    };
                    drop(held);
                    self.token_refresh_done(scope, refresh);
                    Some(format!("Bearer {}", token?))
                }
                Some(Challenge::Basic) => match self.basic_auth() {
                    Some(b) => Some(b),
                    None => return Ok(resp),
                },
                None => return Ok(resp),
            };
        }
    }

    /// The lock serialising token refreshes for `scope`.
    fn token_refresh(&self, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.token_refreshes
            .lock()
            .entry(scope.to_string())
            .or_default()
            .clone()
    }

    /// Drops `scope`'s refresh lock from the map once nobody else holds or waits on it.
    fn token_refresh_done(&self, scope: &str, refresh: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.token_refreshes.lock();
        // The map's reference and this one: nobody else.
        if Arc::strong_count(&refresh) == 2 {
            map.remove(scope);
        }
    }

    fn basic_auth(&self) -> Option<String> {
        let (u, p) = (self.cfg.username.as_ref()?, self.cfg.password.as_ref()?);
        Some(format!(
            "Basic {}",
            crate::b64::encode(format!("{u}:{p}").as_bytes())
        ))
    }

    /// Asks the token service `realm` for a token for `scope`. Credentials go only to a
    /// realm on https or on the upstream's own host.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, std::time::Duration), ProxyError> {
        let mut url = Url::parse(realm)
            .map_err(|e| self.err(format!("token realm {realm:?} is not a URL: {e}"), None))?;
        if url.scheme() != "https" && !(url.scheme() == "http" && self.base.scheme() == "http") {
            return Err(self.err(format!("refusing token realm {realm:?}: not https"), None));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let creds_allowed = url.scheme() == "https" || same_origin(&url, &self.base);
        let mut req = self.http.get(url.clone());
        if creds_allowed {
            if let Some(b) = self.basic_auth() {
                req = req.header(http::header::AUTHORIZATION, b);
            }
        }
        let started = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| self.err(format!("token request failed: {e}"), None))?;
        self.observe("GET", resp.status().as_u16(), started);
        metrics::counter!("sluice_upstream_token_requests_total", "upstream" => self.cfg.name.clone())
            .increment(1);
        if !resp.status().is_success() {
            return Err(self.err(
                format!("token service answered {} for scope {scope}", resp.status()),
                Some(resp.status().as_u16()),
            ));
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| self.err(format!("token service sent invalid JSON: {e}"), None))?;
        body.into_token()
            .ok_or_else(|| self.err("token service answered without a token", None))
    }

    /// [`Upstream::send_following`], repeated per [`retry`]'s rules for idempotent methods
    /// (a relayed request is not repeated: its client decides, and it must not hold a slot
    /// through another's wait).
    async fn send_retrying(
        &self,
        method: &Method,
        url: Url,
        headers: &HeaderMap,
        auth: Option<&str>,
        body: Option<bytes::Bytes>,
        traffic: Traffic,
    ) -> Result<reqwest::Response, ProxyError> {
        let retries = if retry::is_idempotent(method) && traffic == Traffic::Cache {
            self.cfg.retries
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let r = self
                .send_following(method, url.clone(), headers, auth, body.clone())
                .await;
            if attempt >= retries {
                return r;
            }
            let backoff = retry::backoff(self.cfg.retry_backoff.get(), attempt, rand::random());
            let delay = match &r {
                // It already waited queue_timeout for our own limits.
                Err(ProxyError::Throttled { .. }) => return r,
                Err(e) if e.is_upstream_failure() => backoff,
                Ok(resp) if retry::is_retryable_status(resp.status()) => {
                    let asked = matches!(resp.status().as_u16(), 429 | 503)
                        .then(|| retry::retry_after(resp.headers(), SystemTime::now()))
                        .flatten();
                    match asked {
                        Some(d) if d > self.cfg.retry_after_max.get() => return r,
                        Some(d) => d,
                        None => backoff,
                    }
                }
                _ => return r,
            };
            let why = match &r {
                Ok(resp) => resp.status().to_string(),
                Err(e) => e.to_string(),
            };
            drop(r);
            tracing::debug!(upstream = %self.cfg.name, %why, ?delay, attempt, "retrying upstream request");
            metrics::counter!("sluice_upstream_retries_total", "upstream" => self.cfg.name.clone())
                .increment(1);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One request plus redirects. `Authorization` goes only to the upstream's own origin;
    /// a redirect elsewhere must be https (unless the upstream itself is plain http).
    async fn send_following(
        &self,
        method: &Method,
        mut url: Url,
        headers: &HeaderMap,
        auth: Option<&str>,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, ProxyError> {
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            if let Some(a) = auth.filter(|_| same_origin(&url, &self.base)) {
                req = req.header(http::header::AUTHORIZATION, a);
            }
            // Every attempt and redirect hop is a request against the upstream's rate.
            self.limits.pace().await.map_err(|t| self.throttled(&t))?;
            let started = Instant::now();
            let fut = req.send();
            let resp = match tokio::time::timeout(self.cfg.read_timeout.get(), fut).await {
                Err(_) => {
                    self.observe(method.as_str(), 0, started);
                    return Err(self.err(
                        format!("no response within {:?}", self.cfg.read_timeout.get()),
                        None,
                    ));
                }
                Ok(Err(e)) => {
                    self.observe(method.as_str(), 0, started);
                    return Err(self.err(describe(&e), None));
                }
                Ok(Ok(r)) => r,
            };
            self.observe(method.as_str(), resp.status().as_u16(), started);
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let loc = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    self.err("redirect without Location", Some(resp.status().as_u16()))
                })?;
            let next = url
                .join(loc)
                .map_err(|e| self.err(format!("bad redirect Location {loc:?}: {e}"), None))?;
            let allowed = next.scheme() == "https"
                || (next.scheme() == "http"
                    && (same_origin(&next, &self.base) || self.base.scheme() == "http"));
            if !allowed {
                return Err(self.err(
                    format!(
                        "refusing redirect to {}: not https",
                        next.origin().ascii_serialization()
                    ),
                    None,
                ));
            }
            if !same_origin(&next, &self.base)
                && !same_origin(&next, &url)
                && !redirect_host_allowed(next.host_str(), &self.cfg.redirect_hosts)
            {
                metrics::counter!("sluice_upstream_redirects_refused_total", "upstream" => self.cfg.name.clone())
                    .increment(1);
                return Err(ProxyError::RedirectRefused {
                    upstream: self.cfg.name.clone(),
                    message: format!(
                        "refusing redirect to {}: not in this upstream's redirect_hosts",
                        next.origin().ascii_serialization()
                    ),
                });
            }
            url = next;
        }
        Err(self.err(format!("more than {MAX_REDIRECTS} redirects"), None))
    }

    fn observe(&self, method: &str, status: u16, started: Instant) {
        let status = if status == 0 {
            "error".to_string()
        } else {
            status.to_string()
        };
        metrics::counter!(
            "sluice_upstream_requests_total",
            "upstream" => self.cfg.name.clone(),
            "method" => method.to_string(),
            "status" => status
        )
        .increment(1);
        metrics::histogram!("sluice_upstream_request_seconds", "upstream" => self.cfg.name.clone())
            .record(started.elapsed().as_secs_f64());
    }

    /// Maps a non-success status to an error (404 → `not_found`).
    pub fn status_error(
        &self,
        status: StatusCode,
        what: &str,
        not_found: ProxyError,
    ) -> ProxyError {
        if status == StatusCode::NOT_FOUND {
            not_found
        } else if matches!(status.as_u16(), 401 | 403) {
            self.err(
                format!(
                    "{what}: upstream answered {status}: it does not exist there, or it needs \
                     credentials sluice does not have (the upstream's username and password \
                     in sluice's config)"
                ),
                Some(status.as_u16()),
            )
        } else {
            self.err(
                format!("{what}: upstream answered {status}"),
                Some(status.as_u16()),
            )
        }
    }

    /// Error for a failure while reading a body.
    pub fn body_error(&self, e: reqwest::Error) -> ProxyError {
        self.err(format!("reading body: {}", describe(&e)), None)
    }
}

/// CA certificates from the PEM bundle named by `SSL_CERT_FILE` (the OpenSSL convention,
/// set where a site's TLS-inspecting proxy or private CA must be trusted), in addition to
/// the built-in web roots. An unreadable bundle is logged and ignored.
pub(crate) fn extra_roots() -> Vec<reqwest::Certificate> {
    let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    match std::fs::read(&path).map(|pem| reqwest::Certificate::from_pem_bundle(&pem)) {
        Ok(Ok(certs)) => certs,
        Ok(Err(e)) => {
            tracing::warn!(path = ?path, error = %e, "SSL_CERT_FILE: no usable certificates");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(path = ?path, error = %e, "SSL_CERT_FILE: cannot read");
            Vec::new()
        }
    }
}

/// An answer that counts against the circuit breaker (the statuses stale-if-error covers).
fn is_failure_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// Whether a redirect may go to `host`: any host when `allowed` is empty, else one named
/// exactly (case-insensitive) or under a `*.domain` entry.
fn redirect_host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = host.map(|h| h.to_ascii_lowercase()) else {
        return false;
    };
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == a,
        }
    })
}

/// What a request is for: content sluice caches, or a client's request it only relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Cache,
    Relayed,
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The `Content-Length` an upstream response states. For the answer to a HEAD this is the
/// length of what a GET would send; reqwest's `content_length()` is that of the (empty)
/// body, 0.
pub fn stated_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Header map with one `Accept` value.
pub fn accept(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(http::header::ACCEPT, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::redirect_host_allowed;

    #[test]
    fn redirect_hosts_match_exactly_or_as_subdomains() {
        let allowed = vec![
            "production.cloudflare.docker.com".to_string(),
            "*.CloudFront.net".to_string(),
        ];
        for ok in [
            "production.cloudflare.docker.com",
            "PRODUCTION.cloudflare.docker.com",
            "d1.cloudfront.net",
            "a.b.cloudfront.net",
        ] {
            assert!(redirect_host_allowed(Some(ok), &allowed), "{ok}");
        }
        for refused in [
            "cloudfront.net",
            "evilcloudfront.net",
            "docker.com",
            "production.cloudflare.docker.com.evil.example",
            "127.0.0.1",
        ] {
            assert!(!redirect_host_allowed(Some(refused), &allowed), "{refused}");
        }
        assert!(!redirect_host_allowed(None, &allowed));
        assert!(redirect_host_allowed(Some("anything.example"), &[]));
    }
}
