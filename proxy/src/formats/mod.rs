//! Client protocols. Each format parses its requests into typed artifacts, asks the store,
//! the fills and the upstream for them, and shapes the answer; none touches file paths.
//!
//! OCI is served under `/v2/`; every other format is mounted under its upstream's name
//! (`/<name>/...`) and gets a [`Request`] with the path below that mount point.

pub mod npm;
pub mod oci;
pub mod pypi;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method};

use crate::error::ProxyError;
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
    pub fn header(&self, name: &str) -> Option<&str> {
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
