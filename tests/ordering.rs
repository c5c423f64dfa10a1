//! Ordered delivery per key as it runs in production: two `hookline standalone` processes on
//! one Postgres, a real sink that fails at random, and a SIGKILL in the middle.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};
use support::process::{GatewayProcess, start_standalone};
use support::sink::{Received, Reply, Sink};
use support::wait_until;

const TOKEN: &str = "ordering-test-token";
const KEYS: usize = 20;
const PER_KEY: usize = 100;

/// Publishes through `first`, or through `second` when `first` is gone; the event's own id
/// makes a retry of a stored event a duplicate.
async fn publish(client: &reqwest::Client, bases: &[String; 2], first: usize, account: &str, n: usize) {
    let body =
        json!({"id": format!("{account}-{n}"), "type": "ledger.entry", "data": {"account": account, "n": n}});
    for base in [&bases[first], &bases[1 - first]] {
        let sent = client
            .post(format!("{base}/v1/namespaces/shop/events"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = sent {
            assert!(response.status().is_success(), "publish: {}", response.status());
            return;
        }
    }
    panic!("neither gateway took {account}-{n}");
}

/// Each request's account and number, with whether the sink answered it 200 in time.
fn entries(received: &[Received]) -> Vec<(String, u64, bool)> {
    received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let ok = matches!(r.reply, Reply::Status(200));
            (
                body["data"]["account"].as_str().unwrap().to_owned(),
                body["data"]["n"].as_u64().unwrap(),
                ok,
            )
        })
        .collect()
}

/// Per account, the numbers in the order they were first received successfully.
fn first_successes(received: &[Received]) -> HashMap<String, Vec<u64>> {
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for (account, n, ok) in entries(received) {
        let seen = order.entry(account).or_default();
        if ok && !seen.contains(&n) {
            seen.push(n);
        }
    }
    order
}

fn successes(sink: &Sink) -> usize {
    first_successes(&sink.received("ledger"))
        .values()
        .map(Vec::len)
        .sum()
}

#[tokio::test]
async fn each_key_is_delivered_in_order_across_replicas_failures_and_a_kill() {
    let sink = Sink::start().await;
    // Random failures: 8% answered 500, 2% answered after the 1 s timeout. The poison account
    // always fails: its first event goes dead and blocks the account.
    // The first second and a half from the first request, every request fails: the circuit
    // breaker (threshold 5) opens for sure, however slowly the gateways start, and holds
    // deliveries back while order must hold.
    let first_request = Arc::new(std::sync::OnceLock::<Instant>::new());
    sink.answer_with(
        "ledger",
        Arc::new(move |body: &[u8]| {
            let body: Value = serde_json::from_slice(body).unwrap_or_default();
            let outage_until = *first_request.get_or_init(Instant::now) + Duration::from_millis(1500);
            if body["data"]["account"] == "poison" || Instant::now() < outage_until {
                return Reply::Status(500);
            }
            match rand::rng().random_range(0..100) {
                0..8 => Reply::Status(500),
                8..10 => Reply::Slow(Duration::from_millis(1500)),
                _ => Reply::Status(200),
            }
        }),
    );
    let database_url = support::fresh_database().await;
    let config = support::subscription_config(
        &sink.url("ledger"),
        ", ordering: {key: data.account, onDead: block}, timeout: 1s, maxInFlight: 16, \
         retryPolicy: {maxAttempts: 40, schedule: [20ms]}, rateLimit: {perSecond: 400, burst: 20}, \
         circuitBreaker: {failureThreshold: 5, resetTimeout: 1s}",
    );
    let env = [("HOOKLINE_PUBLISH_TOKEN", TOKEN)];
    let mut a: Option<GatewayProcess> = Some(start_standalone(&config, &database_url, &env).await);
    let b = start_standalone(&config, &database_url, &env).await;
    let bases = [a.as_ref().unwrap().base.clone(), b.base.clone()];
    let client = reqwest::Client::new();

    // The poison account's first event, then more of it behind.
    for n in 0..3 {
        publish(&client, &bases, 1, "poison", n).await;
    }
    // Twenty accounts, each published in order, alternating between the gateways.
    let publishers: Vec<_> = (0..KEYS)
        .map(|k| {
            let (client, bases) = (client.clone(), bases.clone());
            tokio::spawn(async move {
                for n in 0..PER_KEY {
                    publish(&client, &bases, (k + n) % 2, &format!("account-{k}"), n).await;
                }
            })
        })
        .collect();

    // SIGKILL one gateway mid-run; the other takes over its claims when their leases end.
    wait_until("a third delivered", Duration::from_secs(120), || {
        successes(&sink) >= KEYS * PER_KEY / 3
    })
    .await;
    let killed = a.take().unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(killed.child.id() as i32, libc::SIGKILL) };
    let opened_before_the_kill = killed.log.count("circuit open");
    drop(killed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    wait_until("every account delivered", Duration::from_secs(180), || {
        successes(&sink) >= KEYS * PER_KEY
    })
    .await;

    // Strict order of first successful receipt, per account.
    let order = first_successes(&sink.received("ledger"));
    for k in 0..KEYS {
        let account = format!("account-{k}");
        assert_eq!(
            order.get(&account).cloned().unwrap_or_default(),
            (0..PER_KEY as u64).collect::<Vec<_>>(),
            "{account} in order"
        );
    }
    let failures = entries(&sink.received("ledger"))
        .iter()
        .filter(|(account, _, ok)| account != "poison" && !ok)
        .count();
    assert!(failures > 0, "the sink failed some requests");
    // Order held while the breaker held deliveries back and the rate limit paced them.
    assert!(
        opened_before_the_kill + b.log.count("circuit open") > 0,
        "the circuit opened during the run"
    );

    // The poison account: its first event is dead and blocks the rest, which never went out,
    // while every other account finished.
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let poison = |n: u64| {
        entries(&sink.received("ledger"))
            .iter()
            .filter(|(account, m, _)| account == "poison" && *m == n)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead_attempts = loop {
        let dead: Option<i32> = sqlx::query_scalar(
            "SELECT attempts FROM delivery_states WHERE status = 'dead' AND ordering_key = 'poison'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(attempts) = dead {
            break attempts;
        }
        assert!(
            Instant::now() < deadline,
            "the poison account's head dead within 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead_attempts, 40, "dead after maxAttempts");
    // A claim that ends unrecorded counts as an attempt (its gateway may have sent it), so on a
    // loaded machine fewer than 40 may be recorded, and a killed gateway's unrecorded send
    // arrived without a record.
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.ordering_key = 'poison'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((1..=40).contains(&recorded), "{recorded} attempts recorded");
    assert!(
        poison(0) as i64 >= recorded,
        "every recorded attempt of the dead head arrived"
    );
    assert_eq!(
        (poison(1), poison(2)),
        (0, 0),
        "the key waits behind its dead head"
    );
    let targets: Value = serde_json::from_str(&b.admin_get("/admin/v1/targets").await).unwrap();
    assert_eq!(targets["items"][0]["blockedKeys"], 1, "{targets}");
    let dead: String = sqlx::query_scalar(
        "SELECT id::text FROM delivery_states WHERE status = 'dead' AND ordering_key = 'poison'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    // Skipped: the account goes on, in order, without its dead head.
    sink.answer_with("ledger", Arc::new(|_: &[u8]| Reply::Status(200)));
    let skipped = client
        .post(format!("{}/admin/v1/deliveries/{dead}/skip", b.base))
        .bearer_auth(b.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(skipped.status(), 200);
    wait_until("the poison account's rest", Duration::from_secs(30), || {
        poison(2) == 1
    })
    .await;
    assert_eq!(first_successes(&sink.received("ledger"))["poison"], [1, 2]);
    let status: String = sqlx::query_scalar("SELECT status FROM delivery_states WHERE id = $1::uuid")
        .bind(&dead)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "dead", "a skipped delivery stays dead");
    let _ = std::fs::remove_dir_all(&config);
}
