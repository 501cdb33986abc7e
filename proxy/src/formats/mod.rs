//! Client protocols. Each format parses its requests into typed artifacts, asks the store,
//! the fills and the upstream for them, and shapes the answer; none touches file paths.
//!
//! OCI is served under `/v2/`; every other format is mounted under its upstream's name
//! (`/<name>/...`) and gets a [`Request`] with the path below that mount point.

pub mod cargo;
pub mod npm;
pub mod oci;
pub mod pypi;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::app::App;
use crate::docs::{Fetched, Fetcher, Validators};
use crate::error::ProxyError;
use crate::fill::UpstreamBody;
use crate::hashes::Expect;
use crate::response::{Body, CacheStatus, Reply};
use crate::upstream::Upstream;

/// A request to a mounted (non-OCI) upstream.
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path below `/<upstream>/`, without the leading `/` (may be empty).
    pub rest: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Client request headers.
    pub headers: &'a HeaderMap,
    /// Request body (POST only; bounded).
    pub body: Option<Bytes>,
}

impl Request<'_> {
    /// A client header as text.
    pub fn header(&self, name: impl http::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Streams an upstream response to the client unchanged (status, content type, body):
/// for endpoints that are not cacheable (search, audits). Only headers that describe the
/// body are copied.
pub fn pass_through(up: &Upstream, resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let mut r = Reply::new(status, CacheStatus::Bypass);
    for name in [
        "content-type",
        "content-encoding",
        "cache-control",
        "etag",
        "last-modified",
        "retry-after",
    ] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            r = r.header(static_name(name), v.to_string());
        }
    }
    let len = resp.content_length();
    let name = up.name().to_string();
    let stream = resp
        .bytes_stream()
        .map(move |c| {
            c.map_err(|e| ProxyError::Upstream {
                upstream: name.clone(),
                message: format!("reading body: {e}"),
                status: None,
            })
        })
        .boxed();
    r.body(Body::Stream(stream, len))
}

/// Reads a whole upstream document (manifest, packument, simple page), refusing more than
/// `limit` bytes (`server.max_metadata_size`) before buffering them.
pub async fn read_limited(
    up: &Upstream,
    resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<Bytes, ProxyError> {
    let too_large = || {
        ProxyError::TooLarge(format!(
            "{what}: upstream document is larger than the {limit}-byte limit (server.max_metadata_size)"
        ))
    };
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| up.body_error(e))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A package file that the upstream's own metadata names (an npm tarball, a `.crate`) and
/// that is not stored yet.
pub(crate) struct OriginFile<N> {
    /// Where the metadata says it is.
    pub url: url::Url,
    /// What it must hash to.
    pub expect: Expect,
    /// Format label of the fill's metrics.
    pub format: &'static str,
    /// `Content-Type` of the answer.
    pub content_type: &'static str,
    /// The file, for error messages.
    pub what: String,
    /// The error for an origin `404`, which is also remembered under `negative_key` for
    /// the upstream's `negative_ttl`.
    pub not_found: N,
    pub negative_key: String,
}

/// Answers a request for `file`: a HEAD asks the origin whether (and how big) it is and
/// starts no fill; a GET joins or starts the single-flight fill of `file.expect`, streamed
/// to this client as it arrives (`MISS`). `Ok(None)`: it was stored meanwhile, for the
/// caller to serve from the store.
pub(crate) async fn from_origin<N>(
    app: &Arc<App>,
    up: &Arc<Upstream>,
    file: OriginFile<N>,
    head: bool,
) -> Result<Option<Reply>, ProxyError>
where
    N: Fn() -> ProxyError + Send + 'static,
{
    let OriginFile {
        url,
        expect,
        format,
        content_type,
        what,
        not_found,
        negative_key,
    } = file;
    let reply = |cache| Reply::new(StatusCode::OK, cache).header("Content-Type", content_type);
    if head {
        let resp = up
            .send_url(Method::HEAD, url, HeaderMap::new(), None, None)
            .await?;
        if !resp.status().is_success() {
            return Err(up.status_error(resp.status(), &what, not_found()));
        }
        let mut r = reply(CacheStatus::Bypass);
        r.head_length = crate::upstream::stated_length(&resp);
        return Ok(Some(r));
    }
    let up2 = up.clone();
    let opener = Box::new(move || {
        async move {
            let resp = up2
                .send_url(Method::GET, url, HeaderMap::new(), None, None)
                .await?;
            if !resp.status().is_success() {
                return Err(up2.status_error(resp.status(), &what, not_found()));
            }
            Ok(UpstreamBody::from_response(up2.clone(), resp))
        }
        .boxed()
    });
    let Some(fill) = app
        .fills
        .join_or_start(expect, format, up.name(), opener)
        .await?
    else {
        return Ok(None);
    };
    if let Err(e) = fill.started().await {
        if matches!(e, ProxyError::NotFound { .. }) {
            app.remember_negative(negative_key, up.cfg.negative_ttl.get());
        }
        return Err(e);
    }
    Ok(Some(
        reply(CacheStatus::Miss).body(Body::Follow(fill.follow(0, None))),
    ))
}

/// Fetcher of a document at `path` below the upstream's base URL (a packument, a Cargo
/// index file): the statuses in `gone` mean it does not exist; conditional when validators are given, gzip accepted and undone, bounded
/// by `max_metadata_size`, and refused unless `check` accepts its bytes. Its bytes are
/// counted in `sluice_bytes_total{format,source="upstream"}`.
pub(crate) fn doc_fetcher(
    app: &App,
    up: &Arc<Upstream>,
    path: String,
    accept: &'static str,
    format: &'static str,
    gone: &'static [u16],
    check: impl Fn(&[u8]) -> Result<(), String> + Send + Sync + 'static,
) -> Fetcher {
    let up = up.clone();
    let check = Arc::new(check);
    let limit = app.config.server.max_metadata_size.0;
    Arc::new(move |v: Option<Validators>| {
        let (up, path, check) = (up.clone(), path.clone(), check.clone());
        async move {
            let mut h = HeaderMap::new();
            h.insert(http::header::ACCEPT, HeaderValue::from_static(accept));
            h.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
            if let Some(v) = v {
                let pairs = [
                    (http::header::IF_NONE_MATCH, v.etag),
                    (http::header::IF_MODIFIED_SINCE, v.last_modified),
                ];
                for (k, val) in pairs {
                    if let Some(hv) = val.and_then(|s| HeaderValue::from_str(&s).ok()) {
                        h.insert(k, hv);
                    }
                }
            }
            let resp = up.send(Method::GET, &path, h, None, None).await?;
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if gone.contains(&status.as_u16()) {
                return Ok(Fetched::NotFound);
            }
            if !status.is_success() {
                return Err(up.status_error(status, &path, ProxyError::internal("unreachable")));
            }
            let header = |n: http::header::HeaderName| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type =
                header(http::header::CONTENT_TYPE).unwrap_or_else(|| "application/json".into());
            let etag = header(http::header::ETAG);
            let last_modified = header(http::header::LAST_MODIFIED);
            let gzip = header(http::header::CONTENT_ENCODING)
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
            let mut bytes = read_limited(&up, resp, limit, &path).await?;
            metrics::counter!("sluice_bytes_total", "format" => format, "source" => "upstream")
                .increment(bytes.len() as u64);
            let bad = |m: String| ProxyError::Upstream {
                upstream: up.name().to_string(),
                message: format!("{path}: {m}"),
                status: None,
            };
            if gzip {
                bytes = gunzip_limited(&bytes, limit).map_err(bad)?;
            }
            check(&bytes).map_err(bad)?;
            Ok(Fetched::Doc {
                bytes,
                content_type,
                etag,
                last_modified,
            })
        }
        .boxed()
    })
}

fn gunzip_limited(gz: &[u8], limit: u64) -> Result<Bytes, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(gz).take(limit + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| format!("bad gzip body: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "document is larger than the {limit}-byte limit once decompressed"
        ));
    }
    Ok(Bytes::from(out))
}

fn static_name(n: &str) -> &'static str {
    match n {
        "content-type" => "Content-Type",
        "content-encoding" => "Content-Encoding",
        "cache-control" => "Cache-Control",
        "etag" => "ETag",
        "retry-after" => "Retry-After",
        _ => "Last-Modified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunzip_is_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[b'x'; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip_limited(&gz, 10_000).unwrap().len(), 10_000);
        assert!(gunzip_limited(&gz, 9_999).is_err());
        assert!(gunzip_limited(b"not gzip", 100).is_err());
    }
}
