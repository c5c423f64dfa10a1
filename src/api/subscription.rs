//! `WebhookSubscription`: an outbound webhook endpoint.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::delivery::DeliveryTarget;
use super::status::TargetHealth;

/// An endpoint that receives events from this namespace: those of its WebhookSources and those
/// published with the publish API, filtered by type.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    namespaced,
    shortname = "whsub",
    category = "hookline",
    status = "WebhookSubscriptionStatus",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Events","type":"string","jsonPath":".spec.events"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.conditions[?(@.type==\"Healthy\")].status"}"#,
    printcolumn = r#"{"name":"Circuit","type":"string","jsonPath":".status.circuit"}"#,
    printcolumn = r#"{"name":"Success","type":"string","priority":1,"jsonPath":".status.deliveries.successRate"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(crate::api::delivery::TLS_NEEDS_HTTPS).message("tls applies to https:// URLs only"))]
pub struct WebhookSubscriptionSpec {
    #[serde(flatten)]
    pub target: DeliveryTarget,
    /// Only events from these WebhookSources (same namespace). Default: events of every source
    /// in the namespace and every event published into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub sources: Vec<String>,
    /// Allow a URL that resolves to a private, loopback or cluster-internal address. Link-local
    /// and cloud metadata addresses are refused regardless.
    #[serde(default)]
    pub allow_private_networks: bool,
}

/// Observed state of a WebhookSubscription.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, SecretResolved and Healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub health: TargetHealth,
}
