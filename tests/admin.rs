//! The admin API against the real Postgres: filters, cursor pagination, redaction, redelivery.

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::harness::{ADMIN_TOKEN, SECRET, harness, subscription};
use support::sink::Reply;

const STRIPE: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: stripe, namespace: shop}\nstringData: {secret: whsec_admin_test}\n---\n\
                      apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe, namespace: shop}\n\
                      spec: {provider: stripe, secretRef: {name: stripe, key: secret}}\n";

#[tokio::test]
async fn the_admin_api_finds_shows_and_redelivers() {
    let yaml = format!(
        "{SECRET}{}{STRIPE}",
        subscription(
            "crm",
            "crm",
            // A high breaker threshold: this test wants dead deliveries, not an open circuit.
            ", retryPolicy: {maxAttempts: 2, schedule: [100ms]}, circuitBreaker: {failureThreshold: 100}",
        )
    );
    let h = harness(&yaml).await;
    h.sink.always("crm", Reply::Status(500));
    for (i, event_type) in [
        "order.created",
        "invoice.paid",
        "order.created",
        "invoice.paid",
        "order.created",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(h.publish(event_type, json!({"n": i})).await.status(), 202);
    }
    h.wait_status("crm", "dead", 5, Duration::from_secs(20)).await;
    let get = async |path: &str| -> Value {
        let response = h
            .client
            .get(format!("{}{path}", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    };

    let anonymous = h
        .client
        .get(format!("{}/admin/v1/events", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = h
        .client
        .get(format!("{}/admin/v1/events", h.base))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    assert_eq!(
        get("/admin/v1/events?type=invoice.paid").await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get("/admin/v1/events?status=dead&namespace=shop").await["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get("/admin/v1/events?status=succeeded").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        get("/admin/v1/events?namespace=elsewhere").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Cursor pagination walks every event once, newest first.
    let mut seen = Vec::new();
    let mut path = "/admin/v1/events?limit=2".to_owned();
    loop {
        let page = get(&path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/admin/v1/events?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");

    // One event: payload, deliveries, every attempt.
    let detail = get(&format!("/admin/v1/events/{}", seen[0])).await;
    assert_eq!(detail["payload"]["type"], "order.created");
    assert_eq!(detail["payload"]["data"]["n"], 4);
    let delivery = &detail["deliveries"][0];
    assert_eq!(delivery["status"], "dead");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["statusCode"], 500);

    // Redelivery after the endpoint is fixed: a new attempt, and it succeeds.
    h.sink.always("crm", Reply::Status(200));
    let delivery_id = delivery["id"].as_str().unwrap();
    let response = h
        .client
        .post(format!("{}/admin/v1/deliveries/{delivery_id}/redeliver", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    h.wait_status("crm", "succeeded", 1, Duration::from_secs(10))
        .await;
    let detail = get(&format!("/admin/v1/events/{}", seen[0])).await;
    let attempts = detail["deliveries"][0]["attempts"].as_array().unwrap().clone();
    assert_eq!(attempts.len(), 3, "the redelivery is a new attempt on record");
    assert_eq!(attempts[2]["statusCode"], 200);
    let missing = h
        .client
        .post(format!(
            "{}/admin/v1/deliveries/{}/redeliver",
            h.base,
            uuid::Uuid::now_v7()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn signature_headers_are_redacted() {
    let h = harness(&format!("{SECRET}{STRIPE}")).await;
    let body = r#"{"id":"evt_redact","type":"invoice.paid","data":{}}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let key = hookline::verify::SigningKey::from_text("whsec_admin_test").unwrap();
    let signature = hookline::verify::stripe::sign(&key, now, body.as_bytes());
    let response = h
        .client
        .post(format!("{}/ingest/shop/stripe", h.base))
        .header("Stripe-Signature", &signature)
        .header("Authorization", "Bearer sender-credential")
        .header("X-Request-Id", "req-7")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = h
        .client
        .get(format!("{}/admin/v1/events?source=stripe", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let text = h
        .client
        .get(format!("{}/admin/v1/events/{id}", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let detail: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(detail["headers"]["stripe-signature"], "[redacted]");
    assert_eq!(detail["headers"]["authorization"], "[redacted]");
    assert_eq!(detail["headers"]["x-request-id"], "req-7");
    assert_eq!(detail["payload"]["id"], "evt_redact");
    let signature_value = signature.split("v1=").nth(1).unwrap();
    assert!(
        !text.contains(signature_value),
        "no signature value in the answer"
    );
    assert!(!text.contains("sender-credential"));
    assert!(!text.contains("whsec_admin_test"));
    let openapi: Value = h
        .client
        .get(format!("{}/admin/v1/openapi.json", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/admin/v1/events"].is_object());
}

#[tokio::test]
async fn targets_can_be_tested_paused_resumed_and_their_dead_redelivered() {
    let yaml = format!(
        "{SECRET}{}",
        subscription(
            "crm",
            "crm",
            ", retryPolicy: {maxAttempts: 1}, circuitBreaker: {failureThreshold: 100}"
        )
    );
    let h = harness(&yaml).await;
    let act = async |action: &str, body: Value| -> (u16, Value) {
        let response = h
            .client
            .post(format!("{}/admin/v1/targets/{action}", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    };
    let crm = json!({"namespace": "shop", "kind": "subscription", "target": "crm"});

    // A test event reaches the endpoint.
    let (status, _) = act("test", crm.clone()).await;
    assert_eq!(status, 202);
    let got = h.sink.wait_for("crm", 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("hookline-event-type"), "hookline.test");

    // Paused, nothing is sent; resumed, the waiting event goes out.
    assert_eq!(act("pause", crm.clone()).await.0, 202);
    h.publish("order.created", json!({"while": "paused"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.sink.received("crm").len(), 1, "nothing while paused");
    assert_eq!(act("resume", crm.clone()).await.0, 202);
    h.sink.wait_for("crm", 2, Duration::from_secs(10)).await;

    // Dead deliveries, all redelivered at once after the endpoint is fixed.
    h.sink.always("crm", Reply::Status(500));
    for n in 0..3 {
        h.publish("order.created", json!({"n": n})).await;
    }
    h.wait_status("crm", "dead", 3, Duration::from_secs(10)).await;
    // The health figures are the target's minutes, written by the dispatcher every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed: Value = h
            .client
            .get(format!("{}/admin/v1/targets?namespace=shop", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let crm = &listed["items"][0];
        assert_eq!(crm["target"], "crm");
        if crm["dead"] == 3 {
            assert_eq!(crm["lastFailureReason"], "HTTP 500", "{crm}");
            assert!(crm["failedAttempts"].as_u64() >= Some(3), "{crm}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the health of crm to count 3 dead: {crm}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.sink.always("crm", Reply::Status(200));
    let (status, answer) = act("redeliver-dead", crm.clone()).await;
    assert_eq!((status, answer["redelivered"].as_u64()), (202, Some(3)));
    h.wait_status("crm", "succeeded", 5, Duration::from_secs(10))
        .await;

    let (status, _) = act(
        "test",
        json!({"namespace": "shop", "kind": "subscription", "target": "nope"}),
    )
    .await;
    assert_eq!(status, 404);
}

/// A namespace-scoped admin token sees and acts on its namespaces only.
#[tokio::test]
async fn scoped_admin_tokens_stay_in_their_namespaces() {
    use hookline::gateway::ScopedToken;
    let scoped = |token: &str, ns: &str| ScopedToken {
        token: token.into(),
        namespaces: vec![ns.into()],
    };
    let options = hookline::gateway::GatewayOptions {
        scoped_admin_tokens: vec![
            scoped("shop-team-admin-token-0123456789abcdef", "shop"),
            scoped("other-team-admin-token-0123456789abcdef", "other"),
        ],
        ..support::harness::test_options()
    };
    let yaml = format!(
        "{SECRET}{}",
        subscription("crm", "crm", ", retryPolicy: {maxAttempts: 1}")
    );
    let h = support::harness::harness_with(&yaml, options).await;
    h.sink.always("crm", Reply::Status(500));
    h.publish("order.created", json!({})).await;
    h.wait_status("crm", "dead", 1, Duration::from_secs(10)).await;
    let get = async |token: &str, path: &str| {
        h.client
            .get(format!("{}{path}", h.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    };
    let items = |v: &Value| v["items"].as_array().unwrap().len();

    let shop: Value = get("shop-team-admin-token-0123456789abcdef", "/admin/v1/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(items(&shop), 1);
    let id = shop["items"][0]["id"].as_str().unwrap().to_owned();
    let other: Value = get("other-team-admin-token-0123456789abcdef", "/admin/v1/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(items(&other), 0, "another namespace's history is invisible");
    let asked: Value = get(
        "other-team-admin-token-0123456789abcdef",
        "/admin/v1/events?namespace=shop",
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(items(&asked), 0, "asking for it by name does not help");
    assert_eq!(
        get(
            "other-team-admin-token-0123456789abcdef",
            &format!("/admin/v1/events/{id}")
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        get(
            "shop-team-admin-token-0123456789abcdef",
            &format!("/admin/v1/events/{id}")
        )
        .await
        .status(),
        200
    );
    let targets: Value = get("other-team-admin-token-0123456789abcdef", "/admin/v1/targets")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(items(&targets), 0);

    let detail: Value = get(
        "shop-team-admin-token-0123456789abcdef",
        &format!("/admin/v1/events/{id}"),
    )
    .await
    .json()
    .await
    .unwrap();
    let delivery = detail["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let redeliver = |token: &'static str| {
        h.client
            .post(format!("{}/admin/v1/deliveries/{delivery}/redeliver", h.base))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        redeliver("other-team-admin-token-0123456789abcdef")
            .await
            .unwrap()
            .status(),
        404
    );
    let act = h
        .client
        .post(format!("{}/admin/v1/targets/pause", h.base))
        .bearer_auth("other-team-admin-token-0123456789abcdef")
        .json(&json!({"namespace": "shop", "kind": "subscription", "target": "crm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(act.status(), 404);
    assert_eq!(
        redeliver("shop-team-admin-token-0123456789abcdef")
            .await
            .unwrap()
            .status(),
        202
    );
}

/// A namespace-scoped publish token publishes into its namespaces only (403 elsewhere); the
/// global one publishes anywhere.
#[tokio::test]
async fn scoped_publish_tokens_publish_only_into_their_namespaces() {
    use hookline::gateway::ScopedToken;
    let options = hookline::gateway::GatewayOptions {
        scoped_publish_tokens: vec![ScopedToken {
            token: "shop-team-publish-0001".into(),
            namespaces: vec!["shop".into()],
        }],
        ..support::harness::test_options()
    };
    let yaml = format!("{SECRET}{}", subscription("crm", "crm", ""));
    let h = support::harness::harness_with(&yaml, options).await;
    let publish = async |token: &str, namespace: &str| {
        let response = h
            .client
            .post(format!("{}/v1/namespaces/{namespace}/events", h.base))
            .bearer_auth(token)
            .json(&json!({"type": "order.created", "data": {}}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (status, body["error"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(publish("shop-team-publish-0001", "shop").await.0, 202);
    assert_eq!(
        publish("shop-team-publish-0001", "billing").await,
        (403, "forbidden".to_owned()),
        "a team's token does not publish into another namespace"
    );
    assert_eq!(
        publish(support::harness::TOKEN, "billing").await.0,
        202,
        "the operator's token publishes anywhere"
    );
    assert_eq!(
        publish("not-a-token-at-all-0001", "shop").await,
        (401, "unauthorized".to_owned())
    );
    h.sink.wait_for("crm", 1, Duration::from_secs(10)).await;
}

/// A generic-HMAC source's own signature header (here `X-Hmac`, a name no keyword catches) is
/// shown redacted in the admin API, because the source's configuration says it is signed.
#[tokio::test]
async fn a_sources_signature_header_is_redacted_by_its_configuration() {
    let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: partner, namespace: shop}\nstringData: {key: partner-secret}\n---\n\
                apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: partner, namespace: shop}\n\
                spec: {provider: generic-hmac, secretRef: {name: partner, key: key}, genericHmac: {header: X-Hmac, idHeader: X-Id}}\n";
    let h = harness(yaml).await;
    let source: hookline::api::WebhookSource =
        serde_yaml::from_str(yaml.split("---\n").nth(1).unwrap()).unwrap();
    let body = br#"{"type":"order.created","id":"o-1"}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let headers = hookline::verify::sign_headers(
        hookline::api::Provider::GenericHmac,
        source.spec.generic_hmac.as_ref(),
        "partner-secret",
        "evt-1",
        now,
        body,
    )
    .unwrap();
    let mut request = h
        .client
        .post(format!("{}/ingest/shop/partner", h.base))
        .body(body.to_vec());
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let stored: Value = answer.json().await.unwrap();
    let event: Value = h
        .client
        .get(format!(
            "{}/admin/v1/events/{}",
            h.base,
            stored["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["headers"]["x-hmac"], "[redacted]", "{event}");
    assert_eq!(event["headers"]["x-id"], "evt-1", "other headers are shown");
}

/// With --admin-listen the admin API, the console and /metrics are served on that port only,
/// and the public port serves ingest, publish and health only.
#[tokio::test]
async fn the_admin_port_serves_operators_and_the_public_port_senders() {
    use hookline::node::{Configuration, Node, NodeOptions};
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 8).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = NodeOptions {
        http: support::harness::test_options(),
        dispatch: Default::default(),
        history: hookline::store::retention::Policy::new(Duration::from_secs(3600)),
        stopping: Default::default(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
    };
    let yaml = format!("{SECRET}{}", subscription("crm", "crm", "")).replace("{SINK}", "http://127.0.0.1:9");
    let catalog = support::harness::catalog_of(&yaml);
    let node = Node::start(
        pool,
        listener,
        Configuration::Fixed(catalog),
        options,
        std::future::pending(),
    )
    .await
    .unwrap();
    let public = format!("http://{}", node.local_addr);
    let admin = format!("http://{}", node.admin_addr.expect("an admin address"));
    tokio::spawn(node.wait());
    let client = reqwest::Client::new();
    let status = async |base: &str, path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for path in ["/metrics", "/admin/v1/events", "/ui/login"] {
        assert_eq!(
            status(&public, path).await,
            404,
            "{path} is not on the public port"
        );
        assert_eq!(status(&admin, path).await, 200, "{path} is on the admin port");
    }
    for base in [&public, &admin] {
        assert_eq!(status(base, "/readyz").await, 200, "health on both ports");
    }
    let publish = |base: &str| {
        client
            .post(format!("{base}/v1/namespaces/shop/events"))
            .bearer_auth(support::harness::TOKEN)
            .json(&json!({"type": "order.created", "data": {}}))
            .send()
    };
    assert_eq!(publish(&public).await.unwrap().status(), 202);
    assert_eq!(
        publish(&admin).await.unwrap().status(),
        404,
        "no publishing on the admin port"
    );
}

/// Console sessions end: the cookie has a Max-Age, the server forgets the session on sign-out,
/// and every console page forbids framing and scripts.
#[tokio::test]
async fn console_sessions_end_and_pages_cannot_be_framed() {
    let h = harness(&format!("{SECRET}{}", subscription("crm", "crm", ""))).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client.get(format!("{}/ui/login", h.base)).send().await.unwrap();
    assert_eq!(form.headers()["x-frame-options"], "DENY");
    let policy = form.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let signed_in = client
        .post(format!("{}/ui/login", h.base))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Max-Age=28800"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = |session: String| {
        client
            .get(format!("{}/ui/events", h.base))
            .header("cookie", session)
            .send()
    };
    assert_eq!(page(session.clone()).await.unwrap().status(), 200, "signed in");
    let out = client
        .post(format!("{}/ui/logout", h.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = page(session).await.unwrap();
    assert_eq!(after.status(), 303, "the session is gone on the server too");
    assert_eq!(after.headers()["location"], "/ui/login");
}

/// Sessions live in Postgres, so a browser signed in through one replica is signed in on the
/// other, and signing out on one ends it on both. The cookie is `Secure` only when a trusted
/// proxy says the browser came over HTTPS, and a client that keeps guessing tokens must wait.
#[tokio::test]
async fn console_sessions_are_shared_by_replicas_and_guessing_is_slowed() {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 8).unwrap();
    let yaml = format!("{SECRET}{}", subscription("crm", "crm", "")).replace("{SINK}", "http://127.0.0.1:9");
    let behind_tls_proxy = hookline::gateway::GatewayOptions {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..support::harness::test_options()
    };
    let a = support::harness::start_gateway_with(&pool, &yaml, behind_tls_proxy).await;
    let b = support::harness::start_gateway(&pool, &yaml).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = async |base: &str, token: &str, forwarded_for: Option<&str>| {
        let mut request = client
            .post(format!("{base}/ui/login"))
            .header("x-forwarded-proto", "https")
            .form(&[("token", token)]);
        if let Some(address) = forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        request.send().await.unwrap()
    };
    let cookie = |response: &reqwest::Response| response.headers()["set-cookie"].to_str().unwrap().to_owned();
    let on_a = sign_in(&a, ADMIN_TOKEN, None).await;
    assert_eq!(on_a.status(), 303);
    assert!(cookie(&on_a).ends_with("; Secure"), "{}", cookie(&on_a));
    let on_b = sign_in(&b, ADMIN_TOKEN, None).await;
    assert!(
        !cookie(&on_b).contains("Secure"),
        "B trusts no proxy, so the header is not believed: {}",
        cookie(&on_b)
    );
    let session = cookie(&on_a).split(';').next().unwrap().to_owned();
    let page = async |base: &str| {
        client
            .get(format!("{base}/ui/events"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(page(&a).await, 200);
    assert_eq!(page(&b).await, 200, "a session opened on A works on B");
    let out = client
        .post(format!("{b}/ui/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(page(&a).await, 303, "signing out on B ends the session on A");

    for _ in 0..10 {
        assert_eq!(sign_in(&a, "not-the-token", None).await.status(), 401);
    }
    let limited = sign_in(&a, ADMIN_TOKEN, None).await;
    assert_eq!(
        limited.status(),
        429,
        "even the right token waits once a client keeps failing"
    );
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&wait), "{wait}");
    assert_eq!(
        sign_in(&a, ADMIN_TOKEN, Some("203.0.113.9")).await.status(),
        303,
        "another client (named by the trusted proxy) is not limited"
    );
}

/// An admin token short enough to guess through the sign-in form is refused at start, naming
/// the token (not its value) and how to make a good one.
#[tokio::test]
async fn a_short_admin_token_is_refused_at_start() {
    let database = support::fresh_database().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args([
            "standalone",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
            "--listen",
        ])
        .arg(format!("127.0.0.1:{}", support::free_port()))
        .env("DATABASE_URL", &database)
        .env("HOOKLINE_ADMIN_TOKEN", "hunter2")
        .output()
        .expect("run hookline standalone");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the admin token is 7 characters long; admin tokens need at least 32")
            && stderr.contains("openssl rand -hex 32")
            && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// Every console and API path answers the same with a trailing slash as without: `/ui/` is the
/// first URL a person types.
#[tokio::test]
async fn paths_answer_with_and_without_a_trailing_slash() {
    let h = harness(&format!("{SECRET}{}", subscription("crm", "crm", ""))).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = async |path: &str, signed_in: bool| {
        let mut request = client.get(format!("{}{path}", h.base));
        if signed_in {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        let response = request.send().await.unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (response.status().as_u16(), location)
    };
    for (path, signed_in, expected) in [
        ("/ui", false, 303),
        ("/ui", true, 303),
        ("/ui/login", false, 200),
        ("/ui/events", true, 200),
        ("/ui/events", false, 303),
        ("/ui/targets", true, 200),
        ("/ui/verify", true, 200),
        ("/admin/v1/events", true, 200),
        ("/admin/v1/targets", true, 200),
        ("/admin/v1/openapi.json", false, 200),
        ("/healthz", false, 200),
        ("/metrics", false, 200),
    ] {
        let without = get(path, signed_in).await;
        assert_eq!(without.0, expected, "{path}");
        assert_eq!(get(&format!("{path}/"), signed_in).await, without, "{path}/");
    }
}

/// A delivery the dispatcher holds back says why everywhere a person looks: the admin API's
/// target and delivery, the console's targets and event pages, and a metric by reason.
#[tokio::test]
async fn held_deliveries_say_why_everywhere() {
    let local = "---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: local, namespace: shop}\n\
                 spec: {url: '{SINK}/local', events: ['*'], secretRef: {name: signing, key: secret}}\n";
    let yaml = format!(
        "{SECRET}{local}{}",
        subscription("paused", "paused", ", paused: true")
    );
    let h = harness(&yaml).await;
    let published: Value = h.publish("order.created", json!({})).await.json().await.unwrap();
    let id = published["id"].as_str().unwrap().to_owned();
    let get = async |path: &str| {
        h.client
            .get(format!("{}{path}", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    };
    let targets: Value = get("/admin/v1/targets").await.json().await.unwrap();
    let held = |name: &str| {
        targets["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == name)
            .unwrap()["held"]
            .clone()
    };
    assert_eq!(held("local")["reason"], "private_network_not_allowed");
    let message = held("local")["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("127.0.0.1 is a loopback address; set allowPrivateNetworks: true to allow it"),
        "{message}"
    );
    assert_eq!(held("paused")["reason"], "paused");

    let event: Value = get(&format!("/admin/v1/events/{id}")).await.json().await.unwrap();
    let delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == "local")
        .unwrap()
        .clone();
    assert_eq!(
        delivery["held"]["reason"], "private_network_not_allowed",
        "{delivery}"
    );

    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "hookline_deliveries_held{namespace=\"shop\",target=\"subscription/local\",reason=\"private_network_not_allowed\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("target=\"subscription/paused\",reason=\"paused\"} 1"));

    let page = get("/ui/targets").await.text().await.unwrap();
    assert!(page.contains("private_network_not_allowed") && page.contains("set allowPrivateNetworks: true"));
    let page = get(&format!("/ui/events/{id}")).await.text().await.unwrap();
    assert!(page.contains("Held: "), "{page}");
    assert!(h.sink.received("local").is_empty());
}

/// The console lists the sources and sends one a sample event of its provider, signed with its
/// own secret, through ingest: the event is stored and delivered, and the page shows it.
#[tokio::test]
async fn the_console_sends_a_source_a_sample() {
    let stripe = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: stripe, namespace: shop}\nstringData: {key: whsec_sample}\n\
                  ---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe, namespace: shop}\n\
                  spec: {provider: stripe, secretRef: {name: stripe, key: key}, \
                  handlers: [{name: billing, url: '{SINK}/billing', events: ['invoice.*']}]}\n";
    let h = harness(&format!("{SECRET}{stripe}")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sources = client
        .get(format!("{}/ui/sources", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sources.contains("POST /ingest/shop/stripe") && sources.contains("receiving"),
        "{sources}"
    );
    assert!(sources.contains("<option value=\"invoice.paid\">"), "{sources}");
    let sent = client
        .post(format!("{}/ui/sources/send", h.base))
        .bearer_auth(ADMIN_TOKEN)
        .form(&[
            ("csrf", ""),
            ("namespace", "shop"),
            ("source", "stripe"),
            ("type", "invoice.paid"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    let location = sent.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/ui/events/"), "{location}");
    let got = h.sink.wait_for("billing", 1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["object"], "event");

    // The pictures: the delivery in the target's last hour, its attempt on the event's
    // timeline, the event in the source's ingest rate, and a refused request by reason.
    let page = async |path: &str| {
        client
            .get(format!("{}{path}", h.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let targets = page("/ui/targets").await;
        if targets.contains("Deliveries per minute, last hour: 1 succeeded, 0 failed") {
            assert!(
                targets.contains("Circuit over the last hour: closed now"),
                "{targets}"
            );
            assert!(
                targets.contains("p95 latency per minute, last hour: latest at most"),
                "{targets}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{targets}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = page(&location).await;
    assert!(
        event.contains("<svg class=\"timeline\"") && event.contains("1 attempt"),
        "{event}"
    );
    let unsigned = client
        .post(format!("{}/ingest/shop/stripe", h.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let overview = page("/ui/overview").await;
        if overview.contains("<code>missing_signature</code>") {
            assert!(
                overview.contains("Events received per minute, last hour: 1"),
                "{overview}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{overview}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
