//! Per-client request rate (`server.client_rate_limit`): a token bucket per client address
//! (from `governor`), so one runaway CI job cannot take every upstream slot and every core
//! from the others. A client over its rate is answered `429` at once, in its own format,
//! with a `Retry-After` of the whole seconds until its next request is allowed; it is never
//! queued. Health, readiness and metrics endpoints are not limited. Refusals count in
//! `sluice_client_throttled_total{format}`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sluice_config::RateLimit;

/// Checks between two sweeps of clients whose buckets are full again (the map would
/// otherwise keep every address ever seen).
const SWEEP_EVERY: u64 = 4096;

/// The limiter shared by all listener threads.
pub struct ClientLimits {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
    /// As configured, for the refusal's message.
    pub rate: Option<RateLimit>,
}

impl ClientLimits {
    /// The limits `rate` asks for (`None`: no limit).
    pub fn new(rate: Option<RateLimit>) -> ClientLimits {
        let limiter = rate.and_then(|r| {
            let burst = NonZeroU32::new(r.count)?;
            let quota = Quota::with_period(r.per / r.count)?.allow_burst(burst);
            Some(RateLimiter::keyed(quota))
        });
        ClientLimits {
            limiter,
            checks: AtomicU64::new(0),
            rate,
        }
    }

    /// Lets a request from `client` through, or says how long until one would be. An IPv6
    /// client is counted by its /64 (one host's SLAAC and privacy addresses share it, so
    /// rotating addresses does not buy a fresh bucket).
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let client = bucket_of(client);
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The configured rate as written (`"100/s"`), for messages.
    pub fn describe(&self) -> String {
        self.rate.map_or_else(String::new, |r| {
            let unit = match r.per.as_secs() {
                1 => "s",
                60 => "m",
                _ => "h",
            };
            format!("{}/{unit}", r.count)
        })
    }

    /// How many clients the limiter tracks.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The address a client is counted under: IPv4 as is (an IPv4-mapped IPv6 address too),
/// IPv6 by its /64 prefix.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_own_bucket_and_a_refusal_says_how_long() {
        let l = ClientLimits::new(Some("2/m".parse().unwrap()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let wait = l.check(a).expect_err("third request within the minute");
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(l.check(b).is_ok(), "another client is not held back");
        // One IPv6 /64 is one client, whichever address it uses; an IPv4-mapped address
        // is its IPv4 client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.check(v6("2001:db8:1:2::1")).is_ok());
        assert!(l.check(v6("2001:db8:1:2:aaaa::9")).is_ok());
        assert!(l.check(v6("2001:db8:1:2:ffff::7")).is_err(), "same /64");
        assert!(l.check(v6("2001:db8:1:3::1")).is_ok(), "another /64");
        assert!(l.check(v6("::ffff:10.0.0.1")).is_err(), "mapped 10.0.0.1");
        assert_eq!(l.tracked(), 4);
        assert_eq!(l.describe(), "2/m");
        let none = ClientLimits::new(None);
        for _ in 0..1000 {
            assert!(none.check(a).is_ok());
        }
    }
}
