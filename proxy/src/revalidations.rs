//! Background revalidations of cached mutable metadata (OCI tags, packuments, pages): at
//! most one per key at a time, and after a failed one the next waits a backoff, so a stale
//! copy is not paid for with an upstream request per client request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::store::unix_ms;

/// Keys being revalidated or backing off.
#[derive(Default)]
pub struct Revalidations {
    /// Key → unix ms before which no revalidation starts (`u64::MAX`: one is running).
    next: Arc<Mutex<HashMap<String, u64>>>,
}

/// How long a failed revalidation makes the next wait: the TTL, within 1 s and 30 s.
pub fn backoff(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(1), Duration::from_secs(30))
}

impl Revalidations {
    /// A revalidation of `key` if one may start now (none running, no backoff pending),
    /// marked running until the returned guard drops (a panicking task's too).
    pub fn start(&self, key: &str) -> Option<Running> {
        let now = unix_ms();
        let mut next = self.next.lock();
        if next.get(key).is_some_and(|&at| now < at) {
            return None;
        }
        if next.len() >= 10_000 {
            next.retain(|_, at| now < *at);
        }
        next.insert(key.to_string(), u64::MAX);
        Some(Running {
            of: self.next.clone(),
            key: key.to_string(),
            backoff: None,
        })
    }

    /// Forgets a pending backoff of `key` (the upstream answered meanwhile); a running
    /// revalidation stays marked.
    pub fn answered(&self, key: &str) {
        let mut next = self.next.lock();
        if next.get(key).is_some_and(|&at| at != u64::MAX) {
            next.remove(key);
        }
    }
}

/// A running revalidation; over when dropped.
pub struct Running {
    of: Arc<Mutex<HashMap<String, u64>>>,
    key: String,
    backoff: Option<Duration>,
}

impl Running {
    /// It failed: the next waits `backoff`.
    pub fn failed(&mut self, backoff: Duration) {
        self.backoff = Some(backoff);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut next = self.of.lock();
        match self.backoff {
            Some(b) => {
                next.insert(
                    std::mem::take(&mut self.key),
                    unix_ms() + b.as_millis() as u64,
                );
            }
            None => {
                next.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_then_a_backoff_after_a_failure() {
        let r = Revalidations::default();
        let first = r.start("k").expect("nothing running");
        assert!(r.start("k").is_none(), "two at once");
        assert!(r.start("other").is_some());
        drop(first);
        let mut second = r.start("k").expect("the first is over");
        second.failed(Duration::from_secs(30));
        drop(second);
        assert!(r.start("k").is_none(), "no backoff after a failure");
        r.answered("k");
        let third = r.start("k").expect("the upstream answered");
        r.answered("k");
        assert!(r.start("k").is_none(), "answered() ended a running one");
        drop(third);
        // A task that panics still ends its revalidation.
        let guard = r.start("p").unwrap();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _g = guard;
            panic!("task failed");
        }));
        assert!(r.start("p").is_some());
        assert_eq!(backoff(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(backoff(Duration::from_secs(3600)), Duration::from_secs(30));
    }
}
