//! Delivery formats against real peers: a real sink receives CloudEvents (binary and
//! structured), the official CloudEvents SDK (npm `cloudevents`, tests/peers) parses them, and
//! the official Standard Webhooks library verifies their signatures.

mod support;

use std::time::Duration;

use serde_json::json;
use support::harness::{SECRET, SUB_SECRET, harness, subscription};
use support::peers;

#[tokio::test]
async fn cloudevents_parse_with_the_official_sdk_and_stay_signed() {
    let yaml = [
        SECRET.to_owned(),
        subscription("binary", "binary", ", format: cloudevents-binary"),
        subscription("structured", "structured", ", format: cloudevents-structured"),
        subscription(
            "slack",
            "slack",
            r#", format: cloudevents-structured, transform: "{'text': 'order ' + string(data.n)}""#,
        ),
    ]
    .concat();
    let h = harness(&yaml).await;
    assert_eq!(h.publish("order.created", json!({"n": 7})).await.status(), 202);
    for (path, data) in [
        ("binary", json!({"n": 7})),
        ("structured", json!({"n": 7})),
        ("slack", json!({"text": "order 7"})),
    ] {
        let got = h.sink.wait_for(path, 1, Duration::from_secs(10)).await;
        let request = &got[0];
        let event = peers::parse_cloudevent(request).unwrap_or_else(|why| panic!("{path}: {why}"));
        assert_eq!(
            event["id"],
            request.header("webhook-id"),
            "{path}: ce-id is the webhook-id"
        );
        assert_eq!(event["source"], "/namespaces/shop/events", "{path}");
        assert_eq!(event["type"], "order.created", "{path}");
        assert_eq!(event["specversion"], "1.0", "{path}");
        assert!(event["time"].as_str().unwrap().ends_with('Z'), "{path}: {event}");
        assert_eq!(event["data"], data, "{path}: {event}");
        // Still signed per Standard Webhooks, over the body as sent.
        peers::verify_standard_webhooks(request, SUB_SECRET)
            .unwrap_or_else(|why| panic!("{path}: the signature verifies: {why}"));
        assert!(
            peers::verify_standard_webhooks(request, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err(),
            "{path}: and not with another secret"
        );
    }
    let binary = &h.sink.received("binary")[0];
    assert_eq!(binary.header("content-type"), "application/json");
    assert!(binary.header("ce-source").starts_with("/namespaces/"));
    assert_eq!(
        h.sink.received("structured")[0].header("content-type"),
        "application/cloudevents+json"
    );
}
