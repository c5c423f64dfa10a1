//! The CRDs on the real API server from hack/test-env: they install, the examples apply, and
//! admission refuses bad manifests with a message that says what to fix.

mod support;

use hookline::api::{Provider, WebhookSource, WebhookSubscription};
use kube::api::{Api, DynamicObject, PostParams};
use support::{apply_yaml, kube_client, temp_namespace};

#[test]
fn checked_in_crds_match_the_rust_types() {
    let generated = hookline::api::crds_yaml().expect("render CRDs");
    let checked_in =
        std::fs::read_to_string(support::repo_path("crds/hookline.yaml")).expect("read crds/hookline.yaml");
    assert!(
        generated == checked_in,
        "crds/hookline.yaml is out of date with src/api; regenerate it with hack/generate"
    );
}

#[tokio::test]
async fn every_example_applies() {
    let client = kube_client().await;
    let ns = temp_namespace(&client, "examples").await;
    let mut files: Vec<_> = std::fs::read_dir(support::repo_path("examples"))
        .expect("examples/")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "examples/ holds no YAML");
    for file in files {
        let yaml = std::fs::read_to_string(&file).expect("read example");
        let applied = apply_yaml(&client, &ns, &yaml)
            .await
            .unwrap_or_else(|e| panic!("{} does not apply: {e}", file.display()));
        assert!(!applied.is_empty(), "{} holds no objects", file.display());
    }
    support::delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn minimal_resources_are_accepted_and_defaulted() {
    let client = kube_client().await;
    let ns = temp_namespace(&client, "minimal").await;
    let yaml = r#"
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: github }
spec:
  provider: github
  secretRef: { name: gh, key: secret }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: { name: crm }
spec:
  url: https://crm.example.com/hooks
  events: ["*"]
"#;
    apply_yaml(&client, &ns, yaml)
        .await
        .expect("minimal source and subscription are valid");

    // The API server fills in the documented defaults, and the stored objects read back into
    // the Rust types.
    let source = Api::<WebhookSource>::namespaced(client.clone(), &ns)
        .get("github")
        .await
        .expect("get source");
    assert_eq!(source.spec.provider, Provider::Github);
    assert_eq!(source.spec.tolerance.to_string(), "5m");
    assert_eq!(source.spec.max_body_bytes, 1024 * 1024);
    let sub = Api::<WebhookSubscription>::namespaced(client.clone(), &ns)
        .get("crm")
        .await
        .expect("get subscription");
    assert_eq!(sub.spec.target.timeout.to_string(), "15s");
    assert_eq!(sub.spec.target.max_in_flight, 16);
    assert!(!sub.spec.target.paused);
    support::delete_namespace(&client, &ns).await;
}

const SOURCE_HEAD: &str = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: { name: bad }\n";
const REPLAY_HEAD: &str = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookReplay\nmetadata: { name: bad }\n";
const SUB_HEAD: &str =
    "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: { name: bad }\n";

/// (what is wrong, manifest, a part of the message the API server must answer with)
fn invalid_manifests() -> Vec<(&'static str, String, &'static str)> {
    let source = |spec: &str| format!("{SOURCE_HEAD}spec:\n{spec}");
    let sub = |spec: &str| format!("{SUB_HEAD}spec:\n{spec}");
    let secret = "  secretRef: { name: s, key: k }\n";
    vec![
        (
            "unknown provider",
            source(&format!("  provider: paypal\n{secret}")),
            "spec.provider: Unsupported value: \"paypal\": supported values: \"stripe\"",
        ),
        (
            "missing secretRef",
            source("  provider: stripe\n"),
            "spec.secretRef: Required value",
        ),
        (
            "tolerance in words",
            source(&format!("  provider: stripe\n{secret}  tolerance: 5 minutes\n")),
            "spec.tolerance: Invalid value: \"string\": must be a duration such as 250ms, 5s, 2m, 1h or 1h30m",
        ),
        (
            "generic-hmac without its settings",
            source(&format!("  provider: generic-hmac\n{secret}")),
            "spec.genericHmac must be set when provider is generic-hmac, and only then",
        ),
        (
            "genericHmac settings on another provider",
            source(&format!(
                "  provider: stripe\n{secret}  genericHmac: {{ header: X-Signature }}\n"
            )),
            "spec.genericHmac must be set when provider is generic-hmac, and only then",
        ),
        (
            "generic HMAC prefix no header value can carry (a fuzzing finding)",
            source(&format!(
                "  provider: generic-hmac\n{secret}  genericHmac: {{ header: X-Signature, prefix: 'sig\u{e9}=' }}\n"
            )),
            "must be printable ASCII without leading or trailing spaces",
        ),
        (
            "handler with an ftp URL",
            source(&format!(
                "  provider: stripe\n{secret}  handlers:\n  - name: h\n    url: ftp://files.example.com/in\n    events: ['*']\n"
            )),
            "spec.handlers[0].url: Invalid value: \"string\": must be an absolute http:// or https:// URL",
        ),
        (
            "duplicate handler names",
            source(&format!(
                "  provider: stripe\n{secret}  handlers:\n  - {{ name: h, url: 'http://a:80/', events: ['*'] }}\n  - {{ name: h, url: 'http://b:80/', events: ['*'] }}\n"
            )),
            "spec.handlers[1]: Duplicate value",
        ),
        (
            "handler name with capitals",
            source(&format!(
                "  provider: stripe\n{secret}  handlers:\n  - {{ name: Billing, url: 'http://a:80/', events: ['*'] }}\n"
            )),
            "spec.handlers[0].name: Invalid value: \"string\": must be lowercase letters, digits and '-'",
        ),
        (
            "source range that is not an address",
            source(&format!(
                "  provider: stripe\n{secret}  allowedSourceRanges: [stripe.com]\n"
            )),
            "each entry must be an IP address or a CIDR range",
        ),
        (
            "secret name with an underscore",
            source("  provider: stripe\n  secretRef: { name: stripe_secret, key: k }\n"),
            "spec.secretRef.name: Invalid value: \"string\": must be the name of a Secret",
        ),
        (
            "body limit of zero",
            source(&format!("  provider: stripe\n{secret}  maxBodyBytes: 0\n")),
            "spec.maxBodyBytes: Invalid value: 0: spec.maxBodyBytes in body should be greater than or equal to 1",
        ),
        (
            "subscription URL without a scheme",
            sub("  url: crm.example.com/hooks\n  events: ['*']\n"),
            "spec.url: Invalid value: \"string\": must be an absolute http:// or https:// URL",
        ),
        (
            "subscription without events",
            sub("  url: https://crm.example.com/hooks\n  events: []\n"),
            "spec.events: Invalid value: 0: spec.events in body should have at least 1 items",
        ),
        (
            "event pattern with a space",
            sub("  url: https://crm.example.com/hooks\n  events: ['invoice paid']\n"),
            "each event pattern may hold letters, digits",
        ),
        (
            "schedule and exponential together",
            sub(
                "  url: https://x.example/h\n  events: ['*']\n  retryPolicy: { schedule: [5s], exponential: { initialDelay: 1s } }\n",
            ),
            "spec.retryPolicy: Invalid value: \"object\": set either schedule or exponential, not both",
        ),
        (
            "zero attempts",
            sub("  url: https://x.example/h\n  events: ['*']\n  retryPolicy: { maxAttempts: 0 }\n"),
            "spec.retryPolicy.maxAttempts: Invalid value: 0: spec.retryPolicy.maxAttempts in body should be greater than or equal to 1",
        ),
        (
            "backoff that starts above its cap",
            sub(
                "  url: https://x.example/h\n  events: ['*']\n  retryPolicy: { exponential: { initialDelay: 2h, maxDelay: 1h } }\n",
            ),
            "initialDelay must not be longer than maxDelay",
        ),
        (
            "schedule entry that is not a duration",
            sub("  url: https://x.example/h\n  events: ['*']\n  retryPolicy: { schedule: [5s, soon] }\n"),
            "spec.retryPolicy.schedule[1]: Invalid value: \"string\": must be a duration",
        ),
        (
            "rate limit of zero",
            sub("  url: https://x.example/h\n  events: ['*']\n  rateLimit: { perSecond: 0 }\n"),
            "spec.rateLimit.perSecond: Invalid value: 0: spec.rateLimit.perSecond in body should be greater than or equal to 1",
        ),
        (
            "zero in-flight requests",
            sub("  url: https://x.example/h\n  events: ['*']\n  maxInFlight: 0\n"),
            "spec.maxInFlight: Invalid value: 0: spec.maxInFlight in body should be greater than or equal to 1",
        ),
        (
            "circuit breaker with no probes",
            sub("  url: https://x.example/h\n  events: ['*']\n  circuitBreaker: { halfOpenRequests: 0 }\n"),
            "spec.circuitBreaker.halfOpenRequests: Invalid value: 0",
        ),
        (
            "an attempt timeout of hours",
            sub("  url: https://x.example/h\n  events: ['*']\n  timeout: 10m\n"),
            "spec.timeout: Invalid value: \"string\": must be at most 5m",
        ),
        (
            "a retry delay of two days",
            sub("  url: https://x.example/h\n  events: ['*']\n  retryPolicy: { schedule: [5s, 48h] }\n"),
            "spec.retryPolicy.schedule[1]: Invalid value: \"string\": must be at most 24h",
        ),
        (
            "a header Hookline sets itself",
            sub(
                "  url: https://x.example/h\n  events: ['*']\n  headers: [{ name: Webhook-Signature, value: forged }]\n",
            ),
            "is a header Hookline sets itself",
        ),
        (
            "a header with a value and a Secret",
            sub(
                "  url: https://x.example/h\n  events: ['*']\n  headers: [{ name: X-Api-Key, value: a, valueFrom: { secretKeyRef: { name: s, key: k } } }]\n",
            ),
            "set value or valueFrom, not both",
        ),
        (
            "a replay window that ends before it starts",
            format!(
                "{REPLAY_HEAD}spec:\n  target: {{ subscription: crm }}\n  from: '2026-12-01T10:00:00Z'\n  to: '2026-12-01T09:00:00Z'\n"
            ),
            "spec.from must be before spec.to",
        ),
        (
            "a replay to a subscription and a handler",
            format!(
                "{REPLAY_HEAD}spec:\n  target: {{ subscription: crm, source: stripe, handler: api }}\n  from: '2026-12-01T09:00:00Z'\n  to: '2026-12-01T10:00:00Z'\n"
            ),
            "set subscription, or source and handler",
        ),
        (
            "a replay to a subscription with a handler name",
            format!(
                "{REPLAY_HEAD}spec:\n  target: {{ subscription: crm, handler: api }}\n  from: '2026-12-01T09:00:00Z'\n  to: '2026-12-01T10:00:00Z'\n"
            ),
            "set subscription, or source and handler",
        ),
        (
            "a circuit open for a day",
            sub("  url: https://x.example/h\n  events: ['*']\n  circuitBreaker: { resetTimeout: 24h }\n"),
            "spec.circuitBreaker.resetTimeout: Invalid value: \"string\": must be at most 1h",
        ),
    ]
}

#[tokio::test]
async fn admission_rejects_invalid_manifests_with_a_useful_message() {
    let client = kube_client().await;
    let ns = temp_namespace(&client, "invalid").await;
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut failures = Vec::new();
    for (what, manifest, expected) in invalid_manifests() {
        let object: DynamicObject = serde_yaml::from_str(&manifest).expect("test manifest parses");
        let gvk = kube::core::GroupVersionKind::try_from(object.types.as_ref().expect("types")).expect("gvk");
        let (resource, _) = discovery.resolve_gvk(&gvk).expect("kind is served");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{what}: accepted, but must be rejected")),
            Err(kube::Error::Api(status)) if status.message.contains(expected) => {}
            Err(err) => failures.push(format!(
                "{what}: expected a message containing\n    {expected}\n  got\n    {err}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    support::delete_namespace(&client, &ns).await;
}
