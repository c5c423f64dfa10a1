//! Where and how Hookline delivers events: the settings shared by a source's handlers and by
//! subscriptions (both are delivery *targets*).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::secret_ref::{SecretKeyRef, SecretRef};

/// The keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERTIFICATE_KEY: &str = "tls.crt";
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";
/// Admission rule of the resources that embed a target: `tls` needs an https:// URL.
pub const TLS_NEEDS_HTTPS: &str = "!has(self.tls) || self.url.startsWith('https://')";

/// The longest timeout of one attempt.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a circuit stays open before it probes.
pub const MAX_RESET_TIMEOUT: Duration = Duration::from_secs(3600);

/// Delivery settings of one target. Every outbound request is signed per Standard Webhooks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTarget {
    /// Endpoint that receives the events, as an absolute http:// or https:// URL.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
        .message("must be an absolute http:// or https:// URL, such as https://example.com/webhooks"))]
    pub url: String,
    /// Event types to deliver. `*` matches any run of characters, so `invoice.*` matches
    /// `invoice.paid` and `invoice.payment_failed`, and `*` matches everything.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[A-Za-z0-9_.:/*-]+$'))")
        .message("each event pattern may hold letters, digits, '.', '_', '-', ':', '/' and '*' (for example invoice.* or push)"))]
    pub events: Vec<String>,
    /// A CEL expression that must be true for an event to be delivered, beside `events`. It sees
    /// `type`, `source`, `headers`, `body` (the JSON body; for published events the envelope
    /// `{type, timestamp, data}`) and `data` (`body.data`), e.g.
    /// `data.object.amount_paid > 10000` or `body.ref == "refs/heads/main"`. An event it fails
    /// on is recorded as `filtered_error`, not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// A CEL expression (same variables as `filter`) that builds the body sent: a map is sent as
    /// JSON, a string as text. The signature covers the transformed body; the event store keeps
    /// the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub transform: Option<String>,
    /// Request headers sent with every delivery, such as an API key the endpoint expects, in the
    /// shape of a container's `env`: a `value`, or `valueFrom.secretKeyRef`. Values from Secrets
    /// are never shown in status, logs or the console.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<RequestHeader>,
    /// TLS to the endpoint beyond the defaults (https:// URLs only): a client certificate for
    /// mutual TLS, the CA that signs the endpoint's certificate, the name that certificate is
    /// verified against. Secrets are read again when they change (cert-manager's renewals apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,
    /// How Hookline authenticates to the endpoint besides the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<EndpointAuth>,
    /// How deliveries are framed: `standard-webhooks` (the event's body), or a CloudEvent per
    /// the CloudEvents HTTP binding, `cloudevents-binary` (attributes in `ce-*` headers, the
    /// data as the body) or `cloudevents-structured` (one `application/cloudevents+json`
    /// document). `ce-id` is the stable webhook-id. Every format is signed per Standard Webhooks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: DeliveryFormat,
    /// Deliver events that share a key one at a time, in the order they were stored; events
    /// with different keys go in parallel (up to maxInFlight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// Secret key Hookline signs deliveries with (a `whsec_` Standard Webhooks secret). When
    /// absent, the controller generates one into a Secret owned by this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// When to retry a failed delivery. Default: 8 attempts with exponential backoff from 5s to 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Time allowed for one attempt, from connecting to the end of the response; at most 5m.
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('5m')")
        .message("must be at most 5m"))]
    pub timeout: Duration,
    /// Requests per second allowed to this target. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Most requests in flight to this target at once.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_in_flight: u32,
    /// When to stop sending to a failing target for a while. Default: open after 5 consecutive
    /// failures, probe again after 30s with 1 request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Stop delivering; events keep queueing and are delivered when unpaused.
    #[serde(default)]
    pub paused: bool,
}

/// One request header of every delivery: a fixed `value`, or one read from a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)")
    .message("set value or valueFrom, not both"))]
pub struct RequestHeader {
    /// The header's name. Not one Hookline sets itself: content-type, content-length, host,
    /// user-agent, webhook-*, ce-*, hookline-*.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')")
        .message("must be an HTTP header name, such as X-Api-Key"))]
    #[x_kube(validation = Rule::new("!(self.lowerAscii() in ['content-type', 'content-length', 'host', 'user-agent', 'transfer-encoding', 'connection'] || self.lowerAscii().startsWith('webhook-') || self.lowerAscii().startsWith('ce-') || self.lowerAscii().startsWith('hookline-'))")
        .message("is a header Hookline sets itself (content-type, content-length, host, user-agent, webhook-*, ce-*, hookline-*)"))]
    pub name: String,
    /// A fixed value (shown in the resource: for secrets, use valueFrom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// Where a header's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// A key of a Secret in the resource's namespace.
    pub secret_key_ref: SecretKeyRef,
}

/// TLS settings of one endpoint. Set at least one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientCertificateRef) || has(self.caBundleRef) || has(self.serverName)")
    .message("set clientCertificateRef, caBundleRef or serverName"))]
pub struct EndpointTls {
    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`, PEM, as cert-manager writes
    /// them) whose certificate Hookline presents to the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretRef>,
    /// A Secret key holding the PEM certificates of the CAs that sign the endpoint's
    /// certificate. They replace the public roots for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<SecretKeyRef>,
    /// The DNS name the endpoint's certificate must carry when it is not the URL's host (for
    /// example when the URL names an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("must be a DNS name in lowercase, such as billing.internal"))]
    pub server_name: Option<String>,
}

/// Authentication to an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAuth {
    /// An OAuth2 access token from the client credentials grant, sent as
    /// `Authorization: Bearer`. It is reused until it expires, and fetched again once when the
    /// endpoint answers 401.
    pub oauth2: OAuth2ClientCredentials,
}

/// The OAuth2 client credentials grant (RFC 6749 section 4.4). The client authenticates to the
/// token endpoint with HTTP Basic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientCredentials {
    /// The token endpoint, an absolute http:// or https:// URL. It is reached under the same
    /// egress policy as the endpoint.
    #[serde(rename = "tokenURL")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
        .message("must be an absolute http:// or https:// URL, such as https://auth.example.com/oauth/token"))]
    pub token_url: String,
    /// The Secret key holding the client id.
    pub client_id_ref: SecretKeyRef,
    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes asked for, sent space-separated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(s, !s.contains(' '))").message("a scope has no spaces"))]
    pub scopes: Vec<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// How a delivery is framed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryFormat {
    /// The event's body (or the transform's), with `webhook-*` headers.
    #[default]
    StandardWebhooks,
    /// CloudEvents binary mode: `ce-*` headers, the data as the body.
    CloudeventsBinary,
    /// CloudEvents structured mode: one `application/cloudevents+json` document.
    CloudeventsStructured,
}

/// Ordered delivery per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ordering {
    /// A CEL expression over the event (the variables of `filter`) giving its key: a string or
    /// a number, e.g. `data.object.customer` for Stripe or `data.id` for Clerk users. An event
    /// whose key is null, or fails, is delivered unordered.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,
    /// What a delivery that goes dead does to its key: `block` (the key's later events wait
    /// until the dead one is redelivered or skipped) or `skip` (the next event goes).
    #[serde(default)]
    pub on_dead: OnDead,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDead {
    #[default]
    Block,
    Skip,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_max_in_flight() -> u32 {
    16
}

/// How failed deliveries are retried. Connection errors, timeouts, 408, 429 and 5xx are retried;
/// other 4xx are not. Set `schedule` or `exponential`, not both; with neither, exponential
/// backoff with its defaults applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.schedule) && has(self.exponential))")
    .message("set either schedule or exponential, not both"))]
pub struct RetryPolicy {
    /// Attempts in total, the first one included. After the last, the delivery is dead (kept
    /// and replayable).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Explicit delays before the 2nd, 3rd, … attempt; the last delay repeats when there are more
    /// attempts than delays. Example: [5s, 30s, 2m, 10m, 30m, 1h, 4h, 12h].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub schedule: Option<Vec<Duration>>,
    /// Exponential backoff with full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential: Option<ExponentialBackoff>,
}

fn default_max_attempts() -> u32 {
    8
}

/// Delay before attempt n+1 is random in [0, min(maxDelay, initialDelay × multiplier^(n-1))].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.initialDelay) <= duration(self.maxDelay)")
    .message("initialDelay must not be longer than maxDelay"))]
pub struct ExponentialBackoff {
    /// Upper bound of the first retry's delay.
    #[serde(default = "default_initial_delay")]
    pub initial_delay: Duration,
    /// Cap on any delay.
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
    /// Growth of the delay bound per attempt.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 2, max = 10))]
    pub multiplier: u32,
}

fn default_initial_delay() -> Duration {
    Duration::from_secs(5)
}

fn default_max_delay() -> Duration {
    Duration::from_secs(3600)
}

fn default_multiplier() -> u32 {
    2
}

/// Token bucket: `perSecond` tokens are added each second, up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 100000))]
    pub per_second: u32,
    /// Requests allowed at once after an idle period. Default: perSecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: Option<u32>,
}

/// Per-target circuit breaker. While open, deliveries wait without spending attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failed attempts that open the circuit.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// How long the circuit stays open before it lets probe requests through (half-open); at
    /// most 1h.
    #[serde(default = "default_reset_timeout")]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) <= duration('1h')")
        .message("must be at most 1h"))]
    pub reset_timeout: Duration,
    /// Probe requests let through while half-open; all must succeed to close the circuit.
    #[serde(default = "default_half_open_requests")]
    #[schemars(range(min = 1, max = 100))]
    pub half_open_requests: u32,
}

fn default_failure_threshold() -> u32 {
    5
}

fn default_reset_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_half_open_requests() -> u32 {
    1
}

impl DeliveryTarget {
    /// The Secret keys it reads to reach its endpoint (headers, TLS, OAuth2), each with the
    /// setting that names it, for messages: `header X-Api-Key`, `tls client certificate`, …
    pub fn endpoint_secrets(&self) -> Vec<(String, SecretKeyRef)> {
        let mut secrets: Vec<(String, SecretKeyRef)> = self
            .headers
            .iter()
            .filter_map(|h| {
                let source = h.value_from.as_ref()?;
                Some((format!("header {}", h.name), source.secret_key_ref.clone()))
            })
            .collect();
        if let Some(tls) = &self.tls {
            if let Some(certificate) = &tls.client_certificate_ref {
                for key in [TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY] {
                    let reference = SecretKeyRef {
                        name: certificate.name.clone(),
                        key: key.to_owned(),
                    };
                    secrets.push(("tls client certificate".to_owned(), reference));
                }
            }
            if let Some(ca) = &tls.ca_bundle_ref {
                secrets.push(("tls CA bundle".to_owned(), ca.clone()));
            }
        }
        if let Some(EndpointAuth { oauth2 }) = &self.auth {
            secrets.push(("oauth2 client id".to_owned(), oauth2.client_id_ref.clone()));
            secrets.push((
                "oauth2 client secret".to_owned(),
                oauth2.client_secret_ref.clone(),
            ));
        }
        secrets
    }

    /// The attempt timeout, never past [`MAX_TIMEOUT`] (admission refuses more; this holds for
    /// configuration that never met it).
    pub fn attempt_timeout(&self) -> std::time::Duration {
        self.timeout.get().min(MAX_TIMEOUT.get())
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            reset_timeout: default_reset_timeout(),
            half_open_requests: default_half_open_requests(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The limits admission states are the ones the code holds to.
    #[test]
    fn admission_limits_match_the_constants() {
        let crd = serde_json::to_string(&crate::api::WebhookSubscription::crd()).unwrap();
        assert!(
            crd.contains(&format!("duration(self) <= duration('{MAX_TIMEOUT}')")),
            "timeout limit"
        );
        assert!(
            crd.contains(&format!("duration(self) <= duration('{MAX_RESET_TIMEOUT}')")),
            "resetTimeout limit"
        );
        assert!(crd.contains(&format!(
            "duration(self) <= duration('{}')",
            crate::api::duration::MAX_DURATION
        )));
    }
}
