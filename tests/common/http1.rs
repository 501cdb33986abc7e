//! The one HTTP/1.1 request-head reader of the in-test upstream simulators (OCI, npm,
//! PyPI): hand-written so that each simulator keeps full control over how it answers
//! (cut bodies, stalls, wrong bytes).

#![allow(dead_code)]

use std::io;

use tokio::io::AsyncBufReadExt;

/// A parsed request head: method, path (with query), headers with lowercased names.
pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// A header's value (`name` lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head; `None` on EOF (between requests or mid-head). Blank lines
/// between requests are skipped; heads over 64 KiB are refused.
pub async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Head>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad request line");
    let method = parts.next().ok_or_else(bad)?.to_string();
    let path = parts.next().ok_or_else(bad)?.to_string();
    let mut headers = Vec::new();
    let mut total = line.len();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        total += line.len();
        if total > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too big"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method,
        path,
        headers,
    }))
}
