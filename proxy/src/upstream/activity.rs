//! What an upstream did since sluice started, for the dashboard: requests sent and how many
//! failed (the answers and errors the circuit breaker counts as failures), and the last
//! success and failure. Recorded once per request sent ([`super::Upstream`]'s request path,
//! after the retries and redirects), off the cache-hit path. A failure is described by
//! kind only ([`describe`]), never with the error's text: that may hold a URL, and a
//! redirect target's may carry a signed token.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::unix_secs;

/// Longest failure description kept.
const MAX_DESCRIPTION: usize = 200;

/// The figures of one upstream.
#[derive(Default)]
pub struct Activity {
    requests: AtomicU64,
    failures: AtomicU64,
    last_success_unix: AtomicU64,
    last_failure: Mutex<Option<(u64, String)>>,
}

/// [`Activity::snapshot`].
pub struct Snapshot {
    pub requests: u64,
    pub failures: u64,
    /// Unix seconds of the last success, if any.
    pub last_success_unix: Option<u64>,
    /// Unix seconds and description of the last failure, if any.
    pub last_failure: Option<(u64, String)>,
}

impl Activity {
    /// A request that got an answer the breaker counts as success.
    pub fn succeeded(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_success_unix.store(unix_secs(), Ordering::Relaxed);
    }

    /// A request that failed: `what` says how (a status, or [`describe`]'s kind).
    pub fn failed(&self, what: &str) {
        // Failures before requests, read the other way round: a snapshot never shows
        // more failures than requests.
        self.failures.fetch_add(1, Ordering::Release);
        self.requests.fetch_add(1, Ordering::Release);
        *self.last_failure.lock() =
            Some((unix_secs(), what.chars().take(MAX_DESCRIPTION).collect()));
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        let requests = self.requests.load(Ordering::Acquire);
        let failures = self.failures.load(Ordering::Acquire).min(requests);
        Snapshot {
            requests,
            failures,
            last_success_unix: Some(self.last_success_unix.load(Ordering::Relaxed))
                .filter(|t| *t > 0),
            last_failure: self.last_failure.lock().clone(),
        }
    }
}

/// The kind of an upstream error, in words that hold nothing from the error's text (no
/// URL, no header value).
pub fn describe(e: &crate::error::ProxyError) -> String {
    use crate::error::ProxyError;
    match e {
        ProxyError::Upstream {
            status: Some(s), ..
        } => format!("answered {s}"),
        ProxyError::Upstream { message, .. } => {
            let m = message.to_ascii_lowercase();
            let kind = if m.contains("timed out") || m.contains("timeout") {
                "timed out"
            } else if m.contains("refused") {
                "connection refused"
            } else if m.contains("dns") || m.contains("resolve") || m.contains("lookup") {
                "name not resolved"
            } else if m.contains("certificate") || m.contains("tls") || m.contains("handshake") {
                "TLS error"
            } else if m.contains("reset") || m.contains("closed") || m.contains("broken pipe") {
                "connection closed"
            } else if m.contains("redirect") {
                "bad redirect"
            } else {
                "no usable answer"
            };
            kind.to_string()
        }
        ProxyError::DigestMismatch { .. } | ProxyError::HashMismatch { .. } => {
            "sent bytes that do not match their digest".into()
        }
        ProxyError::TooLarge(_) => "sent a document over max_metadata_size".into(),
        _ => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_hold_no_text_of_the_error() {
        use crate::error::ProxyError;
        let up = |message: &str, status| ProxyError::Upstream {
            upstream: "u".into(),
            message: message.into(),
            status,
        };
        let leaky =
            "error sending request for url (https://user:pw@cdn.example/a)b?X-Amz-Signature=s): ";
        assert_eq!(
            describe(&up(&format!("{leaky}operation timed out"), None)),
            "timed out"
        );
        assert_eq!(
            describe(&up(&format!("{leaky}Connection refused"), None)),
            "connection refused"
        );
        assert_eq!(
            describe(&up("bad redirect Location \"//u:p@h:99999/x?sig=s\"", None)),
            "bad redirect"
        );
        assert_eq!(describe(&up(leaky, None)), "no usable answer");
        assert_eq!(describe(&up(leaky, Some(503))), "answered 503");
    }

    #[test]
    fn figures_count_requests_failures_and_the_last_of_each() {
        let a = Activity::default();
        assert!(a.snapshot().last_success_unix.is_none());
        a.succeeded();
        a.failed("answered 502 Bad Gateway");
        a.failed("timed out");
        let s = a.snapshot();
        assert_eq!((s.requests, s.failures), (3, 2));
        assert!(s.last_success_unix.is_some());
        assert_eq!(s.last_failure.map(|f| f.1).as_deref(), Some("timed out"));
    }
}
