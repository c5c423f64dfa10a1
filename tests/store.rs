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
