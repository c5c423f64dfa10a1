//! `WebhookSource`: an inbound webhook endpoint for one provider.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::DeliveryTarget;
use super::duration::Duration;
use super::secret_ref::SecretKeyRef;
use super::status::TargetHealth;

/// The widest replay window a source accepts.
pub const MAX_TOLERANCE: Duration = Duration::from_secs(3600);

/// An inbound webhook endpoint: Hookline receives the provider's requests at
/// `/ingest/{namespace}/{name}`, verifies their signatures, stores each event once and hands it
/// to the matching handlers.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "WebhookSource",
    namespaced,
    shortname = "whsrc",
    category = "hookline",
    status = "WebhookSourceStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Events","type":"integer","description":"Events received","jsonPath":".status.received"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("has(self.spec.genericHmac) == (self.spec.provider == 'generic-hmac')")
        .message("spec.genericHmac must be set when provider is generic-hmac, and only then"),
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSourceSpec {
    /// Signature scheme of the sender.
    pub provider: Provider,
    /// Signing secret the provider gave you (Stripe `whsec_…`, Svix/Clerk/Resend `whsec_…`,
    /// GitHub webhook secret, …).
    pub secret_ref: SecretKeyRef,
    /// More accepted secrets, for rotating without dropping events: add the new one as
    /// secretRef and keep the old one here until the provider has switched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub additional_secret_refs: Vec<SecretKeyRef>,
    /// How far a signed timestamp may be from now, in the past or the future, for schemes that
    /// sign one (Stripe, Svix, Standard Webhooks, generic HMAC with a timestamp header).
    /// At most 1h.
    #[serde(default = "default_tolerance")]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('1h')")
        .message("must be at most 1h"))]
    pub tolerance: Duration,
    /// Largest accepted request body; larger requests get 413.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1, max = 33554432))]
    pub max_body_bytes: u32,
    /// When set, only clients in these IP ranges may post (others get 403), such as the
    /// ranges the provider publishes. Entries are addresses or CIDR ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r) || isIP(r))")
        .message("each entry must be an IP address or a CIDR range, such as 192.0.2.10 or 192.0.2.0/24"))]
    pub allowed_source_ranges: Vec<String>,
    /// Settings of the generic-hmac provider; required with it, refused with any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_hmac: Option<GenericHmac>,
    /// Where verified events go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub handlers: Vec<Handler>,
}

impl WebhookSourceSpec {
    /// The Secrets requests are verified with: `secretRef`, then `additionalSecretRefs`.
    pub fn verification_secrets(&self) -> impl Iterator<Item = &SecretKeyRef> {
        std::iter::once(&self.secret_ref).chain(&self.additional_secret_refs)
    }
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

fn default_max_body_bytes() -> u32 {
    1024 * 1024
}

/// Signature schemes Hookline verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// `Stripe-Signature: t=…,v1=…`
    Stripe,
    /// Clerk signs with Svix.
    Clerk,
    /// Resend signs with Svix.
    Resend,
    /// `svix-id`, `svix-timestamp`, `svix-signature` (or their `webhook-*` aliases).
    Svix,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    /// `X-Hub-Signature-256: sha256=…`
    Github,
    /// An HMAC of the body in a header of your choosing.
    GenericHmac,
}

/// A custom HMAC scheme: `header` carries `prefix` + encode(HMAC(secret, signed content)), where
/// the signed content is the raw body, or `<timestamp>.<body>` when `timestampHeader` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenericHmac {
    /// Header holding the signature, such as X-Signature.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')").message("must be an HTTP header name, such as X-Signature"))]
    pub header: String,
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the signature in the header value, such as `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    // Header values are ASCII and their ends are trimmed in transit: anything else could never
    // match (found by fuzzing).
    #[x_kube(validation = Rule::new("self.matches('^[!-~]([ -~]*[!-~])?$')").message("must be printable ASCII without leading or trailing spaces, such as sha256="))]
    pub prefix: Option<String>,
    /// Header holding a unix timestamp (seconds) that is signed with the body and checked
    /// against the source's tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')").message("must be an HTTP header name, such as X-Timestamp"))]
    pub timestamp_header: Option<String>,
    /// Header holding the sender's event id, used to drop duplicates. Without it, identical
    /// bodies count as the same event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')").message("must be an HTTP header name, such as X-Event-Id"))]
    pub id_header: Option<String>,
    /// Header holding the event type. Without it, the `type` field of a JSON body is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')").message("must be an HTTP header name, such as X-Event-Type"))]
    pub event_type_header: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// A destination for a source's verified events. It receives the provider's body unchanged,
/// signed by Hookline per Standard Webhooks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(crate::api::delivery::TLS_NEEDS_HTTPS).message("tls applies to https:// URLs only"))]
pub struct Handler {
    /// Name, unique within the source.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("must be lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub name: String,
    #[serde(flatten)]
    pub target: DeliveryTarget,
}

/// Observed state of a WebhookSource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSourceStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and SecretResolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Public URL to give the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Events accepted (duplicates excluded) over the history's retention, as the gateways
    /// count them (written every few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    /// Requests refused (bad signature, stale timestamp, disallowed address, …) over the
    /// history's retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Time>,
    /// Delivery health per handler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub handlers: Vec<HandlerStatus>,
}

/// Delivery health of one handler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandlerStatus {
    /// The handler's name.
    pub name: String,
    #[serde(flatten)]
    pub health: TargetHealth,
}
