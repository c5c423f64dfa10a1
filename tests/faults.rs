//! Fault injection with real parts: a receiver that fails in every way a network peer can, and a
//! gateway process killed with thousands of webhooks in flight.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::harness::{TOKEN, harness};
use support::process::start_standalone;
use support::sink::{Reply, Sink};

/// The tests here load the machine on purpose; one at a time, so one's load does not pass for
/// the other's latency.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A target that answers 500, hangs past its timeout, drops connections and answers slowly, in
/// turn, then only 500s: every delivery ends succeeded or dead exactly as its policy says, every
/// attempt is recorded, and a healthy target beside it is never held up by it.
#[tokio::test]
async fn every_delivery_ends_per_policy_whatever_the_receiver_does() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let h = harness(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: signing, namespace: shop}
stringData: {secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {name: flaky, namespace: shop}
spec:
  url: "{SINK}/flaky"
  events: ["order.*"]
  allowPrivateNetworks: true
  secretRef: {name: signing, key: secret}
  timeout: 2s
  maxInFlight: 4
  retryPolicy: {maxAttempts: 3, schedule: [100ms]}
  circuitBreaker: {failureThreshold: 1000}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {name: healthy, namespace: shop}
spec:
  url: "{SINK}/healthy"
  events: ["order.*"]
  allowPrivateNetworks: true
  secretRef: {name: signing, key: secret}
"#,
    )
    .await;
    const EVENTS: usize = 12;
    let slow = Duration::from_millis(300);
    let mut script = Vec::new();
    for reply in [Reply::Status(500), Reply::Hang, Reply::Reset, Reply::Slow(slow)] {
        script.extend(std::iter::repeat_n(reply, EVENTS / 2));
    }
    h.sink.script("flaky", script);
    h.sink.always("flaky", Reply::Status(500));

    let mut published = HashMap::new();
    for n in 0..EVENTS {
        let sent = Instant::now();
        let response = h
            .client
            .post(format!("{}/v1/namespaces/shop/events", h.base))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "order.created", "id": format!("ord_{n}"), "data": {"n": n}}))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
        published.insert(format!("ord_{n}"), sent);
    }

    // The healthy target got every event, none of them stuck behind the flaky one's hangs.
    let healthy = h.sink.wait_for("healthy", EVENTS, Duration::from_secs(10)).await;
    let mut latencies: Vec<Duration> = healthy
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
            let n = body["data"]["n"].as_u64().expect("n");
            r.at.duration_since(published[&format!("ord_{n}")])
        })
        .collect();
    latencies.sort();
    println!(
        "healthy target beside the failing one: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(2),
        "a healthy delivery waited as long as the flaky target's timeout: {latencies:?}"
    );

    // Every flaky delivery reaches a final state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let finals = loop {
        let rows: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
            "SELECT id, status, attempts FROM delivery_states WHERE target = 'flaky' ORDER BY id",
        )
        .fetch_all(&h.pool)
        .await
        .expect("deliveries");
        if rows.len() == EVENTS && rows.iter().all(|(_, s, _)| s == "succeeded" || s == "dead") {
            break rows;
        }
        assert!(Instant::now() < deadline, "not all final: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    let mut classes = HashSet::new();
    for (id, status, attempts) in &finals {
        *outcomes.entry(status).or_default() += 1;
        let tries: Vec<(i32, Option<i16>, Option<String>)> = sqlx::query_as(
            "SELECT attempt_number, status_code, error_class FROM attempts WHERE delivery_id = $1 ORDER BY attempt_number",
        )
        .bind(id)
        .fetch_all(&h.pool)
        .await
        .expect("attempts");
        assert_eq!(tries.len() as i32, *attempts, "every attempt of {id} is recorded");
        let numbers: Vec<i32> = tries.iter().map(|t| t.0).collect();
        assert_eq!(numbers, (1..=*attempts).collect::<Vec<_>>());
        let ok = |t: &(i32, Option<i16>, Option<String>)| t.1.is_some_and(|c| (200..300).contains(&c));
        let (last, earlier) = tries.split_last().expect("at least one attempt");
        assert!(
            earlier.iter().all(|t| !ok(t)),
            "{id} retried after a success: {tries:?}"
        );
        for t in &tries {
            classes.insert(match (t.1, &t.2) {
                (Some(code), _) => code.to_string(),
                (None, Some(class)) => class.clone(),
                (None, None) => "none".into(),
            });
        }
        match status.as_str() {
            "succeeded" => assert!(ok(last) && *attempts <= 3, "{id}: {tries:?}"),
            _ => assert!(
                !ok(last) && *attempts == 3,
                "dead only after 3 failed attempts: {tries:?}"
            ),
        }
    }
    // Each slow 200 ends one delivery; the others run out of attempts.
    assert_eq!(outcomes.get("succeeded"), Some(&(EVENTS / 2)), "{outcomes:?}");
    assert_eq!(outcomes.get("dead"), Some(&(EVENTS / 2)), "{outcomes:?}");
    let recorded: usize = finals.iter().map(|f| f.2 as usize).sum();
    assert_eq!(
        recorded,
        h.sink.received("flaky").len(),
        "one attempt per request sent"
    );
    for class in ["500", "200", "timeout"] {
        assert!(
            classes.contains(class),
            "attempt outcomes {classes:?} lack {class}"
        );
    }
    assert!(
        classes.contains("http") || classes.contains("connect"),
        "a dropped connection is recorded as such: {classes:?}"
    );
}

const STRIPE_SECRET: &str = "whsec_stripe_fault_test";

/// Raises this process's open-file limit to its hard limit (the gateway child inherits it);
/// returns the limit now in force.
fn raise_open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur as usize
}

/// SIGKILL while 5,000 signed webhooks are being sent: every one that was acknowledged is in the
/// database and is delivered after the restart; the duplicates (deliveries in flight at the
/// kill, sent again with the same webhook-id) are counted and reported.
#[tokio::test]
async fn a_gateway_killed_under_load_loses_no_acknowledged_webhook() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const WEBHOOKS: usize = 5_000;
    // One connection per webhook, all sent at once: both ends need a file descriptor each.
    let connections = raise_open_file_limit().saturating_sub(256).clamp(100, WEBHOOKS);
    let sink = Sink::start().await;
    let database_url = support::fresh_database().await;
    let config = std::env::temp_dir().join(format!("hookline-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("stripe.yaml"),
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: stripe, namespace: shop}}
stringData: {{signing-secret: {STRIPE_SECRET}, delivery: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: {{name: stripe, namespace: shop}}
spec:
  provider: stripe
  secretRef: {{name: stripe, key: signing-secret}}
  handlers:
    - name: billing
      url: {}
      events: ["*"]
      secretRef: {{name: stripe, key: delivery}}
"#,
            sink.url("billing")
        ),
    )
    .expect("config");
    let mut gateway = start_standalone(&config, &database_url, &[("RUST_LOG", "warn")]).await;

    // Senders share the work; each notes the ids acknowledged with a 2xx.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let url = format!("{}/ingest/shop/stripe", gateway.base);
    let key = hookline::verify::SigningKey::from_text(STRIPE_SECRET).expect("key");
    let senders: Vec<_> = (0..connections)
        .map(|worker| {
            let (client, url, key, acknowledged) =
                (client.clone(), url.clone(), key.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for n in (worker..WEBHOOKS).step_by(connections) {
                    let id = format!("evt_{n:05}");
                    let body = json!({"id": id, "type": "invoice.paid", "data": {"n": n}}).to_string();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_secs() as i64;
                    let signature = hookline::verify::stripe::sign(&key, now, body.as_bytes());
                    let answer = client
                        .post(&url)
                        .header("stripe-signature", signature)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    if answer.is_ok_and(|r| r.status().is_success()) {
                        acknowledged.lock().expect("lock").push(id);
                    }
                }
            })
        })
        .collect();

    // Kill once a good part is acknowledged: the rest are in flight or not yet sent.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged.lock().expect("lock").len() < WEBHOOKS / 3 {
        assert!(Instant::now() < deadline, "the gateway acknowledged too little");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reap");
    for sender in senders {
        sender.await.expect("sender");
    }
    let acknowledged: HashSet<String> = acknowledged.lock().expect("lock").drain(..).collect();

    let pool = hookline::store::connect_lazy(&database_url, 2).expect("pool");
    let stored: HashSet<String> = sqlx::query_scalar("SELECT external_id FROM events")
        .fetch_all(&pool)
        .await
        .expect("events")
        .into_iter()
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");

    // After the restart, every stored event reaches the handler.
    let _restarted = start_standalone(&config, &database_url, &[("RUST_LOG", "warn")]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let got = sink.received("billing");
        let events: HashSet<String> = got
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .filter_map(|b| b["id"].as_str().map(str::to_owned))
            .collect();
        if stored.is_subset(&events) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} stored events delivered after the restart",
            events.len(),
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: HashSet<&str> = delivered.iter().map(|r| r.header("webhook-id")).collect();
    let duplicates = delivered.len() - ids.len();
    println!(
        "SIGKILL under load ({connections} concurrent senders): {} acknowledged, {} stored (some committed without an answer reaching the sender), \
         {} delivered after restart, {duplicates} sent twice",
        acknowledged.len(),
        stored.len(),
        ids.len()
    );
    // Only deliveries claimed but not recorded at the kill can be sent again.
    assert!(
        duplicates <= 1024,
        "{duplicates} duplicates exceed what one gateway holds at once"
    );
    let _ = std::fs::remove_dir_all(&config);
}
