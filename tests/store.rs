//! The schema on the real Postgres from hack/test-env.

mod support;

/// The event writers' sessions use cached plans and keep every setting of the pool they come
/// from (sequential scans off, which the cached plans rely on).
#[tokio::test]
async fn a_pool_with_cached_plans_keeps_the_shared_settings() {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 2).expect("pool");
    let writers = hookline::store::with_cached_plans(&pool, 1);
    let show = |setting: &'static str| {
        let writers = writers.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SHOW {setting}"))
                .fetch_one(&writers)
                .await
                .expect("setting")
        }
    };
    assert_eq!(show("plan_cache_mode").await, "force_generic_plan");
    assert_eq!(show("enable_seqscan").await, "off");
    assert_eq!(show("jit").await, "off");
    let shared: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&pool)
        .await
        .expect("setting");
    assert_eq!(
        shared, "auto",
        "the shared pool still plans each statement as it runs"
    );
}

/// A statement that scans a small table (the replay worker's, every second, on every gateway)
/// is priced as if it read millions of rows with sequential scans off; it must not be compiled
/// by JIT for that (20 ms and more of Postgres' CPU a call, for no rows).
#[tokio::test]
async fn a_scan_priced_high_is_not_compiled() {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 1).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let plan: serde_json::Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM replays WHERE state = 'running' FOR UPDATE SKIP LOCKED",
    )
    .fetch_one(&pool)
    .await
    .expect("explain");
    let plan = &plan[0];
    assert!(
        plan["Plan"]["Total Cost"].as_f64().expect("a cost") > 100_000.0,
        "priced above jit_above_cost: {plan}"
    );
    assert!(plan.get("JIT").is_none(), "compiled by JIT: {}", plan["JIT"]);
}

/// A migration that waits behind a long query for its table's lock gives way after a while, so
/// the statements queued behind it (here an attempt being recorded) go on, and it is tried
/// again until it applies, once the query has ended.
#[tokio::test]
async fn a_migration_waiting_behind_a_long_query_gives_way_and_is_tried_again() {
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 4).expect("pool");
    support::migrations_before(21)
        .run(&pool)
        .await
        .expect("the schema before 0021");
    let now = chrono::Utc::now();
    hookline::store::partitions::ensure(
        &pool,
        now,
        now + chrono::Duration::hours(1),
        hookline::store::partitions::DEFAULT_PERIOD,
    )
    .await
    .expect("partitions");
    // A long read of the attempts, still open.
    let mut reader = pool.begin().await.expect("begin");
    sqlx::query("SELECT count(*) FROM attempts")
        .execute(&mut *reader)
        .await
        .expect("read");
    let migrating = tokio::spawn({
        let pool = pool.clone();
        async move { hookline::store::migrate(&pool).await }
    });
    // Until the migration asks for its lock (and waits for it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .fetch_one(&pool)
    .await
    .expect("locks")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never asked for its lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An attempt recorded meanwhile waits behind the migration's request, and goes on once the
    // migration gives way, though the reader is still open.
    let recorded = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sqlx::query(&format!(
            "INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms)
             VALUES ({}, 1, now(), 5)",
            support::sql_id_at("now()")
        ))
        .execute(&pool),
    )
    .await;
    assert!(
        matches!(recorded, Ok(Ok(_))),
        "the attempt is recorded while the migration waits: {recorded:?}"
    );
    assert!(!migrating.is_finished(), "the migration is still being tried");
    reader.commit().await.expect("the reader ends");
    migrating
        .await
        .expect("join")
        .expect("the migration applies once the reader has ended");
    let outcome: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'attempts' AND column_name = 'outcome'",
    )
    .fetch_one(&pool)
    .await
    .expect("columns");
    assert_eq!(outcome, 1);
}

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

    // The queue's claims read waiting work per target, through the queue table's index.
    let queue_index: Option<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'delivery_queue_waiting'")
            .fetch_optional(&pool)
            .await
            .expect("read index");
    let queue_index = queue_index.expect("delivery_queue_waiting index exists");
    assert!(queue_index.contains("(namespace, target_kind, target, next_attempt_at)"));
    // An attempt's outcome updates the history row in place (HOT) only while no index of
    // deliveries holds a column it writes.
    let history_indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE tablename = 'deliveries'")
            .fetch_all(&pool)
            .await
            .expect("read indexes");
    for written in [
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "updated_at",
    ] {
        for index in &history_indexes {
            assert!(!index.contains(written), "{index} holds {written}");
        }
    }
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

/// Retention drops whole periods of history past its age, with their deliveries and attempts;
/// a period with a delivery still queued is kept, and only its events with nothing queued are
/// deleted; young history stays.
#[tokio::test]
async fn retention_drops_old_periods_and_keeps_what_is_still_queued() {
    use hookline::store::partitions;
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 2).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let day = chrono::Duration::days(1);
    let now = chrono::Utc::now();
    let made = partitions::ensure(&pool, now - day * 45, now, partitions::DEFAULT_PERIOD)
        .await
        .unwrap();
    assert!(made >= 45, "{made}");
    // (external id, age in days, delivery status)
    let rows = [
        ("old-succeeded", 40, "succeeded"),
        ("old-dead", 40, "dead"),
        ("held-succeeded", 41, "succeeded"),
        ("held-pending", 41, "pending"),
        ("held-retrying", 42, "failed"),
        ("held-claimed", 43, "pending"),
        ("young-succeeded", 1, "succeeded"),
        ("young-dead", 1, "dead"),
    ];
    for (external_id, age_days, status) in rows {
        let event = partitions::id_at((now - day * age_days).timestamp_millis());
        let delivery = partitions::delivery_id(event);
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
        sqlx::query(
            "INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at)
             SELECT id, namespace, target_kind, target, now() FROM deliveries
             WHERE id = $1 AND status IN ('pending', 'failed')",
        )
        .bind(delivery)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms) VALUES ($1, 1, now(), 5)")
            .bind(delivery)
            .execute(&pool)
            .await
            .unwrap();
        if external_id == "held-claimed" {
            // Claimed from the queue: out on a lease of its row, noted with its claim, no queue
            // row (what `deliveries::claim` leaves for a target without `ordering`).
            sqlx::query(
                "WITH claimed AS (DELETE FROM delivery_queue WHERE delivery_id = $1 RETURNING delivery_id),
                      leased AS (UPDATE deliveries SET lease_until = now() + interval '1 minute'
                                 WHERE id IN (SELECT delivery_id FROM claimed))
                 INSERT INTO queue_leases (lease_until, deliveries)
                 SELECT now() + interval '1 minute', array_agg(delivery_id) FROM claimed",
            )
            .bind(delivery)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    sqlx::query("INSERT INTO idempotency_keys (namespace, key, request_hash, response_status, response_body, expires_at) VALUES ('shop', 'k', '\\x00', 202, '{}', now() - interval '1 hour')")
        .execute(&pool)
        .await
        .unwrap();
    // The sweep makes the periods ahead first; made here, they are in the count before.
    partitions::make_ahead(&pool, partitions::DEFAULT_PERIOD)
        .await
        .unwrap();
    let periods_before = partitions::list(&pool).await.unwrap().len() as u64;

    let month = std::time::Duration::from_secs(30 * 86400);
    let swept = hookline::store::retention::sweep(&pool, &hookline::store::retention::Policy::new(month))
        .await
        .unwrap();
    assert_eq!(swept.periods_held, 3, "{swept:?}");
    assert_eq!(swept.events, 1, "held-succeeded, deleted from its held period");
    assert_eq!(swept.idempotency_keys, 1);
    let periods_after = partitions::list(&pool).await.unwrap();
    assert_eq!(periods_before - swept.periods_dropped, periods_after.len() as u64);
    // Every period left is young, or held by its queue.
    let cutoff = (now - day * 30).timestamp_millis();
    assert_eq!(periods_after.iter().filter(|p| p.until_ms <= cutoff).count(), 3);
    let period_of = |age: i32| {
        let at = (now - day * age).format("%Y%m%d").to_string();
        format!("events_{at}")
    };
    let exists = async |table: String| -> bool {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(!exists(period_of(40)).await, "a finished day is dropped");
    assert!(!exists(period_of(40).replace("events", "deliveries")).await);
    assert!(!exists(period_of(40).replace("events", "attempts")).await);
    assert!(
        exists(period_of(41)).await,
        "a day with a queued delivery is kept"
    );
    assert!(
        exists(period_of(43)).await,
        "a day with a delivery out on a claim is kept"
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT external_id FROM events ORDER BY external_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        [
            "held-claimed",
            "held-pending",
            "held-retrying",
            "young-dead",
            "young-succeeded"
        ]
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT (SELECT count(*) FROM deliveries) + (SELECT count(*) FROM attempts)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 10, "deliveries and attempts went with their events");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 2, "the old waiting deliveries are still queued");
    // Once they finish (and the claim has ended and been looked at), their days go too.
    sqlx::query("DELETE FROM delivery_queue")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM queue_leases")
        .execute(&pool)
        .await
        .unwrap();
    let swept = hookline::store::retention::sweep(&pool, &hookline::store::retention::Policy::new(month))
        .await
        .unwrap();
    assert_eq!((swept.periods_dropped, swept.periods_held), (3, 0), "{swept:?}");
    assert!(!exists(period_of(41)).await);
}

fn new_event(external_id: &str, event_type: &str, target: &str) -> hookline::store::events::NewEvent {
    use hookline::store::events::{NewDelivery, NewEvent};
    NewEvent {
        id: uuid::Uuid::now_v7(),
        namespace: "billing".into(),
        source: "stripe".into(),
        provider: Some("stripe"),
        external_id: external_id.into(),
        replay_digest: None,
        event_type: event_type.into(),
        headers: serde_json::json!({"content-type": "application/json"}),
        body: bytes::Bytes::from_static(b"{}"),
        deliveries: vec![NewDelivery {
            id: uuid::Uuid::now_v7(),
            target_kind: hookline::api::TargetKind::Handler,
            target: target.into(),
            filter_error: None,
            ordering_key: None,
            claim_for: None,
        }],
    }
}

/// Concurrent writes share commits, yet each caller gets its own answer: the same event id
/// sent many times at once is stored once, and a value Postgres cannot store (a NUL in text)
/// fails only its own request, not the others in its batch.
#[tokio::test]
async fn group_commit_answers_each_request_for_itself() {
    use hookline::store::events::{EventBatching, Stored, event_writer};
    let pool = migrated_pool(8).await;
    let writer = std::sync::Arc::new(event_writer(pool.clone(), EventBatching::WhileWriting));

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
            (_, Ok(Stored::New { deliveries, .. })) => {
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

/// The notification of new deliveries names only targets they can be claimed for: a target
/// paused at runtime is left out (its resume asks for a scan), so the dispatchers do not run a
/// claim that finds nothing for every commit while it is paused.
#[tokio::test]
async fn the_notification_of_new_deliveries_leaves_paused_targets_out() {
    use hookline::store::events::{DELIVERIES_CHANNEL, EventBatching, NewDelivery, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let paused = hookline::api::TargetKey {
        namespace: "billing".into(),
        kind: hookline::api::TargetKind::Handler,
        name: "stripe/paused".into(),
    };
    hookline::store::deliveries::pause_target(&pool, &paused, "console")
        .await
        .expect("pause");
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("listen");
    listener.listen(DELIVERIES_CHANNEL).await.expect("listen");
    let mut event = new_event("evt_both", "invoice.paid", "stripe/paused");
    event.deliveries.push(NewDelivery {
        id: uuid::Uuid::now_v7(),
        target_kind: hookline::api::TargetKind::Handler,
        target: "stripe/live".into(),
        filter_error: None,
        ordering_key: None,
        claim_for: None,
    });
    writer.submit(event).await.expect("stored");
    assert_eq!(heard_next(&mut listener).await, "billing/handler/stripe/live");
    hookline::store::deliveries::resume_target(&pool, &paused)
        .await
        .expect("resume");
    assert_eq!(heard_next(&mut listener).await, "", "the resume asks for a scan");
    let event = new_event("evt_resumed", "invoice.paid", "stripe/paused");
    writer.submit(event).await.expect("stored");
    assert_eq!(heard_next(&mut listener).await, "billing/handler/stripe/paused");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_queue")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(queued, 3, "every delivery is queued, told of or not");
}

async fn heard_next(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("told")
        .expect("notification")
        .payload()
        .to_owned()
}

/// A pool of `connections` on a fresh database with the schema applied.
async fn migrated_pool(connections: u32) -> sqlx::PgPool {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, connections).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    pool
}

/// A claim asking the same lease of each target.
fn takes(
    wanted: &[(hookline::api::TargetKey, usize)],
    lease: std::time::Duration,
) -> Vec<hookline::store::deliveries::Take> {
    wanted
        .iter()
        .map(|(target, count)| hookline::store::deliveries::Take {
            target: target.clone(),
            count: *count,
            lease,
            ordered: false,
        })
        .collect()
}

/// One claim holds each target's deliveries for that target's own lease: a slow target's long
/// timeout does not keep a fast target's abandoned deliveries from being retaken.
#[tokio::test]
async fn each_target_is_claimed_for_its_own_lease() {
    use hookline::store::deliveries::{Take, claim};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(2).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for target in ["stripe/fast", "stripe/slow"] {
        writer
            .submit(new_event(&format!("evt_{target}"), "invoice.paid", target))
            .await
            .expect("store");
    }
    let take = |name: &str, secs: u64| Take {
        target: handler(name),
        count: 10,
        lease: std::time::Duration::from_secs(secs),
        ordered: false,
    };
    let before = chrono::Utc::now();
    let taken = claim(&pool, &[take("stripe/fast", 31), take("stripe/slow", 330)])
        .await
        .expect("claim");
    assert_eq!(taken.len(), 2);
    for delivery in &taken {
        let held = (delivery.lease_until - before).num_seconds();
        let expected = if delivery.target == "stripe/fast" { 31 } else { 330 };
        assert!(
            (expected - 1..=expected + 5).contains(&held),
            "{} is held {held}s, not its own {expected}s",
            delivery.target
        );
    }
}

fn handler(name: &str) -> hookline::api::TargetKey {
    hookline::api::TargetKey {
        namespace: "billing".into(),
        kind: hookline::api::TargetKind::Handler,
        name: name.into(),
    }
}

/// The queue is read per target: each target with waiting work is listed once with its earliest
/// due time, a claim takes no more than asked of each target, and a target paused at runtime is
/// listed as paused, is never claimed, and keeps its deliveries' schedule until it is resumed.
#[tokio::test]
async fn claims_are_per_target_and_a_paused_target_keeps_its_schedule() {
    use hookline::store::deliveries::{claim, pause_target, resume_target, waiting_targets};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
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
        "WITH retry AS (
             UPDATE delivery_queue SET next_attempt_at = $1, attempts = 1
             WHERE delivery_id = (SELECT id FROM deliveries WHERE target = 'stripe/slow' ORDER BY id LIMIT 1)
             RETURNING delivery_id
         )
         UPDATE deliveries SET status = 'failed', attempts = 1
         WHERE id = (SELECT delivery_id FROM retry)",
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

    // Longer than the retry is away: the end of a claim counts as a due time too.
    let lease = std::time::Duration::from_secs(3 * 3600);
    let taken = claim(
        &pool,
        &takes(
            &[(handler("stripe/fast"), 2), (handler("stripe/slow"), 10)],
            lease,
        ),
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
        "the earliest time of slow is the scheduled retry (its claims end later)"
    );
    let taken = claim(&pool, &takes(&[(handler("stripe/fast"), 10)], lease))
        .await
        .expect("claim");
    assert!(taken.is_empty(), "a paused target is never claimed");

    resume_target(&pool, &handler("stripe/fast"))
        .await
        .expect("resume");
    let taken = claim(&pool, &takes(&[(handler("stripe/fast"), 10)], lease))
        .await
        .expect("claim");
    assert_eq!(taken.len(), 3, "what waited during the pause is claimed after it");
    let retry: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_attempt_at FROM delivery_queue WHERE NOT claimed")
            .fetch_one(&pool)
            .await
            .expect("the scheduled retry");
    assert_eq!(retry.timestamp_micros(), later.timestamp_micros());
}

/// A claim whose worker died is due again once its lease has expired (the next pass over
/// leases queues it), and is claimed again with the next attempt number; a live claim is left alone. The first worker's late outcome is
/// kept as an attempt but moves neither the queue nor the status, nor can it release the
/// delivery: those belong to the current claim.
#[tokio::test]
async fn an_expired_claim_is_due_again_and_its_late_outcome_is_only_history() {
    use hookline::store::deliveries::{After, Attempt, AttemptRecord, claim, record_attempts, release};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for i in 0..3 {
        writer
            .submit(new_event(&format!("evt_{i}"), "invoice.paid", "stripe/billing"))
            .await
            .expect("store");
    }
    let wanted = |take| [(handler("stripe/billing"), take)];
    let expired = claim(&pool, &takes(&wanted(2), std::time::Duration::ZERO))
        .await
        .expect("claim with a lease that expires at once");
    assert_eq!(expired.len(), 2);
    // The pass over expired leases puts them back in the queue (store::leases).
    hookline::store::leases::take_over_expired(&pool)
        .await
        .expect("pass");
    let live = claim(&pool, &takes(&wanted(10), std::time::Duration::from_secs(60)))
        .await
        .expect("claim");
    assert_eq!(
        live.len(),
        3,
        "the expired claims are due again, beside the third"
    );
    let again = live
        .iter()
        .find(|d| d.id == expired[0].id)
        .expect("claimed again");
    assert_eq!((expired[0].attempts, again.attempts), (0, 1), "a number each");
    assert!(
        claim(&pool, &takes(&wanted(10), std::time::Duration::from_secs(60)))
            .await
            .expect("claim")
            .is_empty(),
        "live claims are left alone"
    );

    let outcome = |lease_until, number, after| AttemptRecord {
        delivery: again.id,
        lease_until,
        number,
        held: again.held,
        attempt: Attempt {
            started_at: chrono::Utc::now(),
            duration_ms: 3,
            status_code: Some(200),
            ..Attempt::default()
        },
        after,
        last_error: None,
        blocks_key: false,
        hand_over: None,
    };
    // (status, attempts started before the one out, queued, out on the current claim's lease)
    let status = || async {
        sqlx::query_as::<_, (String, i32, i64, bool)>(
            "SELECT s.status, s.attempts, (SELECT count(*) FROM delivery_queue WHERE delivery_id = $1),
                    s.state = 'in_flight' AND EXISTS (SELECT 1 FROM claims WHERE lease_until = $2
                                                      AND deliveries ? $1::uuid::text)
             FROM delivery_states s WHERE s.id = $1",
        )
        .bind(again.id)
        .bind(again.lease_until)
        .fetch_one(&pool)
        .await
        .expect("status")
    };
    release(
        &pool,
        again.id,
        expired[0].lease_until,
        chrono::Utc::now(),
        Some("stale"),
    )
    .await
    .expect("release with the expired claim");
    record_attempts(&pool, &[outcome(expired[0].lease_until, 1, After::Succeeded)])
        .await
        .expect("the late outcome");
    assert_eq!(
        status().await,
        ("pending".into(), 1, 0, true),
        "still out on the current claim's lease"
    );
    record_attempts(&pool, &[outcome(again.lease_until, 2, After::Succeeded)])
        .await
        .expect("the current outcome");
    assert_eq!(status().await, ("succeeded".into(), 2, 0, false));
    assert_eq!(
        support::attempt_outcomes(&pool, again.id).await,
        [(1, None), (2, Some("succeeded".to_owned()))],
        "both attempts are history; only the current claim's gave the delivery its outcome"
    );
}

/// The same for the heads of ordered keys, which stay queued while they are out: a late
/// outcome recorded in one batch with the current claim's, before or after it, is kept as an
/// attempt and leaves the queue row to the current claim.
#[tokio::test]
async fn an_expired_head_is_claimed_again_and_its_late_outcome_is_only_history() {
    use hookline::store::deliveries::{After, Take, claim, record_attempts};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for key in ["late-first", "late-last"] {
        let mut event = new_event(&format!("evt_{key}"), "entry", "stripe/ledger");
        event.deliveries[0].ordering_key = Some(key.into());
        writer.submit(event).await.expect("store");
    }
    let take = |lease| {
        [Take {
            target: handler("stripe/ledger"),
            count: 10,
            lease,
            ordered: true,
        }]
    };
    let mut expired = claim(&pool, &take(std::time::Duration::ZERO))
        .await
        .expect("claim with a lease that expires at once");
    let mut again = claim(&pool, &take(std::time::Duration::from_secs(60)))
        .await
        .expect("claim again");
    assert_eq!((expired.len(), again.len()), (2, 2));
    expired.sort_by_key(|d| d.ordering_key.clone());
    again.sort_by_key(|d| d.ordering_key.clone());
    assert!(again.iter().all(|d| d.attempts == 1), "a number each");

    let retry_at = chrono::Utc::now() + chrono::Duration::minutes(5);
    let mut records = Vec::new();
    for (expired, again) in expired.iter().zip(&again) {
        assert_eq!(expired.id, again.id);
        let late = support::answered_200(expired, After::Succeeded);
        let current = support::answered_200(again, After::RetryAt(retry_at));
        assert_eq!((late.number, current.number), (1, 2));
        // The recorder keeps the order of a delivery's records: both orders are tried.
        if expired.ordering_key.as_deref() == Some("late-first") {
            records.extend([late, current]);
        } else {
            records.extend([current, late]);
        }
    }
    record_attempts(&pool, &records).await.expect("record");
    for delivery in &again {
        let key = delivery.ordering_key.as_deref();
        let (status, attempts, due, claimed): (String, i32, chrono::DateTime<chrono::Utc>, bool) =
            sqlx::query_as(
                "SELECT d.status, d.attempts, q.next_attempt_at, q.claimed
                 FROM delivery_states d JOIN delivery_queue q ON q.delivery_id = d.id WHERE d.id = $1",
            )
            .bind(delivery.id)
            .fetch_one(&pool)
            .await
            .expect("still queued");
        assert_eq!(
            (status.as_str(), attempts, due.timestamp_micros(), claimed),
            ("failed", 2, retry_at.timestamp_micros(), false),
            "{key:?}: the current claim's retry, not the late success"
        );
        assert_eq!(
            support::attempt_numbers(&pool, delivery.id).await,
            [1, 2],
            "{key:?}: both attempts are history"
        );
    }
}

/// Ordered deliveries are claimed as their key's head only: one at a time per key, in the
/// order stored, keys side by side; a dead head with `blocks_key` holds its key until skipped.
#[tokio::test]
async fn an_ordered_key_goes_one_at_a_time_in_order_and_a_dead_head_blocks_it() {
    use hookline::store::deliveries::{After, claim, record_attempts};
    use hookline::store::events::{EventBatching, event_writer};
    use hookline::store::history::{redeliver, skip_blocked};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let target = handler("stripe/ledger");
    for (i, key) in ["k", "k", "l", "k"].iter().enumerate() {
        let mut event = new_event(&format!("evt_{i}"), "entry", "stripe/ledger");
        event.deliveries[0].ordering_key = Some((*key).to_owned());
        writer.submit(event).await.expect("store");
    }
    let mut unordered = new_event("evt_free", "entry", "stripe/ledger");
    unordered.deliveries[0].ordering_key = None;
    writer.submit(unordered).await.expect("store");
    let lease = std::time::Duration::from_secs(30);
    let take = || {
        vec![hookline::store::deliveries::Take {
            target: target.clone(),
            count: 10,
            lease,
            ordered: true,
        }]
    };
    let external = async |claimed: &[hookline::store::deliveries::Claimed]| -> Vec<String> {
        let mut ids = Vec::new();
        for c in claimed {
            let id: String = sqlx::query_scalar("SELECT external_id FROM events WHERE id = $1")
                .bind(c.event_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            ids.push(id);
        }
        ids.sort();
        ids
    };

    // The heads of k and l, and the unordered one; nothing else of k.
    let first = claim(&pool, &take()).await.expect("claim");
    assert_eq!(external(&first).await, ["evt_0", "evt_2", "evt_free"]);
    assert!(
        claim(&pool, &take()).await.expect("claim").is_empty(),
        "k's head is out"
    );
    let head = first
        .iter()
        .find(|c| c.ordering_key.as_deref() == Some("k"))
        .unwrap();
    // A retry keeps the head: k waits for it.
    record_attempts(
        &pool,
        &[support::answered_200(head, After::RetryAt(chrono::Utc::now()))],
    )
    .await
    .expect("retry");
    let again = claim(&pool, &take()).await.expect("claim");
    assert_eq!(external(&again).await, ["evt_0"], "the head again, not the next");
    // Recording the head's success claims the key's next one in the same statement.
    let handed = record_attempts(
        &pool,
        &[hookline::store::deliveries::AttemptRecord {
            hand_over: Some(lease),
            ..support::answered_200(&again[0], After::Succeeded)
        }],
    )
    .await
    .expect("record");
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].after, again[0].id);
    let next: Vec<_> = handed.into_iter().map(|h| h.claimed).collect();
    assert_eq!(external(&next).await, ["evt_1"]);
    assert!(
        claim(&pool, &take()).await.expect("claim").is_empty(),
        "handed over: out already"
    );
    // Dead, blocking: k's later deliveries stay where they are.
    record_attempts(
        &pool,
        &[hookline::store::deliveries::AttemptRecord {
            blocks_key: true,
            ..support::answered_200(&next[0], After::Dead)
        }],
    )
    .await
    .expect("record");
    assert!(
        claim(&pool, &take()).await.expect("claim").is_empty(),
        "k is blocked"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM delivery_states WHERE id = $1")
        .bind(next[0].id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "dead");
    assert_eq!(
        support::attempt_outcomes(&pool, next[0].id).await,
        [(1, Some("dead".to_owned()))]
    );
    let l_head = first
        .iter()
        .find(|c| c.ordering_key.as_deref() == Some("l"))
        .unwrap();
    assert!(
        !skip_blocked(&pool, l_head.id, None).await.unwrap(),
        "l's head blocks nothing"
    );
    // Redelivered, the dead head goes again in its place: before k's later deliveries.
    assert!(redeliver(&pool, next[0].id, None).await.expect("redeliver"));
    let redelivered = claim(&pool, &take()).await.expect("claim");
    assert_eq!(
        external(&redelivered).await,
        ["evt_1"],
        "the head again, not evt_3"
    );
    record_attempts(
        &pool,
        &[hookline::store::deliveries::AttemptRecord {
            blocks_key: true,
            ..support::answered_200(&redelivered[0], After::Dead)
        }],
    )
    .await
    .expect("record");
    assert!(
        skip_blocked(&pool, next[0].id, None).await.expect("skip"),
        "it was blocking"
    );
    let after_skip = claim(&pool, &take()).await.expect("claim");
    assert_eq!(external(&after_skip).await, ["evt_3"]);

    // onDead: skip — a dead head that does not block lets the key's next one go at once.
    let mut later = new_event("evt_4", "entry", "stripe/ledger");
    later.deliveries[0].ordering_key = Some("k".to_owned());
    writer.submit(later).await.expect("store");
    record_attempts(&pool, &[support::answered_200(&after_skip[0], After::Dead)])
        .await
        .expect("record");
    let after_dead = claim(&pool, &take()).await.expect("claim");
    assert_eq!(external(&after_dead).await, ["evt_4"]);
}

/// A batch of outcomes may hold a late one of an expired claim beside the current one for the
/// same delivery: only the current claim's outcome moves the delivery on, in either order.
#[tokio::test]
async fn a_late_outcome_in_the_same_batch_does_not_win() {
    use hookline::store::deliveries::{After, claim, record_attempts};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(2).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for i in 0..2 {
        writer
            .submit(new_event(&format!("evt_{i}"), "invoice.paid", "stripe/billing"))
            .await
            .expect("store");
    }
    let wanted = [(handler("stripe/billing"), 2)];
    let expired = claim(&pool, &takes(&wanted, std::time::Duration::ZERO))
        .await
        .expect("claim");
    hookline::store::leases::take_over_expired(&pool)
        .await
        .expect("pass");
    let current = claim(&pool, &takes(&wanted, std::time::Duration::from_secs(60)))
        .await
        .expect("claim again");
    assert_eq!((expired.len(), current.len()), (2, 2));
    let stale = |id| {
        let late = expired.iter().find(|d| d.id == id).expect("claimed before");
        support::answered_200(late, After::RetryAt(chrono::Utc::now()))
    };
    // Stale first for one delivery, current first for the other.
    let batch = vec![
        stale(current[0].id),
        support::answered_200(&current[0], After::Succeeded),
        support::answered_200(&current[1], After::Succeeded),
        stale(current[1].id),
    ];
    record_attempts(&pool, &batch).await.expect("record");
    let states: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempts FROM delivery_states ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("states");
    assert_eq!(states, [("succeeded".to_owned(), 2), ("succeeded".to_owned(), 2)]);
    for delivery in &current {
        assert_eq!(
            support::attempt_outcomes(&pool, delivery.id).await,
            [(1, None), (2, Some("succeeded".to_owned()))],
            "the late attempt is kept without an outcome"
        );
    }
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_queue")
        .fetch_one(&pool)
        .await
        .expect("queue");
    assert_eq!(queued, 0);
}

/// Attempt numbers stay unique through what can happen to a delivery while it is being sent:
/// a redelivery is refused, a cancellation keeps the number handed out, a later redelivery
/// counts on from it, and a claim given back unsent returns its number.
#[tokio::test]
async fn attempt_numbers_stay_unique_through_cancel_redeliver_and_release() {
    use hookline::store::deliveries::{After, claim, record_attempts, release};
    use hookline::store::events::{EventBatching, event_writer};
    use hookline::store::history::redeliver;
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool(2).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    writer
        .submit(new_event("evt_1", "invoice.paid", "stripe/billing"))
        .await
        .expect("store");
    let wanted = [(handler("stripe/billing"), 10)];
    let lease = std::time::Duration::from_secs(60);
    let first = claim(&pool, &takes(&wanted, lease))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(first.attempts, 0);
    assert!(
        !redeliver(&pool, first.id, None).await.expect("redeliver"),
        "not while it is being sent"
    );
    let cancelled = cancel_pending(
        &pool,
        "billing",
        hookline::api::TargetKind::Handler,
        &["stripe/billing".to_owned()],
    )
    .await
    .expect("cancel");
    assert_eq!(cancelled, 1);
    // Redelivered while the cancelled claim is still out.
    assert!(redeliver(&pool, first.id, None).await.expect("redeliver"));
    let second = claim(&pool, &takes(&wanted, lease))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(second.attempts, 1, "counts on from the cancelled claim's attempt");
    record_attempts(&pool, &[support::answered_200(&first, After::Succeeded)])
        .await
        .expect("the cancelled claim's outcome");
    let status: String = sqlx::query_scalar("SELECT status FROM delivery_states")
        .fetch_one(&pool)
        .await
        .expect("status");
    assert_eq!(status, "pending", "that outcome is history only");
    release(
        &pool,
        second.id,
        second.lease_until,
        chrono::Utc::now(),
        Some("circuit open"),
    )
    .await
    .expect("release");
    let third = claim(&pool, &takes(&wanted, lease))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(third.attempts, 1, "a claim given back unsent spends no number");
    record_attempts(&pool, &[support::answered_200(&third, After::Succeeded)])
        .await
        .expect("record");
    let (status, attempts): (String, i32) = sqlx::query_as("SELECT status, attempts FROM delivery_states")
        .fetch_one(&pool)
        .await
        .expect("status");
    assert_eq!((status.as_str(), attempts), ("succeeded", 2));
    let numbers: Vec<i32> = sqlx::query_scalar("SELECT attempt_number FROM attempts ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("attempts");
    assert_eq!(numbers, [1, 2]);
}

/// The statements of ingest and dispatch read by index even with plans Postgres made and cached
/// while the tables were empty (a fresh install, or after a quiet spell), foreign-key checks
/// included: such a plan once read the whole queue for every claim once it had filled. Checked
/// on the scans the statements made, not on timing.
#[tokio::test]
async fn queue_statements_use_the_index_after_planning_on_an_empty_table() {
    use hookline::store::deliveries::{
        After, AttemptRecord, claim, queue_writers, record_attempts, waiting_targets,
    };
    use hookline::store::events::{EventBatching, event_writer};
    // The pools production uses: the shared one (one connection, so one plan cache), the event
    // writers' and the dispatcher's, which keep the plans they make first.
    let pool = migrated_pool(1).await;
    sqlx::query("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze empty");
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let queue = queue_writers(&pool);
    let lease = std::time::Duration::from_secs(60);
    let wanted = [(handler("stripe/billing"), 10)];
    let round = |n: usize| {
        let (pool, queue, writer, wanted) = (pool.clone(), queue.clone(), &writer, &wanted);
        async move {
            writer
                .submit(new_event(
                    &format!("evt_round_{n}"),
                    "invoice.paid",
                    "stripe/billing",
                ))
                .await
                .expect("store");
            waiting_targets(&pool, 100).await.expect("waiting targets");
            let taken = claim(&queue, &takes(wanted, lease)).await.expect("claim");
            let records: Vec<AttemptRecord> = taken
                .iter()
                .map(|d| support::answered_200(d, After::Succeeded))
                .collect();
            record_attempts(&queue, &records).await.expect("record");
            // And one leased on its row as it is stored (sent by the gateway storing it).
            let mut direct = new_event(&format!("evt_direct_{n}"), "invoice.paid", "stripe/direct");
            direct.deliveries[0].claim_for = Some(lease);
            let id = direct.deliveries[0].id;
            let hookline::store::events::Stored::New { claimed, .. } =
                writer.submit(direct).await.expect("store leased")
            else {
                panic!("a new event");
            };
            let (_, lease_until) = *claimed.first().expect("leased");
            let record = support::answered_200_to(id, lease_until, 1, hookline::store::deliveries::Held::Row);
            record_attempts(&queue, &[record]).await.expect("record leased");
            taken.len()
        }
    };
    for n in 0..6 {
        // Often enough for Postgres to settle on cached plans.
        assert_eq!(round(n).await, 1);
    }
    sqlx::query(&format!(
        "WITH e AS (
             INSERT INTO events (id, namespace, source, provider, external_id, event_type, body)
             SELECT {}, 'billing', 'stripe', 'stripe', 'evt_' || n, 'invoice.paid', '{{}}'
             FROM generate_series(1, 20000) AS n
             RETURNING id)
         , d AS (
             INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
             SELECT {}, e.id, 'billing', 'handler', 'stripe/billing' FROM e
             RETURNING id)
         INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at)
         SELECT id, 'billing', 'handler', 'stripe/billing', now() FROM d",
        support::sql_id_at("clock_timestamp()"),
        support::sql_id_of("e.id")
    ))
    .execute(&pool)
    .await
    .expect("fill the queue");
    // Rows read, by any scan of the tables or their partitions: a whole table (or a whole
    // index: with sequential scans off that is how a plan would read everything) is 20,000 or
    // more.
    let rows_read = async |reader: &sqlx::PgPool| {
        sqlx::query_scalar::<_, i64>(
            "WITH tables AS (SELECT p.relid FROM unnest($1::regclass[]) AS t, pg_partition_tree(t) AS p)
             SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                     WHERE relid IN (SELECT relid FROM tables))::bigint
                  + (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables
                     WHERE relid IN (SELECT relid FROM tables))::bigint",
        )
        .bind(["events", "deliveries", "delivery_queue", "attempts"])
        .fetch_one(reader)
        .await
        .expect("scans")
    };
    // A session's counts reach the views when it asks (`pg_stat_force_next_flush`) or ends.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&pool)
        .await
        .expect("flush");
    let before = rows_read(&pool).await;
    assert_eq!(round(6).await, 10);
    // The writers' sessions count what they read when they end (they cannot be asked to flush
    // from here, and closing them earlier would have thrown their plans away).
    let reader = sqlx::PgPool::connect_lazy_with((*pool.connect_options()).clone());
    drop(writer);
    queue.close().await;
    pool.close().await;
    support::wait_for_other_sessions_to_end(&reader).await;
    let read = rows_read(&reader).await - before;
    assert!(
        read < 1_000,
        "a round of ten deliveries read {read} rows: a statement read a whole table"
    );
}

/// Migration 0006 moves the queue out of the history rows: whatever was waiting, retrying,
/// in flight (claimed by a replica of the version before) or parked at 'infinity' (before
/// 0004) is in `delivery_queue` after it, and is claimed as before; finished work is not.
#[tokio::test]
async fn waiting_deliveries_move_to_the_queue_table() {
    use hookline::store::deliveries::claim;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 2).expect("pool");
    let before_queue = support::migrations_before(6);
    before_queue.run(&pool).await.expect("migrate to 0005");
    // (target, status, attempts, due, lease)
    let rows = [
        ("new", "pending", 0, "now() - interval '1 minute'", "NULL"),
        ("retry", "failed", 2, "now() + interval '1 hour'", "NULL"),
        (
            "claimed",
            "in_flight",
            1,
            "now() - interval '1 minute'",
            "now() - interval '1 second'",
        ),
        ("parked", "pending", 0, "'infinity'", "NULL"),
        ("done", "succeeded", 1, "now()", "NULL"),
    ];
    for (i, (target, status, attempts, due, lease)) in rows.into_iter().enumerate() {
        sqlx::query(&format!(
            "WITH e AS (
                 INSERT INTO events (id, namespace, source, external_id, event_type, body)
                 VALUES ({new_id}, 'billing', 'stripe', 'evt_{i}', 't', '{{}}') RETURNING id)
             INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status, attempts,
                                     next_attempt_at, lease_until)
             SELECT {delivery_id}, e.id, 'billing', 'handler', 'stripe/{target}', '{status}', {attempts},
                    {due}, {lease}
             FROM e",
            new_id = support::sql_id_at("clock_timestamp()"),
            delivery_id = support::sql_id_of("e.id")
        ))
        .execute(&pool)
        .await
        .expect("a delivery as 0005 kept it");
    }
    // An attempt recorded by a late outcome, which did not move the count.
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms)
         SELECT id, 1, now(), 5 FROM deliveries WHERE target = 'stripe/new'",
    )
    .execute(&pool)
    .await
    .expect("an attempt");
    hookline::store::migrate(&pool)
        .await
        .expect("migrate to the latest");

    let queued: Vec<(String, bool, i32, bool)> = sqlx::query_as(
        "SELECT target, claimed, attempts, next_attempt_at <= now() FROM delivery_queue ORDER BY target",
    )
    .fetch_all(&pool)
    .await
    .expect("queue");
    let queued: Vec<(&str, bool, i32, bool)> = queued
        .iter()
        .map(|(t, c, a, d)| (t.as_str(), *c, *a, *d))
        .collect();
    assert_eq!(
        queued,
        [
            ("stripe/claimed", true, 2, true),
            ("stripe/new", false, 1, true),
            ("stripe/parked", false, 0, true),
            ("stripe/retry", false, 2, false),
        ],
        "(target, claimed, attempts started, due)"
    );
    let in_flight: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'in_flight'")
        .fetch_one(&pool)
        .await
        .expect("statuses");
    assert_eq!(in_flight, 0, "the history no longer says in_flight");
    let wanted: Vec<_> = ["new", "claimed", "parked", "retry"]
        .iter()
        .map(|t| (handler(&format!("stripe/{t}")), 10))
        .collect();
    let taken = claim(&pool, &takes(&wanted, std::time::Duration::from_secs(60)))
        .await
        .expect("claim");
    let mut taken: Vec<(&str, i32)> = taken.iter().map(|d| (d.target.as_str(), d.attempts)).collect();
    taken.sort();
    assert_eq!(
        taken,
        [("stripe/claimed", 2), ("stripe/new", 1), ("stripe/parked", 0)],
        "what is due is claimed, each numbered after the attempts it had"
    );
}

/// The console's pictures read bounded ranges: on a million rows of activity, a million events
/// and many circuit changes, each statement reads the asked targets' and sources' last hour
/// through an index, never a whole table.
#[tokio::test]
async fn the_pictures_read_index_ranges_on_a_million_rows() {
    use hookline::store::activity::{CIRCUIT_HISTORY, INGEST_MINUTES, TARGET_MINUTES};
    let pool = migrated_pool(2).await;
    // 1,000 targets × 1,000 minutes; 1,000,000 events of 100 sources over ~12 days, in their
    // days' partitions; 100,000 circuit changes.
    let now = chrono::Utc::now();
    hookline::store::partitions::ensure(
        &pool,
        now - chrono::Duration::days(13),
        now,
        hookline::store::partitions::DEFAULT_PERIOD,
    )
    .await
    .expect("partitions");
    for statement in [
        "INSERT INTO target_minutes (namespace, target_kind, target, minute, succeeded, failed, latency_buckets)
         SELECT 'ns' || (t % 10), 'subscription', 'target-' || t, date_trunc('minute', now()) - m * interval '1 minute',
                10, 1, '{1,2,3,4,0,0,0,0,0,0,0,0,0}'
         FROM generate_series(1, 1000) t, generate_series(0, 999) m",
        &format!(
            "INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body, received_at)
             SELECT {}, 'ns' || (i % 10), 'source-' || (i % 100), 'stripe', 'evt_' || i, 'invoice.paid',
                    '{{}}', ''::bytea, now() - i * interval '1 second'
             FROM generate_series(1, 1000000) i",
            support::sql_id_at("now() - i * interval '1 second'")
        ),
        "INSERT INTO ingest_minutes (namespace, source, minute, accepted)
         SELECT 'ns' || (s % 10), 'source-' || s, date_trunc('minute', now()) - m * interval '1 minute', 10
         FROM generate_series(1, 100) s, generate_series(0, 999) m",
        "INSERT INTO circuit_changes (namespace, target_kind, target, at, circuit)
         SELECT 'ns' || (t % 10), 'subscription', 'target-' || t, now() - c * interval '1 minute',
                CASE WHEN c % 2 = 0 THEN 'open' ELSE 'closed' END
         FROM generate_series(1, 1000) t, generate_series(1, 100) c",
        "ANALYZE",
    ] {
        sqlx::query(statement).execute(&pool).await.expect(statement);
    }
    let since = now - chrono::Duration::hours(1);
    let plan = async |sql: &str, binds: Vec<Vec<String>>| -> String {
        let text = format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}");
        let mut query = sqlx::query_scalar::<_, String>(&text);
        for bind in binds {
            query = query.bind(bind);
        }
        query.bind(since).fetch_all(&pool).await.expect(sql).join("\n")
    };
    let targets = plan(
        TARGET_MINUTES,
        vec![
            vec!["ns1".into(), "ns2".into()],
            vec!["subscription".into(), "subscription".into()],
            vec!["target-1".into(), "target-2".into()],
        ],
    )
    .await;
    assert!(
        targets.contains("target_minutes_pkey") && !targets.contains("Seq Scan on target_minutes"),
        "{targets}"
    );
    let circuits = plan(
        CIRCUIT_HISTORY,
        vec![
            vec!["ns1".into()],
            vec!["subscription".into()],
            vec!["target-1".into()],
        ],
    )
    .await;
    assert!(
        circuits.contains("circuit_changes_pkey") && !circuits.contains("Seq Scan on circuit_changes"),
        "{circuits}"
    );
    // A target's status: its minutes through their key, the queue, and no history (an
    // unordered target's deliveries are not read at all).
    let status: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, COSTS OFF) {}",
        hookline::store::stats::TARGET_STATS
    ))
    .bind("ns1")
    .bind("subscription")
    .bind("target-1")
    .bind(since)
    .bind(since)
    .bind(false)
    .fetch_all(&pool)
    .await
    .expect("explain a target's status");
    let status = status.join("\n");
    assert!(
        status.contains("target_minutes_pkey")
            && !status.contains("Seq Scan on target_minutes")
            && !status.contains("on attempts")
            && status
                .lines()
                .filter(|line| line.contains("on deliveries"))
                .all(|line| line.contains("never executed")),
        "{status}"
    );
    let ingest = plan(
        INGEST_MINUTES,
        vec![
            vec!["ns1".into(), "ns2".into()],
            vec!["source-1".into(), "source-2".into()],
        ],
    )
    .await;
    assert!(
        ingest.contains("ingest_minutes_pkey") && !ingest.contains("Seq Scan") && !ingest.contains("events"),
        "{ingest}"
    );
    // The console's event log: a page of one namespace's newest events, then their deliveries,
    // partition by partition through indexes.
    let page: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, COSTS OFF) {}",
        hookline::store::history::LIST_EVENTS
    ))
    .bind(Some("ns1"))
    .bind(None::<&str>)
    .bind(None::<&str>)
    .bind(None::<chrono::DateTime<chrono::Utc>>)
    .bind(None::<chrono::DateTime<chrono::Utc>>)
    .bind(None::<uuid::Uuid>)
    .bind(None::<&str>)
    .bind(51_i64)
    .bind(None::<Vec<String>>)
    .fetch_all(&pool)
    .await
    .expect("explain the event log");
    let page = page.join("\n");
    assert!(
        page.contains("Index Scan Backward using events_")
            && page.contains("_once_per_target")
            && !page.contains("Seq Scan"),
        "{page}"
    );
}

/// An older binary (one that knows fewer migrations) starts on a schema a newer one migrated:
/// the rolling-upgrade and rollback case. Its own migrations are all applied, the newer ones
/// are not an error.
#[tokio::test]
async fn an_older_binary_starts_on_a_newer_schema() {
    use sqlx::migrate::Migrator;
    let pool = migrated_pool(2).await;
    let older = support::migrations_before(7);
    older
        .run(&pool)
        .await
        .expect("an older migrator accepts newer applied migrations");
    let strict = Migrator {
        ignore_missing: false,
        migrations: older.migrations.clone(),
        ..Migrator::DEFAULT
    };
    assert!(
        strict.run(&pool).await.is_err(),
        "without ignoring them, sqlx refuses a schema newer than it knows"
    );
}

/// A circuit's deferral moves the target's waiting deliveries past the wait without waiting
/// itself: a row another transaction holds is skipped (it is being claimed or recorded), a live
/// claim is left to its claimer, and a deferral repeated soon after moves nothing again.
#[tokio::test]
async fn deferring_a_target_skips_locked_rows_and_live_claims() {
    use hookline::store::deliveries::{Take, claim, defer_target};
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for i in 0..4 {
        writer
            .submit(new_event(&format!("evt_{i}"), "invoice.paid", "stripe/down"))
            .await
            .expect("store");
    }
    let take = Take {
        target: handler("stripe/down"),
        count: 1,
        lease: std::time::Duration::from_secs(30),
        ordered: false,
    };
    let claimed = claim(&pool, &[take]).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    // Another transaction holds one waiting row, as a recording of another replica would.
    let mut holder = pool.begin().await.expect("begin");
    let (held,): (uuid::Uuid,) = sqlx::query_as(
        "SELECT delivery_id FROM delivery_queue WHERE NOT claimed ORDER BY delivery_id LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *holder)
    .await
    .expect("lock a row");

    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    let deferred = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        defer_target(&pool, &handler("stripe/down"), until),
    )
    .await
    .expect("the deferral does not wait for the held row")
    .expect("defer");
    assert_eq!(
        deferred, 2,
        "the two free waiting rows, not the held one or the claimed one"
    );
    let moved: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT delivery_id FROM delivery_queue WHERE next_attempt_at = $1")
            .bind(until)
            .fetch_all(&pool)
            .await
            .expect("read");
    assert!(!moved.iter().any(|(id,)| *id == held || *id == claimed[0].id));
    holder.rollback().await.expect("rollback");

    let again = defer_target(
        &pool,
        &handler("stripe/down"),
        until + chrono::Duration::seconds(1),
    )
    .await
    .expect("defer again");
    assert_eq!(
        again, 1,
        "only the row that was held; the deferred ones stay deferred"
    );
}

/// A replay's steps are paced for the whole cluster: after a step, no worker (this one or
/// another replica's) can take the replay again before the pace has passed, so `rate` events
/// per second hold however many gateways run.
#[tokio::test]
async fn a_replay_step_is_not_taken_again_before_its_pace() {
    use hookline::store::replays::{Batch, NewReplay, advance, lease, upsert};
    let pool = migrated_pool(2).await;
    let now = chrono::Utc::now();
    upsert(
        &pool,
        &NewReplay {
            namespace: "billing".into(),
            name: "again".into(),
            uid: "1".into(),
            target: handler("stripe/billing"),
            from: now - chrono::Duration::hours(1),
            to: now,
            event_types: Vec::new(),
            filter: None,
            statuses: vec!["all".into()],
            dry_run: false,
            rate: 10,
        },
    )
    .await
    .expect("record the replay");
    let step = std::time::Duration::from_secs(10);
    let leased = lease(&pool, step, 16).await.expect("lease");
    assert_eq!(leased.len(), 1);
    let batch = Batch {
        cursor: None,
        matched: 0,
        requeue: Vec::new(),
        create: Vec::new(),
        outcome: None,
    };
    let pace = std::time::Duration::from_millis(1500);
    assert!(advance(&pool, &leased[0], &batch, pace).await.expect("advance"));
    assert!(
        lease(&pool, step, 16).await.expect("lease").is_empty(),
        "not again at once, by any worker"
    );
    tokio::time::sleep(pace).await;
    assert_eq!(
        lease(&pool, step, 16).await.expect("lease").len(),
        1,
        "again after the pace"
    );
}

/// The storing gateway may claim a new delivery in the statement that stores it, to send it
/// itself: claimed as a claim would (its lease the token its outcome is recorded with, its
/// attempt counted), unless its target is paused or has deliveries due, which go first; then
/// it is queued as usual.
#[tokio::test]
async fn a_delivery_is_claimed_as_it_is_stored_unless_its_target_is_paused_or_behind() {
    use hookline::store::deliveries::{After, claim, pause_target, record_attempts};
    use hookline::store::events::{EventBatching, Stored, event_writer};
    let pool = migrated_pool(4).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let lease = std::time::Duration::from_secs(30);
    let claimed_new = |external_id: &str, target: &str| {
        let mut event = new_event(external_id, "invoice.paid", target);
        event.deliveries[0].claim_for = Some(lease);
        event
    };
    let before = chrono::Utc::now();
    let Stored::New { claimed, .. } = writer
        .submit(claimed_new("evt_1", "stripe/api"))
        .await
        .expect("store")
    else {
        panic!("a new event");
    };
    assert_eq!(claimed.len(), 1, "claimed by the statement");
    let (id, lease_until) = claimed[0];
    assert!((lease_until - before).num_seconds() >= 29, "held for its lease");
    // Leased on its own row, with no queue row while it is out.
    let (leased, queued): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT lease_until, (SELECT count(*) FROM delivery_queue WHERE delivery_id = $1) FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((leased, queued), (Some(lease_until), 0));
    assert!(
        claim(&pool, &takes(&[(handler("stripe/api"), 10)], lease))
            .await
            .expect("claim")
            .is_empty(),
        "no other claimer gets it"
    );
    // Its outcome is recorded with the lease the statement gave it, as a claim's would be.
    let stored_claim = hookline::store::deliveries::Claimed {
        id,
        namespace: "billing".into(),
        target_kind: hookline::api::TargetKind::Handler,
        target: "stripe/api".into(),
        attempts: 0,
        lease_until,
        source: "stripe".into(),
        event_type: "invoice.paid".into(),
        body: b"{}".to_vec(),
        content_type: None,
        received_at: before,
        event_id: uuid::Uuid::nil(),
        ordering_key: None,
        traceparent: None,
        tracestate: None,
        held: hookline::store::deliveries::Held::Row,
    };
    record_attempts(&pool, &[support::answered_200(&stored_claim, After::Succeeded)])
        .await
        .expect("record");
    let (status, leased, queued): (String, Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT s.status, d.lease_until, (SELECT count(*) FROM delivery_queue WHERE delivery_id = $1)
         FROM deliveries d JOIN delivery_states s ON s.id = d.id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    // Its outcome is its attempt; the lease stays on the row, ended by it (store::leases).
    assert_eq!(
        (status.as_str(), leased, queued),
        ("succeeded", Some(lease_until), 0)
    );

    // A target paused at runtime: queued, not claimed.
    pause_target(&pool, &handler("stripe/paused"), "by hand")
        .await
        .expect("pause");
    let Stored::New { claimed, .. } = writer
        .submit(claimed_new("evt_2", "stripe/paused"))
        .await
        .expect("store")
    else {
        panic!("a new event");
    };
    assert!(
        claimed.is_empty(),
        "a paused target's delivery waits in the queue"
    );

    // A target with a delivery due: the new one goes behind it.
    writer
        .submit(new_event("evt_3", "invoice.paid", "stripe/behind"))
        .await
        .expect("store");
    let Stored::New { claimed, .. } = writer
        .submit(claimed_new("evt_4", "stripe/behind"))
        .await
        .expect("store")
    else {
        panic!("a new event");
    };
    assert!(claimed.is_empty(), "queued behind the delivery due");
    let (waiting,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM delivery_queue WHERE target IN ('stripe/paused', 'stripe/behind') AND NOT claimed",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(waiting, 3);
}

/// Migration 0015 puts each waiting delivery's event beside it in the queue, and a row queued
/// without it (by a replica of the version before, during a rollout) is still claimed with its
/// event: the claim then finds it through the delivery.
#[tokio::test]
async fn queued_deliveries_are_claimed_with_their_event_whether_the_queue_names_it_or_not() {
    use hookline::store::deliveries::{claim, queue_writers};
    use hookline::store::partitions;
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 2).expect("pool");
    support::migrations_before(15)
        .run(&pool)
        .await
        .expect("the schema before 0015");
    let now = chrono::Utc::now();
    partitions::ensure(
        &pool,
        now,
        now + chrono::Duration::hours(1),
        partitions::DEFAULT_PERIOD,
    )
    .await
    .expect("partitions");
    let queue_one = async |external_id: &str| {
        let event = partitions::id_at(chrono::Utc::now().timestamp_millis());
        sqlx::query(
            "WITH e AS (
                 INSERT INTO events (id, namespace, source, external_id, event_type, body)
                 VALUES ($1, 'billing', 'stripe', $2, 'invoice.paid', convert_to($2, 'UTF8')) RETURNING id),
             d AS (
                 INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
                 SELECT $3, id, 'billing', 'handler', 'stripe/billing' FROM e RETURNING id)
             INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at)
             SELECT id, 'billing', 'handler', 'stripe/billing', now() FROM d",
        )
        .bind(event)
        .bind(external_id)
        .bind(partitions::delivery_id(event))
        .execute(&pool)
        .await
        .expect("queue as the version before");
        event
    };
    let before_migration = queue_one("evt_queued_before").await;
    hookline::store::migrate(&pool).await.expect("migrate");
    let named: Option<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM delivery_queue")
        .fetch_one(&pool)
        .await
        .expect("queue row");
    assert_eq!(named, Some(before_migration), "the migration names the event");
    let during_rollout = queue_one("evt_queued_by_an_older_replica").await;

    let lease = std::time::Duration::from_secs(60);
    let mut taken = claim(
        &queue_writers(&pool),
        &takes(&[(handler("stripe/billing"), 10)], lease),
    )
    .await
    .expect("claim");
    taken.sort_by_key(|d| d.event_id);
    let claimed: Vec<(uuid::Uuid, Vec<u8>)> = taken.into_iter().map(|d| (d.event_id, d.body)).collect();
    assert_eq!(
        claimed,
        [
            (before_migration, b"evt_queued_before".to_vec()),
            (during_rollout, b"evt_queued_by_an_older_replica".to_vec()),
        ]
    );
}

/// A backlog drained through the queue writes no history row: the claim notes its deliveries
/// in `claims`, and each outcome is its attempt's (migrations/0022, 0023). A delivery costs its
/// history row, its queue row's insert and delete, and its attempt: four row writes.
#[tokio::test]
async fn a_drained_backlog_writes_no_history_row() {
    use hookline::store::deliveries::{After, claim, record_attempts};
    use hookline::store::events::{EventBatching, event_writer};
    const BACKLOG: usize = 240;
    let pool = migrated_pool(4).await;
    let writer = std::sync::Arc::new(event_writer(pool.clone(), EventBatching::WhileWriting));
    let stored = (0..BACKLOG).map(|i| {
        let writer = writer.clone();
        async move {
            writer
                .submit(new_event(&format!("evt_{i}"), "invoice.paid", "stripe/api"))
                .await
                .expect("store")
        }
    });
    futures::future::join_all(stored).await;
    let taken = claim(
        &pool,
        &takes(
            &[(handler("stripe/api"), BACKLOG)],
            std::time::Duration::from_secs(60),
        ),
    )
    .await
    .expect("claim");
    assert_eq!(taken.len(), BACKLOG);
    let outcomes: Vec<_> = taken
        .iter()
        .map(|delivery| support::answered_200(delivery, After::Succeeded))
        .collect();
    record_attempts(&pool, &outcomes).await.expect("record");
    // Table statistics reach the view once the backends that wrote them are idle, up to 10 s
    // later: the attempts' inserts are counted with the same flush as any update.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (attempts, updated) = loop {
        let (attempts, updated): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(n_tup_ins) FILTER (WHERE relname LIKE 'attempts\\_%'), 0)::bigint,
                    coalesce(sum(n_tup_upd) FILTER (WHERE relname LIKE 'deliveries\\_%'), 0)::bigint
             FROM pg_stat_user_tables",
        )
        .fetch_one(&pool)
        .await
        .expect("statistics");
        if attempts >= BACKLOG as i64 || std::time::Instant::now() > deadline {
            break (attempts, updated);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(attempts, BACKLOG as i64, "an attempt each");
    assert_eq!(updated, 0, "no history row was written");
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_states WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .expect("states");
    assert_eq!(
        succeeded, BACKLOG as i64,
        "each delivery's state is its attempt's outcome"
    );
}

/// Migration 0020 counts the events already in the history into their sources' minutes, so a
/// source's `received` does not start again from zero; from then on the gateways' flushes add
/// to it, and the count is read from the minutes (published events have no source).
#[tokio::test]
async fn a_sources_received_count_survives_the_move_to_minutes() {
    use hookline::store::partitions;
    use hookline::store::stats::{IngestCounts, add_ingest_counts, source_stats};
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 2).expect("pool");
    support::migrations_before(20)
        .run(&pool)
        .await
        .expect("the schema before 0020");
    let now = chrono::Utc::now();
    partitions::ensure(
        &pool,
        now - chrono::Duration::days(2),
        now + chrono::Duration::hours(1),
        partitions::DEFAULT_PERIOD,
    )
    .await
    .expect("partitions");
    for (i, (source, days_ago)) in [
        ("stripe", 0),
        ("stripe", 1),
        ("stripe", 2),
        ("github", 0),
        ("", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let received = now - chrono::Duration::days(days_ago);
        sqlx::query(
            "INSERT INTO events (id, namespace, source, external_id, event_type, body, received_at)
             VALUES ($1, 'billing', $2, $3, 'invoice.paid', '', $4)",
        )
        .bind(partitions::id_at(received.timestamp_millis()))
        .bind(source)
        .bind(format!("evt_{i}"))
        .bind(received)
        .execute(&pool)
        .await
        .expect("an event stored by the version before");
    }
    hookline::store::migrate(&pool).await.expect("migrate");
    let received = async |source: &str| {
        source_stats(&pool, "billing", source)
            .await
            .expect("stats")
            .received
    };
    assert_eq!((received("stripe").await, received("github").await), (3, 1));
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_minutes WHERE source = ''")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(published, 0, "published events are no source's");

    let mut counts = IngestCounts::default();
    for _ in 0..2 {
        counts.accept("billing", "stripe");
    }
    counts.reject("billing", "stripe", "signature");
    add_ingest_counts(&pool, &counts).await.expect("flush");
    add_ingest_counts(&pool, &counts).await.expect("flush again");
    let stats = source_stats(&pool, "billing", "stripe").await.expect("stats");
    assert_eq!((stats.received, stats.rejected), (7, 2));
}

/// A delivery's state is its row, superseded by the latest attempt numbered past the row's
/// `attempts` that carries an outcome (migrations/0022): whatever writes the row folds in the
/// attempts so far, and an attempt without an outcome (a late one) changes nothing.
#[tokio::test]
async fn a_deliverys_state_is_its_row_superseded_by_later_outcomes() {
    use hookline::store::events::{EventBatching, event_writer};
    let pool = migrated_pool(2).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    writer
        .submit(new_event("evt_state", "invoice.paid", "stripe/state"))
        .await
        .expect("store");
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM deliveries")
        .fetch_one(&pool)
        .await
        .expect("delivery");
    let attempt =
        |number: i32, status_code: Option<i16>, error_class: Option<&str>, outcome: Option<&str>| {
            let pool = pool.clone();
            let error_class = error_class.map(str::to_owned);
            let outcome = outcome.map(str::to_owned);
            async move {
                sqlx::query(
                    "INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code,
                                       error_class, outcome)
                 VALUES ($1, $2, now(), 7, $3, $4, $5::attempt_outcome)",
                )
                .bind(id)
                .bind(number)
                .bind(status_code)
                .bind(error_class)
                .bind(outcome)
                .execute(&pool)
                .await
                .expect("attempt");
            }
        };
    let state = || async {
        sqlx::query_as::<_, (String, String, i32, Option<String>)>(
            "SELECT state, status, attempts, last_error FROM delivery_states WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("state")
    };
    // Queued as it was stored: pending, nothing tried.
    assert_eq!(state().await, ("pending".into(), "pending".into(), 0, None));
    // Out of the queue without an outcome yet: being sent.
    sqlx::query("DELETE FROM delivery_queue")
        .execute(&pool)
        .await
        .expect("claim");
    assert_eq!(state().await.0, "in_flight");
    attempt(1, Some(503), None, Some("failed")).await;
    assert_eq!(
        state().await,
        ("in_flight".into(), "failed".into(), 1, Some("HTTP 503".into())),
        "a failed delivery out of the queue is out for its retry"
    );
    attempt(2, None, Some("timeout"), Some("dead")).await;
    assert_eq!(
        state().await,
        ("dead".into(), "dead".into(), 2, Some("timeout".into()))
    );
    // A late attempt (its claim had ended) counts as started, and changes no state.
    attempt(3, Some(200), None, None).await;
    assert_eq!(
        state().await,
        ("dead".into(), "dead".into(), 3, Some("timeout".into()))
    );
    // The row written later (a cancel, say) folds in the attempts so far: it is what holds.
    sqlx::query("UPDATE deliveries SET status = 'cancelled', attempts = 3, last_error = NULL WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .expect("checkpoint");
    assert_eq!(state().await, ("cancelled".into(), "cancelled".into(), 3, None));
    attempt(4, Some(204), None, Some("succeeded")).await;
    assert_eq!(state().await, ("succeeded".into(), "succeeded".into(), 4, None));
}
