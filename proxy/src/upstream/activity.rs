//! What an upstream did since sluice started, for the dashboard: requests sent and how many
//! failed (the answers and errors the circuit breaker counts as failures), and the last
//! success and failure. Recorded once per request sent ([`super::Upstream`]'s request path,
//! after the retries), off the cache-hit path; a failure's description never holds a URL
//! (a redirect target's may carry a signed token).

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

    /// A request that failed: `what` says how (URLs in it are replaced).
    pub fn failed(&self, what: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failure.lock() = Some((unix_secs(), without_urls(what)));
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_success_unix: Some(self.last_success_unix.load(Ordering::Relaxed))
                .filter(|t| *t > 0),
            last_failure: self.last_failure.lock().clone(),
        }
    }
}

/// `s` with every `http://…` or `https://…` (to the next space, quote or bracket) replaced
/// by `<url>`, cut to [`MAX_DESCRIPTION`] characters.
fn without_urls(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_DESCRIPTION));
    let mut rest = s;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ']'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out.chars().take(MAX_DESCRIPTION).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_reach_a_description() {
        assert_eq!(
            without_urls(
                "error sending request for url (https://cdn.example/blob?X-Amz-Signature=abc): connection refused"
            ),
            "error sending request for url (<url>): connection refused"
        );
        assert_eq!(
            without_urls("answered 503 Service Unavailable"),
            "answered 503 Service Unavailable"
        );
        assert_eq!(without_urls("a http://x b https://y"), "a <url> b <url>");
        assert_eq!(without_urls(&"x".repeat(500)).len(), MAX_DESCRIPTION);
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
