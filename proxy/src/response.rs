//! What a handler answers: status, headers, how it was served, and a body that is either
//! in memory, a memory-mapped store file, or a follower of an in-progress fill.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use pingora::http::ResponseHeader;

use crate::fill::Follower;

/// How a response was served (`X-Sluice-Cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the store, no upstream contact.
    Hit,
    /// Fetched from the upstream (and stored).
    Miss,
    /// From the store after the upstream failed to revalidate it.
    Stale,
    /// From the store after the upstream confirmed it unchanged.
    Revalidated,
    /// Not cacheable; answered by or passed to the upstream.
    Bypass,
}

impl CacheStatus {
    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// Of two documents served as one answer, the status of the less cached: a miss over
    /// anything, then stale, then revalidated.
    pub fn least_cached(self, other: CacheStatus) -> CacheStatus {
        let rank = |c: CacheStatus| match c {
            CacheStatus::Miss | CacheStatus::Bypass => 0,
            CacheStatus::Stale => 1,
            CacheStatus::Revalidated => 2,
            CacheStatus::Hit => 3,
        };
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A response body.
pub enum Body {
    /// No body (HEAD, 304, errors without body).
    Empty,
    /// Small in-memory bodies.
    Full(Bytes),
    /// A store file mapped into memory (or a slice of one), sent in ~1 MiB slices.
    Mapped(Bytes),
    /// Bytes of a fill in progress, delivered as the upstream sends them.
    Follow(Follower),
    /// An upstream body passed through (uncached endpoints), with its length if known.
    Stream(
        futures_util::stream::BoxStream<'static, Result<Bytes, crate::error::ProxyError>>,
        Option<u64>,
    ),
}

/// A handler's answer.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers other than `X-Sluice-Cache`, `X-Request-Id` (added by the server).
    pub headers: Vec<(&'static str, String)>,
    /// How it was served.
    pub cache: CacheStatus,
    /// The body.
    pub body: Body,
    /// `Content-Length` to announce when the body is `Empty` (HEAD).
    pub head_length: Option<u64>,
    /// `status` and `headers` already converted to a pingora header by [`head_template`],
    /// kept by a handler per cached document: the server clones it instead of converting
    /// each header again. Dropped by [`Reply::header`], so it never disagrees with them.
    pub prebuilt: Option<Arc<ResponseHeader>>,
}

/// `status` and `headers` as the pingora response header the server sends (before it adds
/// `X-Request-Id`, `X-Sluice-Cache` and the length). Header names go out in lower case
/// (HTTP/1.1 names are case-insensitive; HTTP/2 requires lower case): a header that keeps
/// a second map of the names' spelling costs a second map to clone and to append to on
/// every response.
pub fn head_template(
    status: StatusCode,
    headers: &[(&'static str, String)],
) -> Option<ResponseHeader> {
    let mut resp = ResponseHeader::build_no_case(status, Some(headers.len() + 4)).ok()?;
    for (k, v) in headers {
        let _ = resp.append_header(*k, v.as_str());
    }
    Some(resp)
}

impl Reply {
    /// A reply with status and cache status, no headers, no body.
    pub fn new(status: StatusCode, cache: CacheStatus) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            cache,
            body: Body::Empty,
            head_length: None,
            prebuilt: None,
        }
    }

    /// A reply whose headers are only the converted `head` (kept by a handler from an
    /// earlier [`head_template`] of the same headers); `headers` stays empty, so no header
    /// may be added to it.
    pub fn prebuilt_only(
        status: StatusCode,
        cache: CacheStatus,
        head: Arc<ResponseHeader>,
    ) -> Reply {
        Reply {
            prebuilt: Some(head),
            ..Reply::new(status, cache)
        }
    }

    /// The `Content-Type` it will be sent with, from its headers or its kept head.
    pub fn content_type(&self) -> Option<&str> {
        match self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            Some((_, v)) => Some(v.as_str()),
            None => self
                .prebuilt
                .as_ref()?
                .headers
                .get(http::header::CONTENT_TYPE)?
                .to_str()
                .ok(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        debug_assert!(
            self.prebuilt.is_none() || !self.headers.is_empty(),
            "a header added to a reply built from a kept head only"
        );
        self.headers.push((name, value.into()));
        self.prebuilt = None;
        self
    }

    /// Attaches the converted header kept for this reply's status and headers (see
    /// [`Reply::prebuilt`]); call after the last [`Reply::header`].
    pub fn with_prebuilt(mut self, head: Arc<ResponseHeader>) -> Reply {
        self.prebuilt = Some(head);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }

    /// For HEAD: drop the body but keep its length in `Content-Length`.
    pub fn into_head(mut self) -> Reply {
        let len = match &self.body {
            Body::Empty => self.head_length,
            Body::Full(b) | Body::Mapped(b) => Some(b.len() as u64),
            Body::Follow(f) => f.len(),
            Body::Stream(_, len) => *len,
        };
        self.head_length = len;
        self.body = Body::Empty;
        self
    }
}

/// A parsed single `Range: bytes=...` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` or `bytes=a-` (b exclusive here; `None` = to the end).
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value; `None` for anything but one byte range (the whole
    /// body is then served, which HTTP allows).
    pub fn parse(v: &str) -> Option<ByteRange> {
        let spec = v.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let start: u64 = a.parse().ok()?;
        if b.is_empty() {
            return Some(ByteRange::From(start, None));
        }
        let end: u64 = b.parse().ok()?;
        if end < start {
            return None;
        }
        Some(ByteRange::From(start, Some(end.saturating_add(1))))
    }

    /// Resolves against a total size into `[start, end)`, or `None` if unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(s, e) => {
                if s >= size {
                    return None;
                }
                Some((s, e.unwrap_or(size).min(size)))
            }
            ByteRange::Suffix(n) => {
                // Nothing of an empty body is satisfiable (RFC 9110 §14.1.3).
                if n == 0 || size == 0 {
                    return None;
                }
                Some((size.saturating_sub(n), size))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_comes_from_the_headers_or_the_kept_head() {
        let full = Reply::new(StatusCode::OK, CacheStatus::Hit)
            .header("Content-Type", "application/vnd.oci.image.index.v1+json");
        assert_eq!(
            full.content_type(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        let head = Arc::new(head_template(full.status, &full.headers).unwrap());
        let kept = Reply::prebuilt_only(StatusCode::OK, CacheStatus::Hit, head);
        assert!(kept.headers.is_empty());
        assert_eq!(
            kept.content_type(),
            Some("application/vnd.oci.image.index.v1+json"),
            "the images-served figure tells an index by it"
        );
        assert_eq!(
            Reply::new(StatusCode::OK, CacheStatus::Hit).content_type(),
            None
        );
    }

    #[test]
    fn two_documents_report_the_less_cached() {
        use CacheStatus::*;
        assert_eq!(Hit.least_cached(Miss), Miss);
        assert_eq!(Miss.least_cached(Hit), Miss);
        assert_eq!(Hit.least_cached(Stale), Stale);
        assert_eq!(Revalidated.least_cached(Stale), Stale);
        assert_eq!(Hit.least_cached(Revalidated), Revalidated);
        assert_eq!(Hit.least_cached(Hit), Hit);
    }

    #[test]
    fn ranges_parse_and_resolve() {
        assert_eq!(
            ByteRange::parse("bytes=0-9").unwrap().resolve(100),
            Some((0, 10))
        );
        assert_eq!(
            ByteRange::parse("bytes=90-").unwrap().resolve(100),
            Some((90, 100))
        );
        assert_eq!(
            ByteRange::parse("bytes=-10").unwrap().resolve(100),
            Some((90, 100))
        );
        assert_eq!(
            ByteRange::parse("bytes=50-500").unwrap().resolve(100),
            Some((50, 100))
        );
        assert_eq!(ByteRange::parse("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(ByteRange::parse("bytes=-0").unwrap().resolve(100), None);
        // An empty body: 416, never a range ending before it starts.
        assert_eq!(ByteRange::parse("bytes=-1").unwrap().resolve(0), None);
        assert_eq!(ByteRange::parse("bytes=0-").unwrap().resolve(0), None);
        assert!(ByteRange::parse("bytes=5-1").is_none());
        assert!(ByteRange::parse("bytes=0-1,3-4").is_none());
        assert!(ByteRange::parse("items=0-1").is_none());
        assert!(ByteRange::parse("bytes=x-1").is_none());
    }
}
