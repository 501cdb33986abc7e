//! The access log: one JSON line per response, in exactly the shape the `tracing` JSON
//! formatter gives an `info!(target: "access", ...)` event (same keys, order and
//! timestamp format), written by hand into a reused buffer and handed to
//! [`crate::logsink`]. Formatting it through `tracing`'s serde visitor cost more than the
//! rest of a cached hit; this costs a few hundred instructions.
//!
//! The line is written only when the log filter (`RUST_LOG`) enables `access` at `info`.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The fields of one access-log line.
pub struct Line<'a> {
    /// Request id (`X-Request-Id`).
    pub request_id: &'a str,
    /// Client `IP:port`.
    pub client: &'a dyn std::fmt::Display,
    /// Format label.
    pub format: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Package or repository name, if the path names one.
    pub name: Option<&'a str>,
    /// Response status.
    pub status: u16,
    /// `X-Sluice-Cache` value.
    pub cache: &'a str,
    /// Body bytes sent.
    pub bytes: u64,
    /// Whether the body was sent completely.
    pub complete: bool,
    /// Milliseconds from request head to last byte.
    pub ms: u64,
}

/// Whether access-log lines are wanted (checked per request: the filter's answer for a
/// call site is cached by `tracing`).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

thread_local! {
    static BUF: RefCell<(Vec<u8>, u64, [u8; 19])> = const { RefCell::new((Vec::new(), u64::MAX, [0; 19])) };
}

/// Writes one line (when [`enabled`]).
pub fn write(line: &Line<'_>) {
    if !enabled() {
        return;
    }
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        let (buf, sec, date) = &mut *b;
        buf.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != *sec {
            *sec = now.as_secs();
            *date = datetime(now.as_secs());
        }
        buf.extend_from_slice(b"{\"timestamp\":\"");
        buf.extend_from_slice(&date[..]);
        let _ = write!(buf, ".{:06}Z", now.subsec_micros());
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"request_id\":");
        json_str(buf, line.request_id);
        buf.extend_from_slice(b",\"client\":\"");
        let start = buf.len();
        let _ = write!(buf, "{}", line.client);
        escape_in_place(buf, start);
        buf.extend_from_slice(b"\",\"format\":");
        json_str(buf, line.format);
        buf.extend_from_slice(b",\"method\":");
        json_str(buf, line.method);
        buf.extend_from_slice(b",\"path\":");
        json_str(buf, line.path);
        if let Some(name) = line.name {
            buf.extend_from_slice(b",\"name\":");
            json_str(buf, name);
        }
        let _ = write!(buf, ",\"status\":{},\"cache\":", line.status);
        json_str(buf, line.cache);
        let _ = writeln!(
            buf,
            ",\"bytes\":{},\"complete\":{},\"ms\":{}}},\"target\":\"access\"}}",
            line.bytes, line.complete, line.ms
        );
        crate::logsink::write_access(buf);
    });
}

/// Appends `s` as a JSON string (serde_json's escaping).
fn json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|c| c >= 0x20 && c != b'"' && c != b'\\' && c < 0x7f)
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Escapes what was written to `buf` from `start` on, if it needs escaping.
fn escape_in_place(buf: &mut Vec<u8>, start: usize) {
    let needs = buf[start..]
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\');
    if needs {
        let raw = String::from_utf8_lossy(&buf[start..]).into_owned();
        buf.truncate(start);
        let quoted = serde_json::to_string(&raw).unwrap_or_default();
        buf.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), as `tracing-subscriber` prints it.
fn datetime(secs: u64) -> [u8; 19] {
    let mut out = [0u8; 19];
    out.copy_from_slice(&crate::timefmt::datetime(secs).as_bytes()[..19]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_tracing_subscriber() {
        assert_eq!(&datetime(0), b"1970-01-01T00:00:00");
        assert_eq!(&datetime(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&datetime(1_795_993_582), b"2026-11-29T23:06:22");
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let mut b = Vec::new();
        json_str(&mut b, "/a\"b\\c\u{1}é");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            serde_json::to_string("/a\"b\\c\u{1}é").unwrap()
        );
        let mut b = b"xx".to_vec();
        b.extend_from_slice(b"q\"\n");
        escape_in_place(&mut b, 2);
        assert_eq!(b, b"xxq\\\"\\n");
    }
}
