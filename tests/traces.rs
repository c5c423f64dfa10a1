//! OpenTelemetry traces as `hookline standalone` exports them to a real collector (Jaeger's
//! all-in-one, built from its Go module by hack/build-tools): a publish and a provider webhook
//! that carry a `traceparent` yield spans of that trace for ingest (verify, store) and for each
//! delivery attempt (send, record), read back from Jaeger's query API, and every delivery tells
//! the receiver the trace. Without an exporter the sender's trace context is passed on as is.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline::verify::standard_webhooks;
use serde_json::{Value, json};
use support::process::{GatewayProcess, start_standalone_with};
use support::sink::{Reply, Sink};

const TOKEN: &str = "traces-publish-token";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const INGEST_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Jaeger's all-in-one on free ports, traces kept in memory.
struct Jaeger {
    child: Child,
    otlp: String,
    query: String,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_jaeger() -> Jaeger {
    let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("hookline-jaeger-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "service:\n  extensions: [jaeger_storage, jaeger_query]\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [batch]\n      exporters: [jaeger_storage_exporter]\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
             extensions:\n  jaeger_query:\n    storage:\n      traces: memstore\n    http:\n      endpoint: 127.0.0.1:{query}\n    grpc:\n      endpoint: 127.0.0.1:{query_grpc}\n  jaeger_storage:\n    backends:\n      memstore:\n        memory:\n          max_traces: 10000\n\
             receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{otlp}\n\
             processors:\n  batch:\n    timeout: 100ms\n\
             exporters:\n  jaeger_storage_exporter:\n    trace_storage: memstore\n"
        ),
    )
    .unwrap();
    let child = Command::new("jaeger")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("jaeger is on PATH: hack/build-tools builds it, hack/test-env puts it there");
    let jaeger = Jaeger {
        child,
        otlp: format!("http://127.0.0.1:{otlp}"),
        query: format!("http://127.0.0.1:{query}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{}/api/services", jaeger.query))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "jaeger answers within 60s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    jaeger
}

fn config_dir(sink: &Sink) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hookline-traces-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-webhooks}}\nstringData: {{secret: {SECRET}}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {{name: app}}\n\
             spec: {{provider: standard-webhooks, secretRef: {{name: app-webhooks, key: secret}},\n\
             \x20 handlers: [{{name: api, url: '{}', events: ['*']}}]}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: crm}}\n\
             spec: {{url: '{}', events: ['order.*'], allowPrivateNetworks: true, retryPolicy: {{maxAttempts: 5, schedule: [100ms]}}}}\n",
            sink.url("handler"),
            sink.url("crm"),
        ),
    )
    .unwrap();
    dir
}

async fn publish_traced(gateway: &GatewayProcess) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/namespaces/default/events", gateway.base))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&json!({"type": "order.created", "data": {"id": 1}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "publish: {}", response.status());
}

/// The trace id and the parent span id a delivery carried.
fn traceparent_of(received: &support::sink::Received) -> (String, String) {
    let parts: Vec<String> = received
        .header("traceparent")
        .split('-')
        .map(str::to_owned)
        .collect();
    assert_eq!(parts.len(), 4, "{:?}", received.header("traceparent"));
    (parts[1].clone(), parts[2].clone())
}

/// The spans of a trace in Jaeger, once at least `count` have arrived.
async fn trace_spans(jaeger: &Jaeger, trace: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Option<Vec<Value>> = async {
            let body: Value = reqwest::get(format!("{}/api/traces/{trace}", jaeger.query))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["data"][0]["spans"].as_array().cloned()
        }
        .await;
        if let Some(spans) = found.filter(|s| s.len() >= count) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "{count} spans of {trace} in jaeger within 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["operationName"] == name).collect()
}

fn parent(span: &Value) -> String {
    span["references"][0]["spanID"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn tag(span: &Value, key: &str) -> Value {
    span["tags"]
        .as_array()
        .and_then(|tags| tags.iter().find(|t| t["key"] == key))
        .map(|t| t["value"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_trace_runs_from_the_publisher_through_hookline_to_the_receiver_across_retries() {
    let jaeger = start_jaeger().await;
    let sink = Sink::start().await;
    sink.script("crm", vec![Reply::Status(500)]);
    let dir = config_dir(&sink);
    let gateway = start_standalone_with(
        &dir,
        &support::fresh_database().await,
        &[
            ("HOOKLINE_PUBLISH_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &[],
    )
    .await;

    publish_traced(&gateway).await;
    let received = sink.wait_for("crm", 2, Duration::from_secs(30)).await;
    let (first, second) = (traceparent_of(&received[0]), traceparent_of(&received[1]));
    assert_eq!(
        (first.0.as_str(), second.0.as_str()),
        (TRACE_ID, TRACE_ID),
        "the publisher's trace"
    );
    assert_ne!(first.1, second.1, "each attempt its own span");
    assert_eq!(received[0].header("tracestate"), "vendor=opaque");

    // publish + store, and per attempt deliver + send + record.
    let spans = trace_spans(&jaeger, TRACE_ID, 8).await;
    let publish = named(&spans, "publish default");
    assert_eq!(publish.len(), 1, "{spans:?}");
    assert_eq!(parent(publish[0]), PARENT_ID, "a child of the publisher's span");
    let publish_id = publish[0]["spanID"].as_str().unwrap();
    assert_eq!(parent(named(&spans, "store")[0]), publish_id);
    let deliveries = named(&spans, "deliver subscription/crm");
    assert_eq!(deliveries.len(), 2, "one span per attempt");
    let mut outcomes: Vec<String> = deliveries
        .iter()
        .map(|d| tag(d, "hookline.outcome").as_str().unwrap_or_default().to_owned())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["retry", "succeeded"]);
    for delivery in &deliveries {
        assert_eq!(
            parent(delivery),
            publish_id,
            "attempts belong to the published event's trace"
        );
        assert_eq!(tag(delivery, "hookline.namespace"), "default");
        assert!(tag(delivery, "hookline.event_id").is_string());
    }
    let sends = named(&spans, "send");
    assert_eq!(sends.len(), 2);
    let send_ids: Vec<&str> = sends.iter().map(|s| s["spanID"].as_str().unwrap()).collect();
    assert!(
        send_ids.contains(&first.1.as_str()) && send_ids.contains(&second.1.as_str()),
        "the receiver continues from the send span"
    );
    assert_eq!(named(&spans, "record").len(), 2);

    // A provider's webhook: ingest, verify, store, and its handler's delivery.
    let body = br#"{"type":"user.created","data":{"id":"u_1"}}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let keys = standard_webhooks::decode_secrets(SECRET).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/ingest/default/app", gateway.base))
        .header("webhook-id", "msg_traced_1")
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            standard_webhooks::sign_all(&keys, "msg_traced_1", now, body),
        )
        .header("traceparent", format!("00-{INGEST_TRACE_ID}-{PARENT_ID}-01"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "ingest: {status} {}",
        response.text().await.unwrap_or_default()
    );
    let handled = sink.wait_for("handler", 1, Duration::from_secs(30)).await;
    assert_eq!(traceparent_of(&handled[0]).0, INGEST_TRACE_ID);
    let spans = trace_spans(&jaeger, INGEST_TRACE_ID, 6).await;
    let ingest = named(&spans, "ingest default/app");
    assert_eq!(ingest.len(), 1, "{spans:?}");
    assert_eq!(tag(ingest[0], "hookline.outcome"), "accepted");
    assert_eq!(tag(ingest[0], "hookline.provider"), "standard-webhooks");
    let ingest_id = ingest[0]["spanID"].as_str().unwrap();
    assert_eq!(parent(named(&spans, "verify")[0]), ingest_id);
    assert_eq!(parent(named(&spans, "store")[0]), ingest_id);
    assert_eq!(named(&spans, "deliver handler/app/api").len(), 1);
    // No secret or body in any attribute.
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains("u_1") && !text.contains(&SECRET[6..]), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_an_exporter_the_senders_trace_context_is_passed_on() {
    let sink = Sink::start().await;
    let dir = config_dir(&sink);
    let gateway = start_standalone_with(
        &dir,
        &support::fresh_database().await,
        &[("HOOKLINE_PUBLISH_TOKEN", TOKEN)],
        &[],
    )
    .await;
    publish_traced(&gateway).await;
    let received = sink.wait_for("crm", 1, Duration::from_secs(30)).await;
    assert_eq!(
        received[0].header("traceparent"),
        format!("00-{TRACE_ID}-{PARENT_ID}-01"),
        "as the publisher sent it"
    );
    assert_eq!(received[0].header("tracestate"), "vendor=opaque");
    let _ = std::fs::remove_dir_all(&dir);
}
