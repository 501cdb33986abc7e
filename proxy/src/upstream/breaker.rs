//! A per-upstream circuit breaker: after `circuit_failures` consecutive failed requests the
//! circuit opens and requests fail at once (so the formats' stale-if-error paths answer from
//! the cache without waiting on timeouts); after `circuit_cooldown` one probe request is let
//! through (half-open) and its outcome closes or re-opens the circuit.
//!
//! A failure is what the stale paths treat as one: a connect error, a timeout, a 5xx, 408 or
//! 429, counted once per request after its retries. Anything else (200, 304, 404, ...) is a
//! success: the upstream is answering.
//!
//! An upstream can also ask to be left alone: a final `429` with `Retry-After` pauses it (the
//! circuit opens for that long, at most [`MAX_PAUSE`], whatever the failure count), so
//! sluice stops sending it requests it has said it will refuse; then one probe, as above.
//!
//! State is exported as `sluice_circuit_state{upstream}` (0 closed, 1 open, 2 half-open),
//! each opening counts in `sluice_circuit_opens_total{upstream}` and each pause the upstream
//! asked for in `sluice_upstream_pauses_total{upstream}`.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest pause an upstream's `Retry-After` imposes: a larger value (a misconfigured
/// upstream, a date far ahead) must not keep uncached artifacts unavailable for hours.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// `asked`: the upstream asked for the pause (429 with `Retry-After`).
    Open {
        until: Instant,
        asked: bool,
    },
    HalfOpen {
        probing: bool,
    },
}

/// Why the circuit refuses a request right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Until the next probe may go through (zero: a probe is in flight).
    pub wait: Duration,
    /// The upstream asked for this pause (a `429` with `Retry-After`) rather than failing.
    pub asked: bool,
}

/// What a circuit is doing, for display ([`Breaker::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Requests go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Requests fail at once for `wait` more; `asked`: the upstream's own pause (a `429`).
    Open { wait: Duration, asked: bool },
    /// The cooldown or pause is over (or a probe was abandoned): the next request probes.
    Due { asked: bool },
    /// A probe is in flight.
    Probing,
}

/// What became of an admitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (any status but 5xx/408/429).
    Success,
    /// Connect error, timeout, 5xx, 408 or 429.
    Failure,
}

/// The breaker of one upstream.
pub struct Breaker {
    upstream: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Permission to send one request; report its outcome with [`Permit::record`]. Dropped
/// without a record (the client went away), a probe frees the half-open slot for the next
/// request instead of wedging the circuit.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker opening after `threshold` consecutive failures (0: never opens).
    pub fn new(upstream: &str, threshold: u32, cooldown: Duration) -> Breaker {
        let b = Breaker {
            upstream: upstream.to_string(),
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        b.export(State::Closed { failures: 0 });
        b
    }

    /// Admits a request, or says how long the circuit stays open.
    pub fn admit(&self) -> Result<Permit<'_>, Refusal> {
        self.admit_at(Instant::now())
    }

    /// How long the circuit stays open, when it refuses requests right now; takes no probe
    /// slot, so a request can check it before queueing for a concurrency slot.
    pub fn refusing(&self) -> Option<Refusal> {
        self.refusing_at(Instant::now())
    }

    fn refusing_at(&self, now: Instant) -> Option<Refusal> {
        match *self.state.lock() {
            State::Open { until, asked } if now < until => Some(Refusal {
                wait: until - now,
                asked,
            }),
            State::HalfOpen { probing: true } => Some(PROBING),
            _ => None,
        }
    }

    /// The upstream answered `429` with `Retry-After: wait`: no request goes to it for that
    /// long (at most [`MAX_PAUSE`]; an open circuit that ends later stays as it is), then
    /// one probe. Returns the pause it applied.
    pub fn pause(&self, wait: Duration) -> Duration {
        self.pause_at(wait, Instant::now())
    }

    fn pause_at(&self, wait: Duration, now: Instant) -> Duration {
        let wait = wait.min(MAX_PAUSE);
        let mut st = self.state.lock();
        if let State::Open { until, .. } = *st {
            if until >= now + wait {
                return until - now;
            }
        }
        metrics::counter!("sluice_upstream_pauses_total", "upstream" => self.upstream.clone())
            .increment(1);
        tracing::warn!(upstream = %self.upstream, ?wait,
            "upstream asked to wait (429 with Retry-After): not contacting it, serving from cache");
        *st = State::Open {
            until: now + wait,
            asked: true,
        };
        self.export(*st);
        wait
    }

    fn admit_at(&self, now: Instant) -> Result<Permit<'_>, Refusal> {
        let mut st = self.state.lock();
        let probe = match *st {
            State::Closed { .. } => false,
            State::Open { until, asked } if now < until => {
                return Err(Refusal {
                    wait: until - now,
                    asked,
                })
            }
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *st = State::HalfOpen { probing: true };
                self.export(*st);
                true
            }
            // One probe at a time; the others fail fast until it has answered.
            State::HalfOpen { probing: true } => return Err(PROBING),
        };
        Ok(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    /// What the circuit is doing now, read at once.
    pub fn status(&self) -> Status {
        self.status_at(Instant::now())
    }

    fn status_at(&self, now: Instant) -> Status {
        match *self.state.lock() {
            State::Closed { failures } => Status::Closed { failures },
            State::Open { until, asked } if now < until => Status::Open {
                wait: until - now,
                asked,
            },
            State::Open { asked, .. } => Status::Due { asked },
            State::HalfOpen { probing: true } => Status::Probing,
            State::HalfOpen { probing: false } => Status::Due { asked: false },
        }
    }

    /// 0 closed, 1 open, 2 half-open (the gauge's encoding).
    pub fn state_code(&self) -> u8 {
        code(*self.state.lock())
    }

    fn record_at(&self, probe: bool, outcome: Outcome, now: Instant) {
        let mut st = self.state.lock();
        let next = match (outcome, *st) {
            (Outcome::Success, _) => State::Closed { failures: 0 },
            (Outcome::Failure, State::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if self.threshold > 0 && failures >= self.threshold {
                    self.opened(now)
                } else {
                    State::Closed { failures }
                }
            }
            (Outcome::Failure, State::HalfOpen { .. }) if probe => self.opened(now),
            // A request admitted before the circuit opened, or a non-probe request finishing
            // while a probe runs: the circuit already reflects the failure.
            (Outcome::Failure, s) => s,
        };
        if next != *st {
            *st = next;
            self.export(next);
        }
    }

    fn opened(&self, now: Instant) -> State {
        metrics::counter!("sluice_circuit_opens_total", "upstream" => self.upstream.clone())
            .increment(1);
        tracing::warn!(upstream = %self.upstream, cooldown = ?self.cooldown,
            "circuit open: upstream failing, serving from cache");
        State::Open {
            until: now + self.cooldown,
            asked: false,
        }
    }

    fn abandon(&self, probe: bool) {
        if !probe {
            return;
        }
        let mut st = self.state.lock();
        if *st == (State::HalfOpen { probing: true }) {
            *st = State::HalfOpen { probing: false };
        }
    }

    fn export(&self, st: State) {
        metrics::gauge!("sluice_circuit_state", "upstream" => self.upstream.clone())
            .set(f64::from(code(st)));
    }
}

/// The refusal while the half-open probe is in flight: try again soon.
const PROBING: Refusal = Refusal {
    wait: Duration::ZERO,
    asked: false,
};

fn code(st: State) -> u8 {
    match st {
        State::Closed { .. } => 0,
        State::Open { .. } => 1,
        State::HalfOpen { .. } => 2,
    }
}

impl Permit<'_> {
    /// Reports what happened to the request.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record_at(self.probe, outcome, Instant::now());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.abandon(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker, now: Instant) {
        let p = b.admit_at(now).expect("admitted");
        let probe = p.probe;
        std::mem::forget(p);
        b.record_at(probe, Outcome::Failure, now);
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = Breaker::new("t", 3, Duration::from_secs(10));
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        b.admit_at(t).expect("closed").record(Outcome::Success);
        fail(&b, t);
        fail(&b, t);
        assert_eq!(b.state_code(), 0, "two failures after a success");
        fail(&b, t);
        assert_eq!(b.state_code(), 1);
        let refusal = b.admit_at(t).err().expect("open circuit fails fast");
        assert_eq!(refusal.wait, Duration::from_secs(10));
        assert!(!refusal.asked);
    }

    #[test]
    fn status_follows_the_circuit_through_open_due_probing_and_closed() {
        let b = Breaker::new("t", 2, Duration::from_secs(10));
        let t = Instant::now();
        fail(&b, t);
        assert_eq!(b.status_at(t), Status::Closed { failures: 1 });
        fail(&b, t);
        assert_eq!(
            b.status_at(t + Duration::from_secs(4)),
            Status::Open {
                wait: Duration::from_secs(6),
                asked: false
            }
        );
        let later = t + Duration::from_secs(11);
        assert_eq!(b.status_at(later), Status::Due { asked: false });
        let probe = b.admit_at(later).expect("the probe");
        assert_eq!(b.status_at(later), Status::Probing);
        drop(probe);
        assert_eq!(
            b.status_at(later),
            Status::Due { asked: false },
            "abandoned"
        );
        b.admit_at(later).expect("probe").record(Outcome::Success);
        assert_eq!(b.status_at(later), Status::Closed { failures: 0 });
        b.pause_at(Duration::from_secs(30), later);
        assert_eq!(
            b.status_at(later),
            Status::Open {
                wait: Duration::from_secs(30),
                asked: true
            }
        );
        assert_eq!(
            b.status_at(later + Duration::from_secs(31)),
            Status::Due { asked: true }
        );
    }

    #[test]
    fn refusing_reports_an_open_circuit_without_taking_the_probe() {
        let b = Breaker::new("t", 1, Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(b.refusing_at(t), None, "closed");
        fail(&b, t);
        assert_eq!(
            b.refusing_at(t).map(|r| r.wait),
            Some(Duration::from_secs(5))
        );
        let later = t + Duration::from_secs(6);
        assert_eq!(b.refusing_at(later), None, "cooldown over: a probe may go");
        assert_eq!(b.refusing_at(later), None, "checking takes no probe slot");
        let probe = b.admit_at(later).expect("the probe");
        assert_eq!(b.refusing_at(later), Some(PROBING), "probe in flight");
        probe.record(Outcome::Success);
        assert_eq!(b.refusing_at(later), None);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let b = Breaker::new("t", 1, Duration::from_secs(5));
        let t = Instant::now();
        fail(&b, t);
        assert!(b.admit_at(t + Duration::from_secs(4)).is_err());
        let later = t + Duration::from_secs(5);
        let probe = b.admit_at(later).expect("probe after cooldown");
        assert_eq!(b.state_code(), 2);
        assert!(b.admit_at(later).is_err(), "second request while probing");
        b.record_at(true, Outcome::Failure, later);
        std::mem::forget(probe);
        assert_eq!(b.state_code(), 1, "failed probe re-opens");
        assert!(b.admit_at(later + Duration::from_secs(1)).is_err());
        let probe = b
            .admit_at(later + Duration::from_secs(5))
            .expect("second probe");
        probe.record(Outcome::Success);
        assert_eq!(b.state_code(), 0, "successful probe closes");
        assert!(b.admit_at(later + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new("t", 1, Duration::ZERO);
        let t = Instant::now();
        fail(&b, t);
        let probe = b.admit_at(t).expect("probe");
        drop(probe);
        assert!(
            b.admit_at(t).is_ok(),
            "slot freed after the probe was dropped"
        );
    }

    #[test]
    fn a_retry_after_pauses_the_upstream_up_to_the_cap_then_one_probe_goes() {
        // Never opened by failures (threshold 0), yet paused when the upstream asks.
        let b = Breaker::new("t", 0, Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(
            b.pause_at(Duration::from_secs(30), t),
            Duration::from_secs(30)
        );
        assert_eq!(b.state_code(), 1);
        let refusal = b
            .admit_at(t + Duration::from_secs(29))
            .err()
            .expect("paused");
        assert_eq!(
            refusal,
            Refusal {
                wait: Duration::from_secs(1),
                asked: true
            }
        );
        // A shorter pause asked later does not shorten it.
        assert_eq!(
            b.pause_at(Duration::from_secs(1), t),
            Duration::from_secs(30)
        );
        let later = t + Duration::from_secs(30);
        let probe = b.admit_at(later).expect("the pause is over: a probe");
        assert_eq!(b.refusing_at(later), Some(PROBING));
        probe.record(Outcome::Success);
        assert_eq!(b.state_code(), 0);
        // An hour asked for is capped.
        assert_eq!(b.pause_at(Duration::from_secs(3600), later), MAX_PAUSE);
        assert!(b.admit_at(later + MAX_PAUSE).is_ok());
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new("t", 0, Duration::from_secs(5));
        let t = Instant::now();
        for _ in 0..100 {
            fail(&b, t);
        }
        assert_eq!(b.state_code(), 0);
    }
}
