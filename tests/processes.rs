//! Gateway processes as they run in production: real `hookline standalone` processes on one
//! Postgres, killed with SIGKILL mid-delivery, sharing the queue.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::process::{GatewayProcess, start_standalone};
use support::sink::{Reply, Sink};

const TOKEN: &str = "process-test-token";

async fn start(config: &std::path::Path, database_url: &str) -> GatewayProcess {
    start_standalone(config, database_url, &[("HOOKLINE_PUBLISH_TOKEN", TOKEN)]).await
}

async fn publish(base: &str, n: usize) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/namespaces/shop/events"))
        .bearer_auth(TOKEN)
        .json(&json!({"type": "order.created", "data": {"n": n}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
}

async fn statuses(database_url: &str) -> Vec<(String, i64)> {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    // A delivery out shows as pending in its history row; its queue row's claim, or the lease
    // on its row (sent by the gateway that stored it), says it is out.
    let rows = sqlx::query_as("SELECT state, count(*) FROM delivery_states GROUP BY 1 ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn a_gateway_killed_mid_delivery_delivers_everything_after_restart() {
    let sink = Sink::start().await;
    let database_url = support::fresh_database().await;
    let config = support::subscription_config(&sink.url("crash"), ", timeout: 2s");
    // The first request never gets an answer: it is in flight when the gateway dies.
    sink.script("crash", vec![Reply::Hang]);
    let mut first = start(&config, &database_url).await;
    for n in 0..10 {
        publish(&first.base, n).await;
    }
    sink.wait_for("crash", 10, Duration::from_secs(20)).await;
    // Nine answered and recorded, one hanging: kill the gateway now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses(&database_url).await != [("in_flight".to_owned(), 1), ("succeeded".to_owned(), 9)] {
        assert!(
            Instant::now() < deadline,
            "nine delivered, one in flight: {:?}",
            statuses(&database_url).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.kill().expect("SIGKILL the gateway");
    first.child.wait().unwrap();

    let _second = start(&config, &database_url).await;
    let got = sink.wait_for("crash", 11, Duration::from_secs(30)).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every event delivered");
    assert_eq!(
        total - ids.len(),
        1,
        "only the delivery in flight at the kill is sent again"
    );
    assert_eq!(
        got[10].header("webhook-id"),
        got[0].header("webhook-id"),
        "with the same webhook-id"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses(&database_url).await != [("succeeded".to_owned(), 10)] {
        assert!(
            Instant::now() < deadline,
            "all deliveries succeeded: {:?}",
            statuses(&database_url).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&config);
}

/// Four replicas on one database, as the chart runs them scaled out: every event published
/// to any of them is delivered once, by one of them.
#[tokio::test]
async fn four_gateway_processes_share_the_queue_without_double_sends() {
    const EVENTS: usize = 400;
    let sink = Sink::start().await;
    let database_url = support::fresh_database().await;
    let config = support::subscription_config(&sink.url("shared"), ", maxInFlight: 8");
    let mut gateways = Vec::new();
    for _ in 0..4 {
        gateways.push(start(&config, &database_url).await);
    }
    for n in 0..EVENTS {
        publish(&gateways[n % gateways.len()].base, n).await;
    }
    let got = sink.wait_for("shared", EVENTS, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = sink.received("shared");
    let mut ids: Vec<&str> = got_now.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS);
    assert_eq!(
        got_now.len(),
        EVENTS,
        "no delivery sent by two processes (got {} before settling)",
        got.len()
    );
    let _ = std::fs::remove_dir_all(&config);
}

/// SIGTERM stops a gateway gracefully: the deliveries being sent finish and are recorded, the
/// claimed ones not yet sent go back to the queue at once, and the process exits. Another
/// gateway then sends the rest, and nothing that was answered is sent twice.
#[tokio::test]
async fn sigterm_finishes_what_is_in_flight_and_gives_back_the_rest() {
    let sink = Sink::start().await;
    let database_url = support::fresh_database().await;
    let config = support::subscription_config(&sink.url("slow"), ", maxInFlight: 2, timeout: 10s");
    sink.always("slow", Reply::Slow(Duration::from_secs(2)));
    let mut first = start(&config, &database_url).await;
    for n in 0..10 {
        publish(&first.base, n).await;
    }
    // Two requests are being answered, slowly; the other eight wait for a slot.
    sink.wait_for("slow", 2, Duration::from_secs(10)).await;
    let pid = first.child.id() as libc::pid_t;
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopping = Instant::now();
    let exit = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "the gateway exits after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "a clean exit: {exit:?}");
    // The two in flight were answered and recorded; the rest are waiting again, not claimed.
    assert_eq!(
        statuses(&database_url).await,
        [("pending".to_owned(), 8), ("succeeded".to_owned(), 2)],
        "in-flight deliveries recorded, the others given back"
    );

    let _second = start(&config, &database_url).await;
    let got = sink.wait_for("slow", 10, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got_now = sink.received("slow");
    let mut ids: Vec<&str> = got_now.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every event delivered");
    assert_eq!(got_now.len(), 10, "none sent twice (got {} at first)", got.len());
    let _ = std::fs::remove_dir_all(&config);
}

/// The bytes of request bodies held at once are bounded: 200 concurrent 1 MiB webhooks against
/// a 16 MiB budget get 503 with Retry-After past it, and the process's memory grows by far less
/// than the 200 MiB they would take buffered all at once. (Growth, not the peak: the allocator
/// keeps what it freed for reuse, so a second wave of bodies read while the first is still
/// held by it adds to the peak, 90-130 MiB in all, without more than the budget being read at
/// once.)
#[tokio::test]
async fn concurrent_large_bodies_stay_within_the_memory_budget() {
    use futures::StreamExt;
    let database_url = support::fresh_database().await;
    let dir = std::env::temp_dir().join(format!("hookline-budget-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("source.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: gh, namespace: shop}\nstringData: {token: secret}\n---\n\
         apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: big, namespace: shop}\n\
         spec: {provider: github, secretRef: {name: gh, key: token}, maxBodyBytes: 1048576}\n",
    )
    .unwrap();
    let gateway = support::process::start_standalone_with(
        &dir,
        &database_url,
        &[],
        &["--ingest-body-budget", "16777216"],
    )
    .await;
    let base = gateway.base.clone();
    let client = reqwest::Client::new();
    let memory_kib = |field: &str| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let before_kib = memory_kib("VmRSS:");
    // Each body arrives in 64 KiB pieces over about a second, so all 200 overlap.
    let send = |n: usize| {
        let client = client.clone();
        let url = format!("{base}/ingest/shop/big");
        async move {
            let chunks = futures::stream::iter(0..16).then(|_| async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 65536]))
            });
            let response = client
                .post(url)
                .header("content-length", (16 * 65536).to_string())
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("d-{n}"))
                .header("x-hub-signature-256", "sha256=00")
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await;
            response.map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after")))
        }
    };
    let answers: Vec<_> = futures::future::join_all((0..200).map(send)).await;
    let busy = answers.iter().filter(|a| matches!(a, Ok((503, true)))).count();
    let read = answers.iter().filter(|a| matches!(a, Ok((401, _)))).count();
    // A refusal is answered before the body is read and the connection closed: a sender still
    // sending may find it reset before it reads the answer.
    let reset = answers.iter().filter(|a| a.is_err()).count();
    assert!(
        busy > 0,
        "past the budget, 503 with Retry-After ({read} read, {reset} reset, none refused)"
    );
    assert!(read > 0, "within it, bodies are read (and refused as unsigned)");
    let other: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((503, true)) | Ok((401, _)) | Err(_)))
        .collect();
    assert!(other.is_empty(), "every answer one way or the other: {other:?}");
    // By the gateway's own count, every request was either read or refused as busy.
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(gateway.admin_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = |outcome: &str| -> usize {
        let series = format!(
            r#"hookline_ingest_requests_total{{namespace="shop",source="big",provider="github",outcome="{outcome}"}} "#
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(
        (
            counted("ingest_busy"),
            counted("signature_mismatch") + counted("malformed_signature")
        ),
        (busy + reset, read),
        "each reset connection was a busy refusal\n{metrics}"
    );
    let peak_kib = memory_kib("VmHWM:");
    let grown_mib = (peak_kib - before_kib) / 1024.0;
    eprintln!(
        "peak RSS {:.0} MiB, {grown_mib:.0} MiB more than before the webhooks; of 200, {busy} answered 503, {reset} reset, {read} read",
        peak_kib / 1024.0
    );
    assert!(
        grown_mib < 100.0,
        "grew by {grown_mib:.0} MiB: more than half of the 200 MiB the bodies would take unbounded"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new delivery to a target with room and nothing waiting is claimed by the statement that
/// stores it and sent by the gateway that stored it: no notification asks the dispatchers to
/// claim it (a queued delivery's notification is sent at the commit, before any claim, so it
/// would be here before the delivery reached the sink).
#[tokio::test]
async fn a_delivery_to_an_idle_target_is_sent_without_a_claim() {
    let sink = Sink::start().await;
    let database_url = support::fresh_database().await;
    let config = support::subscription_config(&sink.url("idle"), "");
    let gateway = start(&config, &database_url).await;
    let mut listener = sqlx::postgres::PgListener::connect(&database_url).await.unwrap();
    listener.listen("hookline_deliveries").await.unwrap();
    for n in 0..3 {
        publish(&gateway.base, n).await;
        sink.wait_for("idle", n + 1, Duration::from_secs(20)).await;
    }
    let heard = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
    assert!(heard.is_err(), "no claim was asked for: {heard:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses(&database_url).await != [("succeeded".to_owned(), 3)] {
        assert!(Instant::now() < deadline, "{:?}", statuses(&database_url).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&config);
}
