//! Inbound webhooks end to end: a real gateway on a real socket, real HTTP requests signed by each
//! provider's scheme, and the real Postgres from hack/test-env.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use hookline::gateway::GatewayOptions;
use hookline::verify::{self, SigningKey, standard_webhooks, stripe};
use sqlx::PgPool;

const CONFIG: &str = r#"
apiVersion: v1
kind: Secret
metadata: { name: signing, namespace: shop }
stringData:
  stripe: whsec_stripe_test_secret
  svix: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  github: It's a Secret to Everybody
  generic: generic-secret
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: stripe, namespace: shop }
spec:
  provider: stripe
  secretRef: { name: signing, key: stripe }
  maxBodyBytes: 4096
  handlers:
  - { name: invoices, url: 'http://127.0.0.1:9/invoices', events: ['invoice.*'] }
  - { name: checkout, url: 'http://127.0.0.1:9/checkout', events: ['checkout.session.completed'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: clerk, namespace: shop }
spec:
  provider: clerk
  secretRef: { name: signing, key: svix }
  handlers:
  - { name: users, url: 'http://127.0.0.1:9/users', events: ['user.*'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: resend, namespace: shop }
spec:
  provider: resend
  secretRef: { name: signing, key: svix }
  handlers:
  - { name: email, url: 'http://127.0.0.1:9/email', events: ['email.bounced', 'email.complained'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: standard, namespace: shop }
spec:
  provider: standard-webhooks
  secretRef: { name: signing, key: svix }
  handlers:
  - { name: all, url: 'http://127.0.0.1:9/all', events: ['*'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: github, namespace: shop }
spec:
  provider: github
  secretRef: { name: signing, key: github }
  handlers:
  - { name: ci, url: 'http://127.0.0.1:9/ci', events: [push, pull_request] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: generic, namespace: shop }
spec:
  provider: generic-hmac
  secretRef: { name: signing, key: generic }
  genericHmac: { header: X-Signature, prefix: 'sha256=', timestampHeader: X-Timestamp, idHeader: X-Event-Id }
  handlers:
  - { name: orders, url: 'http://127.0.0.1:9/orders', events: ['order.*'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: office-only, namespace: shop }
spec:
  provider: github
  secretRef: { name: signing, key: github }
  allowedSourceRanges: [192.0.2.0/24]
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: no-secret, namespace: shop }
spec:
  provider: stripe
  secretRef: { name: missing, key: k }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: { name: rotating, namespace: shop }
spec:
  provider: stripe
  secretRef: { name: signing, key: stripe }
  # The next secret of a rotation, not created yet.
  additionalSecretRefs: [{ name: stripe-next, key: stripe }]
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: { name: paid-invoices, namespace: shop }
spec: { url: 'https://crm.example.com/hooks', events: ['invoice.paid'], sources: [stripe] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: { name: everything, namespace: shop }
spec: { url: 'https://audit.example.com/hooks', events: ['*'] }
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: { name: elsewhere, namespace: other }
spec: { url: 'https://other.example.com/hooks', events: ['*'] }
"#;

struct TestGateway {
    base: String,
    pool: PgPool,
    client: reqwest::Client,
}

async fn start_gateway(database_url: &str) -> TestGateway {
    start_gateway_behind(database_url, vec![]).await
}

/// A gateway that believes `X-Forwarded-For` from `trusted_proxies`.
async fn start_gateway_behind(database_url: &str, trusted_proxies: Vec<ipnet::IpNet>) -> TestGateway {
    let pool = hookline::store::connect_lazy(database_url, 8).expect("pool");
    let options = GatewayOptions {
        trusted_proxies,
        ..GatewayOptions::default()
    };
    let (_, base) = support::harness::start_node(&pool, CONFIG, options, Default::default()).await;
    TestGateway {
        base,
        pool,
        client: reqwest::Client::new(),
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A request as a provider would send it.
#[derive(Clone)]
struct Signed {
    source: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn text_key(secret: &str) -> SigningKey {
    SigningKey::from_text(secret).unwrap()
}

fn svix_key() -> SigningKey {
    standard_webhooks::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
}

fn stripe_request(event_id: &str, event_type: &str, timestamp: i64) -> Signed {
    let body =
        format!(r#"{{"id":"{event_id}","object":"event","type":"{event_type}","data":{{"object":{{}}}}}}"#);
    let header = stripe::sign(&text_key("whsec_stripe_test_secret"), timestamp, body.as_bytes());
    Signed {
        source: "stripe",
        headers: vec![("Stripe-Signature".into(), header)],
        body: body.into_bytes(),
    }
}

fn svix_request(
    source: &'static str,
    prefix: &str,
    msg_id: &str,
    event_type: &str,
    timestamp: i64,
) -> Signed {
    let body = format!(r#"{{"type":"{event_type}","data":{{"id":"x"}}}}"#);
    let signature = standard_webhooks::sign(&svix_key(), msg_id, timestamp, body.as_bytes());
    Signed {
        source,
        headers: vec![
            (format!("{prefix}-id"), msg_id.into()),
            (format!("{prefix}-timestamp"), timestamp.to_string()),
            (format!("{prefix}-signature"), signature),
        ],
        body: body.into_bytes(),
    }
}

/// A push whose body differs per delivery, as GitHub's do (the commit, the pusher, the time).
fn github_request(source: &'static str, delivery: &str, event: &str) -> Signed {
    let body = format!(r#"{{"ref":"refs/heads/main","after":"{delivery}"}}"#).into_bytes();
    let signature = verify::sign_github(&text_key("It's a Secret to Everybody"), &body);
    Signed {
        source,
        headers: vec![
            ("X-Hub-Signature-256".into(), signature),
            ("X-GitHub-Delivery".into(), delivery.into()),
            ("X-GitHub-Event".into(), event.into()),
        ],
        body,
    }
}

fn generic_request(event_id: &str, event_type: &str, timestamp: i64) -> Signed {
    let settings = hookline::api::GenericHmac {
        header: "X-Signature".into(),
        algorithm: Default::default(),
        encoding: Default::default(),
        prefix: Some("sha256=".into()),
        timestamp_header: Some("X-Timestamp".into()),
        id_header: Some("X-Event-Id".into()),
        event_type_header: None,
    };
    let body = format!(r#"{{"type":"{event_type}","order":42}}"#).into_bytes();
    let signature = verify::sign_generic_hmac(&settings, &text_key("generic-secret"), Some(timestamp), &body);
    Signed {
        source: "generic",
        headers: vec![
            ("X-Signature".into(), signature),
            ("X-Timestamp".into(), timestamp.to_string()),
            ("X-Event-Id".into(), event_id.into()),
        ],
        body,
    }
}

impl TestGateway {
    async fn send(&self, request: &Signed) -> reqwest::Response {
        let mut builder = self
            .client
            .post(format!("{}/ingest/shop/{}", self.base, request.source));
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        builder.body(request.body.clone()).send().await.expect("request")
    }

    async fn events(&self, source: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE namespace = 'shop' AND source = $1")
            .bind(source)
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    async fn total_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    async fn delivery_targets(&self, source: &str, external_id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT d.target_kind || ':' || d.target FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE e.namespace = 'shop' AND e.source = $1 AND e.external_id = $2 ORDER BY 1",
        )
        .bind(source)
        .bind(external_id)
        .fetch_all(&self.pool)
        .await
        .expect("list deliveries")
    }
}

#[tokio::test]
async fn every_provider_is_accepted_once_and_fanned_out_by_filter() {
    let gw = start_gateway(&support::fresh_database().await).await;
    let t = now();
    let cases: Vec<(Signed, &str, Vec<&str>)> = vec![
        (
            stripe_request("evt_1", "invoice.paid", t),
            "evt_1",
            vec![
                "handler:stripe/invoices",
                "subscription:everything",
                "subscription:paid-invoices",
            ],
        ),
        (
            stripe_request("evt_2", "checkout.session.completed", t),
            "evt_2",
            vec!["handler:stripe/checkout", "subscription:everything"],
        ),
        (
            stripe_request("evt_3", "customer.created", t),
            "evt_3",
            vec!["subscription:everything"],
        ),
        (
            svix_request("clerk", "svix", "msg_clerk1", "user.created", t),
            "msg_clerk1",
            vec!["handler:clerk/users", "subscription:everything"],
        ),
        (
            svix_request("resend", "svix", "msg_resend1", "email.bounced", t),
            "msg_resend1",
            vec!["handler:resend/email", "subscription:everything"],
        ),
        (
            svix_request("resend", "svix", "msg_resend2", "email.opened", t),
            "msg_resend2",
            vec!["subscription:everything"],
        ),
        (
            svix_request("standard", "webhook", "msg_std1", "contact.created", t),
            "msg_std1",
            vec!["handler:standard/all", "subscription:everything"],
        ),
        (
            github_request("github", "72d3162e-cc78-11e3-81ab-4c9367dc0958", "push"),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            vec!["handler:github/ci", "subscription:everything"],
        ),
        (
            generic_request("ord-1", "order.created", t),
            "ord-1",
            vec!["handler:generic/orders", "subscription:everything"],
        ),
    ];
    for (request, external_id, expected_targets) in &cases {
        for attempt in 0..3 {
            let response = gw.send(request).await;
            let status = response.status();
            let duplicate = response
                .headers()
                .get("hookline-duplicate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = response.text().await.unwrap();
            assert_eq!(
                status, 200,
                "{} {external_id} attempt {attempt}: {body}",
                request.source
            );
            assert_eq!(
                duplicate.is_some(),
                attempt > 0,
                "{} {external_id} attempt {attempt}: {body}",
                request.source
            );
        }
        assert_eq!(
            gw.delivery_targets(request.source, external_id).await,
            *expected_targets,
            "{}",
            request.source
        );
    }
    for (source, expected) in [
        ("stripe", 3),
        ("clerk", 1),
        ("resend", 2),
        ("standard", 1),
        ("github", 1),
        ("generic", 1),
    ] {
        assert_eq!(
            gw.events(source).await,
            expected,
            "{source} events stored once each"
        );
    }
    // The raw body is kept byte for byte, with its event type.
    let (body, event_type): (Vec<u8>, String) = sqlx::query_as(
        "SELECT body, event_type FROM events WHERE source = 'stripe' AND external_id = 'evt_1'",
    )
    .fetch_one(&gw.pool)
    .await
    .unwrap();
    assert_eq!(body, cases[0].0.body);
    assert_eq!(event_type, "invoice.paid");
}

#[tokio::test]
async fn refused_requests_store_nothing_and_say_why() {
    let gw = start_gateway(&support::fresh_database().await).await;
    let t = now();
    let tamper = |mut r: Signed| {
        r.body.extend_from_slice(b" ");
        r
    };
    let with_header = |mut r: Signed, name: &str, value: &str| {
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r.headers.push((name.into(), value.into()));
        r
    };
    let without = |mut r: Signed, name: &str| {
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r
    };
    let other_key = standard_webhooks::decode_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let cases: Vec<(&str, Signed, u16, &str)> = vec![
        (
            "stripe tampered",
            tamper(stripe_request("e1", "invoice.paid", t)),
            401,
            "signature_mismatch",
        ),
        (
            "stripe stale",
            stripe_request("e2", "invoice.paid", t - 301),
            401,
            "timestamp_outside_tolerance",
        ),
        (
            "stripe future",
            // Far enough ahead to stay outside the 300 s tolerance however long the cases take.
            stripe_request("e3", "invoice.paid", t + 400),
            401,
            "timestamp_outside_tolerance",
        ),
        (
            "stripe unsigned",
            without(stripe_request("e4", "invoice.paid", t), "Stripe-Signature"),
            401,
            "missing_signature",
        ),
        (
            "stripe garbage",
            with_header(
                stripe_request("e5", "invoice.paid", t),
                "Stripe-Signature",
                "nonsense",
            ),
            401,
            "malformed_signature",
        ),
        (
            "stripe wrong secret",
            with_header(
                stripe_request("e6", "invoice.paid", t),
                "Stripe-Signature",
                &stripe::sign(
                    &text_key("whsec_other"),
                    t,
                    stripe_request("e6", "invoice.paid", t).body.as_slice(),
                ),
            ),
            401,
            "signature_mismatch",
        ),
        (
            "clerk tampered",
            tamper(svix_request("clerk", "svix", "m1", "user.created", t)),
            401,
            "signature_mismatch",
        ),
        (
            "clerk stale",
            svix_request("clerk", "svix", "m2", "user.created", t - 400),
            401,
            "timestamp_outside_tolerance",
        ),
        (
            "clerk without id",
            without(svix_request("clerk", "svix", "m3", "user.created", t), "svix-id"),
            401,
            "missing_event_id",
        ),
        (
            "resend wrong secret",
            with_header(
                svix_request("resend", "svix", "m4", "email.sent", t),
                "svix-signature",
                &standard_webhooks::sign(&other_key, "m4", t, br#"{"type":"email.sent","data":{"id":"x"}}"#),
            ),
            401,
            "signature_mismatch",
        ),
        (
            "standard bad timestamp",
            with_header(
                svix_request("standard", "webhook", "m5", "a", t),
                "webhook-timestamp",
                "yesterday",
            ),
            401,
            "malformed_timestamp",
        ),
        (
            "github tampered",
            tamper(github_request("github", "d1", "push")),
            401,
            "signature_mismatch",
        ),
        (
            "github sha1 prefix",
            with_header(
                github_request("github", "d2", "push"),
                "X-Hub-Signature-256",
                "sha1=abc",
            ),
            401,
            "malformed_signature",
        ),
        (
            "generic stale",
            generic_request("g1", "order.created", t - 1000),
            401,
            "timestamp_outside_tolerance",
        ),
        (
            "generic without timestamp",
            without(generic_request("g2", "order.created", t), "X-Timestamp"),
            401,
            "missing_timestamp",
        ),
        (
            "address not allowed",
            github_request("office-only", "d3", "push"),
            403,
            "source_address_not_allowed",
        ),
        (
            "secret missing",
            stripe_request_for("no-secret", t),
            503,
            "secret_unavailable",
        ),
        (
            "unknown source",
            stripe_request_for("nope", t),
            404,
            "unknown_source",
        ),
        ("oversized body", oversized_stripe(t), 413, "body_too_large"),
    ];
    for (what, request, status, reason) in cases {
        let response = gw.send(&request).await;
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["error"], reason, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        for secret in [
            "whsec_stripe_test_secret",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "Secret to Everybody",
            "generic-secret",
        ] {
            assert!(
                !message.contains(secret),
                "{what}: the answer echoes a secret: {message}"
            );
        }
    }
    assert_eq!(
        gw.total_events().await,
        0,
        "no refused request may store anything"
    );

    // Refusals are counted per source and reason in Postgres (flushed every few seconds) for
    // the source's status; the gateway's own failures (503) are not the sender's and not counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT reason, sum(count)::bigint FROM ingest_rejections WHERE source = 'stripe'
             GROUP BY reason ORDER BY reason",
        )
        .fetch_all(&gw.pool)
        .await
        .unwrap();
        if !counted.is_empty() {
            let expected = [
                ("body_too_large", 1),
                ("malformed_signature", 1),
                ("missing_signature", 1),
                ("signature_mismatch", 2),
                ("timestamp_outside_tolerance", 2),
            ];
            let expected: Vec<(String, i64)> = expected.iter().map(|(r, c)| (r.to_string(), *c)).collect();
            assert_eq!(counted, expected);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejections were not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hookline_ingest_requests_total{namespace="shop",source="stripe",provider="stripe",outcome="signature_mismatch"} 2"#),
        "{metrics}"
    );
}

fn stripe_request_for(source: &'static str, t: i64) -> Signed {
    Signed {
        source,
        ..stripe_request("e-any", "invoice.paid", t)
    }
}

fn oversized_stripe(t: i64) -> Signed {
    let body = format!(
        r#"{{"id":"big","type":"invoice.paid","pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let header = stripe::sign(&text_key("whsec_stripe_test_secret"), t, body.as_bytes());
    Signed {
        source: "stripe",
        headers: vec![("Stripe-Signature".into(), header)],
        body: body.into_bytes(),
    }
}

/// With the database gone, nothing is acknowledged: the provider gets 503 and retries.
#[tokio::test]
async fn a_database_outage_is_never_acknowledged() {
    let state = std::env::temp_dir().join(format!("hookline-outage-{}", uuid::Uuid::new_v4().simple()));
    let postgres = hookline::standalone::postgres::PrivatePostgres::start(&state).expect("private Postgres");
    let gw = start_gateway(&postgres.url()).await;
    let t = now();
    assert_eq!(
        gw.send(&stripe_request("before", "invoice.paid", t))
            .await
            .status(),
        200
    );

    postgres.stop();
    for i in 0..5 {
        let response = gw
            .send(&stripe_request(&format!("during-{i}"), "invoice.paid", t))
            .await;
        assert_eq!(response.status(), 503, "request {i} during the outage");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "storage_unavailable");
    }
    let ready = gw.client.get(format!("{}/readyz", gw.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without a database");

    // The database comes back: the gateway recovers by itself, without a restart.
    let postgres = hookline::standalone::postgres::PrivatePostgres::start(&state).expect("restart Postgres");
    let back = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let status = gw
            .send(&stripe_request(&format!("after-{n}"), "invoice.paid", t))
            .await
            .status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only 503 until the database answers");
        assert!(
            back.elapsed() < std::time::Duration::from_secs(15),
            "no recovery 15 s after Postgres returned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("recovered {:?} after Postgres returned", back.elapsed());
    let stored: Vec<String> = sqlx::query_scalar("SELECT external_id FROM events ORDER BY received_at")
        .fetch_all(&gw.pool)
        .await
        .unwrap();
    assert_eq!(stored.first().map(String::as_str), Some("before"));
    assert!(
        stored.iter().all(|id| !id.starts_with("during")),
        "nothing refused was stored"
    );
    postgres.stop();
    let _ = std::fs::remove_dir_all(&state);
}

/// Resend's "email event history": every event kept with its type and time, listed by type
/// through the events_by_type index.
#[tokio::test]
async fn event_history_is_queryable_by_type_and_time() {
    let gw = start_gateway(&support::fresh_database().await).await;
    let t = now();
    for (i, event_type) in [
        "email.delivered",
        "email.opened",
        "email.clicked",
        "email.bounced",
        "email.opened",
    ]
    .iter()
    .enumerate()
    {
        let response = gw
            .send(&svix_request(
                "resend",
                "svix",
                &format!("msg_h{i}"),
                event_type,
                t,
            ))
            .await;
        assert_eq!(response.status(), 200);
    }
    let opened: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT external_id, headers FROM events
         WHERE namespace = 'shop' AND event_type = $1 AND received_at > now() - interval '1 hour'
         ORDER BY received_at",
    )
    .bind("email.opened")
    .fetch_all(&gw.pool)
    .await
    .unwrap();
    let ids: Vec<&str> = opened.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["msg_h1", "msg_h4"]);
    assert_eq!(opened[0].1["svix-id"], "msg_h1", "request headers are kept");
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM events WHERE namespace = 'shop' AND event_type = 'email.opened' ORDER BY received_at DESC LIMIT 50",
    )
    .fetch_all(&gw.pool)
    .await
    .unwrap();
    // Each day's partition through its copy of events_by_type, merged in time order.
    assert!(
        plan.iter()
            .any(|line| line.contains("_namespace_event_type_received_at_idx"))
            && !plan.iter().any(|line| line.contains("Seq Scan")),
        "{plan:#?}"
    );
}

/// allowedSourceRanges sees the client behind a trusted proxy, and only behind a trusted one.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let url = support::fresh_database().await;
    let office = |xff: &str| {
        let mut request = github_request("office-only", &format!("d-{xff}"), "push");
        request.headers.push(("X-Forwarded-For".into(), xff.into()));
        request
    };
    let direct = start_gateway(&url).await;
    assert_eq!(
        direct.send(&office("192.0.2.10")).await.status(),
        403,
        "an untrusted peer cannot claim an address"
    );

    let proxied = start_gateway_behind(&url, vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(
        proxied.send(&office("192.0.2.10")).await.status(),
        200,
        "client in range, via a trusted proxy"
    );
    // The right-most untrusted entry is the client; earlier entries are whatever it claimed.
    assert_eq!(
        proxied.send(&office("192.0.2.10, 203.0.113.9")).await.status(),
        403
    );
    assert_eq!(
        proxied
            .send(&office("203.0.113.9, 192.0.2.10, 127.0.0.1"))
            .await
            .status(),
        200
    );
}

/// A verification secret that does not resolve (a rotation half done) does not stop the source:
/// requests signed with the secret that does resolve are accepted, and a metric counts the
/// missing one.
#[tokio::test]
async fn a_missing_rotation_secret_leaves_the_source_receiving() {
    let gw = start_gateway(&support::fresh_database().await).await;
    let response = gw.send(&stripe_request_for("rotating", now())).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hookline_source_secrets_unresolved{namespace="shop",source="rotating"} 1"#),
        "{metrics}"
    );
}

/// GitHub signs neither X-GitHub-Delivery nor X-GitHub-Event, and a generic-HMAC id header is not
/// signed either: a captured request sent again with a new delivery id, or retyped to reach
/// other handlers, is a duplicate of the stored event (deduplicated on the signed content too),
/// while a different body is a new event.
#[tokio::test]
async fn replays_with_new_unsigned_headers_are_duplicates() {
    let gateway = start_gateway(&support::fresh_database().await).await;
    let with_header = |mut request: Signed, name: &str, value: &str| {
        for (header, old) in &mut request.headers {
            if header.eq_ignore_ascii_case(name) {
                *old = value.to_owned();
            }
        }
        request
    };
    let is_duplicate = |response: &reqwest::Response| response.headers().contains_key("hookline-duplicate");

    let original = github_request("github", "delivery-1", "push");
    let first = gateway.send(&original).await;
    assert_eq!(first.status(), 200);
    assert!(!is_duplicate(&first));
    for replay in [
        with_header(original.clone(), "X-GitHub-Delivery", "delivery-forged"),
        with_header(original.clone(), "X-GitHub-Event", "pull_request"),
    ] {
        let response = gateway.send(&replay).await;
        assert_eq!(response.status(), 200);
        assert!(
            is_duplicate(&response),
            "a replay with a new unsigned header is a duplicate"
        );
    }
    let other = gateway
        .send(&github_request("github", "delivery-2", "push"))
        .await;
    assert!(!is_duplicate(&other), "another body is another event");
    assert_eq!(gateway.events("github").await, 2);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let order = generic_request("order-1", "order.created", now);
    assert!(!is_duplicate(&gateway.send(&order).await));
    let replayed = gateway
        .send(&with_header(order.clone(), "X-Event-Id", "order-forged"))
        .await;
    assert_eq!(replayed.status(), 200);
    assert!(is_duplicate(&replayed));
    // The same body signed at another time is another signed content: a new event.
    let later = generic_request("order-2", "order.created", now + 1);
    assert!(!is_duplicate(&gateway.send(&later).await));
    assert_eq!(gateway.events("generic").await, 2);
}
