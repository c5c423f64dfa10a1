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

/// The newcomer's path, word for word from the README: `hookline standalone` with the examples
/// and no token prints a sign-in link; in Chromium the link signs in, the Sources page lists the
/// examples' sources, "Send a sample" posts a signed Stripe invoice.paid, a local endpoint with
/// `allowPrivateNetworks: true` receives it and its bars count it, and a local endpoint without
/// the opt-in is shown as held, with what to change. Screenshots are saved for people to look at.
#[tokio::test]
async fn a_newcomer_signs_in_sends_a_sample_and_sees_it_delivered() {
    let sink = support::sink::Sink::start().await;
    let dir = std::env::temp_dir().join(format!("hookline-newcomer-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(support::repo_path("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let local = |name: &str, opt_in: bool| {
        format!(
            "---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}}}\n\
             spec: {{url: '{}', events: ['invoice.*'], allowPrivateNetworks: {opt_in}}}\n",
            sink.url(name)
        )
    };
    std::fs::write(
        dir.join("local.yaml"),
        format!("{}{}", local("local-sink", true), local("local-held", false)),
    )
    .unwrap();
    let gateway = support::process::start_standalone(&dir, &support::fresh_database().await, &[]).await;
    let line = gateway
        .log
        .wait_for("sign in once with ", 1, Duration::from_secs(10))
        .await;
    let link = line
        .rsplit("sign in once with ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    // The gateway listens on 127.0.0.1; the printed link says localhost.
    let link = link.replace("localhost", "127.0.0.1");
    assert!(
        gateway
            .log
            .find("subscription default/local-held (http://127.0.0.1:")
            .is_some_and(|l| l.contains("set allowPrivateNetworks: true to allow it")),
        "the start-up log warns about the held subscription"
    );

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("newcomer");
    std::fs::create_dir_all(&shots).unwrap();
    let script = support::repo_path("tests/ui/newcomer.mjs");
    let shots_arg = shots.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&link)
            .arg(&shots_arg)
            .output()
    })
    .await
    .unwrap()
    .expect("node on PATH; playwright-core installed by hack/test (tests/ui)");
    assert!(
        output.status.success(),
        "newcomer.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(result["landedOn"], "/ui/events", "the link signs in: {result}");
    let sources = result["sources"].to_string();
    for source in ["stripe", "clerk", "github", "resend", "inventory", "partner"] {
        assert!(sources.contains(source), "{source} listed: {sources}");
    }
    assert!(result["eventPage"].as_str().unwrap().starts_with("/ui/events/"));
    let got = sink.wait_for("local-sink", 1, Duration::from_secs(10)).await;
    let delivered: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(delivered["type"], "invoice.paid");
    assert!(
        result["delivered"].as_str().unwrap().contains("1 succeeded"),
        "the bars count the delivery: {result}"
    );
    let held = result["held"].as_str().unwrap();
    assert!(
        held.contains("private_network_not_allowed") && held.contains("set allowPrivateNetworks: true"),
        "{held}"
    );
    assert!(sink.received("local-held").is_empty());
    assert!(
        result["overview"]
            .as_str()
            .unwrap()
            .contains("Events received per minute")
    );
    for name in [
        "1-signed-in",
        "2-sources",
        "3-sample-event",
        "4-targets",
        "5-overview",
    ] {
        let file = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000),
            "{}",
            file.display()
        );
    }
    eprintln!("screenshots: {}", shots.display());
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
