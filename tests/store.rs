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
