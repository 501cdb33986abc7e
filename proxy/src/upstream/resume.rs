//! Continuing a body that broke off: a `Range: bytes=<from>-` request for the rest, accepted
//! only as a `206` whose `Content-Range` starts exactly at `from` and ends at the length the
//! first response announced. Anything else (a `200` with the whole body, another range, a
//! different total) is refused: the fill would hash bytes that do not continue its own.

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use url::Url;

use super::Upstream;
use crate::error::ProxyError;

/// The auth scope a response was requested with, kept in its extensions so that a resume
/// request authenticates the same way.
#[derive(Clone, Debug, Default)]
pub struct RequestScope(pub Option<String>);

/// A `Content-Range: bytes <first>-<last>/<total>` header value (`total` `*`: unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte position.
    pub first: u64,
    /// Last byte position (inclusive).
    pub last: u64,
    /// Complete length, if stated.
    pub total: Option<u64>,
}

impl ContentRange {
    /// Parses a satisfied byte range; `None` for anything malformed or inconsistent
    /// (`last < first`, `last >= total`, the unsatisfied form `bytes */N`).
    pub fn parse(v: &str) -> Option<ContentRange> {
        let rest = v.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let digits = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let first = digits(first)?;
        let last = digits(last)?;
        let total = match total {
            "*" => None,
            t => Some(digits(t)?),
        };
        if last < first || total.is_some_and(|t| last >= t) {
            return None;
        }
        Some(ContentRange { first, last, total })
    }
}

impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.total {
            Some(t) => write!(f, "bytes {}-{}/{t}", self.first, self.last),
            None => write!(f, "bytes {}-{}/*", self.first, self.last),
        }
    }
}

/// Whether a response says its upstream serves byte ranges of it.
pub fn accepts_ranges(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")))
}

impl Upstream {
    /// Requests bytes `from..total` of `url` (a URL this upstream's own answer led to) and
    /// returns the response only if it is exactly that range.
    pub async fn fetch_rest(
        &self,
        url: Url,
        scope: Option<&str>,
        from: u64,
        total: u64,
    ) -> Result<reqwest::Response, ProxyError> {
        let mut h = HeaderMap::new();
        let range = HeaderValue::from_str(&format!("bytes={from}-"))
            .map_err(|e| ProxyError::internal(format!("range header: {e}")))?;
        h.insert(http::header::RANGE, range);
        let resp = self.send_url(Method::GET, url, h, scope, None).await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(self.err(
                format!(
                    "resuming at byte {from}: upstream answered {} instead of 206",
                    resp.status()
                ),
                Some(resp.status().as_u16()),
            ));
        }
        let got = resp
            .headers()
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(ContentRange::parse);
        let want = ContentRange {
            first: from,
            last: total.saturating_sub(1),
            total: Some(total),
        };
        if got != Some(want) {
            return Err(self.err(
                format!("resuming at byte {from}: Content-Range {got:?} is not {want}"),
                None,
            ));
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_satisfied_ranges_only() {
        let r = ContentRange::parse("bytes 100-199/200").unwrap();
        assert_eq!((r.first, r.last, r.total), (100, 199, Some(200)));
        assert_eq!(
            ContentRange::parse("bytes 0-0/*").unwrap().total,
            None,
            "unknown total"
        );
        for bad in [
            "",
            "bytes",
            "bytes */200",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes -1-5/10",
            "bytes 1-5",
            "items 1-5/10",
            "bytes +1-5/10",
            "bytes 1-99999999999999999999999/5",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn accept_ranges_bytes_is_recognised() {
        let mut h = HeaderMap::new();
        assert!(!accepts_ranges(&h));
        h.insert(http::header::ACCEPT_RANGES, "none".parse().unwrap());
        assert!(!accepts_ranges(&h));
        h.insert(http::header::ACCEPT_RANGES, "Bytes".parse().unwrap());
        assert!(accepts_ranges(&h));
    }
}
