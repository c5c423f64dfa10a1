//! CEL filters and transforms against real parts: Postgres, a gateway and dispatcher on real
//! sockets, a real sink, and the official Standard Webhooks library (tests/peers, run by node)
//! verifying what the sink received.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::harness::{ADMIN_TOKEN, SECRET, SUB_SECRET, harness, subscription};

/// What each subscription of these tests was delivered, by the published `n`.
fn delivered_numbers(received: &[support::sink::Received]) -> Vec<i64> {
    let mut numbers: Vec<i64> = received
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    numbers.sort();
    numbers
}

async fn filtered_errors(pool: &sqlx::PgPool, target: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT last_error FROM delivery_states WHERE target = $1 AND status = 'filtered_error' ORDER BY created_at",
    )
    .bind(target)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn filters_select_exactly_the_matching_events() {
    let yaml = [
        SECRET.to_owned(),
        subscription("large", "large", r#", filter: "data.amount > 100""#),
        subscription(
            "tagged",
            "tagged",
            r#", filter: "data.tags.exists(t, t == 'vip') && type == 'order.created'""#,
        ),
        // Does not compile: every event it would see is recorded, none sent.
        subscription("broken", "broken", r#", filter: "data.amount >""#),
        // Fails at run time for events without `customer`.
        subscription("erring", "erring", r#", filter: "data.customer.country == 'NL'""#),
        subscription("everything", "everything", ""),
    ]
    .concat();
    let h = harness(&yaml).await;
    for n in 0..20i64 {
        let mut data =
            json!({"n": n, "amount": n * 10, "tags": if n % 3 == 0 { json!(["vip"]) } else { json!([]) }});
        if n % 2 == 0 {
            data["customer"] = json!({"country": if n % 4 == 0 { "NL" } else { "DE" }});
        }
        let event_type = if n % 5 == 0 {
            "order.updated"
        } else {
            "order.created"
        };
        assert_eq!(h.publish(event_type, data).await.status(), 202);
    }
    let everything = h.sink.wait_for("everything", 20, Duration::from_secs(20)).await;
    assert_eq!(delivered_numbers(&everything), (0..20).collect::<Vec<_>>());
    let large: Vec<i64> = (11..20).collect();
    assert_eq!(
        delivered_numbers(
            &h.sink
                .wait_for("large", large.len(), Duration::from_secs(10))
                .await
        ),
        large
    );
    let tagged: Vec<i64> = (0..20).filter(|n| n % 3 == 0 && n % 5 != 0).collect();
    assert_eq!(
        delivered_numbers(
            &h.sink
                .wait_for("tagged", tagged.len(), Duration::from_secs(10))
                .await
        ),
        tagged
    );
    let nl: Vec<i64> = (0..20).filter(|n| n % 4 == 0).collect();
    assert_eq!(
        delivered_numbers(&h.sink.wait_for("erring", nl.len(), Duration::from_secs(10)).await),
        nl
    );
    h.wait_status("everything", "succeeded", 20, Duration::from_secs(10))
        .await;

    // Nothing more arrives: the filters skipped the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.sink.received("large").len(), large.len());
    assert_eq!(h.sink.received("tagged").len(), tagged.len());
    assert!(h.sink.received("broken").is_empty());
    assert_eq!(h.sink.received("erring").len(), nl.len());
    // Skipped events leave no delivery; failed filters leave one, unsent, with the reason.
    assert_eq!(h.delivery("large").await.len(), large.len());
    let broken = filtered_errors(&h.pool, "broken").await;
    assert_eq!(broken.len(), 20);
    assert!(
        broken[0].starts_with("filter does not compile: ERROR: <input>:1:"),
        "{}",
        broken[0]
    );
    let erring = filtered_errors(&h.pool, "erring").await;
    assert_eq!(erring.len(), 10, "the events without a customer");
    assert!(erring[0].starts_with("filter: "), "{}", erring[0]);
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN delivery_states d ON d.id = a.delivery_id WHERE d.status = 'filtered_error'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 0, "filtered_error is attempt-free");

    let metrics = h
        .client
        .get(format!("{}/metrics", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"hookline_deliveries_filtered_total{namespace="shop",target="subscription/large",outcome="skipped"} 11"#,
        r#"hookline_deliveries_filtered_total{namespace="shop",target="subscription/broken",outcome="filtered_error"} 20"#,
        r#"hookline_deliveries_filtered_total{namespace="shop",target="subscription/erring",outcome="filtered_error"} 10"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn transforms_build_the_body_sent_and_the_signature_covers_it() {
    let slack = r#", transform: "{'text': 'Order ' + string(data.n) + ' paid: ' + string(data.amount) + ' EUR', 'order': data.n}""#;
    let yaml = [
        SECRET.to_owned(),
        subscription("slack", "slack", slack),
        // Fails at run time for an event without `customer`.
        subscription(
            "erring",
            "erring",
            r#", transform: "{'country': data.customer.country}""#,
        ),
        // Does not compile: held, nothing sent, until it is fixed.
        subscription("broken", "broken", r#", transform: "{'text': }""#),
    ]
    .concat();
    let h = harness(&yaml).await;
    let published: Value = h
        .publish("order.paid", json!({"n": 7, "amount": 1250}))
        .await
        .json()
        .await
        .unwrap();
    let got = h.sink.wait_for("slack", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("content-type"), "application/json");
    let payload = support::peers::verify_standard_webhooks(&got[0], SUB_SECRET)
        .expect("the official library verifies it");
    assert_eq!(payload, json!({"text": "Order 7 paid: 1250 EUR", "order": 7}));
    assert!(
        support::peers::verify_standard_webhooks(&got[0], "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err(),
        "and refuses another secret"
    );
    // The event store keeps what was published.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT body FROM events WHERE id = $1::uuid")
        .bind(published["id"].as_str().unwrap())
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["data"], json!({"n": 7, "amount": 1250}));

    // The console shows both: the payload as published, and the body the transform builds.
    let page = h
        .client
        .get(format!(
            "{}/ui/events/{}",
            h.base,
            published["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("&quot;amount&quot;: 1250"),
        "the published payload: {page}"
    );
    assert!(
        page.contains("&quot;text&quot;: &quot;Order 7 paid: 1250 EUR&quot;"),
        "the sent body: {page}"
    );
    assert!(
        page.contains("The transform fails for this event: "),
        "erring's failure: {page}"
    );

    h.wait_status("erring", "filtered_error", 1, Duration::from_secs(10))
        .await;
    let erring = filtered_errors(&h.pool, "erring").await;
    assert!(erring[0].starts_with("transform: "), "{}", erring[0]);
    assert!(h.sink.received("erring").is_empty());

    let held = h
        .client
        .get(format!("{}/admin/v1/targets", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let broken = held["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "broken")
        .unwrap();
    assert_eq!(broken["held"]["reason"], "expression_invalid", "{broken}");
    assert!(
        broken["held"]["message"]
            .as_str()
            .unwrap()
            .starts_with("expression does not compile: transform: "),
        "{broken}"
    );
    assert_eq!(h.delivery("broken").await, [("pending".to_owned(), 0)]);
    assert!(h.sink.received("broken").is_empty());
}

#[tokio::test]
async fn an_expression_over_its_cost_limit_is_not_run_for_that_event() {
    let pairs = r#", filter: "data.items.exists(x, data.items.exists(y, x == y + 1))""#;
    let h = harness(&[SECRET.to_owned(), subscription("pairs", "pairs", pairs)].concat()).await;
    assert_eq!(h.publish("list", json!({"items": [1, 2, 3]})).await.status(), 202);
    let items: Vec<i64> = (0..10_000).map(|i| i * 2).collect();
    assert_eq!(h.publish("list", json!({"items": items})).await.status(), 202);
    h.sink.wait_for("pairs", 1, Duration::from_secs(10)).await;
    let refused = filtered_errors(&h.pool, "pairs").await;
    assert_eq!(refused.len(), 1, "the large event");
    assert!(
        refused[0].contains("units for this event, over the limit of 10000000"),
        "{}",
        refused[0]
    );
}
