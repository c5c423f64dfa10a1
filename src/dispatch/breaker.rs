//! Per-target flow control in one gateway process: the circuit breaker and the token bucket.

use std::time::{Duration, Instant};

use crate::api::{CircuitBreaker, CircuitState, RateLimit};

/// closed → open after `failure_threshold` consecutive failures → half-open after
/// `reset_timeout`, letting `half_open_requests` probes through → closed when they all succeed,
/// open again on any failure.
#[derive(Debug)]
pub struct Breaker {
    settings: CircuitBreaker,
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probes_started: u32,
    probes_succeeded: u32,
}

/// Whether a request may go now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Open: wait this long.
    Wait(Duration),
}

impl Breaker {
    pub fn new(mut settings: CircuitBreaker) -> Self {
        // Admission refuses more; configuration that never met it must not overflow `Instant`.
        settings.reset_timeout = settings
            .reset_timeout
            .min(crate::api::delivery::MAX_RESET_TIMEOUT);
        Self {
            settings,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probes_started: 0,
            probes_succeeded: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Failed attempts in a row while closed (what opened it, once open).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::Open => {
                let reopen = self.opened_at.unwrap_or(now) + self.settings.reset_timeout.get();
                if now < reopen {
                    return Admission::Wait(reopen - now);
                }
                self.state = CircuitState::HalfOpen;
                self.probes_started = 1;
                self.probes_succeeded = 0;
                Admission::Allowed
            }
            CircuitState::HalfOpen => {
                if self.probes_started < self.settings.half_open_requests {
                    self.probes_started += 1;
                    Admission::Allowed
                } else {
                    // Probes are out; wait for their verdict.
                    Admission::Wait(self.settings.reset_timeout.get().min(Duration::from_secs(1)))
                }
            }
        }
    }

    /// Records an attempt's result; returns the new state when it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<CircuitState> {
        let before = self.state;
        match (self.state, success) {
            (CircuitState::Closed, true) => self.consecutive_failures = 0,
            (CircuitState::Closed, false) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.settings.failure_threshold {
                    self.open(now);
                }
            }
            (CircuitState::HalfOpen, true) => {
                self.probes_succeeded += 1;
                if self.probes_succeeded >= self.settings.half_open_requests {
                    self.state = CircuitState::Closed;
                    self.consecutive_failures = 0;
                }
            }
            (CircuitState::HalfOpen, false) => self.open(now),
            // Results of requests sent before the circuit opened.
            (CircuitState::Open, _) => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open;
        self.opened_at = Some(now);
    }

    /// When an open circuit lets probes through.
    pub fn reopens_in(&self, now: Instant) -> Option<Duration> {
        (self.state == CircuitState::Open).then(|| {
            (self.opened_at.unwrap_or(now) + self.settings.reset_timeout.get()).saturating_duration_since(now)
        })
    }
}

/// Token bucket: `per_second` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(limit: &RateLimit, now: Instant) -> Self {
        let burst = limit.burst.unwrap_or(limit.per_second).max(1) as f64;
        Self {
            rate: limit.per_second as f64,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, reset_ms: u64, probes: u32) -> Breaker {
        Breaker::new(CircuitBreaker {
            failure_threshold: threshold,
            reset_timeout: crate::api::Duration::from_millis(reset_ms),
            half_open_requests: probes,
        })
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = breaker(3, 1000, 2);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(true, t0), None, "a success resets the count");
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.record(false, t0), Some(CircuitState::Open));
        assert_eq!(
            b.admit(t0 + Duration::from_millis(400)),
            Admission::Wait(Duration::from_millis(600))
        );
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(b.admit(t1), Admission::Allowed);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Allowed, "second probe");
        assert!(matches!(b.admit(t1), Admission::Wait(_)), "no third probe");
        assert_eq!(b.record(true, t1), None);
        assert_eq!(b.record(true, t1), Some(CircuitState::Closed));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = breaker(1, 100, 1);
        assert_eq!(b.record(false, t0), Some(CircuitState::Open));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(t1), Admission::Allowed);
        assert_eq!(b.record(false, t1), Some(CircuitState::Open));
        assert_eq!(b.reopens_in(t1), Some(Duration::from_millis(100)));
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(
            &RateLimit {
                per_second: 10,
                burst: Some(3),
            },
            t0,
        );
        for _ in 0..3 {
            assert_eq!(bucket.take(t0), Ok(()));
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(t0 + Duration::from_millis(100)), Ok(()));
    }
}
