//! Failure notifications as `hookline standalone` sends them to a real sink: a failing endpoint's
//! circuit produces one `circuit_opened` per opening (failed probes are the same opening) and a
//! `recovered` when it closes; a dead delivery one `delivery.dead`; a watcher that fails itself
//! is told nothing about itself, and a catch-all subscription gets no operational events.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::process::start_standalone;
use support::sink::{Received, Reply, Sink};
use support::wait_until;

const TOKEN: &str = "notifications-publish-token";

fn subscription(name: &str, url: &str, events: &str, extra: &str) -> String {
    format!(
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}}}\n\
         spec: {{url: '{url}', events: {events}, allowPrivateNetworks: true{extra}}}\n"
    )
}

/// Per received operational event: its type and the name of the target it is about.
fn notices(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["data"]["target"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn about(received: &[Received], target: &str) -> Vec<String> {
    notices(received)
        .into_iter()
        .filter(|(_, name)| name == target)
        .map(|(kind, _)| kind)
        .collect()
}

#[tokio::test]
async fn a_failing_endpoint_is_reported_once_per_opening_and_when_it_recovers() {
    let sink = Sink::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let flaky_answer = healthy.clone();
    sink.answer_with(
        "flaky",
        Arc::new(move |_: &[u8]| {
            Reply::Status(if flaky_answer.load(Ordering::SeqCst) {
                200
            } else {
                500
            })
        }),
    );
    sink.always("doomed", Reply::Status(400));
    sink.always("selfish", Reply::Status(500));

    let dir = std::env::temp_dir().join(format!(
        "hookline-notifications-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = [
        subscription(
            "flaky",
            &sink.url("flaky"),
            "['order.*']",
            ", retryPolicy: {maxAttempts: 100, schedule: [50ms]}, circuitBreaker: {failureThreshold: 3, resetTimeout: 1s}",
        ),
        subscription("doomed", &sink.url("doomed"), "['order.*']", ", retryPolicy: {maxAttempts: 1}"),
        subscription("oncall", &sink.url("oncall"), "['hookline.*']", ""),
        subscription(
            "selfish",
            &sink.url("selfish"),
            "['hookline.target.*', 'hookline.delivery.*']",
            ", retryPolicy: {maxAttempts: 1}, circuitBreaker: {failureThreshold: 1, resetTimeout: 1s}",
        ),
        subscription("everything", &sink.url("everything"), "['*']", ""),
    ]
    .join("---\n");
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let gateway = start_standalone(
        &dir,
        &support::fresh_database().await,
        &[("HOOKLINE_PUBLISH_TOKEN", TOKEN)],
    )
    .await;
    gateway
        .publish(TOKEN, json!({"type": "order.created", "data": {"id": 1}}))
        .await;

    let oncall = || sink.received("oncall");
    wait_until("circuit_opened about flaky", Duration::from_secs(30), || {
        !about(&oncall(), "flaky").is_empty()
    })
    .await;
    let opened: Value = serde_json::from_slice(
        &oncall()
            .iter()
            .find(|r| notices(std::slice::from_ref(r))[0].1 == "flaky")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(opened["type"], "hookline.target.circuit_opened");
    assert_eq!(opened["data"]["consecutiveFailures"], 3);
    assert_eq!(opened["data"]["lastError"], "HTTP 500");
    assert_eq!(opened["data"]["target"]["kind"], "subscription");

    // Probes fail for a while (each reopens the circuit: the same opening), then it recovers.
    wait_until("two failed probes", Duration::from_secs(30), || {
        sink.received("flaky").len() >= 5
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    wait_until("recovered about flaky", Duration::from_secs(30), || {
        about(&oncall(), "flaky").len() >= 2
    })
    .await;
    wait_until("the dead delivery of doomed", Duration::from_secs(30), || {
        !about(&oncall(), "doomed").is_empty()
    })
    .await;
    wait_until("selfish's circuit opened", Duration::from_secs(30), || {
        !about(&oncall(), "selfish").is_empty()
    })
    .await;
    // Nothing more arrives once it has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        about(&oncall(), "flaky"),
        ["hookline.target.circuit_opened", "hookline.target.recovered"],
        "one opening, one recovery, however many probes failed"
    );
    assert_eq!(about(&oncall(), "doomed"), ["hookline.delivery.dead"]);
    // Selfish's own deliveries died too, but they carried operational events: no notices of
    // those, and none about selfish to selfish.
    assert_eq!(about(&oncall(), "selfish"), ["hookline.target.circuit_opened"]);
    assert!(about(&sink.received("selfish"), "selfish").is_empty());
    assert!(
        !sink.received("selfish").is_empty(),
        "selfish was told about the others"
    );
    let everything = notices(&sink.received("everything"));
    assert_eq!(
        everything,
        [("order.created".to_owned(), String::new())],
        "a catch-all subscription gets no operational events"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
