//! Retry rules for upstream requests: which attempts may be repeated and how long to wait.
//!
//! Only idempotent requests (GET, HEAD) are retried, and only after a connect error, a
//! timeout, or a 408/429/500/502/503/504 answer: any other 4xx is the upstream's considered
//! answer and repeating it would only add load. Delays grow exponentially from
//! `retry_backoff` with jitter (so a burst of failing clients does not retry in lockstep).
//! A `Retry-After` on 429/503 is honoured when it is at most `retry_after_max`; an upstream
//! asking for a longer pause is not retried at all — the caller fails now and serves stale.
//! A final `429` with `Retry-After` pauses the whole upstream ([`super::breaker`]).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

/// The ceiling of one exponential backoff step, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether `method` may be sent again without changing anything upstream.
pub fn is_idempotent(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// Whether an answer with `status` is worth retrying.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The delay before retry number `attempt` (0 for the first retry): half of
/// `base · 2^attempt` (capped at [`MAX_BACKOFF`]) plus a random part of up to the other half.
pub fn backoff(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let step = base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// What a 429/503 answer's `Retry-After` asks for: `Some(delay)` (delta-seconds or an
/// HTTP-date, relative to `now`), `None` when absent or unparseable.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long a final `429` answer asked sluice to leave the upstream alone (its
/// `Retry-After`), if it said.
pub fn asked_to_pause(resp: &reqwest::Response) -> Option<Duration> {
    if resp.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    retry_after(resp.headers(), SystemTime::now())
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 requires
/// senders to use.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::HEAD));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PUT));
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 301, 304, 400, 401, 403, 404, 410, 501] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(base, 0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(base, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(base, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(base, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(base, 1000, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(u64::MAX), 5, 1.0), MAX_BACKOFF);
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 06 Nov 1994 08:49:37
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:40 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h, now),
            Some(Duration::ZERO),
            "date in the past"
        );
        for bad in [
            "soon",
            "-1",
            "Sun, 32 Nov 1994 08:49:40 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            h.insert(http::header::RETRY_AFTER, bad.parse().unwrap());
            assert_eq!(retry_after(&h, now), None, "{bad}");
        }
    }

    #[test]
    fn http_date_matches_known_epochs() {
        let t = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH);
        let t = parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            951_825_600
        );
    }
}
