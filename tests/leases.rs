//! Deliveries out for sending are leased on their own history row, with no queue row while they
//! are out (store::leases): those the storing gateway sends itself and those claimed from the
//! queue. Their outcome, a sender that dies, a cancel, a redelivery and a release all still end
//! where a queued delivery's would. Real Postgres.

mod support;

use chrono::{DateTime, Utc};
use hookline::api::{TargetKey, TargetKind};
use hookline::store::deliveries::{After, Claimed, Held, claim, record_attempts, release};
use hookline::store::events::{EventBatching, NewDelivery, NewEvent, Stored, event_writer};
use hookline::store::leases::{self, HORIZON, Pass};
use hookline::store::partitions::{delivery_id, id_at, id_millis};
use std::time::Duration;
use uuid::Uuid;

const TARGET: &str = "stripe/api";
const ORDERED: &str = "ledger";

async fn migrated_pool() -> sqlx::PgPool {
    let pool = hookline::store::connect_lazy(&support::fresh_database().await, 4).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    pool
}

fn target() -> TargetKey {
    TargetKey {
        namespace: "billing".into(),
        kind: TargetKind::Handler,
        name: TARGET.into(),
    }
}

/// An event made `age` ago with one delivery to [`TARGET`], to be leased for `lease`.
fn leased_event(external_id: &str, age: Duration, lease: Duration) -> NewEvent {
    let made = Utc::now().timestamp_millis() - age.as_millis() as i64;
    let id = id_at(made);
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
            target_kind: TargetKind::Handler,
            target: TARGET.into(),
            filter_error: None,
            ordering_key: None,
            claim_for: Some(lease),
        }],
    }
}

/// Stores the event; the delivery's id and its lease, if the statement leased it.
async fn store(
    writer: &hookline::store::events::EventWriter,
    event: NewEvent,
) -> (Uuid, Option<DateTime<Utc>>) {
    let id = event.deliveries[0].id;
    let Stored::New { claimed, .. } = writer.submit(event).await.expect("store") else {
        panic!("a new event");
    };
    (id, claimed.first().map(|(_, lease)| *lease))
}

/// The delivery as its sender holds it.
fn held(id: Uuid, lease_until: DateTime<Utc>) -> Claimed {
    Claimed {
        id,
        namespace: "billing".into(),
        target_kind: TargetKind::Handler,
        target: TARGET.into(),
        attempts: 0,
        lease_until,
        source: "stripe".into(),
        event_type: "invoice.paid".into(),
        body: b"{}".to_vec(),
        content_type: None,
        received_at: Utc::now(),
        event_id: Uuid::nil(),
        ordering_key: None,
        traceparent: None,
        tracestate: None,
        held: Held::Row,
    }
}

/// The deliveries each claim from the queue notes, claim by claim (migrations/0023).
async fn noted(pool: &sqlx::PgPool) -> Vec<Vec<Uuid>> {
    let notes: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT ARRAY(SELECT jsonb_object_keys(deliveries) ORDER BY 1) FROM claims ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("claims");
    notes
        .into_iter()
        .map(|ids| ids.iter().map(|id| id.parse().expect("a delivery id")).collect())
        .collect()
}

/// A pass over leases started while `recording` (holding what the recorder locks) inserts the
/// first attempt of `delivery` with its outcome: the pass waits for it to commit.
async fn pass_behind_an_outcome(
    pool: &sqlx::PgPool,
    mut recording: sqlx::Transaction<'_, sqlx::Postgres>,
    delivery: Uuid,
) -> Pass {
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code, outcome)
         VALUES ($1, 1, now(), 5, 200, 'succeeded')",
    )
    .bind(delivery)
    .execute(&mut *recording)
    .await
    .expect("the outcome");
    let pass = tokio::spawn({
        let pool = pool.clone();
        async move { leases::take_over_expired(&pool).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pass.is_finished(),
        "the pass waits for the outcome being recorded"
    );
    recording.commit().await.expect("commit");
    pass.await.expect("pass").expect("pass")
}

/// The deliveries the last pass over leases saw still out.
async fn still_out(pool: &sqlx::PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT still_out FROM lease_sweeps")
        .fetch_one(pool)
        .await
        .expect("lease_sweeps")
}

/// (status, attempts, lease_until, queued: (due, attempts)) of a delivery.
type State = (String, i32, Option<DateTime<Utc>>, Option<(DateTime<Utc>, i32)>);

async fn state(pool: &sqlx::PgPool, id: Uuid) -> State {
    type Row = (
        String,
        i32,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<i32>,
    );
    let (status, attempts, lease, due, queued_attempts): Row = sqlx::query_as(
        "SELECT s.status, s.attempts, d.lease_until, q.next_attempt_at, q.attempts
         FROM deliveries d JOIN delivery_states s ON s.id = d.id
         LEFT JOIN delivery_queue q ON q.delivery_id = d.id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("delivery");
    (status, attempts, lease, due.zip(queued_attempts))
}

fn failed_503(delivery: &Claimed, retry_at: DateTime<Utc>) -> hookline::store::deliveries::AttemptRecord {
    let mut record = support::answered_200(delivery, After::RetryAt(retry_at));
    record.attempt.status_code = Some(503);
    record.last_error = Some("503".into());
    record
}

/// Answers for `deliveries`: every other one succeeded, the rest are retried in 5 minutes.
fn succeeded_and_retried(deliveries: &[Claimed]) -> Vec<hookline::store::deliveries::AttemptRecord> {
    deliveries
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let after = if i % 2 == 0 {
                After::Succeeded
            } else {
                After::RetryAt(Utc::now() + chrono::Duration::minutes(5))
            };
            support::answered_200(d, after)
        })
        .collect()
}

/// Its outcome is its attempt, and its row is not written again (the lease stays on it): a
/// success finishes it with nothing queued, a failure queues its retry at the time the policy
/// chose. Once it has an outcome, it is not out: a cancel leaves it, a redelivery sends it
/// again, and the pass looks past it.
#[tokio::test]
async fn a_leased_delivery_is_finished_by_its_outcome_and_its_retry_waits_in_the_queue() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let lease = Duration::from_secs(30);

    let (id, leased) = store(&writer, leased_event("evt_ok", Duration::ZERO, lease)).await;
    let lease_until = leased.expect("leased by the statement that stored it");
    assert_eq!(
        state(&pool, id).await,
        ("pending".into(), 0, Some(lease_until), None)
    );
    assert!(
        claim(&pool, &[take()]).await.expect("claim").is_empty(),
        "no claim finds it"
    );
    let version = || async {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("row")
    };
    let stored = version().await;
    record_attempts(
        &pool,
        &[support::answered_200(&held(id, lease_until), After::Succeeded)],
    )
    .await
    .expect("record");
    assert_eq!(
        state(&pool, id).await,
        ("succeeded".into(), 1, Some(lease_until), None)
    );
    assert_eq!(version().await, stored, "the row is written once");
    assert_eq!(
        support::attempt_outcomes(&pool, id).await,
        [(1, Some("succeeded".to_owned()))]
    );
    let cancelled =
        hookline::store::stats::cancel_pending(&pool, "billing", TargetKind::Handler, &[TARGET.to_owned()])
            .await
            .expect("cancel");
    assert_eq!(cancelled, 0, "a delivery with its outcome is not out");
    assert_eq!(state(&pool, id).await.0, "succeeded");
    let (id, leased) = store(&writer, leased_event("evt_retry", Duration::ZERO, lease)).await;
    let retry_at = Utc::now() + chrono::Duration::seconds(60);
    record_attempts(&pool, &[failed_503(&held(id, leased.expect("leased")), retry_at)])
        .await
        .expect("record");
    let (status, attempts, lease, queued) = state(&pool, id).await;
    assert_eq!((status.as_str(), attempts, lease), ("failed", 1, leased));
    assert_eq!(
        support::attempt_outcomes(&pool, id).await,
        [(1, Some("failed".to_owned()))]
    );
    let (due, queued_attempts) = queued.expect("its retry is queued");
    assert_eq!(queued_attempts, 1, "the next attempt is number 2");
    assert!(
        (due - retry_at).num_milliseconds().abs() <= 1,
        "due at the retry's time"
    );

    let redelivered = store(
        &writer,
        leased_event("evt_redelivered", Duration::ZERO, Duration::from_secs(30)),
    )
    .await;
    assert!(
        !hookline::store::history::redeliver(&pool, redelivered.0, None)
            .await
            .expect("redeliver"),
        "one still out is not redelivered"
    );
    record_attempts(
        &pool,
        &[support::answered_200(
            &held(redelivered.0, redelivered.1.expect("leased")),
            After::Succeeded,
        )],
    )
    .await
    .expect("record");
    assert!(
        hookline::store::history::redeliver(&pool, redelivered.0, None)
            .await
            .expect("redeliver"),
        "once it has its outcome, it is"
    );
    let (status, attempts, lease_after, queued) = state(&pool, redelivered.0).await;
    assert_eq!((status.as_str(), attempts, lease_after), ("pending", 1, None));
    assert_eq!(queued.expect("queued").1, 1, "the next attempt is number 2");
}

fn take() -> hookline::store::deliveries::Take {
    hookline::store::deliveries::Take {
        target: target(),
        count: 10,
        lease: Duration::from_secs(30),
        ordered: false,
    }
}

/// A sender that dies leaves a lease that ends with no outcome: the pass over the leases queues
/// the delivery then (not before), numbered after the attempt that was lost, and a late outcome
/// of that attempt is kept as history only.
#[tokio::test]
async fn a_lease_that_ends_without_an_outcome_is_queued_by_the_next_pass() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    // Made just inside the horizon, so the pass looks at it a moment later.
    let age = HORIZON - Duration::from_millis(500);
    let (lost, lost_lease) = store(&writer, leased_event("evt_lost", age, Duration::from_millis(1))).await;
    let lost_lease = lost_lease.expect("leased");
    let (live, live_lease) = store(&writer, leased_event("evt_live", age, Duration::from_secs(60))).await;
    assert!(live_lease.is_some());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .expect("listen");
    listener
        .listen(hookline::store::events::DELIVERIES_CHANNEL)
        .await
        .expect("listen");

    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 1, out: 1 }
    );
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("the dispatchers are told")
        .expect("notification");
    assert_eq!(heard.payload(), "billing/handler/stripe/api", "naming its target");
    let (status, attempts, lease, queued) = state(&pool, lost).await;
    assert_eq!((status.as_str(), attempts, lease), ("pending", 0, None));
    assert_eq!(queued.expect("queued").1, 1, "the lost attempt keeps number 1");
    let (.., lease, queued) = state(&pool, live).await;
    assert!(
        lease.is_some() && queued.is_none(),
        "a live lease is left to its sender"
    );
    let swept_to = leases::swept_to(&pool).await.expect("swept_to");
    assert!(swept_to > live, "moved on to the barrier less the horizon");
    assert_eq!(
        still_out(&pool).await,
        [live],
        "the live lease is looked at again, the one queued is not"
    );

    // The lost sender's outcome after all: kept, but the queue holds the delivery now.
    record_attempts(
        &pool,
        &[support::answered_200(&held(lost, lost_lease), After::Succeeded)],
    )
    .await
    .expect("late outcome");
    assert_eq!(state(&pool, lost).await.0, "pending");
    let again = claim(&pool, &[take()]).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (lost, 1));
    record_attempts(&pool, &[support::answered_200(&again[0], After::Succeeded)])
        .await
        .expect("record");
    assert_eq!(support::attempt_numbers(&pool, lost).await, [1, 2]);
    assert_eq!(state(&pool, lost).await, ("succeeded".into(), 2, None, None));

    // The next pass sees the live lease again and nothing else, and tells no one.
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 1 }
    );
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(heard.is_err(), "nothing queued, nothing to claim: {heard:?}");
}

/// The outcome of a lease that has ended, committed while the pass looks: the recorder holds
/// the row locked until it commits, and the pass, locking the rows whose lease ended, waits for
/// it and then sees the outcome, so it neither queues the delivery nor stops at it.
#[tokio::test]
async fn the_pass_waits_for_an_outcome_being_recorded_on_a_row_and_then_leaves_it() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON - Duration::from_millis(500);
    let (id, lease) = store(&writer, leased_event("evt_late", age, Duration::from_millis(1))).await;
    let lease = lease.expect("leased");
    tokio::time::sleep(Duration::from_millis(800)).await;

    // What the recorder's statement does, held open: the row locked while the lease holds it,
    // the attempt inserted with its outcome.
    let mut recording = pool.begin().await.expect("begin");
    let locked: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM deliveries WHERE id = $1 AND lease_until = $2 FOR SHARE")
            .bind(id)
            .bind(lease)
            .fetch_optional(&mut *recording)
            .await
            .expect("lock");
    assert!(locked.is_some(), "the lease still holds it");
    assert_eq!(
        pass_behind_an_outcome(&pool, recording, id).await,
        Pass::Done { taken: 0, out: 0 }
    );
    assert_eq!(
        state(&pool, id).await,
        ("succeeded".into(), 1, Some(lease), None),
        "not queued again"
    );
    assert!(
        leases::swept_to(&pool).await.expect("swept_to") > id,
        "looked past"
    );
}

/// The pass moves on past a delivery still out and keeps it aside: a delivery stored after it
/// that has its outcome is behind the pass at once, and the one still out is queued by the
/// first pass after its lease ends without an outcome.
#[tokio::test]
async fn a_delivery_still_out_is_kept_aside_and_taken_when_its_lease_ends() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON - Duration::from_millis(500);
    let (slow, _) = store(
        &writer,
        leased_event("evt_slow", age, Duration::from_millis(3000)),
    )
    .await;
    let (done, lease) = store(
        &writer,
        leased_event("evt_done", age, Duration::from_millis(1000)),
    )
    .await;
    record_attempts(
        &pool,
        &[support::answered_200(
            &held(done, lease.expect("leased")),
            After::Succeeded,
        )],
    )
    .await
    .expect("record");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 1 }
    );
    assert_eq!(still_out(&pool).await, [slow]);
    assert!(leases::swept_to(&pool).await.expect("swept_to") > done);

    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 1, out: 0 },
        "the slow one's lease has ended, the other had its outcome"
    );
    assert!(still_out(&pool).await.is_empty());
    let (.., queued) = state(&pool, slow).await;
    assert_eq!(queued.expect("queued").1, 1, "the lost attempt keeps number 1");
    assert_eq!(state(&pool, done).await.0, "succeeded");
}

/// An outcome counts only while the lease holds the row: a recorder that meets the row locked
/// by whatever is ending the lease waits, and then finds the lease gone.
#[tokio::test]
async fn an_outcome_waits_for_the_lease_being_ended_and_then_does_not_count() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let (id, lease) = store(
        &writer,
        leased_event("evt_ending", Duration::ZERO, Duration::from_secs(60)),
    )
    .await;
    let lease = lease.expect("leased");
    let mut ending = pool.begin().await.expect("begin");
    sqlx::query("UPDATE deliveries SET lease_until = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *ending)
        .await
        .expect("end the lease");
    let recording = tokio::spawn({
        let pool = pool.clone();
        async move {
            record_attempts(
                &pool,
                &[support::answered_200(&held(id, lease), After::Succeeded)],
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!recording.is_finished(), "the recorder waits for the row");
    ending.commit().await.expect("commit");
    recording.await.expect("record").expect("record");
    assert_eq!(
        support::attempt_outcomes(&pool, id).await,
        [(1, None)],
        "kept as history only"
    );
}

/// A cancel reaches a delivery the pass over leases keeps aside (still out, behind `swept_to`).
#[tokio::test]
async fn a_cancel_reaches_a_delivery_kept_aside_by_the_pass() {
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON - Duration::from_millis(500);
    let (id, _) = store(&writer, leased_event("evt_aside", age, Duration::from_secs(60))).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 1 }
    );
    assert!(leases::swept_to(&pool).await.expect("swept_to") > id);
    let cancelled = cancel_pending(&pool, "billing", TargetKind::Handler, &[TARGET.to_owned()])
        .await
        .expect("cancel");
    assert_eq!(cancelled, 1);
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 0 }
    );
}

/// A direct send that failed has its retry queued and its lease left on its row; a cancel of
/// its target ends both, so neither the pass nor a later cancel takes it for one still out
/// (nor one cancelled by an older version, which left the lease).
#[tokio::test]
async fn a_cancel_after_a_failed_direct_send_ends_its_lease() {
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON - Duration::from_millis(500);
    let (id, lease) = store(
        &writer,
        leased_event("evt_failed", age, Duration::from_millis(300)),
    )
    .await;
    let lease = lease.expect("leased");
    let retry_at = Utc::now() + chrono::Duration::minutes(5);
    record_attempts(&pool, &[failed_503(&held(id, lease), retry_at)])
        .await
        .expect("record");
    // Another, cancelled as a version before migrations/0024 did: the lease left on the row,
    // the row's status written.
    let (old, old_lease) = store(
        &writer,
        leased_event("evt_failed_old", age, Duration::from_millis(300)),
    )
    .await;
    record_attempts(
        &pool,
        &[failed_503(&held(old, old_lease.expect("leased")), retry_at)],
    )
    .await
    .expect("record");
    sqlx::query(
        "WITH dequeued AS (DELETE FROM delivery_queue WHERE delivery_id = $1)
         UPDATE deliveries SET status = 'cancelled', attempts = 1 WHERE id = $1",
    )
    .bind(old)
    .execute(&pool)
    .await
    .expect("cancel as before");
    let targets = [TARGET.to_owned()];
    let cancel = || cancel_pending(&pool, "billing", TargetKind::Handler, &targets);
    assert_eq!(cancel().await.expect("cancel"), 1, "its retry");
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 0 },
        "their leases have ended"
    );
    assert_eq!(cancel().await.expect("cancel"), 0, "cancelled once");
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
}

/// A delivery whose id is older than the horizon when it is stored is queued, not leased: the
/// pass may have looked past it already.
#[tokio::test]
async fn a_delivery_made_before_the_horizon_is_queued_not_leased() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let (id, leased) = store(
        &writer,
        leased_event(
            "evt_old",
            HORIZON + Duration::from_secs(1),
            Duration::from_secs(30),
        ),
    )
    .await;
    assert_eq!(leased, None);
    let (status, _, lease, queued) = state(&pool, id).await;
    assert_eq!((status.as_str(), lease), ("pending", None));
    assert!(queued.is_some(), "waiting in the queue");
}

/// The pass waits for statements that hold the lease lock (a storing statement between leasing
/// and committing) only briefly, and then skips: it looks only past a barrier.
#[tokio::test]
async fn the_pass_does_not_look_past_a_statement_still_leasing() {
    let pool = migrated_pool().await;
    let before = leases::swept_to(&pool).await.expect("swept_to");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut storing = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(leases::LEASE_LOCK)
        .execute(&mut *storing)
        .await
        .expect("lease lock");
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::NotNow
    );
    assert_eq!(leases::swept_to(&pool).await.expect("swept_to"), before);
    storing.commit().await.expect("commit");
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 0 }
    );
    let after = leases::swept_to(&pool).await.expect("swept_to");
    assert!(
        id_millis(after) > id_millis(before),
        "moved on to the barrier less the horizon"
    );
}

/// Cancelling, redelivering and releasing a leased delivery: a live lease is not redelivered,
/// a cancel ends it (its attempt numbered), a release puts it in the queue unspent, and a
/// transform that fails ends it unsent.
#[tokio::test]
async fn a_leased_delivery_is_cancelled_redelivered_released_and_ended_like_a_claimed_one() {
    use hookline::store::deliveries::end_unsent;
    use hookline::store::history::redeliver;
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let lease = Duration::from_secs(60);

    let (id, lease_until) = store(&writer, leased_event("evt_cancel", Duration::ZERO, lease)).await;
    let lease_until = lease_until.expect("leased");
    assert!(
        !redeliver(&pool, id, None).await.expect("redeliver"),
        "not while it is being sent"
    );
    let cancelled = cancel_pending(&pool, "billing", TargetKind::Handler, &[TARGET.to_owned()])
        .await
        .expect("cancel");
    assert_eq!(cancelled, 1);
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
    record_attempts(
        &pool,
        &[support::answered_200(&held(id, lease_until), After::Succeeded)],
    )
    .await
    .expect("the cancelled send's outcome");
    assert_eq!(
        state(&pool, id).await.0,
        "cancelled",
        "that outcome is history only"
    );
    assert!(redeliver(&pool, id, None).await.expect("redeliver"));
    let again = claim(&pool, &[take()]).await.expect("claim");
    assert_eq!(
        (again[0].id, again[0].attempts),
        (id, 1),
        "counts on from the cancelled send"
    );

    let (id, lease_until) = store(&writer, leased_event("evt_release", Duration::ZERO, lease)).await;
    let at = Utc::now() + chrono::Duration::seconds(30);
    release(&pool, id, lease_until.expect("leased"), at, Some("circuit open"))
        .await
        .expect("release");
    let (status, attempts, lease_after, queued) = state(&pool, id).await;
    assert_eq!((status.as_str(), attempts, lease_after), ("pending", 0, None));
    let (due, queued_attempts) = queued.expect("queued");
    assert_eq!(queued_attempts, 0, "given back unsent: no number spent");
    assert!((due - at).num_milliseconds().abs() <= 1);

    let (id, lease_until) = store(&writer, leased_event("evt_transform", Duration::ZERO, lease)).await;
    end_unsent(
        &pool,
        id,
        lease_until.expect("leased"),
        "transform: no such field",
    )
    .await
    .expect("end");
    assert_eq!(state(&pool, id).await, ("filtered_error".into(), 0, None, None));
}

/// A delivery claimed from the queue leaves its claim's note when it is released, ended unsent,
/// or redelivered once its claim has ended, so the pass does not queue it a second time. The
/// pass, deleting an ended note, waits for an outcome that holds the note (as the recorder's
/// statement does) and then leaves that delivery alone.
#[tokio::test]
async fn what_leaves_a_claim_leaves_its_note_and_the_pass_waits_for_an_outcome_holding_it() {
    use hookline::store::deliveries::end_unsent;
    use hookline::store::history::redeliver;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    // Older than the horizon: queued as stored.
    let age = HORIZON + Duration::from_secs(1);
    let mut ids = Vec::new();
    for i in 0..4 {
        let event = leased_event(&format!("evt_{i}"), age, Duration::from_secs(60));
        ids.push(store(&writer, event).await.0);
    }
    ids.sort();
    let lease = Duration::from_millis(300);
    let claimed = claim(&pool, &[hookline::store::deliveries::Take { lease, ..take() }])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let of = |id: Uuid| claimed.iter().find(|d| d.id == id).expect("claimed");
    let (released, ended, redelivered, answered) = (of(ids[0]), of(ids[1]), of(ids[2]), of(ids[3]));

    let later = Utc::now() + chrono::Duration::minutes(5);
    release(
        &pool,
        released.id,
        released.lease_until,
        later,
        Some("circuit open"),
    )
    .await
    .expect("release");
    end_unsent(&pool, ended.id, ended.lease_until, "transform: no such field")
        .await
        .expect("end");
    assert!(
        !redeliver(&pool, redelivered.id, None).await.expect("redeliver"),
        "not while its claim is live"
    );
    assert_eq!(noted(&pool).await, [vec![redelivered.id, answered.id]]);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert!(
        redeliver(&pool, redelivered.id, None).await.expect("redeliver"),
        "its claim has ended"
    );
    assert_eq!(noted(&pool).await, [vec![answered.id]]);

    let mut recording = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM claims FOR SHARE")
        .execute(&mut *recording)
        .await
        .expect("hold the note");
    assert_eq!(
        pass_behind_an_outcome(&pool, recording, answered.id).await,
        Pass::Done { taken: 0, out: 0 },
        "nothing left on the claim to queue again"
    );
    assert_eq!(
        noted(&pool).await,
        Vec::<Vec<Uuid>>::new(),
        "the ended note is gone"
    );

    assert_eq!(
        state(&pool, released.id).await.3.map(|q| q.1),
        Some(0),
        "released unspent"
    );
    assert_eq!(state(&pool, ended.id).await.0, "filtered_error");
    assert_eq!(
        state(&pool, redelivered.id).await.3.map(|q| q.1),
        Some(1),
        "the attempt of the ended claim keeps number 1"
    );
    assert_eq!(
        state(&pool, answered.id).await,
        ("succeeded".into(), 1, None, None)
    );
}

/// A release waiting for a note that a cancel is changing rechecks the note as the cancel left
/// it: the delivery the cancel took out of its claim is not queued again.
#[tokio::test]
async fn a_release_behind_a_cancel_of_its_delivery_leaves_it_cancelled() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON + Duration::from_secs(1);
    let (id, _) = store(
        &writer,
        leased_event("evt_cancelled", age, Duration::from_secs(60)),
    )
    .await;
    let claimed = claim(&pool, &[take()]).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    // What a cancel does to a delivery out on a claim, held open.
    let mut cancel = pool.begin().await.expect("begin");
    for statement in [
        "UPDATE claims SET deliveries = deliveries - $1::uuid::text",
        "UPDATE deliveries SET status = 'cancelled', attempts = 1 WHERE id = $1",
    ] {
        sqlx::query(statement)
            .bind(id)
            .execute(&mut *cancel)
            .await
            .expect("cancel");
    }
    let releasing = tokio::spawn({
        let (pool, lease_until) = (pool.clone(), claimed[0].lease_until);
        async move { release(&pool, id, lease_until, Utc::now(), Some("target deleted")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!releasing.is_finished(), "the release waits for the note");
    cancel.commit().await.expect("commit");
    releasing.await.expect("release").expect("release");
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
}

/// A claim committing while a cancel of its target runs (after the cancel locked the notes it
/// saw, before its delete of the queue rows went through) is seen as left by that run, and the
/// next run cancels its delivery.
#[tokio::test]
async fn a_claim_made_while_its_target_is_cancelled_is_cancelled_by_the_next_run() {
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let age = HORIZON + Duration::from_secs(1);
    let (id, _) = store(
        &writer,
        leased_event("evt_claimed_late", age, Duration::from_secs(60)),
    )
    .await;
    // What a claim writes, held open: its queue row out, its note in.
    let mut claiming = pool.begin().await.expect("begin");
    for statement in [
        "DELETE FROM delivery_queue WHERE delivery_id = $1",
        "INSERT INTO claims (lease_until, deliveries)
         VALUES (now() + interval '60 seconds', jsonb_build_object($1::uuid::text, 0))",
    ] {
        sqlx::query(statement)
            .bind(id)
            .execute(&mut *claiming)
            .await
            .expect("claim");
    }
    let cancelling = tokio::spawn({
        let pool = pool.clone();
        async move { cancel_pending(&pool, "billing", TargetKind::Handler, &[TARGET.to_owned()]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !cancelling.is_finished(),
        "the cancel's delete waits for the claim"
    );
    claiming.commit().await.expect("commit");
    let cancelled = cancelling.await.expect("cancel").expect("cancel");
    assert_eq!(cancelled, 1);
    // The attempt the claim may have started keeps its number.
    assert_eq!(state(&pool, id).await, ("cancelled".into(), 1, None, None));
    assert_eq!(noted(&pool).await, vec![Vec::<Uuid>::new()], "out of its note");
}

/// A delivery claimed from the queue is leased on its row, however old it is, and has no queue
/// row while it is out. Should its sender die, the next pass queues it again (the lost attempt
/// keeps its number) although the look at recent deliveries is long past it; a live one is
/// left to its sender, and a cancel of its target reaches it.
#[tokio::test]
async fn a_delivery_claimed_from_the_queue_is_noted_with_its_claim_and_taken_over_when_lost() {
    use hookline::store::stats::cancel_pending;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    // Older than the horizon: queued as stored, and behind `swept_to` after one pass.
    let age = HORIZON + Duration::from_secs(1);
    let (lost, _) = store(&writer, leased_event("evt_lost", age, Duration::from_secs(60))).await;
    let (live, _) = store(&writer, leased_event("evt_live", age, Duration::from_secs(60))).await;
    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 0, out: 0 }
    );
    assert!(leases::swept_to(&pool).await.expect("swept_to") > live);

    let claim_one = async |lease: Duration| {
        let claimed = claim(
            &pool,
            &[hookline::store::deliveries::Take {
                count: 1,
                lease,
                ..take()
            }],
        )
        .await
        .expect("claim");
        assert_eq!(claimed.len(), 1);
        claimed.into_iter().next().expect("one")
    };
    let lost_claim = claim_one(Duration::from_millis(1)).await;
    let live_claim = claim_one(Duration::from_secs(60)).await;
    assert_eq!((lost_claim.id, live_claim.id), (lost, live));
    assert!(lost_claim.held == Held::Claim && live_claim.held == Held::Claim);
    let (status, attempts, lease, queued) = state(&pool, live).await;
    assert_eq!(
        (status.as_str(), attempts, lease, queued),
        ("pending", 0, None, None),
        "out on its claim: its row is not written, and it is not queued"
    );
    assert_eq!(noted(&pool).await, [vec![lost], vec![live]]);
    tokio::time::sleep(Duration::from_millis(50)).await;

    assert_eq!(
        leases::take_over_expired(&pool).await.expect("pass"),
        Pass::Done { taken: 1, out: 0 }
    );
    let (status, attempts, lease, queued) = state(&pool, lost).await;
    assert_eq!((status.as_str(), attempts, lease), ("pending", 0, None));
    assert_eq!(
        queued.expect("queued again").1,
        1,
        "the lost attempt keeps number 1"
    );
    assert_eq!(state(&pool, live).await.3, None, "left to its sender");
    assert_eq!(noted(&pool).await, [vec![live]], "an ended claim is forgotten");

    // The lost sender's outcome after all is history only; the next claim numbers on.
    record_attempts(&pool, &[support::answered_200(&lost_claim, After::Succeeded)])
        .await
        .expect("late outcome");
    assert_eq!(state(&pool, lost).await.0, "pending");
    let again = claim_one(Duration::from_secs(60)).await;
    assert_eq!((again.id, again.attempts), (lost, 1));
    record_attempts(&pool, &[support::answered_200(&again, After::Succeeded)])
        .await
        .expect("record");
    assert_eq!(support::attempt_numbers(&pool, lost).await, [1, 2]);
    assert_eq!(state(&pool, lost).await, ("succeeded".into(), 2, None, None));

    let cancelled = cancel_pending(&pool, "billing", TargetKind::Handler, &[TARGET.to_owned()])
        .await
        .expect("cancel");
    assert_eq!(cancelled, 1, "the delivery out on its claim");
    assert_eq!(state(&pool, live).await, ("cancelled".into(), 1, None, None));
}

/// One claim of several targets gives each its own lease, whether its deliveries leave the
/// queue (noted in `claims`) or stay in it (the heads of a target with `ordering`).
#[tokio::test]
async fn each_target_of_a_claim_gets_its_own_lease() {
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    // Older than the horizon: queued as stored, not leased.
    let age = HORIZON + Duration::from_secs(1);
    const OTHER: &str = "stripe/other";
    let leases = [
        (TARGET, false, Duration::from_secs(40)),
        (OTHER, false, Duration::from_secs(400)),
        (ORDERED, true, Duration::from_secs(200)),
    ];
    for (name, ordered, _) in leases {
        for i in 0..3 {
            let mut event = leased_event(&format!("evt_{name}_{i}"), age, Duration::from_secs(1));
            event.deliveries[0].target = name.into();
            event.deliveries[0].claim_for = None;
            event.deliveries[0].ordering_key = ordered.then(|| format!("customer-{i}"));
            store(&writer, event).await;
        }
    }
    let wanted: Vec<_> = leases
        .iter()
        .map(|&(name, ordered, lease)| hookline::store::deliveries::Take {
            target: TargetKey {
                name: name.into(),
                ..target()
            },
            count: 10,
            lease,
            ordered,
        })
        .collect();
    let claimed_at = Utc::now();
    let claimed = claim(&pool, &wanted).await.expect("claim");
    assert_eq!(claimed.len(), 9);
    for (name, ordered, lease) in leases {
        let own: Vec<_> = claimed.iter().filter(|d| d.target == name).collect();
        assert_eq!(own.len(), 3, "{name}");
        for d in own {
            let held = (d.lease_until - claimed_at).to_std().expect("a lease ahead");
            assert!(
                held >= lease && held < lease + Duration::from_secs(5),
                "{name} is held {held:?}, not {lease:?}"
            );
            let (_, _, on_row, queued) = state(&pool, d.id).await;
            let noted: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT lease_until FROM claims WHERE deliveries ? $1::uuid::text")
                    .bind(d.id)
                    .fetch_optional(&pool)
                    .await
                    .expect("claims");
            if ordered {
                assert_eq!(
                    (on_row, noted, queued.map(|q| q.0)),
                    (None, None, Some(d.lease_until)),
                    "{name}"
                );
            } else {
                assert_eq!(
                    (on_row, noted, queued),
                    (None, Some(d.lease_until), None),
                    "{name}"
                );
            }
        }
    }
}

/// A redelivery racing a claim of the same delivery waits for the claim and then leaves the
/// delivery to it: it is out on the claim's lease, so it is not queued again (which would send
/// it twice at once, under one attempt number).
#[tokio::test]
async fn a_redelivery_racing_a_claim_leaves_the_delivery_to_the_claim() {
    use hookline::store::history::redeliver;
    let pool = migrated_pool().await;
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let (id, leased) = store(
        &writer,
        leased_event(
            "evt_race",
            HORIZON + Duration::from_secs(1),
            Duration::from_secs(60),
        ),
    )
    .await;
    assert_eq!(leased, None, "queued");
    // The claim, under way: its queue row deleted and its lease set, not committed yet (what
    // `deliveries::claim` does in one statement).
    let mut claiming = pool.begin().await.expect("begin");
    let lease_until: DateTime<Utc> = sqlx::query_scalar(
        "WITH claimed AS (DELETE FROM delivery_queue WHERE delivery_id = $1 RETURNING delivery_id)
         UPDATE deliveries SET lease_until = now() + interval '1 minute'
         WHERE id IN (SELECT delivery_id FROM claimed) RETURNING lease_until",
    )
    .bind(id)
    .fetch_one(&mut *claiming)
    .await
    .expect("claim");
    let redelivery = tokio::spawn({
        let pool = pool.clone();
        async move { redeliver(&pool, id, None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!redelivery.is_finished(), "the redelivery waits for the claim");
    claiming.commit().await.expect("commit the claim");
    let requeued = redelivery.await.expect("task").expect("redeliver");
    assert!(!requeued, "not while it is being sent");
    assert_eq!(
        state(&pool, id).await,
        ("pending".into(), 0, Some(lease_until), None),
        "still out on the claim's lease, not queued"
    );
}

/// A claim, its outcomes and the pass over its ended lease each look a delivery up in its own
/// partition of the history: with a month of daily partitions present, no other day's index is
/// scanned (a lookup by an array of ids, or a hash join, would scan every one).
#[tokio::test]
async fn claims_outcomes_and_the_pass_read_only_their_own_partition() {
    use hookline::store::deliveries::{Take, queue_writers};
    use hookline::store::partitions;
    let url = support::fresh_database().await;
    let pool = hookline::store::connect_lazy(&url, 2).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let now = Utc::now();
    let made = partitions::ensure(
        &pool,
        now - chrono::Duration::days(30),
        now,
        partitions::DEFAULT_PERIOD,
    )
    .await
    .expect("partitions");
    assert!(made >= 30, "{made}");
    let writer = event_writer(pool.clone(), EventBatching::WhileWriting);
    let mut ids = Vec::new();
    for i in 0..10 {
        // Older than the horizon: queued as stored.
        let event = leased_event(
            &format!("evt_{i}"),
            HORIZON + Duration::from_secs(1),
            Duration::from_secs(60),
        );
        ids.push(store(&writer, event).await.0);
    }
    // And to a target with `ordering`, whose heads stay queued while they are out.
    for i in 0..4 {
        let mut event = leased_event(
            &format!("evt_keyed_{i}"),
            HORIZON + Duration::from_secs(1),
            Duration::from_secs(60),
        );
        event.deliveries[0].target = ORDERED.into();
        event.deliveries[0].ordering_key = Some(format!("customer-{i}"));
        ids.push(store(&writer, event).await.0);
    }
    let own: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM deliveries WHERE id = ANY ($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .expect("partition");

    // As the dispatcher does: on connections that keep the plans they make first, for any
    // parameters, on tables that were small when planned.
    let queue = queue_writers(&pool);
    let take = |lease| Take {
        count: 10,
        lease,
        ..take()
    };
    let claimed = claim(&queue, &[take(Duration::from_millis(1))])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 10);
    let (answered, lost) = claimed.split_at(5);
    // Some succeed, some are retried (their queue rows made from their history rows).
    let records = succeeded_and_retried(answered);
    record_attempts(&queue, &records).await.expect("record");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Pass::Done { taken, .. } = leases::take_over_expired(&pool).await.expect("pass") else {
        panic!("the pass ran");
    };
    assert_eq!(taken, lost.len() as u64, "the lost ones are queued again");

    // Ordered heads: their outcomes move their queue rows.
    let heads = claim(
        &queue,
        &[Take {
            target: TargetKey {
                name: ORDERED.into(),
                ..target()
            },
            ordered: true,
            ..take(Duration::from_secs(30))
        }],
    )
    .await
    .expect("claim the heads");
    assert_eq!(heads.len(), 4, "one head a key");
    assert!(heads.iter().all(|d| d.held == Held::Queue), "heads stay queued");
    let records = succeeded_and_retried(&heads);
    record_attempts(&queue, &records).await.expect("record the heads");

    // Each session's counts reach the views when it ends.
    let reader = sqlx::PgPool::connect_lazy_with((*pool.connect_options()).clone());
    drop(writer);
    queue.close().await;
    pool.close().await;
    support::wait_for_other_sessions_to_end(&reader).await;
    let scanned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname::text, idx_scan FROM pg_stat_user_indexes
         WHERE relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'deliveries'::regclass)
           AND relid::regclass::text <> ALL ($1) AND idx_scan > 0",
    )
    .bind(&own)
    .fetch_all(&reader)
    .await
    .expect("index scans");
    assert_eq!(scanned, [], "other days' partitions were scanned");
    // (Read after the scans were counted: this reads every partition.)
    let settled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_states WHERE target = $1 AND status <> 'pending'")
            .bind(ORDERED)
            .fetch_one(&reader)
            .await
            .expect("settled");
    assert_eq!(settled, 4, "every head's outcome counts");
}
