//! The delivery engine against real parts: Postgres from hack/test-env, a real gateway and
//! dispatcher on real sockets, and real HTTP sinks that fail on command.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline::api::Provider;
use hookline::dispatch::DispatchOptions;
use hookline::verify::SourceVerifier;
use serde_json::json;
use support::harness::{SECRET, SUB_SECRET, TOKEN, harness, start_gateway, subscription};
use support::sink::Reply;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn delivered_requests_are_signed_per_standard_webhooks() {
    let h = harness(&format!("{SECRET}{}", subscription("crm", "crm", ""))).await;
    let response = h
        .publish("invoice.paid", json!({"invoice": "in_1", "amount": 4200}))
        .await;
    assert_eq!(response.status(), 202);
    let got = h.sink.wait_for("crm", 1, Duration::from_secs(10)).await;
    let request = &got[0];
    assert_eq!(request.header("hookline-event-type"), "invoice.paid");
    assert!(request.header("user-agent").starts_with("hookline/"));
    assert_eq!(request.header("content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["data"]["amount"], 4200);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    // A receiver verifies with the shared secret, as any Standard Webhooks library would.
    let verifier = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &[SUB_SECRET],
        Duration::from_secs(300),
    )
    .unwrap();
    let event = verifier
        .verify(&request.headers, &request.body, now())
        .expect("signature verifies");
    assert_eq!(event.event_type, "invoice.paid");
    let other = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(other.verify(&request.headers, &request.body, now()).is_err());
    h.wait_status("crm", "succeeded", 1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn retries_follow_the_schedule_and_max_attempts_is_exact() {
    let yaml = format!(
        "{SECRET}{}{}",
        subscription(
            "down",
            "down",
            ", retryPolicy: {maxAttempts: 3, schedule: [300ms, 600ms]}"
        ),
        subscription(
            "flaky",
            "flaky",
            ", retryPolicy: {maxAttempts: 5, schedule: [200ms]}"
        ),
    );
    let h = harness(&yaml).await;
    h.sink.always("down", Reply::Status(500));
    h.sink
        .script("flaky", vec![Reply::Status(503), Reply::Status(500)]);
    assert_eq!(h.publish("order.created", json!({})).await.status(), 202);

    h.wait_status("down", "dead", 1, Duration::from_secs(15)).await;
    let down = h.sink.received("down");
    assert_eq!(down.len(), 3, "maxAttempts counts every attempt");
    let gaps: Vec<Duration> = down.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(300),
        "first retry after the 1st delay: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(600),
        "second retry after the 2nd delay: {gaps:?}"
    );
    // Every attempt is on record with its status code, and the same webhook-id each time.
    let ids: Vec<&str> = down.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let codes: Vec<Option<i16>> = sqlx::query_scalar(
        "SELECT a.status_code FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.target = 'down' ORDER BY a.attempt_number",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(codes, [Some(500), Some(500), Some(500)]);

    h.wait_status("flaky", "succeeded", 1, Duration::from_secs(10))
        .await;
    assert_eq!(h.delivery("flaky").await, [("succeeded".to_owned(), 3)]);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let h = harness(&format!(
        "{SECRET}{}",
        subscription("busy", "busy", ", retryPolicy: {schedule: [100ms]}")
    ))
    .await;
    h.sink
        .script("busy", vec![Reply::WithHeader(429, "retry-after", "2".into())]);
    h.publish("order.created", json!({})).await;
    let got = h.sink.wait_for("busy", 2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "Retry-After: 2 asks for 2s, the policy for 100ms; waited {gap:?}"
    );
    h.wait_status("busy", "succeeded", 1, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn the_circuit_opens_half_opens_and_closes_without_spending_attempts() {
    let breaker = ", retryPolicy: {maxAttempts: 10, schedule: [100ms]}, maxInFlight: 1, \
                   circuitBreaker: {failureThreshold: 2, resetTimeout: 1500ms, halfOpenRequests: 1}";
    let h = harness(&format!("{SECRET}{}", subscription("shaky", "shaky", breaker))).await;
    h.sink
        .script("shaky", vec![Reply::Status(500), Reply::Status(500)]);
    for i in 0..4 {
        h.publish("order.created", json!({"n": i})).await;
    }
    h.wait_status("shaky", "succeeded", 4, Duration::from_secs(20))
        .await;
    let got = h.sink.received("shaky");
    assert_eq!(
        got.len(),
        6,
        "2 failures, then one request per delivery: none while open"
    );
    let pause = got[2].at - got[1].at;
    assert!(
        pause >= Duration::from_millis(1400),
        "the circuit stays open for resetTimeout; paused {pause:?}"
    );
    let circuit: String = sqlx::query_scalar("SELECT circuit FROM target_states WHERE target = 'shaky'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(circuit, "closed");
    let total_attempts: i64 =
        sqlx::query_scalar("SELECT sum(attempts) FROM delivery_states WHERE target = 'shaky'")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        total_attempts, 6,
        "deliveries waiting on the open circuit spent no attempts"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_410_pauses_the_target() {
    let yaml = format!(
        "{SECRET}{}{}",
        subscription("strict", "strict", ""),
        subscription("gone", "gone", "")
    );
    let h = harness(&yaml).await;
    h.sink.always("strict", Reply::Status(400));
    h.sink.always("gone", Reply::Status(410));
    h.publish("order.created", json!({})).await;
    h.wait_status("strict", "dead", 1, Duration::from_secs(10)).await;
    assert_eq!(h.delivery("strict").await, [("dead".to_owned(), 1)]);

    h.sink.wait_for("gone", 1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let reason: Option<String> =
            sqlx::query_scalar("SELECT paused_reason FROM target_states WHERE target = 'gone'")
                .fetch_optional(&h.pool)
                .await
                .unwrap()
                .flatten();
        if let Some(reason) = reason {
            break reason;
        }
        assert!(Instant::now() < deadline, "410 must pause the target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("410 Gone"), "{reason}");
    h.publish("order.created", json!({"after": "pause"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.sink.received("gone").len(),
        1,
        "a paused target receives nothing more"
    );
}

#[tokio::test]
async fn a_hanging_target_does_not_delay_the_others() {
    let yaml = format!(
        "{SECRET}{}{}",
        subscription("stuck", "stuck", ", timeout: 20s, maxInFlight: 4"),
        subscription("healthy", "healthy", ""),
    );
    let h = harness(&yaml).await;
    h.sink.always("stuck", Reply::Hang);
    let started = Instant::now();
    for i in 0..30 {
        assert_eq!(h.publish("order.created", json!({"n": i})).await.status(), 202);
    }
    h.sink.wait_for("healthy", 30, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "the healthy target got everything while the other hangs"
    );
    assert!(
        h.sink.received("stuck").len() <= 4,
        "the stuck target holds at most maxInFlight requests"
    );
}

/// A target may hold four rounds of deliveries, but one waiting for a free slot so long that
/// its claim could expire mid-request goes back to the queue unsent, spending no attempt: it is
/// never sent by this worker after another could have taken it over.
#[tokio::test]
async fn a_delivery_waiting_past_its_lease_goes_back_unsent() {
    let yaml = format!(
        "{SECRET}{}",
        subscription("stuck", "stuck", ", timeout: 1s, maxInFlight: 1")
    );
    // Lease: 1 s timeout + 1 s margin. A slot must come within 2 - 1 - 0.5 = 0.5 s of the claim.
    let dispatch = DispatchOptions {
        lease_margin: Duration::from_secs(1),
        ..DispatchOptions::default()
    };
    let h = support::harness::harness_with_dispatch(&yaml, support::harness::test_options(), dispatch).await;
    h.sink.always("stuck", Reply::Hang);
    for i in 0..4 {
        assert_eq!(h.publish("order.created", json!({"n": i})).await.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let released: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delivery_states
             WHERE attempts = 0 AND last_error = 'waited too long for a free slot'",
        )
        .fetch_one(&h.pool)
        .await
        .expect("count");
        if released > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery went back to the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An attempt is recorded a moment after its request ends (the recorder shares commits), so
    // the sink may be one ahead for that moment; a request sent by a worker whose claim was
    // taken over would never be recorded. Requests are counted before attempts: a request that
    // ends in between is in both.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let requests = h.sink.received("stuck").len() as i64;
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
            .fetch_one(&h.pool)
            .await
            .expect("count");
        if requests <= attempts + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every request but the one in flight is a recorded attempt: {requests} requests, {attempts} attempts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_is_authenticated_validated_and_idempotent() {
    let h = harness(&format!("{SECRET}{}", subscription("crm", "crm", ""))).await;
    let url = format!("{}/v1/namespaces/shop/events", h.base);
    let body = json!({"type": "order.created", "data": {"order": 1}, "id": "ord_1"});
    let send = |key: &str, body: serde_json::Value| {
        h.client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("key-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first_body: serde_json::Value = first.json().await.unwrap();
    for _ in 0..2 {
        let again = send("key-1", body.clone()).await.unwrap();
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first_body);
    }
    let reused = send("key-1", json!({"type": "order.created", "data": {"order": 2}}))
        .await
        .unwrap();
    assert_eq!(reused.status(), 422);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(events, 1, "one event for one idempotency key");

    // The event id dedupes too, across keys.
    let duplicate = send("key-2", body.clone()).await.unwrap();
    assert_eq!(duplicate.status(), 200);
    assert_eq!(duplicate.headers()["hookline-duplicate"], "true");

    // What Postgres could never store is refused, not retried with 503 forever.
    for (bad, reason) in [
        (json!({"type": "order.\u{0}created", "data": {}}), "invalid_type"),
        (
            json!({"type": "order.created", "id": "ord_\u{0}", "data": {}}),
            "invalid_id",
        ),
    ] {
        let refused = send("key-bad", bad).await.unwrap();
        assert_eq!(refused.status(), 400);
        assert_eq!(
            refused.json::<serde_json::Value>().await.unwrap()["error"],
            reason
        );
    }

    let anonymous = h.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = h
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let malformed = h
        .client
        .post(&url)
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_json"
    );
    h.sink.wait_for("crm", 1, Duration::from_secs(10)).await;
}

/// Two gateway processes' dispatchers on one database: every delivery sent, none by both.
#[tokio::test]
async fn two_dispatchers_share_the_queue_without_double_sends() {
    let yaml = format!("{SECRET}{}", subscription("crm", "crm", ", maxInFlight: 8"));
    let h = harness(&yaml).await;
    let second = start_gateway(&h.pool, &yaml.replace("{SINK}", &h.sink.base)).await;
    let publishers = [h.base.clone(), second];
    for i in 0..200 {
        let base = &publishers[i % 2];
        let response = h
            .client
            .post(format!("{base}/v1/namespaces/shop/events"))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "order.created", "data": {"n": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let got = h.sink.wait_for("crm", 200, Duration::from_secs(30)).await;
    h.wait_status("crm", "succeeded", 200, Duration::from_secs(10))
        .await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(got.len(), 200, "no delivery was sent twice");
}

/// Handlers get the provider's body byte for byte, re-signed by Hookline.
#[tokio::test]
async fn handlers_receive_the_original_body_unchanged() {
    let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: stripe, namespace: shop}\n\
                stringData: {secret: whsec_stripe_test, handler: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n---\n\
                apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe, namespace: shop}\n\
                spec:\n  provider: stripe\n  secretRef: {name: stripe, key: secret}\n  handlers:\n\
                \x20 - {name: billing, url: '{SINK}/billing', events: ['invoice.*'], secretRef: {name: stripe, key: handler}}\n";
    let h = harness(yaml).await;
    let body = "{\n  \"id\": \"evt_9\",\n  \"type\": \"invoice.paid\",\n  \"data\": {\"object\": {\"amount\": 1}}\n}\n";
    let key = hookline::verify::SigningKey::from_text("whsec_stripe_test").unwrap();
    let response = h
        .client
        .post(format!("{}/ingest/shop/stripe", h.base))
        .header(
            "Stripe-Signature",
            hookline::verify::stripe::sign(&key, now(), body.as_bytes()),
        )
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = h.sink.wait_for("billing", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].body.as_ref(),
        body.as_bytes(),
        "byte for byte, whitespace and all"
    );
    assert_eq!(got[0].header("content-type"), "application/json; charset=utf-8");
    assert_eq!(got[0].header("hookline-source"), "stripe");
    assert_eq!(got[0].header("hookline-event-type"), "invoice.paid");
    let verifier = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &[SUB_SECRET],
        Duration::from_secs(300),
    )
    .unwrap();
    verifier
        .verify(&got[0].headers, &got[0].body, now())
        .expect("signed with the handler's secret");
}

/// The egress policy holds at send time: a subscription may not reach a private address
/// (here loopback) without allowPrivateNetworks, whatever its status says.
#[tokio::test]
async fn private_addresses_need_an_opt_in() {
    let yaml = format!(
        "{SECRET}---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: internal, namespace: shop}}\n\
         spec: {{url: '{{SINK}}/internal', events: ['*'], secretRef: {{name: signing, key: secret}}}}\n{}",
        subscription("allowed", "allowed", "")
    );
    let h = harness(&yaml).await;
    h.publish("order.created", json!({})).await;
    h.sink.wait_for("allowed", 1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let error: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM delivery_states WHERE target = 'internal'")
                .fetch_one(&h.pool)
                .await
                .unwrap();
        if let Some(error) = error {
            break error;
        }
        assert!(Instant::now() < deadline, "the refused delivery must say why");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("set allowPrivateNetworks: true to allow it"),
        "{reason}"
    );
    assert!(
        h.sink.received("internal").is_empty(),
        "nothing may be sent to a private address without the opt-in"
    );
}

/// Endpoint URLs may carry credentials (Slack-style hook URLs): attempt errors leave them out.
#[tokio::test]
async fn attempt_errors_do_not_repeat_the_url() {
    let yaml = format!(
        "{SECRET}---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: hook, namespace: shop}}\n\
         spec: {{url: 'http://127.0.0.1:9/services/T000/s3cr3t-path', events: ['*'], allowPrivateNetworks: true, \
         secretRef: {{name: signing, key: secret}}, retryPolicy: {{maxAttempts: 1}}}}\n"
    );
    let h = harness(&yaml).await;
    h.publish("order.created", json!({})).await;
    h.wait_status("hook", "dead", 1, Duration::from_secs(10)).await;
    let (class, error): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT error_class, error FROM attempts")
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(class.as_deref(), Some("connect"));
    let error = error.unwrap_or_default();
    assert!(!error.is_empty());
    assert!(!error.contains("s3cr3t-path"), "{error}");
}

/// The operator's egress ranges beat what tenants opt into: a denied range is never sent to,
/// even by a subscription with allowPrivateNetworks (the delivery says why), and an allowed
/// range is sent to by a subscription without it.
#[tokio::test]
async fn operator_egress_ranges_override_the_tenant_opt_in() {
    use hookline::catalog::egress::EgressRules;
    let sink = support::sink::Sink::start().await;
    let subscription = |name: &str, opt_in: bool| {
        format!(
            "{SECRET}---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{url: '{}/{name}', events: ['*'], allowPrivateNetworks: {opt_in}, secretRef: {{name: signing, key: secret}}}}\n",
            sink.base
        )
    };
    let start = |yaml: String, deny: &'static str, allow: &'static str| async move {
        let nets = |list: &str| {
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().unwrap())
                .collect()
        };
        let dispatch = DispatchOptions {
            egress: std::sync::Arc::new(EgressRules {
                deny: nets(deny),
                allow: nets(allow),
            }),
            ..DispatchOptions::default()
        };
        let pool = hookline::store::connect_lazy(&support::fresh_database().await, 8).unwrap();
        hookline::store::migrate(&pool).await.unwrap();
        let base = support::harness::start_gateway_dispatching(
            &pool,
            &yaml,
            support::harness::test_options(),
            dispatch,
        )
        .await;
        let published = reqwest::Client::new()
            .post(format!("{base}/v1/namespaces/shop/events"))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "order.created", "data": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 202);
        pool
    };
    // The sink listens on 127.0.0.1.
    let denied = start(subscription("denied", true), "127.0.0.0/8", "").await;
    let allowed = start(subscription("allowed", false), "", "127.0.0.1/32").await;
    sink.wait_for("allowed", 1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let error: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM delivery_states WHERE target = 'denied'")
                .fetch_one(&denied)
                .await
                .unwrap();
        if let Some(error) = error {
            break error;
        }
        assert!(Instant::now() < deadline, "the denied delivery never says why");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("which the operator denies"), "{reason}");
    assert!(
        sink.received("denied").is_empty(),
        "nothing is sent to a denied range"
    );
    drop(allowed);
}

/// Each target's deliveries are claimed for its own timeout plus the margin: a neighbour with
/// the longest timeout allowed does not make a fast target's abandoned claims wait as long.
#[tokio::test]
async fn each_target_holds_its_claims_for_its_own_timeout() {
    let yaml = format!(
        "{SECRET}{}{}",
        subscription("slow", "slow", ", timeout: 5m"),
        subscription("fast", "fast", ", timeout: 1m"),
    );
    let h = harness(&yaml).await;
    h.sink.always("slow", Reply::Hang);
    h.sink.always("fast", Reply::Hang);
    let published = chrono::Utc::now();
    assert_eq!(h.publish("order.created", json!({})).await.status(), 202);
    h.sink.wait_for("fast", 1, Duration::from_secs(10)).await;
    h.sink.wait_for("slow", 1, Duration::from_secs(10)).await;
    // Claimed from the queue, or leased on the delivery's row by the gateway that stored it.
    let leases: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT target, next_attempt_at FROM delivery_queue WHERE claimed
         UNION ALL SELECT target, lease_until FROM deliveries WHERE lease_until IS NOT NULL",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    let held = |name: &str| {
        let (_, until) = leases.iter().find(|(t, _)| t == name).expect("claimed");
        (*until - published).num_seconds()
    };
    // The default margin is 30 s.
    assert!(
        (89..=100).contains(&held("fast")),
        "fast is held {}s",
        held("fast")
    );
    assert!(
        (329..=340).contains(&held("slow")),
        "slow is held {}s",
        held("slow")
    );
}

/// One tenant's enormous durations (as configuration that never met admission could hold)
/// cannot stall anyone: the claim lease, the retry schedule and the breaker stay within their
/// limits, the failing target gets its attempt, and a healthy target beside it gets everything.
#[tokio::test]
async fn enormous_durations_of_one_target_do_not_stall_the_others() {
    use hookline::api::WebhookSubscription;
    use hookline::catalog::{Catalog, GeneratedSecrets, Secrets};
    let sink = support::sink::Sink::start().await;
    sink.always("huge", Reply::Status(500));
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 8).unwrap();
    let subscription = |name: &str, extra: &str| -> WebhookSubscription {
        serde_yaml::from_str(&format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{url: '{}', events: ['*'], allowPrivateNetworks: true, secretRef: {{name: signing, key: secret}}{extra}}}\n",
            sink.url(name)
        ))
        .unwrap()
    };
    let huge = subscription(
        "huge",
        ", timeout: 3000000000h, retryPolicy: {maxAttempts: 100, schedule: [3000000000h]}, \
         circuitBreaker: {failureThreshold: 1, resetTimeout: 3000000000h}",
    );
    let mut secrets = Secrets::default();
    secrets.insert(
        "shop",
        "signing",
        std::collections::BTreeMap::from([("secret".to_owned(), SUB_SECRET.as_bytes().to_vec())]),
    );
    let catalog = Catalog::build(
        &[],
        &[huge, subscription("healthy", "")],
        &secrets,
        GeneratedSecrets::InDatabase,
    );
    let (_, base) = support::harness::start_node_on(
        &pool,
        catalog,
        support::harness::test_options(),
        DispatchOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    for n in 0..20 {
        let response = client
            .post(format!("{base}/v1/namespaces/shop/events"))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "order.created", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    sink.wait_for("healthy", 20, Duration::from_secs(15)).await;
    sink.wait_for("huge", 1, Duration::from_secs(15)).await;
    // The failed attempt is recorded and its retry is scheduled within the longest delay.
    let latest: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(q.next_attempt_at) FROM delivery_queue q WHERE q.target = 'huge'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let latest = latest.expect("the huge target's deliveries wait in the queue");
    assert!(
        latest < chrono::Utc::now() + chrono::Duration::hours(25),
        "retries and the open circuit wait at most 24h: {latest}"
    );
}

/// A subscription without a secretRef (standalone) signs with a key generated once and kept in
/// Postgres: every delivery verifies with the stored key, and the dispatcher reads it once,
/// not once per delivery (a trigger counts the statement's attempts to store it).
#[tokio::test]
async fn a_generated_signing_key_is_stored_once_and_read_once() {
    let yaml = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: crm, namespace: shop}\n\
                spec: {url: '{SINK}/crm', events: ['*'], allowPrivateNetworks: true}\n";
    let h = harness(yaml).await;
    sqlx::raw_sql(
        "CREATE TABLE secret_lookups (at timestamptz DEFAULT now());
         CREATE FUNCTION count_secret_lookup() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO secret_lookups DEFAULT VALUES; RETURN NEW; END $$;
         -- A BEFORE trigger fires for every row proposed, also one that then conflicts.
         CREATE TRIGGER count_secret_lookups BEFORE INSERT ON generated_secrets
             FOR EACH ROW EXECUTE FUNCTION count_secret_lookup();",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    // The first delivery first: deliveries racing to a target's first key may each read it.
    assert_eq!(h.publish("order.created", json!({"n": 0})).await.status(), 202);
    h.sink.wait_for("crm", 1, Duration::from_secs(10)).await;
    for n in 1..5 {
        assert_eq!(h.publish("order.created", json!({"n": n})).await.status(), 202);
    }
    let got = h.sink.wait_for("crm", 5, Duration::from_secs(10)).await;
    let secret: String = sqlx::query_scalar("SELECT secret FROM generated_secrets")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    let verifier = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &[secret.as_str()],
        Duration::from_secs(300),
    )
    .unwrap();
    for delivery in &got {
        verifier
            .verify(&delivery.headers, &delivery.body, now())
            .expect("signed with the stored key");
    }
    let lookups: i64 = sqlx::query_scalar("SELECT count(*) FROM secret_lookups")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(lookups, 1, "the key is read from Postgres once, then kept");
}
