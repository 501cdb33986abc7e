//! One error type for the proxy, with a variant per cause, and the one place that turns it
//! into each client's error format (the OCI JSON error body here; npm and pip later).

use http::StatusCode;

use crate::digest::Digest;

/// Everything that can go wrong while answering a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The thing asked for does not exist upstream (or is not cached while offline).
    #[error("{message}")]
    NotFound {
        /// OCI error code: `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `NAME_UNKNOWN`.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// The request itself is malformed.
    #[error("{message}")]
    BadRequest {
        /// OCI error code: `NAME_INVALID`, `DIGEST_INVALID`, `TAG_INVALID`, ...
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// A method this endpoint does not serve (a write on a read-only pull-through cache);
    /// `allow` lists the methods it does serve, for the `Allow` header of the 405.
    #[error("{message}")]
    Unsupported {
        /// What was refused and why.
        message: String,
        /// The methods the endpoint serves, e.g. `GET, HEAD`.
        allow: &'static str,
    },
    /// The client did not authenticate.
    #[error("{0}")]
    Unauthorized(String),
    /// The client authenticated but may not do this.
    #[error("{0}")]
    Denied(String),
    /// The dependency firewall blocks this artifact.
    #[error("blocked by policy rule {rule}: {reason}")]
    Blocked {
        /// Answer 404 rather than 403: a `namespace` rule (the name does not exist here).
        hidden: bool,
        /// Rule id (`osv` for advisories).
        rule: String,
        /// Why.
        reason: String,
    },
    /// Offline mode and the artifact is not cached.
    #[error("{0}")]
    Offline(String),
    /// The upstream could not be reached or failed (connect, timeout, 5xx, 429).
    #[error("upstream {upstream}: {message}")]
    Upstream {
        /// Upstream name.
        upstream: String,
        /// What happened.
        message: String,
        /// The upstream's status, when it answered.
        status: Option<u16>,
    },
    /// The upstream's circuit breaker is open: it is not contacted until the half-open
    /// probe, `retry_after` seconds from now (answered `503` with `Retry-After`; `429` when
    /// the upstream asked for the pause).
    #[error("upstream {upstream}: {}", circuit_reason(.retry_after, .asked))]
    CircuitOpen {
        /// Upstream name.
        upstream: String,
        /// Whole seconds (at least 1) until the next probe may go through.
        retry_after: u64,
        /// The upstream asked for the pause (`429` with `Retry-After`), rather than failing.
        asked: bool,
    },
    /// This upstream's own limits (`max_concurrent`, `rate_limit`) did not let the request
    /// through within `queue_timeout`: it was never sent (answered `503` with
    /// `Retry-After`). Local, so it never counts against the circuit breaker and is not
    /// retried; a stale cached copy may still answer.
    #[error("upstream {upstream}: {message}")]
    Throttled {
        /// Upstream name.
        upstream: String,
        /// Which limit, and how long the request waited.
        message: String,
        /// Whole seconds (at least 1) to suggest to the client.
        retry_after: u64,
    },
    /// This client sent more requests than `server.client_rate_limit` allows (answered
    /// `429` with `Retry-After`; never queued).
    #[error(
        "too many requests from this client (client_rate_limit = {limit}); retry in {retry_after}s"
    )]
    ClientThrottled {
        /// The configured rate, as written.
        limit: String,
        /// Whole seconds (at least 1) until this client's next request is allowed.
        retry_after: u64,
    },
    /// The upstream's bytes do not match the digest they were asked for.
    #[error("digest mismatch: expected {expected}, upstream sent content with digest {actual}")]
    DigestMismatch {
        /// What was asked for.
        expected: Digest,
        /// What arrived.
        actual: Digest,
    },
    /// The upstream's bytes do not match the hash its metadata stated (sha512 / sha1 / sha256).
    #[error("integrity check failed: expected {expected}, upstream sent content with digest {actual_sha256}")]
    HashMismatch {
        /// What the metadata stated.
        expected: String,
        /// The sha256 of what arrived.
        actual_sha256: Digest,
    },
    /// A document is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The upstream redirected outside its `redirect_hosts`: sluice's own rule, so the
    /// request is not retried and says nothing against the upstream's circuit (answered
    /// `502`).
    #[error("upstream {upstream}: {message}")]
    RedirectRefused {
        /// Upstream name.
        upstream: String,
        /// Where it redirected to, and why that is refused.
        message: String,
    },
    /// A client's request body is larger than sluice accepts on that route.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The route's limit in bytes.
        limit: usize,
    },
    /// A `Range` outside the artifact.
    #[error("requested range not satisfiable (size {size})")]
    RangeNotSatisfiable {
        /// Artifact size.
        size: u64,
    },
    /// A bug or a local I/O failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn circuit_reason(retry_after: &u64, asked: &bool) -> String {
    if *asked {
        format!("it answered 429 Too Many Requests and asked to wait; not contacting it for {retry_after}s")
    } else {
        format!("circuit open after repeated failures; not contacting it for {retry_after}s")
    }
}

impl ProxyError {
    /// Wraps a local I/O or index failure.
    pub fn internal(e: impl std::fmt::Display) -> ProxyError {
        ProxyError::Internal(e.to_string())
    }

    /// Whether the upstream refused (a 4xx other than 404, 408 and 429: an answer, not a
    /// failure), so a cached copy of what it refuses is not served on.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ProxyError::Upstream { status: Some(s), .. }
            if (400..500).contains(s) && !matches!(s, 404 | 408 | 429))
    }

    /// Whether this is a failure of the upstream (as opposed to an answer from it), so a
    /// stale cached copy may be served instead.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            ProxyError::Upstream { status, .. } => {
                status.is_none_or(|s| s >= 500 || s == 429 || s == 408)
            }
            ProxyError::CircuitOpen { .. }
            | ProxyError::Throttled { .. }
            | ProxyError::DigestMismatch { .. }
            | ProxyError::HashMismatch { .. }
            | ProxyError::TooLarge(_) => true,
            _ => false,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Unsupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Blocked { hidden: true, .. } => StatusCode::NOT_FOUND,
            ProxyError::Denied(_) | ProxyError::Blocked { .. } => StatusCode::FORBIDDEN,
            ProxyError::CircuitOpen { asked: true, .. } | ProxyError::ClientThrottled { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::Offline(_)
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Throttled { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream {
                status: Some(429), ..
            } => StatusCode::TOO_MANY_REQUESTS,
            // The upstream refused sluice: the client's answer is a refusal too (Docker
            // reads a 4xx's error body and names the repository; a 502 says nothing).
            ProxyError::Upstream {
                status: Some(401 | 403),
                ..
            } => StatusCode::FORBIDDEN,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::DigestMismatch { .. } | ProxyError::HashMismatch { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::TooLarge(_) | ProxyError::RedirectRefused { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OCI distribution error code for this error.
    pub fn oci_code(&self) -> &'static str {
        match self {
            ProxyError::NotFound { code, .. } | ProxyError::BadRequest { code, .. } => code,
            ProxyError::Unsupported { .. } => "UNSUPPORTED",
            ProxyError::Unauthorized(_) => "UNAUTHORIZED",
            ProxyError::Blocked { hidden: true, .. } => "NAME_UNKNOWN",
            ProxyError::Denied(_) | ProxyError::Blocked { .. } => "DENIED",
            ProxyError::Upstream {
                status: Some(429), ..
            }
            | ProxyError::CircuitOpen { asked: true, .. }
            | ProxyError::ClientThrottled { .. } => "TOOMANYREQUESTS",
            ProxyError::Upstream {
                status: Some(401 | 403),
                ..
            } => "DENIED",
            ProxyError::RangeNotSatisfiable { .. } => "BLOB_UNKNOWN",
            ProxyError::BodyTooLarge { .. } => "SIZE_INVALID",
            _ => "UNAVAILABLE",
        }
    }

    /// The `Retry-After` seconds to answer with, if any: an open circuit says when its
    /// half-open probe may go through.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::CircuitOpen { retry_after, .. }
            | ProxyError::Throttled { retry_after, .. }
            | ProxyError::ClientThrottled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The OCI JSON error body, carrying the request id so a user can quote it.
    pub fn oci_body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errors": [{
                "code": self.oci_code(),
                "message": self.to_string(),
                "detail": { "request_id": request_id },
            }]
        }))
        .unwrap_or_default()
    }

    /// The npm client's error body: `{"error": "..."}`, which npm prints as-is.
    pub fn npm_body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": format!("{self} (sluice request id {request_id})"),
        }))
        .unwrap_or_default()
    }

    /// A Cargo registry's error body, as the public registry writes it: `{"errors": [{"detail":
    /// "..."}]}` (cargo prints the body of a failed index or download request).
    pub fn cargo_body(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "errors": [{ "detail": format!("{self} (sluice request id {request_id})") }],
        }))
        .unwrap_or_default()
    }

    /// A plain-text body for non-OCI routes.
    pub fn text_body(&self, request_id: &str) -> Vec<u8> {
        format!("{} (request id {request_id})\n", self).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_body_has_code_message_and_request_id() {
        let e = ProxyError::Unsupported {
            message: "push is not supported".into(),
            allow: "GET, HEAD",
        };
        let v: serde_json::Value = serde_json::from_slice(&e.oci_body("rid-1")).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(v["errors"][0]["detail"]["request_id"], "rid-1");
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn only_upstream_failures_allow_stale_serving() {
        let up = |s| ProxyError::Upstream {
            upstream: "u".into(),
            message: "x".into(),
            status: s,
        };
        assert!(up(None).is_upstream_failure());
        assert!(up(Some(503)).is_upstream_failure());
        assert!(up(Some(429)).is_upstream_failure());
        assert!(!up(Some(404)).is_upstream_failure());
        assert!(!ProxyError::Unsupported {
            message: "x".into(),
            allow: "GET"
        }
        .is_upstream_failure());
    }

    #[test]
    fn an_upstream_refusal_is_a_403_denied_and_other_upstream_errors_a_502() {
        let up = |s| ProxyError::Upstream {
            upstream: "u".into(),
            message: "x".into(),
            status: s,
        };
        for s in [401, 403] {
            assert_eq!(up(Some(s)).status(), StatusCode::FORBIDDEN, "{s}");
            assert_eq!(up(Some(s)).oci_code(), "DENIED", "{s}");
        }
        assert_eq!(up(Some(500)).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(up(None).oci_code(), "UNAVAILABLE");
    }

    #[test]
    fn an_open_circuit_is_503_with_retry_after_and_allows_stale_serving() {
        let e = ProxyError::CircuitOpen {
            upstream: "u".into(),
            retry_after: 7,
            asked: false,
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after(), Some(7));
        assert_eq!(e.oci_code(), "UNAVAILABLE");
        assert!(e.is_upstream_failure());
        // Paused at the upstream's request: its 429 is passed on, with the wait.
        let e = ProxyError::CircuitOpen {
            upstream: "u".into(),
            retry_after: 60,
            asked: true,
        };
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(60));
        assert_eq!(e.oci_code(), "TOOMANYREQUESTS");
        assert!(e.is_upstream_failure());
        assert!(e.to_string().contains("asked to wait"), "{e}");
        let up = ProxyError::Upstream {
            upstream: "u".into(),
            message: "x".into(),
            status: None,
        };
        assert_eq!(up.retry_after(), None);
    }
}
