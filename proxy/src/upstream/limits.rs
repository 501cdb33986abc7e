//! Per-upstream limits: a request rate (`rate_limit`, a token bucket from `governor`) and a
//! cap on requests in flight (`max_concurrent`, a semaphore). The concurrency slot lives as
//! long as the response body, so a blob being streamed counts until its last byte.
//!
//! A request waits at most `queue_timeout` for either; then it fails as an upstream error,
//! like a timeout would, so the formats' stale-if-error paths still answer from the cache.
//! Requests that had to wait count in `sluice_upstream_throttled_total{upstream}`.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sluice_config::UpstreamConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one upstream.
pub struct Limits {
    upstream: String,
    rate: Option<DefaultDirectRateLimiter>,
    slots: Option<Arc<Semaphore>>,
    queue_timeout: Duration,
}

/// Why a request was not let through in time.
#[derive(Debug)]
pub struct Throttled(pub &'static str, pub Duration);

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "throttled: waited {:?} for {} (queue_timeout); not sent",
            self.1, self.0
        )
    }
}

impl Limits {
    /// The limits `cfg` asks for (`rate_limit`, `max_concurrent`, `queue_timeout`).
    pub fn new(cfg: &UpstreamConfig) -> Limits {
        let rate = cfg.rate_limit.and_then(|r| {
            let burst = NonZeroU32::new(r.count)?;
            let quota = Quota::with_period(r.per / r.count)?.allow_burst(burst);
            Some(RateLimiter::direct(quota))
        });
        let slots =
            (cfg.max_concurrent > 0).then(|| Arc::new(Semaphore::new(cfg.max_concurrent as usize)));
        Limits {
            upstream: cfg.name.clone(),
            rate,
            slots,
            queue_timeout: cfg.queue_timeout.get(),
        }
    }

    fn throttled(&self) {
        metrics::counter!("sluice_upstream_throttled_total", "upstream" => self.upstream.clone())
            .increment(1);
    }

    /// A slot among `max_concurrent` (`None` when there is no cap), waiting for one up to
    /// `queue_timeout`.
    pub async fn slot(&self) -> Result<Option<OwnedSemaphorePermit>, Throttled> {
        let Some(slots) = &self.slots else {
            return Ok(None);
        };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        self.throttled();
        match tokio::time::timeout(self.queue_timeout, slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            // The semaphore is never closed; treat it like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Throttled("max_concurrent", self.queue_timeout)),
        }
    }

    /// Waits for `rate_limit` to allow one more request, up to `queue_timeout`.
    pub async fn pace(&self) -> Result<(), Throttled> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if rate.check().is_ok() {
            return Ok(());
        }
        self.throttled();
        tokio::time::timeout(self.queue_timeout, rate.until_ready())
            .await
            .map_err(|_| Throttled("rate_limit", self.queue_timeout))
    }
}

/// `resp` with `slot` held until its body has been read to the end (or dropped). Status,
/// headers, final URL and the announced length stay as they were.
pub fn hold_until_body_ends(
    resp: reqwest::Response,
    slot: OwnedSemaphorePermit,
) -> reqwest::Response {
    use reqwest::ResponseBuilderExt;
    let url = resp.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
    if let Ok(with_url) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(with_url.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(Held {
        inner: body,
        slot: Some(slot),
    });
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// A body that releases its concurrency slot when it ends, fails or is dropped.
struct Held {
    inner: reqwest::Body,
    slot: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, reqwest::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            this.slot = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_held_response_keeps_url_length_and_body_and_frees_the_slot_at_its_end() {
        use reqwest::ResponseBuilderExt;
        let url = url::Url::parse("http://127.0.0.1:1/simple/pkg/").unwrap();
        let resp = reqwest::Response::from(
            http::Response::builder()
                .status(200)
                .url(url.clone())
                .header("x-a", "1")
                .body(reqwest::Body::from(vec![7u8; 1000]))
                .unwrap(),
        );
        let slots = Arc::new(Semaphore::new(1));
        let held = hold_until_body_ends(resp, slots.clone().try_acquire_owned().unwrap());
        assert_eq!(held.url(), &url);
        assert_eq!(held.content_length(), Some(1000));
        assert_eq!(held.headers()["x-a"], "1");
        assert_eq!(
            slots.available_permits(),
            0,
            "held while the body is unread"
        );
        let mut body = held.bytes_stream();
        let mut n = 0;
        while let Some(c) = body.next().await {
            n += c.unwrap().len();
        }
        assert_eq!(n, 1000);
        assert_eq!(slots.available_permits(), 1, "freed at the end of the body");
    }
}
