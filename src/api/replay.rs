//! `WebhookReplay`: send a time window of stored events to one target again, declaratively.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TargetKey;

/// Sends the stored events of a time window to one handler or subscription again: those the
/// target would have received (its `events` and `filter`), narrowed by this replay's `events`,
/// `filter` and `statuses`, at most `rate` per second. An event's delivery to the target keeps
/// its `webhook-id`, so receivers drop what they already have. Deleting the replay stops what is
/// not yet enqueued. The spec cannot change; create another replay.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "WebhookReplay",
    namespaced,
    shortname = "whreplay",
    category = "hookline",
    status = "WebhookReplayStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matched"}"#,
    printcolumn = r#"{"name":"Enqueued","type":"integer","jsonPath":".status.enqueued"}"#,
    printcolumn = r#"{"name":"Delivered","type":"integer","jsonPath":".status.delivered"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Complete","type":"string","jsonPath":".status.conditions[?(@.type==\"Complete\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec == oldSelf.spec").message("spec cannot change: create another WebhookReplay"),
    validation = Rule::new("timestamp(self.spec.from) < timestamp(self.spec.to)").message("spec.from must be before spec.to"),
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplaySpec {
    pub target: ReplayTarget,
    /// Start of the window (inclusive): events received at or after it. RFC 3339, such as
    /// 2026-12-01T09:00:00Z.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')")
        .message("must be an RFC 3339 time, such as 2026-12-01T09:00:00Z"))]
    pub from: String,
    /// End of the window (exclusive). RFC 3339.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')")
        .message("must be an RFC 3339 time, such as 2026-12-01T10:00:00Z"))]
    pub to: String,
    /// Only events of these types (globs, as in a target's `events`). Default: all the target
    /// receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub events: Vec<String>,
    /// A CEL expression an event must satisfy, with the variables of a target's `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// Only events whose delivery to the target ended so: `succeeded`, `dead`, `failed`
    /// (waiting for a retry), or `all` (also events that never had a delivery there).
    #[serde(default = "default_statuses")]
    #[schemars(length(min = 1, max = 4))]
    pub statuses: Vec<ReplayStatusFilter>,
    /// Count the matching events only; enqueue nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Most events enqueued per second.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub rate: u32,
}

fn default_statuses() -> Vec<ReplayStatusFilter> {
    vec![ReplayStatusFilter::All]
}

fn default_rate() -> u32 {
    50
}

/// The handler or subscription (in the replay's namespace) to send to: `subscription`, or
/// `source` with `handler`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.subscription) ? !has(self.source) && !has(self.handler) : has(self.source) && has(self.handler)"
).message("set subscription, or source and handler"))]
pub struct ReplayTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub subscription: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub handler: Option<String>,
}

impl ReplayTarget {
    /// The target in `namespace`, or `None` when it is neither a subscription nor a handler.
    pub fn key(&self, namespace: &str) -> Option<TargetKey> {
        match (&self.subscription, &self.source, &self.handler) {
            (Some(name), None, None) => Some(TargetKey::subscription(namespace, name)),
            (None, Some(source), Some(handler)) => Some(TargetKey::handler(namespace, source, handler)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayStatusFilter {
    Succeeded,
    Dead,
    Failed,
    All,
}

impl ReplayStatusFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Failed => "failed",
            Self::All => "all",
        }
    }
}

/// Progress of a replay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplayStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Complete (every matching event enqueued and its delivery finished) and Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The target, as `subscription/NAME` or `handler/SOURCE/HANDLER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Events of the window that match so far.
    pub matched: u64,
    /// Of those, enqueued for delivery (none with dryRun).
    pub enqueued: u64,
    /// Enqueued deliveries that succeeded since.
    pub delivered: u64,
    /// Enqueued deliveries that went dead since.
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
