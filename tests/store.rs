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

    // The queue's claims read waiting work through a partial index per target.
    let index: Option<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'deliveries_waiting'")
            .fetch_optional(&pool)
            .await
            .expect("read index");
    let index = index.expect("deliveries_waiting index exists");
    assert!(
        index.contains("WHERE"),
        "deliveries_waiting must be partial: {index}"
    );
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

fn handler(name: &str) -> hookline::store::deliveries::TargetKey {
    hookline::store::deliveries::TargetKey {
        namespace: "billing".into(),
        kind: "handler".into(),
        name: name.into(),
    }
}

/// The queue is read per target: each target with waiting work is listed once with its earliest
/// due time, a claim takes no more than asked of each target, and a target paused at runtime is
/// listed as paused, is never claimed, and keeps its deliveries' schedule until it is resumed.
#[tokio::test]
async fn claims_are_per_target_and_a_paused_target_keeps_its_schedule() {
    use hookline::store::deliveries::{claim, pause_target, resume_target, waiting_targets};
    use hookline::store::events::event_writer;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let writer = event_writer(pool.clone());
    for i in 0..5 {
        for target in ["stripe/slow", "stripe/fast"] {
            writer
                .submit(new_event(&format!("evt_{target}_{i}"), "invoice.paid", target))
                .await
                .expect("store");
        }
    }
    // A retry scheduled for later keeps its time through a pause.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', attempts = 1, next_attempt_at = $1
         WHERE id = (SELECT id FROM deliveries WHERE target = 'stripe/slow' ORDER BY id LIMIT 1)",
    )
    .bind(later)
    .execute(&pool)
    .await
    .expect("schedule a retry");

    let waiting = waiting_targets(&pool, 100).await.expect("waiting targets");
    let mut names: Vec<&str> = waiting.iter().map(|t| t.target.as_str()).collect();
    names.sort();
    assert_eq!(names, ["stripe/fast", "stripe/slow"], "each target once");
    assert!(
        waiting
            .iter()
            .all(|t| !t.paused && t.next_attempt_at <= chrono::Utc::now())
    );
    assert_eq!(waiting_targets(&pool, 1).await.expect("limited").len(), 1);

    let lease = std::time::Duration::from_secs(60);
    let taken = claim(
        &pool,
        &[(handler("stripe/fast"), 2), (handler("stripe/slow"), 10)],
        lease,
    )
    .await
    .expect("claim");
    let count = |name: &str| taken.iter().filter(|d| d.target == name).count();
    assert_eq!(count("stripe/fast"), 2, "no more than asked of a target");
    assert_eq!(count("stripe/slow"), 4, "all that is due, not the later retry");

    pause_target(&pool, &handler("stripe/fast"), "paused by the test")
        .await
        .expect("pause");
    let waiting = waiting_targets(&pool, 100).await.expect("waiting targets");
    let fast = waiting
        .iter()
        .find(|t| t.target == "stripe/fast")
        .expect("fast waits");
    assert!(fast.paused);
    let slow = waiting
        .iter()
        .find(|t| t.target == "stripe/slow")
        .expect("slow waits");
    assert_eq!(
        slow.next_attempt_at.timestamp_micros(),
        later.timestamp_micros(),
        "the earliest waiting delivery of slow is the scheduled retry"
    );
    let taken = claim(&pool, &[(handler("stripe/fast"), 10)], lease)
        .await
        .expect("claim");
    assert!(taken.is_empty(), "a paused target is never claimed");

    resume_target(&pool, &handler("stripe/fast"))
        .await
        .expect("resume");
    let taken = claim(&pool, &[(handler("stripe/fast"), 10)], lease)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 3, "what waited during the pause is claimed after it");
    let retry: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM deliveries WHERE status = 'failed'")
            .fetch_one(&pool)
            .await
            .expect("the scheduled retry");
    assert_eq!(retry.timestamp_micros(), later.timestamp_micros());
}

/// A claim whose worker died is put back in the queue once its lease has expired, with the
/// attempts it had; a live claim is left alone.
#[tokio::test]
async fn expired_claims_are_requeued() {
    use hookline::store::deliveries::{claim, requeue_expired};
    use hookline::store::events::event_writer;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let writer = event_writer(pool.clone());
    for i in 0..3 {
        writer
            .submit(new_event(&format!("evt_{i}"), "invoice.paid", "stripe/billing"))
            .await
            .expect("store");
    }
    let short = claim(
        &pool,
        &[(handler("stripe/billing"), 2)],
        std::time::Duration::ZERO,
    )
    .await
    .expect("claim with a lease that expires at once");
    assert_eq!(short.len(), 2);
    sqlx::query("UPDATE deliveries SET attempts = 1 WHERE id = $1")
        .bind(short[0].id)
        .execute(&pool)
        .await
        .expect("one earlier attempt");
    let live = claim(
        &pool,
        &[(handler("stripe/billing"), 1)],
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("claim");
    assert_eq!(live.len(), 1);

    assert_eq!(requeue_expired(&pool, 100).await.expect("requeue"), 2);
    let statuses: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM deliveries ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("statuses");
    for (id, status) in statuses {
        let expected = if id == live[0].id {
            "in_flight"
        } else if id == short[0].id {
            "failed"
        } else {
            "pending"
        };
        assert_eq!(status, expected, "delivery {id}");
    }
    assert_eq!(requeue_expired(&pool, 100).await.expect("requeue"), 0);
}

/// Queue statements are planned for the tables as they are when they run. Plans Postgres cached
/// while the tables were empty (a fresh install, or after a quiet spell) once read the whole
/// queue for every claim when it had filled; the statements now use the queue's index. Checked
/// on the scans the statements made, not on timing.
#[tokio::test]
async fn queue_statements_use_the_index_after_planning_on_an_empty_table() {
    use hookline::store::deliveries::{claim, waiting_targets};
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 1).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    sqlx::query("VACUUM ANALYZE deliveries")
        .execute(&pool)
        .await
        .expect("analyze empty");
    let lease = std::time::Duration::from_secs(60);
    let wanted = [(handler("stripe/billing"), 10)];
    // One transaction on one connection: its statements share the connection's plan cache, and
    // pg_stat_xact_user_tables counts the scans made in it.
    let mut tx = pool.begin().await.expect("begin");
    for _ in 0..6 {
        // Often enough for Postgres to settle on a cached plan, were it allowed to.
        waiting_targets(&mut *tx, 100).await.expect("waiting targets");
        claim(&mut *tx, &wanted, lease).await.expect("claim");
    }
    sqlx::query(
        "WITH e AS (
             INSERT INTO events (id, namespace, source, provider, external_id, event_type, body)
             SELECT gen_random_uuid(), 'billing', 'stripe', 'stripe', 'evt_' || n, 'invoice.paid', '{}'
             FROM generate_series(1, 20000) AS n
             RETURNING id)
         INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
         SELECT gen_random_uuid(), e.id, 'billing', 'handler', 'stripe/billing' FROM e",
    )
    .execute(&mut *tx)
    .await
    .expect("fill the queue");
    let scans =
        "SELECT COALESCE(idx_scan, 0), seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'deliveries'";
    let (index_before, sequential_before): (i64, i64) =
        sqlx::query_as(scans).fetch_one(&mut *tx).await.expect("scans");
    let waiting = waiting_targets(&mut *tx, 100).await.expect("waiting targets");
    assert_eq!(waiting.len(), 1);
    let taken = claim(&mut *tx, &wanted, lease).await.expect("claim");
    assert_eq!(taken.len(), 10);
    let (index, sequential): (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *tx).await.expect("scans");
    assert!(index > index_before, "the queue's index was used");
    assert_eq!(
        sequential, sequential_before,
        "no statement read the whole deliveries table"
    );
}

/// A version before migration 0004 parked a paused target's rows at 'infinity'; one may still
/// do so during a rolling upgrade. Such rows are left out of the queue scan (no time can hold
/// them) and resuming the target makes them due.
#[tokio::test]
async fn rows_parked_by_an_older_version_come_back_on_resume() {
    use hookline::store::deliveries::{claim, pause_target, resume_target, waiting_targets};
    use hookline::store::events::event_writer;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let writer = event_writer(pool.clone());
    writer
        .submit(new_event("evt_parked", "invoice.paid", "stripe/old"))
        .await
        .expect("store");
    pause_target(&pool, &handler("stripe/old"), "paused by an older replica")
        .await
        .expect("pause");
    sqlx::query("UPDATE deliveries SET next_attempt_at = 'infinity'")
        .execute(&pool)
        .await
        .expect("park as before 0004");

    let waiting = waiting_targets(&pool, 100)
        .await
        .expect("the scan reads past parked rows");
    assert!(waiting.is_empty(), "{waiting:?}");
    resume_target(&pool, &handler("stripe/old"))
        .await
        .expect("resume");
    let taken = claim(
        &pool,
        &[(handler("stripe/old"), 10)],
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("claim");
    assert_eq!(taken.len(), 1, "the parked delivery is due again");
}
