//! Retry decisions: which outcomes are retried, and when the next attempt is due.

use std::time::{Duration, SystemTime};

use rand::RngExt;

use crate::api::{ExponentialBackoff, RetryPolicy};

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Connection errors, timeouts, 408, 429, 5xx.
    Retryable,
    /// Other 4xx: the receiver refuses this request; sending it again will not help.
    Permanent,
    /// 410 Gone: the endpoint is gone; the target is paused.
    Gone,
}

pub fn classify(status: Option<u16>) -> Verdict {
    match status {
        None => Verdict::Retryable,
        Some(200..=299) => Verdict::Success,
        Some(410) => Verdict::Gone,
        Some(408 | 429) | Some(500..=599) => Verdict::Retryable,
        Some(_) => Verdict::Permanent,
    }
}

/// The policy with its defaults filled in: 8 attempts, exponential backoff from 5s to 1h.
pub fn max_attempts(policy: Option<&RetryPolicy>) -> u32 {
    policy.map_or(8, |p| p.max_attempts)
}

/// Delay before the next attempt after `attempts_made` attempts (≥ 1), never past
/// [`MAX_DURATION`](crate::api::duration::MAX_DURATION).
pub fn next_delay(policy: Option<&RetryPolicy>, attempts_made: u32) -> Duration {
    policy_delay(policy, attempts_made).min(crate::api::duration::MAX_DURATION.get())
}

fn policy_delay(policy: Option<&RetryPolicy>, attempts_made: u32) -> Duration {
    let default_backoff = ExponentialBackoff {
        initial_delay: crate::api::Duration::from_secs(5),
        max_delay: crate::api::Duration::from_secs(3600),
        multiplier: 2,
    };
    if let Some(schedule) = policy.and_then(|p| p.schedule.as_ref())
        && let Some(last) = schedule.last()
    {
        let index = (attempts_made as usize).saturating_sub(1);
        return schedule.get(index).unwrap_or(last).get();
    }
    let backoff = policy
        .and_then(|p| p.exponential.as_ref())
        .unwrap_or(&default_backoff);
    // Full jitter: uniform in [0, min(max, initial × multiplier^(n-1))].
    let exponent = attempts_made.saturating_sub(1).min(63);
    let factor = (backoff.multiplier as f64).powi(exponent as i32);
    let bound =
        (backoff.initial_delay.get().as_secs_f64() * factor).min(backoff.max_delay.get().as_secs_f64());
    Duration::from_secs_f64(rand::rng().random_range(0.0..=bound.max(0.0)))
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay to use: the policy's, unless the receiver asked for longer, bounded by `cap`.
pub fn retry_delay(policy_delay: Duration, retry_after: Option<Duration>, cap: Duration) -> Duration {
    match retry_after {
        Some(asked) if asked > policy_delay => asked.min(cap).max(policy_delay),
        _ => policy_delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Some(204)), Verdict::Success);
        for retryable in [None, Some(408), Some(429), Some(500), Some(503)] {
            assert_eq!(classify(retryable), Verdict::Retryable, "{retryable:?}");
        }
        for permanent in [Some(400), Some(401), Some(404), Some(422), Some(301)] {
            assert_eq!(classify(permanent), Verdict::Permanent, "{permanent:?}");
        }
        assert_eq!(classify(Some(410)), Verdict::Gone);
    }

    #[test]
    fn schedule_is_followed_and_its_last_delay_repeats() {
        let p = policy("{maxAttempts: 6, schedule: [1s, 30s, 2m]}");
        let delays: Vec<u64> = (1..=5).map(|n| next_delay(Some(&p), n).as_secs()).collect();
        assert_eq!(delays, [1, 30, 120, 120, 120]);
        assert_eq!(max_attempts(Some(&p)), 6);
    }

    #[test]
    fn exponential_backoff_has_full_jitter_within_its_bound() {
        let p = policy("{exponential: {initialDelay: 1s, maxDelay: 10s, multiplier: 2}}");
        for n in 1..=8 {
            let bound = (1u64 << (n - 1)).min(10) as f64;
            for _ in 0..50 {
                let d = next_delay(Some(&p), n).as_secs_f64();
                assert!(
                    (0.0..=bound).contains(&d),
                    "attempt {n}: {d} not within [0, {bound}]"
                );
            }
        }
        assert_eq!(max_attempts(None), 8);
        assert!(next_delay(None, 1) <= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_only_lengthens_and_is_capped() {
        let cap = Duration::from_secs(3600);
        assert_eq!(
            retry_delay(Duration::from_secs(10), Some(Duration::from_secs(5)), cap),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(10), Some(Duration::from_secs(60)), cap),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_delay(Duration::from_secs(10), Some(Duration::from_secs(86400)), cap),
            cap
        );
    }
}
