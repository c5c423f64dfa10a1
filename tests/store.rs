//! The schema on the real Postgres from hack/test-env.

mod support;

#[tokio::test]
async fn migrations_apply_and_reapply() {
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 2).expect("pool");
    hookline::store::migrate(&pool)
        .await
        .expect("first run applies every migration");
    hookline::store::migrate(&pool)
        .await
        .expect("second run is a no-op");

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .expect("count migrations");
    assert_eq!(applied as usize, hookline::store::MIGRATOR.iter().count());

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    for table in ["attempts", "deliveries", "events", "idempotency_keys"] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing from {tables:?}"
        );
    }

    // The queue's claim query must be able to use the partial index on due work.
    let index: Option<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'deliveries_due'")
            .fetch_optional(&pool)
            .await
            .expect("read index");
    let index = index.expect("deliveries_due index exists");
    assert!(index.contains("WHERE"), "deliveries_due must be partial: {index}");
}

#[tokio::test]
async fn events_are_unique_per_namespace_source_and_external_id() {
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 2).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");

    let insert = |ns: &'static str, source: &'static str| {
        sqlx::query(
            "INSERT INTO events (id, namespace, source, provider, external_id, event_type, body)
             VALUES ($1, $2, $3, 'stripe', 'evt_1', 'invoice.paid', '{}')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(ns)
        .bind(source)
    };
    insert("billing", "stripe")
        .execute(&pool)
        .await
        .expect("first insert");
    let duplicate = insert("billing", "stripe").execute(&pool).await;
    assert!(
        duplicate.is_err(),
        "the same provider event id must not be stored twice"
    );
    insert("billing", "stripe-eu")
        .execute(&pool)
        .await
        .expect("other source, same id");
    insert("shop", "stripe")
        .execute(&pool)
        .await
        .expect("other namespace, same id");
}

/// Retention deletes old finished history with its deliveries and attempts, and keeps anything
/// still being delivered and anything young.
#[tokio::test]
async fn retention_deletes_old_finished_history_only() {
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 2).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    // (external id, age in days, delivery status)
    let rows = [
        ("old-succeeded", 40, "succeeded"),
        ("old-dead", 40, "dead"),
        ("old-pending", 40, "pending"),
        ("old-retrying", 40, "failed"),
        ("young-succeeded", 1, "succeeded"),
        ("young-dead", 1, "dead"),
    ];
    for (external_id, age_days, status) in rows {
        let event = uuid::Uuid::now_v7();
        let delivery = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO events (id, namespace, source, external_id, event_type, body, received_at)
             VALUES ($1, 'shop', 'stripe', $2, 't', '{}', now() - $3 * interval '1 day')",
        )
        .bind(event)
        .bind(external_id)
        .bind(age_days)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status) VALUES ($1, $2, 'shop', 'subscription', 'crm', $3)")
            .bind(delivery)
            .bind(event)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms) VALUES ($1, 1, now(), 5)")
            .bind(delivery)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO idempotency_keys (namespace, key, request_hash, response_status, response_body, expires_at) VALUES ('shop', 'k', '\\x00', 202, '{}', now() - interval '1 hour')")
        .execute(&pool)
        .await
        .unwrap();

    let swept = hookline::store::retention::sweep(&pool, std::time::Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    assert_eq!(swept.events, 2);
    assert_eq!(swept.idempotency_keys, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT external_id FROM events ORDER BY external_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        ["old-pending", "old-retrying", "young-dead", "young-succeeded"]
    );
    let orphans: i64 =
        sqlx::query_scalar("SELECT (SELECT count(*) FROM deliveries) + (SELECT count(*) FROM attempts)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(orphans, 8, "deliveries and attempts went with their events");
}

fn new_event(external_id: &str, event_type: &str, target: &str) -> hookline::store::events::NewEvent {
    use hookline::store::events::{NewDelivery, NewEvent};
    NewEvent {
        id: uuid::Uuid::now_v7(),
        namespace: "billing".into(),
        source: "stripe".into(),
        provider: Some("stripe"),
        external_id: external_id.into(),
        event_type: event_type.into(),
        headers: serde_json::json!({"content-type": "application/json"}),
        body: bytes::Bytes::from_static(b"{}"),
        deliveries: vec![NewDelivery {
            id: uuid::Uuid::now_v7(),
            target_kind: "handler",
            target: target.into(),
        }],
    }
}

/// Concurrent writes share commits, yet each caller gets its own answer: the same event id
/// sent many times at once is stored once, and a value Postgres cannot store (a NUL in text)
/// fails only its own request, not the others in its batch.
#[tokio::test]
async fn group_commit_answers_each_request_for_itself() {
    use hookline::store::events::{Stored, event_writer};
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 8).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let writer = std::sync::Arc::new(event_writer(pool.clone()));

    let mut requests = Vec::new();
    for i in 0..400 {
        let writer = writer.clone();
        // Every fourth request repeats evt_dup; one carries a NUL in its event type.
        let external_id = if i % 4 == 0 {
            "evt_dup".to_owned()
        } else {
            format!("evt_{i}")
        };
        let event_type = if i == 7 {
            "invoice.\u{0}paid"
        } else {
            "invoice.paid"
        };
        let event = new_event(&external_id, event_type, "stripe/billing");
        requests.push(tokio::spawn(async move { (i, writer.submit(event).await) }));
    }
    let (mut new, mut duplicates, mut failed) = (0, 0, Vec::new());
    for request in requests {
        match request.await.expect("task") {
            (_, Ok(Stored::New { deliveries })) => {
                assert_eq!(deliveries, 1);
                new += 1;
            }
            (_, Ok(Stored::Duplicate)) => duplicates += 1,
            (i, Err(_)) => failed.push(i),
        }
    }
    assert_eq!(failed, vec![7], "only the request with the NUL fails");
    assert_eq!(duplicates, 99, "evt_dup is stored once of 100 times");
    assert_eq!(new, 300);
    let (events, deliveries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries)")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(
        (events, deliveries),
        (300, 300),
        "every acknowledged event, with its delivery"
    );
}

/// A paused target's waiting deliveries (old and new) are parked out of the due range, so they
/// cost the claim query nothing; resuming makes them due again.
#[tokio::test]
async fn pausing_parks_a_targets_backlog_and_resuming_releases_it() {
    use hookline::store::deliveries::{TargetKey, next_due, pause_target, resume_target};
    use hookline::store::events::event_writer;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let writer = event_writer(pool.clone());
    let key = TargetKey {
        namespace: "billing".into(),
        kind: "handler".into(),
        name: "stripe/slow".into(),
    };
    writer
        .submit(new_event("evt_before", "invoice.paid", "stripe/slow"))
        .await
        .expect("store");
    writer
        .submit(new_event("evt_other", "invoice.paid", "stripe/fast"))
        .await
        .expect("store");
    pause_target(&pool, &key, "paused by the test")
        .await
        .expect("pause");
    writer
        .submit(new_event("evt_during", "invoice.paid", "stripe/slow"))
        .await
        .expect("store");

    let parked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE target = 'stripe/slow' AND next_attempt_at = 'infinity'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        parked, 2,
        "the backlog and the delivery created while paused are parked"
    );
    let due = next_due(&pool)
        .await
        .expect("next due")
        .expect("stripe/fast is due");
    assert!(due <= chrono::Utc::now());

    resume_target(&pool, &key).await.expect("resume");
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE next_attempt_at = 'infinity'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(parked, 0, "resuming makes every parked delivery due");
}
