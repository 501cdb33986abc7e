//! Registry authentication: the Docker bearer-token flow and basic auth.
//!
//! On a `401` the upstream names a token service in `WWW-Authenticate`; sluice asks it for
//! a token for the scope (anonymously, or with the upstream's configured credentials) and
//! caches the token per scope until shortly before it expires.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=...,service=...,scope=...`
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, passed back to the realm.
        service: Option<String>,
        /// `scope` parameter, passed back to the realm.
        scope: Option<String>,
    },
    /// `Basic realm=...`
    Basic,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value; `None` for schemes sluice does not speak.
    pub fn parse(v: &str) -> Option<Challenge> {
        let v = v.trim();
        let (scheme, rest) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
        let params = parse_params(rest);
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            }),
            "basic" => Some(Challenge::Basic),
            _ => None,
        }
    }
}

/// `key="value", key2=value2` → map (keys lowercased). Quoted values may contain commas
/// (scopes do: `repository:a:pull,push`) and backslash escapes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// The longest a token is kept, whatever its `expires_in` says (a huge value would overflow
/// the expiry instant).
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Cache size from which expired tokens are dropped on insert.
const PRUNE_AT: usize = 256;

/// Bearer tokens by scope.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    /// A cached, unexpired token for `scope`.
    pub fn get(&self, scope: &str) -> Option<String> {
        let map = self.tokens.lock();
        let (t, exp) = map.get(scope)?;
        (Instant::now() < *exp).then(|| t.clone())
    }

    /// Caches `token` for `scope`, valid `ttl` (minus a safety margin). Expired tokens of
    /// other scopes are dropped once the cache holds [`PRUNE_AT`] of them, so it does not grow
    /// with every repository ever pulled.
    pub fn put(&self, scope: &str, token: String, ttl: Duration) {
        let margin = Duration::from_secs(10).min(ttl / 4);
        let now = Instant::now();
        let exp = now + ttl.min(MAX_TOKEN_TTL).saturating_sub(margin);
        let mut map = self.tokens.lock();
        if map.len() >= PRUNE_AT {
            map.retain(|_, (_, e)| now < *e);
        }
        map.insert(scope.to_string(), (token, exp));
    }

    /// How many tokens are cached (expired ones included until pruned).
    pub fn cached(&self) -> usize {
        self.tokens.lock().len()
    }

    /// Forgets the token of `scope` (the upstream rejected it).
    pub fn forget(&self, scope: &str) {
        self.tokens.lock().remove(scope);
    }
}

/// The token service's answer.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    /// The token (Docker's name).
    #[serde(default)]
    pub token: Option<String>,
    /// The token (OAuth2's name).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Lifetime in seconds (default 60, per the Docker token spec).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let t = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let secs = self.expires_in.unwrap_or(60).max(1);
        Some((t, Duration::from_secs(secs).min(MAX_TOKEN_TTL)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_bearer_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
    }

    #[test]
    fn token_cache_expires_and_forgets() {
        let c = TokenCache::default();
        c.put("s", "t".into(), Duration::from_secs(300));
        assert_eq!(c.get("s").as_deref(), Some("t"));
        c.put("z", "t".into(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get("z"), None);
        c.forget("s");
        assert_eq!(c.get("s"), None);
    }

    #[test]
    fn a_huge_expires_in_is_capped_and_expired_tokens_are_pruned() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"token":"t","expires_in":18446744073709551615}"#).unwrap();
        let (t, ttl) = r.into_token().expect("token");
        assert_eq!(ttl, MAX_TOKEN_TTL);
        let c = TokenCache::default();
        c.put("s", t, Duration::MAX); // no overflow panic
        assert_eq!(c.get("s").as_deref(), Some("t"));
        for i in 0..PRUNE_AT {
            c.put(&format!("old{i}"), "x".into(), Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        c.put("new", "y".into(), Duration::from_secs(300));
        assert_eq!(c.cached(), 2, "expired tokens pruned, live ones kept");
        assert_eq!(c.get("s").as_deref(), Some("t"));
    }

    #[test]
    fn token_response_accepts_both_field_names() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":30}"#).unwrap();
        assert_eq!(r.into_token(), Some(("a".into(), Duration::from_secs(30))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"b"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("b".into(), Duration::from_secs(60))));
    }
}
