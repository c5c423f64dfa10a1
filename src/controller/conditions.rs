//! Building status: conditions that keep their transition time while unchanged, and delivery
//! statistics in the shape of the CRD's status.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::secrets::SecretProblem;
use crate::api::status::condition::{READY, SECRET_RESOLVED};
use crate::api::{CircuitState, DeliveryStats, TargetHealth};
use crate::store::stats::TargetStats;

/// The `Ready` reason of a resource with a CEL expression that does not compile.
pub const EXPRESSION_INVALID: &str = "ExpressionInvalid";

/// What every condition of one reconcile shares: the conditions before it, the generation it
/// observed and its time (the transition time of conditions that change).
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub previous: &'a [Condition],
    pub generation: Option<i64>,
    pub now: jiff::Timestamp,
}

/// A condition; `lastTransitionTime` is carried over from the previous conditions when the status
/// is the same.
pub fn condition(
    observed: Observed<'_>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = observed
        .previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(observed.now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: observed.generation,
        last_transition_time,
    }
}

/// Whether `type_` is currently False in `conditions`.
pub fn is_false(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "False")
}

pub fn time(at: Option<DateTime<Utc>>) -> Option<Time> {
    at.and_then(|t| jiff::Timestamp::from_second(t.timestamp()).ok())
        .map(Time)
}

pub fn circuit(stats: &TargetStats) -> Option<CircuitState> {
    stats.circuit.as_deref().map(|c| match c {
        "open" => CircuitState::Open,
        "half-open" => CircuitState::HalfOpen,
        _ => CircuitState::Closed,
    })
}

/// `ordered`: the target has `ordering` (its blocked keys and unordered deliveries are shown).
pub fn delivery_stats(stats: &TargetStats, window: &str, ordered: bool) -> DeliveryStats {
    let finished = stats.succeeded + stats.dead;
    DeliveryStats {
        window: Some(window.to_owned()),
        succeeded: stats.succeeded as u64,
        failed: stats.failed_attempts as u64,
        dead: stats.dead as u64,
        pending: stats.pending as u64,
        success_rate: (finished > 0)
            .then(|| format!("{:.1}%", stats.succeeded as f64 * 100.0 / finished as f64)),
        p95_latency_ms: stats.p95_latency_ms.map(|ms| ms as u64),
        last_success_time: time(stats.last_success_time),
        last_failure_time: time(stats.last_failure_time),
        last_failure_reason: stats.last_failure_reason.clone(),
        blocked_keys: ordered.then_some(stats.blocked_keys as u64),
        unordered: ordered.then_some(stats.unordered as u64),
    }
}

/// A target's health in status form; `generated` names a generated signing Secret.
pub fn target_health(
    stats: Option<&TargetStats>,
    generated: Option<String>,
    window: &str,
    ordered: bool,
) -> TargetHealth {
    TargetHealth {
        circuit: stats.and_then(circuit),
        deliveries: stats.map(|s| delivery_stats(s, window, ordered)),
        generated_secret_name: generated,
    }
}

/// `Ready` and `SecretResolved` from what a reconcile found: the first secret problem and the
/// first URL problem (reason, message); `ok` gives the reason and message of each when fine.
pub fn readiness(
    observed: Observed<'_>,
    secret_problem: Option<&SecretProblem>,
    url_problem: Option<(&str, String)>,
    secret_ok: (&str, String),
    ready_ok: (&str, String),
) -> [Condition; 2] {
    let secret = match secret_problem {
        None => condition(observed, SECRET_RESOLVED, true, secret_ok.0, secret_ok.1),
        Some(p) => condition(observed, SECRET_RESOLVED, false, p.reason, p.message.clone()),
    };
    let ready = match (secret_problem, url_problem) {
        (None, None) => condition(observed, READY, true, ready_ok.0, ready_ok.1),
        (Some(p), _) => condition(observed, READY, false, p.reason, p.message.clone()),
        (None, Some((reason, why))) => condition(observed, READY, false, reason, why),
    };
    [ready, secret]
}

/// Healthy, with a reason: paused (by spec or by a 410), circuit open, or failing deliveries.
pub fn healthiness(paused: bool, stats: Option<&TargetStats>) -> (bool, &'static str, String) {
    if paused {
        return (
            false,
            "Paused",
            "spec.paused is true; events queue until it is unpaused".into(),
        );
    }
    let Some(stats) = stats else {
        return (
            true,
            "NoData",
            "delivery statistics are not available (database unreachable)".into(),
        );
    };
    if let Some(reason) = &stats.paused_reason {
        return (false, "Paused", format!("paused: {reason}"));
    }
    if stats.circuit.as_deref() == Some("open") {
        let last = stats.last_failure_reason.as_deref().unwrap_or("failures");
        return (
            false,
            "CircuitOpen",
            format!("circuit open after consecutive failures (last: {last}); deliveries wait"),
        );
    }
    let failing_more_recently = match (stats.last_failure_time, stats.last_success_time) {
        (Some(failure), Some(success)) => failure > success,
        (Some(_), None) => true,
        _ => false,
    };
    if stats.blocked_keys > 0 {
        return (
            false,
            "KeysBlocked",
            format!(
                "{} ordering keys wait behind a dead delivery; redeliver it, or skip it (POST /admin/v1/deliveries/ID/skip)",
                stats.blocked_keys
            ),
        );
    }
    if stats.dead > 0 && stats.dead >= stats.succeeded
        || (failing_more_recently && stats.failed_attempts >= 3)
    {
        let last = stats.last_failure_reason.as_deref().unwrap_or("errors");
        return (
            false,
            "DeliveriesFailing",
            format!(
                "{} failed attempts, {} dead in the window; last failure: {last}",
                stats.failed_attempts, stats.dead
            ),
        );
    }
    (
        true,
        "DeliveriesSucceeding",
        format!("{} delivered in the window", stats.succeeded),
    )
}
