//! Partitioned history against a real Postgres: a populated database migrated in place (nothing
//! lost, nothing sent twice, nothing left unsent), and event keys refused across the partitions
//! of the dedupe window.

mod support;

use chrono::{Duration, Utc};
use hookline::api::{TargetKey, TargetKind};
use hookline::store::deliveries::{After, AttemptRecord, Take, claim, record_attempts};
use hookline::store::events::{EventBatching, NewDelivery, NewEvent, Stored, event_writer};
use hookline::store::partitions::{self, delivery_id, id_at};
use sqlx::PgPool;
use uuid::Uuid;

fn subscription(name: &str) -> TargetKey {
    TargetKey {
        namespace: "billing".into(),
        kind: TargetKind::Subscription,
        name: name.into(),
    }
}

fn new_event(id: Uuid, external_id: &str) -> NewEvent {
    NewEvent {
        id,
        namespace: "billing".into(),
        source: "stripe".into(),
        provider: Some("stripe"),
        external_id: external_id.into(),
        replay_digest: None,
        event_type: "invoice.paid".into(),
        headers: serde_json::json!({"content-type": "application/json"}),
        body: bytes::Bytes::from_static(b"{}"),
        deliveries: vec![NewDelivery {
            id: delivery_id(id),
            target_kind: TargetKind::Subscription,
            target: "crm".into(),
            filter_error: None,
            ordering_key: None,
            claim_for: None,
        }],
    }
}

/// Everything of the history, for comparing before and after.
async fn fingerprint(pool: &PgPool) -> (i64, i64, i64, i64, String) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries),
                (SELECT count(*) FROM attempts), (SELECT count(*) FROM delivery_queue),
                (SELECT md5(string_agg(d.id::text || d.event_id::text || d.status || d.attempts
                                       || coalesce(q.next_attempt_at::text, '-'), ',' ORDER BY d.id))
                 FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_id = d.id)",
    )
    .fetch_one(pool)
    .await
    .expect("fingerprint")
}

/// A database with history from before partitioning (40 days old, 2 days old and today;
/// succeeded, waiting, retrying and dead deliveries, and one a replay made today for a
/// 40-day-old event) is migrated: the history is the same rows, the waiting deliveries are each
/// claimed once and the finished ones never, the old keys still refuse duplicates, new history
/// goes to new partitions, and retention deletes the expired part of the old history row by row
/// with nothing left behind.
#[tokio::test]
async fn a_populated_database_is_partitioned_in_place() {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    let before_partitioning = support::migrations_before(14);
    before_partitioning
        .run(&pool)
        .await
        .expect("the schema before partitioning");
    let now = Utc::now();
    let mut queued = Vec::new();
    for i in 0..300_i64 {
        let age = [40, 2, 0][(i % 3) as usize];
        let event = id_at((now - Duration::days(age) - Duration::seconds(i)).timestamp_millis());
        // Versions before made a delivery's id when they stored it, a moment after the event's.
        let delivery = id_at(partitions::id_millis(event) + 3);
        let (status, attempts, waiting) = match i % 4 {
            0 => ("succeeded", 1, false),
            1 => ("pending", 0, true),
            2 => ("failed", 1, true),
            _ => ("dead", 3, false),
        };
        sqlx::query(
            "INSERT INTO events (id, namespace, source, provider, external_id, event_type, body, received_at)
             VALUES ($1, 'billing', 'stripe', 'stripe', $2, 'invoice.paid', '{}', now() - $3 * interval '1 day')",
        )
        .bind(event)
        .bind(format!("evt_{i}"))
        .bind(age as i32)
        .execute(&pool)
        .await
        .expect("event");
        sqlx::query(
            "INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status, attempts)
             VALUES ($1, $2, 'billing', 'subscription', 'crm', $3, $4)",
        )
        .bind(delivery)
        .bind(event)
        .bind(status)
        .bind(attempts)
        .execute(&pool)
        .await
        .expect("delivery");
        for number in 1..=attempts {
            sqlx::query(
                "INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code)
                 VALUES ($1, $2, now(), 4, 500)",
            )
            .bind(delivery)
            .bind(number)
            .execute(&pool)
            .await
            .expect("attempt");
        }
        if waiting {
            queued.push(delivery);
            sqlx::query(
                "INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at, attempts)
                 VALUES ($1, 'billing', 'subscription', 'crm', now(), $2)",
            )
            .bind(delivery)
            .bind(attempts)
            .execute(&pool)
            .await
            .expect("queued");
        }
    }
    // A replay of today sent the oldest event to a second subscription.
    let oldest: Uuid = sqlx::query_scalar("SELECT id FROM events WHERE external_id = 'evt_0'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let replayed = Uuid::now_v7();
    sqlx::query(
        "WITH d AS (INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
                    VALUES ($1, $2, 'billing', 'subscription', 'audit') RETURNING id)
         INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at)
         SELECT id, 'billing', 'subscription', 'audit', now() FROM d",
    )
    .bind(replayed)
    .bind(oldest)
    .execute(&pool)
    .await
    .expect("a replayed delivery");
    queued.push(replayed);
    let before = fingerprint(&pool).await;

    hookline::store::migrate(&pool).await.expect("migrate");
    // As a node's first retention pass does.
    partitions::make_ahead(&pool, partitions::DEFAULT_PERIOD)
        .await
        .expect("periods ahead");

    assert_eq!(
        fingerprint(&pool).await,
        before,
        "the same history, the same queue"
    );
    // Every delivery partition, the migrated one and those made since, fills its pages: rows
    // are written once (migration 0024, store/partitions.rs; 0017 had kept room on them).
    let fillfactors: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT c.relname::text, c.reloptions::text[] FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'deliveries'::regclass ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(fillfactors.len() > 1, "{fillfactors:?}");
    for (partition, options) in fillfactors {
        assert_eq!(options, None, "{partition}");
    }
    let periods = partitions::list(&pool).await.unwrap();
    let legacy = &periods[0];
    assert_eq!((legacy.suffix.as_str(), legacy.from_ms), ("legacy", None));
    let tomorrow = (now.timestamp_millis() / 86_400_000 + 1) * 86_400_000;
    assert_eq!(
        legacy.until_ms, tomorrow,
        "the old tables hold up to the end of their newest day"
    );
    assert!(periods.len() >= 3, "new periods follow: {periods:?}");
    assert!(
        periods.windows(2).all(|p| p[0].until_ms == p[1].from_ms.unwrap()),
        "{periods:?}"
    );

    // The old keys still refuse their events (within the dedupe window); new events are stored
    // in the new partitions.
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let again = writer
        .submit(new_event(Uuid::now_v7(), "evt_1"))
        .await
        .expect("store");
    assert!(
        matches!(again, Stored::Duplicate),
        "a key of two days ago is refused"
    );
    let later = id_at(tomorrow + 60_000);
    let event = new_event(later, "evt_new");
    queued.push(event.deliveries[0].id);
    let stored = writer.submit(event).await.expect("store");
    assert!(matches!(stored, Stored::New { .. }));
    let home: String = sqlx::query_scalar("SELECT tableoid::regclass::text FROM events WHERE id = $1")
        .bind(later)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        home,
        format!("events_{}", (now + Duration::days(1)).format("%Y%m%d"))
    );
    let home: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM deliveries WHERE event_id = $1")
            .bind(later)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(home.starts_with("deliveries_2"), "{home}");

    // Every waiting delivery is claimed once, the new one too; nothing finished comes back.
    let take = |name: &str| Take {
        target: subscription(name),
        count: 1000,
        lease: std::time::Duration::from_secs(60),
        ordered: false,
    };
    let mut claimed = Vec::new();
    loop {
        let batch = claim(&pool, &[take("crm"), take("audit")]).await.expect("claim");
        if batch.is_empty() {
            break;
        }
        let records: Vec<AttemptRecord> = batch
            .iter()
            .map(|d| support::answered_200(d, After::Succeeded))
            .collect();
        record_attempts(&pool, &records).await.expect("record");
        claimed.extend(batch.iter().map(|d| d.id));
    }
    claimed.sort();
    queued.sort();
    assert_eq!(claimed.len(), queued.len());
    assert!(claimed == queued, "each waiting delivery exactly once");
    let unfinished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_states WHERE status IN ('pending', 'failed')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0);

    // Retention: the old history's expired events go row by row, with their deliveries and
    // attempts (the replayed delivery of today with its 40-day-old event).
    let swept = hookline::store::retention::sweep(
        &pool,
        &hookline::store::retention::Policy::new(std::time::Duration::from_secs(30 * 86400)),
    )
    .await
    .expect("sweep");
    assert_eq!((swept.events, swept.periods_dropped), (100, 0), "{swept:?}");
    let (events, orphan_deliveries, orphan_attempts): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events),
                (SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)),
                (SELECT count(*) FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((events, orphan_deliveries, orphan_attempts), (201, 0, 0));
}

/// A migrated database of its own with daily periods from `days` ago to now; and now.
async fn daily_partitions(days: i64) -> (PgPool, chrono::DateTime<Utc>) {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let now = Utc::now();
    partitions::ensure(&pool, now - Duration::days(days), now, partitions::DEFAULT_PERIOD)
        .await
        .expect("partitions");
    (pool, now)
}

/// An event's key refuses a second event in any partition of the dedupe window (three days),
/// and not past it; within a partition, for as long as it is kept.
#[tokio::test]
async fn keys_are_refused_across_the_partitions_of_the_dedupe_window() {
    let (pool, now) = daily_partitions(5).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let at = |age: Duration| id_at((now - age).timestamp_millis());
    for (external_id, age) in [
        ("evt_yesterday", Duration::days(1)),
        ("evt_four_days", Duration::days(4)),
    ] {
        let stored = writer
            .submit(new_event(at(age), external_id))
            .await
            .expect("store");
        assert!(matches!(stored, Stored::New { .. }));
    }
    let today = |external_id: &str| writer.submit(new_event(Uuid::now_v7(), external_id));
    assert!(matches!(today("evt_yesterday").await.unwrap(), Stored::Duplicate));
    assert!(
        matches!(today("evt_four_days").await.unwrap(), Stored::New { .. }),
        "past the window a key is new again"
    );
    assert!(matches!(today("evt_four_days").await.unwrap(), Stored::Duplicate));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 3);
}

/// Storing an event probes the older partitions of the dedupe window for its keys, never its
/// own (its unique indexes refuse a duplicate there) nor those ahead: a new partition has no
/// statistics, and a probe planned without them may read it through `events_by_source`, every
/// event of the source per event stored.
#[tokio::test]
async fn keys_are_looked_up_only_in_older_partitions() {
    let (pool, now) = daily_partitions(2).await;
    partitions::make_ahead(&pool, partitions::DEFAULT_PERIOD)
        .await
        .expect("partitions ahead");
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let yesterday = id_at((now - Duration::days(1)).timestamp_millis());
    writer
        .submit(new_event(yesterday, "evt_yesterday"))
        .await
        .expect("store");
    const TODAY: i64 = 200;
    for n in 0..TODAY {
        let stored = writer
            .submit(new_event(Uuid::now_v7(), &format!("evt_{n}")))
            .await
            .expect("store");
        assert!(matches!(stored, Stored::New { .. }));
    }
    let again = |external_id: &str| writer.submit(new_event(Uuid::now_v7(), external_id));
    assert!(matches!(again("evt_7").await.unwrap(), Stored::Duplicate));
    assert!(matches!(again("evt_yesterday").await.unwrap(), Stored::Duplicate));

    let periods = partitions::list(&pool).await.expect("periods");
    let holding = |ms: i64| {
        periods
            .iter()
            .position(|p| p.holds(ms))
            .expect("a period holds it")
    };
    let (older, own) = (
        holding(partitions::id_millis(yesterday)),
        holding(now.timestamp_millis()),
    );
    let scans = |table: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes WHERE relname = $1",
            )
            .bind(table)
            .fetch_all(&pool)
            .await
            .expect("index statistics")
        }
    };
    // Index statistics reach the views a moment after the statements' transactions end.
    let older_table = periods[older].partition("events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while scans(older_table.clone())
        .await
        .iter()
        .map(|(_, n)| n)
        .sum::<i64>()
        < TODAY
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the older partition was not probed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let by_source = scans(periods[own].partition("events")).await;
    let by_source: i64 = by_source
        .iter()
        .filter(|(name, _)| name.contains("source_received_at"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(by_source, 0, "the event's own partition is not probed");
    for ahead in &periods[own + 1..] {
        let probed: i64 = scans(ahead.partition("events"))
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(probed, 0, "{} is not probed", ahead.partition("events"));
    }
    assert!(periods.len() > own + 1, "periods ahead exist");
}

/// A namespace kept for less than the retention: its events older than its own retention are
/// deleted inside the periods that are kept (with their deliveries and attempts), and so are its
/// sources' accepted and refused counts, so `received` covers what the history holds; other
/// namespaces' are not; a namespace kept longer than the retention is refused.
#[tokio::test]
async fn a_namespace_with_a_shorter_retention_loses_its_older_events() {
    use hookline::store::retention::{Policy, sweep};
    let (pool, now) = daily_partitions(12).await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    for (namespace, age) in [("trial", 10), ("trial", 2), ("billing", 10)] {
        let mut event = new_event(
            id_at((now - Duration::days(age)).timestamp_millis()),
            &format!("evt_{namespace}_{age}"),
        );
        event.namespace = namespace.into();
        writer.submit(event).await.expect("store");
    }
    // Delivered, so nothing holds them.
    sqlx::query(
        "WITH q AS (DELETE FROM delivery_queue RETURNING delivery_id)
                 UPDATE deliveries SET status = 'succeeded' WHERE id IN (SELECT delivery_id FROM q)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The sources' counts of the same days.
    for (namespace, age) in [("trial", 10), ("trial", 2), ("billing", 10)] {
        sqlx::query(
            "INSERT INTO ingest_minutes (namespace, source, minute, accepted)
             VALUES ($1, 'stripe', date_trunc('minute', $2::timestamptz), 1)",
        )
        .bind(namespace)
        .bind(now - Duration::days(age))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO ingest_rejections (namespace, source, reason, minute, count)
             VALUES ($1, 'stripe', 'signature', date_trunc('minute', $2::timestamptz), 1)",
        )
        .bind(namespace)
        .bind(now - Duration::days(age))
        .execute(&pool)
        .await
        .unwrap();
    }
    let week = std::time::Duration::from_secs(7 * 86400);
    let month = std::time::Duration::from_secs(30 * 86400);
    let policy = Policy::new(month)
        .with_namespaces([("trial".to_owned(), week)].into())
        .expect("shorter than the retention");
    let swept = sweep(&pool, &policy).await.expect("sweep");
    assert_eq!((swept.events, swept.periods_dropped), (1, 0), "{swept:?}");
    assert_eq!(swept.ingest_counts, 2, "{swept:?}");
    for table in ["ingest_minutes", "ingest_rejections"] {
        let kept: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT namespace, (extract(epoch FROM now() - minute) / 86400)::bigint
             FROM {table} ORDER BY namespace, minute"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            kept,
            [("billing".to_owned(), 10), ("trial".to_owned(), 2)],
            "{table}"
        );
    }
    let left: Vec<String> = sqlx::query_scalar("SELECT external_id FROM events ORDER BY external_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["evt_billing_10", "evt_trial_2"]);
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 2);
    let longer = Policy::new(week).with_namespaces([("billing".to_owned(), month)].into());
    assert!(longer.unwrap_err().to_string().contains("billing"));
}

/// A drop interrupted half way (one partition dropped, one detached, one still attached) is
/// finished by the next retention pass; a table that merely looks like a partition (an
/// operator's detached archive) is left alone.
#[tokio::test]
async fn an_interrupted_drop_is_finished_and_nothing_else_is_dropped() {
    use hookline::store::retention::{Policy, sweep};
    let (pool, _) = daily_partitions(3).await;
    let period = partitions::list(&pool).await.unwrap().remove(0);
    let (lower, upper) = period.id_bounds();
    let suffix = &period.suffix;
    for statement in [
        format!(
            "INSERT INTO history_drops (suffix, lower_id, upper_id) VALUES ('{suffix}', '{lower}', '{upper}')"
        ),
        format!("ALTER TABLE attempts DETACH PARTITION attempts_{suffix}"),
        format!("DROP TABLE attempts_{suffix}"),
        format!("ALTER TABLE deliveries DETACH PARTITION deliveries_{suffix}"),
        "CREATE TABLE events_20200101 (id uuid)".to_owned(),
    ] {
        sqlx::query(&statement).execute(&pool).await.expect(&statement);
    }
    let swept = sweep(&pool, &Policy::new(std::time::Duration::from_secs(30 * 86400)))
        .await
        .expect("sweep");
    assert_eq!(swept.periods_dropped, 0, "nothing is past the retention");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relname LIKE '%' || $1 OR relname = 'events_20200101' ORDER BY 1",
    )
    .bind(suffix)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        ["events_20200101"],
        "the listed period is gone, the look-alike stays"
    );
    assert!(!partitions::list(&pool).await.unwrap().contains(&period));
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM history_drops")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(listed, 0);
}
