//! Status shapes shared by both kinds: conditions and delivery health.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types Hookline sets.
pub mod condition {
    /// Summary: the resource is configured and serving.
    pub const READY: &str = "Ready";
    /// Every referenced Secret exists, has the key, and the value has the expected format.
    pub const SECRET_RESOLVED: &str = "SecretResolved";
    /// Deliveries to the target are succeeding (subscriptions).
    pub const HEALTHY: &str = "Healthy";
}

/// State of a target's circuit breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    /// Deliveries flow.
    #[default]
    Closed,
    /// Too many consecutive failures: deliveries wait until the reset timeout passes.
    Open,
    /// Probe requests decide whether to close or reopen.
    HalfOpen,
}

/// Delivery statistics of one target over a recent window, rolled up from the database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    /// Length of the window the counts cover, such as 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Deliveries that succeeded in the window.
    pub succeeded: u64,
    /// Attempts that failed in the window (each may still be retried).
    pub failed: u64,
    /// Deliveries that exhausted their attempts in the window.
    pub dead: u64,
    /// Deliveries in the queue now: waiting to be sent or retried, and with `ordering` each
    /// key's head while it is sent and a dead one blocking its key. Deliveries out on a lease
    /// (sent at once, or claimed without `ordering`: being sent or waiting for a slot, a few
    /// times `maxInFlight` on each gateway) are not counted.
    pub pending: u64,
    /// Share of finished deliveries that succeeded, as a percentage such as "99.2%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<String>,
    /// 95th percentile of attempt duration in milliseconds, as the upper bound of the latency
    /// bucket it falls in (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000; 30000
    /// also when it is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency_ms: Option<u64>,
    /// When the last successful attempt in the window started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// When the last failed attempt in the window started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Why the last failed attempt in the window failed (status code or error class), never a
    /// secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
    /// With `ordering`: keys waiting behind a dead delivery (`onDead: block`) until it is
    /// redelivered or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_keys: Option<u64>,
    /// With `ordering`: deliveries in the window whose key was null or failed, sent unordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unordered: Option<u64>,
}

/// Health of one delivery target (a handler or a subscription).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<CircuitState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<DeliveryStats>,
    /// Secret holding the signing secret the controller generated, when no secretRef is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_secret_name: Option<String>,
}
