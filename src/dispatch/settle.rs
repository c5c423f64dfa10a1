//! What an attempt's outcome means for its delivery and target, decided without I/O: the next
//! due time or death, what the circuit breaker hears, and whether the target is paused.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::policy::{self, Verdict};
use crate::api::RetryPolicy;
use crate::store::deliveries::After;

/// What came back from one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub status: Option<u16>,
    /// timeout, connect, tls or http, when no response came.
    pub error_class: Option<&'static str>,
    /// The receiver's Retry-After header, as sent.
    pub retry_after: Option<&'a str>,
}

/// The delivery's settings that decide its settlement.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    pub url: &'a str,
    pub retry_policy: Option<&'a RetryPolicy>,
    /// Upper bound on a receiver's Retry-After.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub after: After,
    /// Whether the attempt counts as a success (metrics, circuit breaker).
    pub succeeded: bool,
    /// The failure in a few words (`HTTP 503`, `timeout`), for the delivery's last error.
    pub failure: Option<String>,
    /// The target is to be paused for every replica, for this reason (410 Gone).
    pub pause: Option<String>,
}

/// Settles attempt number `attempts_made` (1 for the first) of a delivery.
pub fn settle(outcome: Outcome<'_>, attempts_made: u32, terms: Terms<'_>, now: DateTime<Utc>) -> Settlement {
    let verdict = policy::classify(outcome.status);
    let failure = match (outcome.status, outcome.error_class) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(class)) => class.to_owned(),
        (None, None) => "unknown".to_owned(),
    };
    let (after, pause) = match verdict {
        Verdict::Success => (After::Succeeded, None),
        Verdict::Permanent => (After::Dead, None),
        // Due again at once, so it is sent as soon as the target is resumed.
        Verdict::Gone => (
            After::RetryAt(now),
            Some(format!("{} answered 410 Gone", without_credentials(terms.url))),
        ),
        Verdict::Retryable if attempts_made >= policy::max_attempts(terms.retry_policy) => {
            (After::Dead, None)
        }
        Verdict::Retryable => {
            let asked = outcome
                .retry_after
                .and_then(|v| policy::parse_retry_after(v, now.into()));
            let delay = policy::retry_delay(
                policy::next_delay(terms.retry_policy, attempts_made),
                asked,
                terms.max_retry_after,
            );
            (After::RetryAt(later(now, delay)), None)
        }
    };
    let succeeded = verdict == Verdict::Success;
    Settlement {
        after,
        succeeded,
        failure: (!succeeded).then_some(failure),
        pause,
    }
}

/// A URL as it may be shown (pause reasons, logs, the console): without user information, query
/// or fragment, where endpoints carry tokens.
pub fn without_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "the endpoint".to_owned(),
    }
}

/// `now + delay`, saturating instead of overflowing (a delay of centuries is as good as never).
pub fn later(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(policy: Option<&RetryPolicy>) -> Terms<'_> {
        Terms {
            url: "https://crm.example/hooks",
            retry_policy: policy,
            max_retry_after: Duration::from_secs(3600),
        }
    }

    fn answered(status: u16) -> Outcome<'static> {
        Outcome {
            status: Some(status),
            error_class: None,
            retry_after: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .into()
    }

    #[test]
    fn success_finishes_and_a_permanent_refusal_is_dead_at_once() {
        let ok = settle(answered(204), 1, terms(None), now());
        assert_eq!(ok.after, After::Succeeded);
        assert!(ok.succeeded && ok.failure.is_none() && ok.pause.is_none());
        let refused = settle(answered(400), 1, terms(None), now());
        assert_eq!(refused.after, After::Dead);
        assert_eq!(refused.failure.as_deref(), Some("HTTP 400"));
        assert!(!refused.succeeded);
    }

    #[test]
    fn retries_follow_the_schedule_until_the_last_attempt() {
        let policy: RetryPolicy = serde_json::from_value(serde_json::json!({
            "maxAttempts": 3, "schedule": ["5s", "1m"]
        }))
        .unwrap();
        let first = settle(answered(503), 1, terms(Some(&policy)), now());
        assert_eq!(first.after, After::RetryAt(now() + chrono::Duration::seconds(5)));
        let second = settle(answered(503), 2, terms(Some(&policy)), now());
        assert_eq!(second.after, After::RetryAt(now() + chrono::Duration::minutes(1)));
        assert_eq!(
            settle(answered(503), 3, terms(Some(&policy)), now()).after,
            After::Dead
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap_and_errors_are_named() {
        let outcome = Outcome {
            status: Some(429),
            error_class: None,
            retry_after: Some("120"),
        };
        let policy: RetryPolicy =
            serde_json::from_value(serde_json::json!({"maxAttempts": 5, "schedule": ["5s"]})).unwrap();
        let asked = settle(outcome, 1, terms(Some(&policy)), now());
        assert_eq!(
            asked.after,
            After::RetryAt(now() + chrono::Duration::seconds(120))
        );
        let capped = Terms {
            max_retry_after: Duration::from_secs(60),
            ..terms(Some(&policy))
        };
        let outcome = Outcome {
            retry_after: Some("86400"),
            ..outcome
        };
        assert_eq!(
            settle(outcome, 1, capped, now()).after,
            After::RetryAt(now() + chrono::Duration::seconds(60))
        );
        let timeout = Outcome {
            status: None,
            error_class: Some("timeout"),
            retry_after: None,
        };
        assert_eq!(
            settle(timeout, 1, terms(None), now()).failure.as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn gone_pauses_the_target_and_keeps_the_delivery_due() {
        let gone = settle(answered(410), 1, terms(None), now());
        assert_eq!(gone.after, After::RetryAt(now()));
        assert_eq!(
            gone.pause.as_deref(),
            Some("https://crm.example/hooks answered 410 Gone")
        );
        assert!(!gone.succeeded);
    }

    #[test]
    fn a_pause_reason_holds_no_credentials_of_the_url() {
        let gone = settle(
            answered(410),
            1,
            Terms {
                url: "https://user:pw@hooks.example/in?token=s3cret#x",
                ..terms(None)
            },
            now(),
        );
        assert_eq!(gone.pause.unwrap(), "https://hooks.example/in answered 410 Gone");
    }

    #[test]
    fn enormous_delays_saturate() {
        assert_eq!(
            later(now(), Duration::from_secs(u64::MAX)),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
