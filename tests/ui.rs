//! The delivery console in headless Chromium (Debian's, driven by playwright-core): sign in, the
//! log lists events, the detail page shows the payload, Retry produces a new attempt on the
//! page, and nothing secret is in the HTML.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{ADMIN_TOKEN, SECRET, SUB_SECRET, harness, subscription};
use support::sink::Reply;

#[tokio::test]
async fn the_console_finds_shows_and_retries_a_delivery() {
    let yaml = format!(
        "{SECRET}{}",
        subscription("crm", "crm", ", retryPolicy: {maxAttempts: 1}")
    );
    let h = harness(&yaml).await;
    h.sink.always("crm", Reply::Status(503));
    for n in 0..3 {
        assert_eq!(
            h.publish("order.created", json!({"order": 1000 + n}))
                .await
                .status(),
            202
        );
    }
    h.wait_status("crm", "dead", 3, Duration::from_secs(15)).await;
    h.sink.always("crm", Reply::Status(200));
    let newest: String = sqlx::query_scalar("SELECT id::text FROM events ORDER BY id DESC LIMIT 1")
        .fetch_one(&h.pool)
        .await
        .unwrap();

    let script = support::repo_path("tests/ui/console.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([&h.base, ADMIN_TOKEN, &newest])
            .output()
    })
    .await
    .unwrap()
    .expect("node on PATH; playwright-core installed by hack/test (tests/ui)");
    assert!(
        output.status.success(),
        "console.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");

    assert_eq!(
        result["redirectedToLogin"], true,
        "the console asks for sign-in first"
    );
    assert_eq!(result["rows"], 3, "the log lists the events");
    let payload = result["payload"].as_str().unwrap();
    assert!(
        payload.contains("\"order\": 1002"),
        "the payload is pretty-printed: {payload}"
    );
    assert_eq!(result["before"], 1);
    assert_eq!(
        result["after"], 2,
        "Retry produced a new attempt, shown on the page"
    );
    assert_eq!(result["cookie"]["httpOnly"], true);
    assert_eq!(result["cookie"]["sameSite"], "Strict");
    assert_eq!(result["targets"], 1, "the targets page lists the subscription");
    // Three failed requests, the retry, and the test event.
    let received = h.sink.wait_for("crm", 5, Duration::from_secs(10)).await;
    assert!(
        received
            .iter()
            .any(|r| r.header("hookline-event-type") == "hookline.test"),
        "Send test event delivered a hookline.test event"
    );
    let html = result["html"].as_str().unwrap();
    for secret in [ADMIN_TOKEN, SUB_SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!html.contains(secret), "the page must not contain {secret}");
    }
}
