//! The delivery queue: claiming due work (`FOR UPDATE SKIP LOCKED`), recording attempts, and the
//! per-target runtime state shared by every gateway replica.
//!
//! A waiting delivery has a row in `delivery_queue` beside its history row in `deliveries`. A
//! claim deletes the queue row and notes the delivery in `claims` (one row per claim and lease),
//! where the pass over ended claims finds it should its sender die (`super::leases`); the
//! history row is not written. A target with `ordering` is claimed differently: a key's head
//! stays queued while it is out, its due time moved to the end of the lease (a visibility
//! timeout: due again should its sender die), so that nothing later of its key is claimed
//! meanwhile. A new delivery the storing gateway sends itself is leased on its history row.
//! However it is held ([`Held`]), the lease's end is the claim's token: an outcome counts only
//! while the token still holds.
//!
//! A delivery's outcome is its attempt's (`attempts.outcome`): the history row is a checkpoint,
//! superseded by later outcomes, which the view `delivery_states` reads (migrations/0022).

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::group_commit::{BatchWrite, Batching, GroupCommit};
use crate::api::{TargetKey, TargetKind};

/// A delivery taken for sending, with what is needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub namespace: String,
    #[sqlx(try_from = "String")]
    pub target_kind: TargetKind,
    pub target: String,
    /// Attempts started before this one.
    pub attempts: i32,
    /// When the claim ends; also its token (see [`AttemptRecord::lease_until`]).
    pub lease_until: DateTime<Utc>,
    pub source: String,
    pub event_type: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub received_at: DateTime<Utc>,
    pub event_id: Uuid,
    /// Its key, when its target delivers in order.
    pub ordering_key: Option<String>,
    /// The W3C trace context stored with its event.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    #[sqlx(try_from = "String")]
    pub held: Held,
}

/// Where a delivery out for sending is held, and so where its outcome is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Leased on its history row by the statement that stored it (see `super::leases`); no
    /// queue row while it is out.
    Row,
    /// Claimed from the queue and noted in `claims` (see `super::leases`); no queue row while
    /// it is out.
    Claim,
    /// A key's head, leased in its queue row, which stays queued while it is out.
    Queue,
}

impl TryFrom<String> for Held {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "row" => Ok(Held::Row),
            "claim" => Ok(Held::Claim),
            "queue" => Ok(Held::Queue),
            _ => Err(format!("no such hold: {text}")),
        }
    }
}

impl Claimed {
    pub fn target_key(&self) -> TargetKey {
        TargetKey {
            namespace: self.namespace.clone(),
            kind: self.target_kind,
            name: self.target.clone(),
        }
    }
}

/// A target with deliveries waiting (new or awaiting a retry), and when its earliest falls due.
#[derive(Debug, sqlx::FromRow)]
pub struct WaitingTarget {
    pub namespace: String,
    #[sqlx(try_from = "String")]
    pub target_kind: TargetKind,
    pub target: String,
    pub next_attempt_at: DateTime<Utc>,
    /// Paused at runtime for every replica (410 Gone, or from the console).
    pub paused: bool,
}

impl WaitingTarget {
    pub fn key(&self) -> TargetKey {
        TargetKey {
            namespace: self.namespace.clone(),
            kind: self.target_kind,
            name: self.target.clone(),
        }
    }
}

/// Targets with waiting deliveries, at most `limit` (in key order), with the earliest due time
/// of each (a key's head out on a claim counts as due at the claim's end: due again should the
/// claim expire; other claims take their deliveries out of the queue). One index probe
/// per target (a skip scan over `delivery_queue_waiting`), however many deliveries each holds.
pub async fn waiting_targets<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    limit: i64,
) -> sqlx::Result<Vec<WaitingTarget>> {
    sqlx::query_as(
        r#"
        WITH RECURSIVE waiting AS (
            -- Deliveries parked at 'infinity' (dead heads blocking their ordering key) are not
            -- waiting for anything a dispatcher can do.
            (SELECT namespace, target_kind, target, next_attempt_at FROM delivery_queue
             WHERE next_attempt_at < 'infinity'
             ORDER BY namespace, target_kind, target, next_attempt_at
             LIMIT 1)
            UNION ALL
            SELECT next.* FROM waiting w CROSS JOIN LATERAL (
                SELECT namespace, target_kind, target, next_attempt_at FROM delivery_queue q
                WHERE (q.namespace, q.target_kind, q.target) > (w.namespace, w.target_kind, w.target)
                  AND q.next_attempt_at < 'infinity'
                ORDER BY namespace, target_kind, target, next_attempt_at
                LIMIT 1
            ) next
        )
        SELECT w.namespace, w.target_kind, w.target, w.next_attempt_at,
               t.paused_reason IS NOT NULL AS paused
        FROM (SELECT * FROM waiting LIMIT $1) w
        LEFT JOIN target_states t USING (namespace, target_kind, target)
        "#,
    )
    // Planned when it runs (see `store::connect_lazy`).
    .persistent(false)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// What a claim asks of one target.
#[derive(Clone, Debug)]
pub struct Take {
    pub target: TargetKey,
    /// At most this many deliveries.
    pub count: usize,
    /// How long the claim holds them: the target's own attempt timeout and a margin, so a
    /// fast target's deliveries are retaken soon after their worker dies, whatever the
    /// slowest target allows.
    pub lease: Duration,
    /// The target has `ordering`: its keyed deliveries go one at a time per key.
    pub ordered: bool,
}

/// Claims due deliveries, up to a number per target, oldest first within each target, skipping
/// rows other workers hold and targets paused at runtime. Each target's rows are read through
/// its own range of `delivery_queue_waiting`, so a claim reads about as many rows as it takes.
/// Targets with `ordering` are claimed by [`claim_heads`].
pub async fn claim(pool: &PgPool, wanted: &[Take]) -> sqlx::Result<Vec<Claimed>> {
    let (ordered, unordered): (Vec<&Take>, Vec<&Take>) = wanted.iter().partition(|t| t.ordered);
    let mut claimed = if unordered.is_empty() {
        Vec::new()
    } else {
        claim_unordered(pool, &unordered).await?
    };
    for take in ordered {
        claimed.extend(claim_heads(pool, take).await?);
    }
    Ok(claimed)
}

/// The due time of the queue row `q`, in statements that find the row by its id and only
/// recheck this: an expression, which no index serves (Postgres does not fold it away). A plan
/// made on a small queue (plans are kept, see `queue_writers`) may find `delivery_queue_waiting`
/// cheaper for a condition on the bare column than the primary key, and then reads every due
/// row each time once the queue has filled: the recorder did, on one connection in a few
/// benchmark runs, at 10 times the cost per outcome (docs/benchmarks.md, 2026-12-06).
const DUE_AT: &str = "(q.next_attempt_at + interval '0 seconds')";

/// The event of the queue row `q`: beside it, or (a row queued by a version before 0015) its
/// delivery's.
const QUEUED_EVENT_ID: &str =
    "coalesce(q.event_id, (SELECT d.event_id FROM deliveries d WHERE d.id = q.delivery_id))";

/// The columns of a [`Claimed`] for each head `c` leased in the queue (it stays queued), as
/// returned by the update that leased it (its columns and `event_id`), with its event
/// (`EVENT_OF_CLAIMED`).
const CLAIMED_HEAD: &str = "c.delivery_id AS id, c.namespace, c.target_kind, c.target, \
     c.attempts - 1 AS attempts, c.next_attempt_at AS lease_until, e.source, e.event_type, e.body, \
     e.content_type, e.received_at, e.traceparent, e.tracestate, c.event_id, c.ordering_key, 'queue' AS held";

/// The event of each claimed row `c`, for [`Claimed`]: a lookup per row (`OFFSET 0` keeps the
/// planner from making it a join, which a plan made on small tables may do by reading the
/// events whole).
const EVENT_OF_CLAIMED: &str = r#"CROSS JOIN LATERAL (
            SELECT source, event_type, body, headers ->> 'content-type' AS content_type, received_at,
                   headers ->> 'traceparent' AS traceparent, headers ->> 'tracestate' AS tracestate
            FROM events WHERE id = c.event_id OFFSET 0
        ) e"#;

/// The targets of a claim, with what each asks; those paused at runtime drop out.
const WANTED: &str = r#"
    wanted AS (
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
            AS w (namespace, target_kind, target, take, lease_ms)
        WHERE (SELECT t.paused_reason FROM target_states t
               WHERE t.namespace = w.namespace AND t.target_kind = w.target_kind AND t.target = w.target)
              IS NULL
    )
"#;

fn bind_wanted<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, Claimed, sqlx::postgres::PgArguments>,
    wanted: &[&Take],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Claimed, sqlx::postgres::PgArguments> {
    let column = |f: fn(&TargetKey) -> &str| {
        wanted
            .iter()
            .map(|w| f(&w.target).to_owned())
            .collect::<Vec<String>>()
    };
    query
        .bind(column(|k| &k.namespace))
        .bind(column(|k| k.kind.as_str()))
        .bind(column(|k| &k.name))
        .bind(wanted.iter().map(|w| w.count as i64).collect::<Vec<_>>())
        .bind(
            wanted
                .iter()
                .map(|w| i64::try_from(w.lease.as_millis()).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(wanted.iter().map(|w| w.count as i64).sum::<i64>())
}

async fn claim_unordered(pool: &PgPool, wanted: &[&Take]) -> sqlx::Result<Vec<Claimed>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"
        -- Prepared once and run with its cached plan, so every table is read by lookups the
        -- statement spells out, whatever the statistics were when it was planned: per wanted
        -- target (a subquery and a LATERAL with LIMIT), by an array of keys, and per claimed
        -- row (LATERAL with OFFSET 0, which keeps the planner from turning it into a join).
        WITH {WANTED}, due AS (
            SELECT q.delivery_id FROM wanted w CROSS JOIN LATERAL (
                SELECT delivery_id FROM delivery_queue q
                WHERE q.namespace = w.namespace AND q.target_kind = w.target_kind AND q.target = w.target
                  AND q.next_attempt_at <= now()
                ORDER BY q.next_attempt_at
                LIMIT w.take
                FOR UPDATE SKIP LOCKED
            ) q
            LIMIT $6
        ), lease_of AS MATERIALIZED (
            -- Each target's lease by name (a namespace and a kind hold no '/'), looked up per
            -- claimed row at a cost that does not grow with the targets (a scan of `wanted`
            -- per row does).
            SELECT jsonb_object_agg(concat_ws('/', namespace, target_kind, target), lease_ms) AS target
            FROM wanted
        ), claimed AS (
            -- Out of the queue and noted in `claims` (see the module's comment). By the array
            -- alone: a join with `due` was planned by some connections as a loop over the whole
            -- array per claimed row.
            DELETE FROM delivery_queue q
            WHERE q.delivery_id = ANY (ARRAY(SELECT delivery_id FROM due))
            RETURNING q.delivery_id, q.namespace, q.target_kind, q.target, q.attempts, q.ordering_key,
                      {QUEUED_EVENT_ID} AS event_id,
                      now() + interval '1 millisecond' * (
                          (SELECT target FROM lease_of) ->> concat_ws('/', q.namespace, q.target_kind, q.target)
                      )::bigint AS lease_until
        ), noted AS (
            -- With the attempts each had started, so that the pass over ended claims numbers the
            -- attempt in flight as this one does (store::leases).
            INSERT INTO claims (lease_until, deliveries)
            SELECT lease_until, jsonb_object_agg(delivery_id::text, attempts) FROM claimed GROUP BY lease_until
        )
        SELECT c.delivery_id AS id, c.namespace, c.target_kind, c.target, c.attempts, c.lease_until,
               e.source, e.event_type, e.body, e.content_type, e.received_at, e.traceparent, e.tracestate,
               c.event_id, c.ordering_key, 'claim' AS held
        FROM claimed c
        {EVENT_OF_CLAIMED}"#
        )
    });
    bind_wanted(sqlx::query_as(SQL.as_str()), wanted)
        .fetch_all(pool)
        .await
}

/// Claims for a target with `ordering`: each key's head (its earliest queued delivery, when it
/// is due and no delivery of the key is being sent), found key by key through
/// `delivery_queue_ordered` (a loose index scan, so a deep backlog per key costs nothing here),
/// and its unordered deliveries (null key) as any target's.
pub async fn claim_heads(pool: &PgPool, take: &Take) -> sqlx::Result<Vec<Claimed>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"
        WITH RECURSIVE {WANTED}, keys AS (
            -- Spelled with the parameters, not a join with `wanted`: read off the index in key
            -- order, not every queued row sorted. (A paused target has no `wanted` row.)
            (SELECT q.ordering_key FROM delivery_queue q
             WHERE q.namespace = $1[1] AND q.target_kind = $2[1] AND q.target = $3[1]
               AND q.ordering_key IS NOT NULL AND EXISTS (SELECT 1 FROM wanted)
             ORDER BY q.ordering_key LIMIT 1)
            UNION ALL
            SELECT (SELECT q.ordering_key FROM delivery_queue q
                    WHERE q.namespace = $1[1] AND q.target_kind = $2[1] AND q.target = $3[1]
                      AND q.ordering_key > k.ordering_key
                    ORDER BY q.ordering_key LIMIT 1)
            FROM keys k WHERE k.ordering_key IS NOT NULL
        ), heads AS (
            SELECT h.delivery_id FROM keys k CROSS JOIN LATERAL (
                SELECT q.delivery_id, q.next_attempt_at FROM delivery_queue q
                WHERE q.namespace = $1[1] AND q.target_kind = $2[1] AND q.target = $3[1]
                  AND q.ordering_key = k.ordering_key
                ORDER BY q.position LIMIT 1
            ) h
            WHERE k.ordering_key IS NOT NULL AND h.next_attempt_at <= now()
              -- One of the key stored later may be out already, when the head's transaction
              -- committed after it was claimed. A probe per key (OFFSET 0 keeps it one, rather
              -- than a join that reads every claimed row of the target per key).
              AND NOT EXISTS (
                  SELECT 1 FROM delivery_queue p
                  WHERE p.namespace = $1[1] AND p.target_kind = $2[1] AND p.target = $3[1]
                    AND p.ordering_key = k.ordering_key AND p.claimed AND p.next_attempt_at > now()
                  OFFSET 0
              )
            LIMIT $6
        ), loose AS (
            SELECT q.delivery_id FROM wanted w CROSS JOIN LATERAL (
                SELECT delivery_id FROM delivery_queue q
                WHERE q.namespace = w.namespace AND q.target_kind = w.target_kind AND q.target = w.target
                  AND q.ordering_key IS NULL AND q.next_attempt_at <= now()
                ORDER BY q.next_attempt_at
                LIMIT w.take
            ) q
        ), due AS (
            SELECT delivery_id FROM delivery_queue q
            WHERE delivery_id = ANY (ARRAY(SELECT delivery_id FROM heads UNION ALL SELECT delivery_id FROM loose))
              AND {DUE_AT} <= now()
            LIMIT $6
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            -- The heads stay queued, leased. By the array alone, as in `claim_unordered`.
            UPDATE delivery_queue q
            SET next_attempt_at = now() + interval '1 millisecond' * $5[1], claimed = true,
                attempts = q.attempts + 1
            WHERE q.delivery_id = ANY (ARRAY(SELECT delivery_id FROM due))
            RETURNING q.delivery_id, q.namespace, q.target_kind, q.target, q.next_attempt_at, q.attempts,
                      q.ordering_key, {QUEUED_EVENT_ID} AS event_id
        )
        SELECT {CLAIMED_HEAD}
        FROM claimed c
        {EVENT_OF_CLAIMED}"#
        )
    });
    bind_wanted(sqlx::query_as(SQL.as_str()), &[take])
        .fetch_all(pool)
        .await
}

/// One HTTP attempt, as recorded.
#[derive(Debug, Default)]
pub struct Attempt {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i16>,
    /// timeout, connect, tls or http.
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub response_headers: Option<serde_json::Value>,
    pub response_body: Option<String>,
}

/// What happens to the delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Succeeded,
    RetryAt(DateTime<Utc>),
    Dead,
}

/// An attempt made, and what happens to its delivery next.
pub struct AttemptRecord {
    pub delivery: Uuid,
    /// The claim's end, as the claim returned it. Should the claim have expired and the
    /// delivery been claimed again (or cancelled, or redelivered), the attempt is still kept,
    /// but the queue and the delivery's status are left to whoever holds it now.
    pub lease_until: DateTime<Utc>,
    /// 1 for the first attempt.
    pub number: i32,
    /// Where its claim holds the delivery ([`Claimed::held`]).
    pub held: Held,
    pub attempt: Attempt,
    pub after: After,
    pub last_error: Option<String>,
    /// Dead, of a target with `ordering.onDead: block`: it stays queued, parked, and blocks its
    /// key until it is redelivered or skipped.
    pub blocks_key: bool,
    /// Ordered and finished: the key's next delivery, when due, is claimed in the same
    /// statement for this long and handed to the recorder's caller (no claim round trip between
    /// one delivery of a key and the next).
    pub hand_over: Option<Duration>,
}

/// Attempts finishing together share a commit.
pub type AttemptRecorder = GroupCommit<RecordAttempts>;

/// Recorder tasks, and so connections, at most.
const RECORDERS: usize = 2;

/// Connections a dispatcher claims and records on: one claimer and the recorders.
pub const QUEUE_WRITERS: u32 = RECORDERS as u32 + 1;

/// The pool to claim and record on: `QUEUE_WRITERS` connections to `pool`'s database, using
/// the statements' cached plans (see [`super::with_cached_plans`]). Planning the recorder's
/// statement cost more than a third of running it, and Postgres planned about half of the
/// claims again. Both statements spell out their lookups, so their one plan holds whatever the
/// statistics were when it was made (tests/store.rs plans them on empty tables).
pub fn queue_writers(pool: &PgPool) -> PgPool {
    super::with_cached_plans(pool, QUEUE_WRITERS)
}

/// `pool` should come from [`queue_writers`].
pub fn attempt_recorder(pool: PgPool) -> AttemptRecorder {
    GroupCommit::start(
        pool,
        RecordAttempts,
        Batching {
            writers: RECORDERS,
            max_batch: 256,
            linger: Duration::ZERO,
            paced: None,
        },
    )
}

/// The batch write of [`AttemptRecorder`].
pub struct RecordAttempts;

impl BatchWrite for RecordAttempts {
    type Item = AttemptRecord;
    /// The key's next delivery, claimed (see [`AttemptRecord::hand_over`]).
    type Output = Option<Claimed>;

    async fn write(&self, pool: &PgPool, items: &[AttemptRecord]) -> sqlx::Result<Vec<Option<Claimed>>> {
        let mut handed = record_attempts(pool, items).await?;
        Ok(items
            .iter()
            .map(|item| {
                let at = handed.iter().position(|h| h.after == item.delivery)?;
                Some(handed.swap_remove(at).claimed)
            })
            .collect())
    }
}

/// A delivery claimed by [`record_attempts`] as the successor of `after` in its key.
#[derive(Debug, sqlx::FromRow)]
pub struct HandedOver {
    pub after: Uuid,
    #[sqlx(flatten)]
    pub claimed: Claimed,
}

/// Records attempts and moves their deliveries on, in one statement: a finished delivery leaves
/// the queue, a retried one waits there again. Attempts are always kept as history; the queue
/// and the status move only where the claim still holds (see [`AttemptRecord::lease_until`]).
/// Ordered deliveries that finish hand over to their key's next one (see
/// [`AttemptRecord::hand_over`]); those are returned, claimed.
pub async fn record_attempts(pool: &PgPool, records: &[AttemptRecord]) -> sqlx::Result<Vec<HandedOver>> {
    // In id order, so concurrent batches lock rows in the same order.
    let mut records: Vec<&AttemptRecord> = records.iter().collect();
    records.sort_by_key(|r| r.delivery);
    let column = |f: fn(&AttemptRecord) -> Option<&str>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    // Each outcome is looked for only where its claim holds the delivery: on its history row
    // (looked up in the history's partitions), in `claims`, or in the queue. A batch of one kind
    // costs no lookup in the other places.
    let (mut on_row, mut by_claim, mut in_queue) = (Vec::new(), Vec::new(), Vec::new());
    for r in &records {
        match r.held {
            Held::Row => on_row.push(r.delivery),
            Held::Claim => by_claim.push(r.delivery),
            Held::Queue => in_queue.push(r.delivery),
        }
    }
    let next_status = |r: &AttemptRecord| match r.after {
        After::Succeeded => "succeeded",
        After::RetryAt(_) => "failed",
        After::Dead => "dead",
    };
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"
        -- Prepared once and run with its cached plan (see `queue_writers`): the queue is read by
        -- the ids of the batch's deliveries claimed with their queue rows (`= ANY ($17)`,
        -- whichever way a join is planned), the history per row.
        WITH record AS (
            SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int2[], $6::text[],
                                 $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[], $12::text[],
                                 $13::timestamptz[], $14::bool[], $15::bigint[])
                AS r (delivery_id, number, started_at, duration_ms, status_code, error_class, error,
                      response_headers, response_body, status, next_attempt_at, last_error, lease_until,
                      blocks_key, hand_over_ms)
        ), finished AS (
            DELETE FROM delivery_queue q USING record r
            WHERE q.delivery_id = ANY ($17) AND q.delivery_id = r.delivery_id AND {DUE_AT} = r.lease_until AND r.status <> 'failed'
              AND NOT r.blocks_key
            RETURNING q.delivery_id, r.lease_until, q.namespace, q.target_kind, q.target, q.ordering_key,
                      r.hand_over_ms
        ), blocking AS (
            UPDATE delivery_queue q SET next_attempt_at = 'infinity', claimed = false
            FROM record r
            WHERE q.delivery_id = ANY ($17) AND q.delivery_id = r.delivery_id AND {DUE_AT} = r.lease_until AND r.blocks_key
            RETURNING q.delivery_id, r.lease_until
        ), retrying AS (
            UPDATE delivery_queue q SET next_attempt_at = r.next_attempt_at, claimed = false
            FROM record r
            WHERE q.delivery_id = ANY ($17) AND q.delivery_id = r.delivery_id AND {DUE_AT} = r.lease_until AND r.status = 'failed'
            RETURNING q.delivery_id, r.lease_until
        ), moved AS (
            SELECT delivery_id, lease_until FROM finished
            UNION ALL SELECT * FROM retrying UNION ALL SELECT * FROM blocking
        ), direct AS MATERIALIZED (
            -- A delivery leased on its own row by the gateway that stored it (no queue row, see
            -- store::leases): its outcome counts if the lease still holds it. The row is locked,
            -- not written: the attempt is the outcome (migrations/0022), and whatever ends a
            -- lease (the pass over leases, a cancel, a redelivery) locks the row first and looks
            -- for the outcome after. Each is looked up in its own partition, pruned row by row:
            -- `d.id = ANY ($16)` would probe every partition with the whole batch (Postgres
            -- prunes no partition by an array parameter), and an equality join may be planned
            -- as a hash join that reads the history whole (when planned on small tables); a
            -- range of one key can only be a nested loop.
            SELECT d.id, d.namespace, d.target_kind, d.target, d.event_id, r.status, r.next_attempt_at,
                   r.number, d.ordering_key, d.position, r.lease_until
            FROM record r JOIN deliveries d ON d.id >= r.delivery_id AND d.id <= r.delivery_id
            WHERE r.delivery_id = ANY ($16) AND d.lease_until = r.lease_until
            FOR SHARE OF d
        ), noted AS MATERIALIZED (
            -- The notes of the batch's claims from the queue (see store::leases), locked FOR
            -- SHARE in id order, as the pass over ended claims locks them to delete them: that
            -- pass waits for these outcomes, and then sees them.
            SELECT c.lease_until, c.deliveries FROM claims c
            WHERE c.lease_until = ANY (ARRAY(SELECT r.lease_until FROM record r WHERE r.delivery_id = ANY ($18)))
            ORDER BY c.id
            FOR SHARE
        ), held AS (
            -- Claimed from the queue, and its claim still holds it: its outcome counts. The
            -- history row is not written (migrations/0022).
            -- Each note's deliveries are read once, into one hash: a note of a large claim is
            -- stored compressed, and a probe of it per record decompressed it per record.
            SELECT r.delivery_id, r.lease_until FROM record r
            WHERE r.delivery_id = ANY ($18)
              AND (r.delivery_id::text, r.lease_until) IN (
                  SELECT k.id, n.lease_until FROM noted n CROSS JOIN LATERAL jsonb_object_keys(n.deliveries) AS k (id))
        ), attempt AS (
            -- Every attempt is kept; its outcome only where its claim still held the delivery
            -- (migrations/0021): the delivery's state is its latest outcome (migrations/0022).
            INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code,
                                  error_class, error, response_headers, response_body, outcome)
            SELECT r.delivery_id, r.number, r.started_at, r.duration_ms, r.status_code, r.error_class, r.error,
                   r.response_headers, r.response_body,
                   -- Uncorrelated, so looked up in one hash, not scanned per record.
                   CASE WHEN (r.delivery_id, r.lease_until) IN (
                            SELECT delivery_id, lease_until FROM moved
                            UNION ALL SELECT id, lease_until FROM direct
                            UNION ALL SELECT delivery_id, lease_until FROM held)
                        THEN r.status::attempt_outcome END
            FROM record r
        ), retry AS (
            -- A retry of a delivery held out of the queue waits in the queue like any other
            -- (with its key, should a replica whose configuration did not have the target's
            -- `ordering` yet have claimed it).
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        attempts, event_id, ordering_key, position)
            SELECT id, namespace, target_kind, target, next_attempt_at, number, event_id, ordering_key, position
            FROM direct WHERE status = 'failed'
            UNION ALL
            -- Each looked up in its own partition by a range of one key, as in `direct`.
            SELECT d.id, d.namespace, d.target_kind, d.target, r.next_attempt_at, r.number, d.event_id,
                   d.ordering_key, d.position
            FROM record r CROSS JOIN LATERAL (
                SELECT * FROM deliveries d WHERE d.id >= r.delivery_id AND d.id <= r.delivery_id OFFSET 0
            ) d
            WHERE r.status = 'failed' AND (r.delivery_id, r.lease_until) IN (SELECT delivery_id, lease_until FROM held)
            -- Queued meanwhile by a version before migrations/0023, which does not see claims'
            -- notes: the queue row there is the retry, numbered past this attempt.
            ON CONFLICT (delivery_id) DO UPDATE
                SET attempts = GREATEST(delivery_queue.attempts, EXCLUDED.attempts)
        ), successor AS (
            -- The key's next delivery (the finished one is still visible here, so left out), when
            -- it is due, none of the key is out but the finished one, and the target is not
            -- paused: what a claim of the key's head would take.
            SELECT f.delivery_id AS after, n.delivery_id, f.hand_over_ms
            FROM finished f CROSS JOIN LATERAL (
                SELECT q.delivery_id, q.next_attempt_at FROM delivery_queue q
                WHERE q.namespace = f.namespace AND q.target_kind = f.target_kind AND q.target = f.target
                  AND q.ordering_key = f.ordering_key AND q.delivery_id <> f.delivery_id
                ORDER BY q.position LIMIT 1
            ) n
            WHERE f.hand_over_ms IS NOT NULL AND f.ordering_key IS NOT NULL AND n.next_attempt_at <= now()
              AND NOT EXISTS (
                  SELECT 1 FROM delivery_queue p
                  WHERE p.namespace = f.namespace AND p.target_kind = f.target_kind AND p.target = f.target
                    AND p.ordering_key = f.ordering_key AND p.claimed AND p.next_attempt_at > now()
                    AND p.delivery_id <> f.delivery_id
                  OFFSET 0 -- a probe per key, as in claim_heads
              )
              AND NOT EXISTS (
                  SELECT 1 FROM target_states t
                  WHERE t.namespace = f.namespace AND t.target_kind = f.target_kind AND t.target = f.target
                    AND t.paused_reason IS NOT NULL
              )
        ), handed AS (
            -- By an array of ids, as the claim does: a lookup per row, whatever the estimates.
            UPDATE delivery_queue q
            SET next_attempt_at = now() + interval '1 millisecond' * (
                    SELECT s.hand_over_ms FROM successor s WHERE s.delivery_id = q.delivery_id
                ),
                claimed = true, attempts = q.attempts + 1
            -- Rechecked on the row as it is when locked: another claimer may have taken it.
            WHERE q.delivery_id = ANY (ARRAY(SELECT delivery_id FROM successor)) AND {DUE_AT} <= now()
            RETURNING q.delivery_id, q.namespace, q.target_kind, q.target, q.next_attempt_at, q.attempts,
                      q.ordering_key, {QUEUED_EVENT_ID} AS event_id
        )
        SELECT (SELECT s.after FROM successor s WHERE s.delivery_id = c.delivery_id) AS after, {CLAIMED_HEAD}
        FROM handed c
        {EVENT_OF_CLAIMED}
        "#
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(records.iter().map(|r| r.delivery).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.number).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt.started_at).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt.duration_ms).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.attempt.status_code).collect::<Vec<_>>())
        .bind(column(|r| r.attempt.error_class))
        .bind(column(|r| r.attempt.error.as_deref()))
        .bind(
            records
                .iter()
                .map(|r| r.attempt.response_headers.as_ref())
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| r.attempt.response_body.as_deref()))
        .bind(records.iter().map(|r| next_status(r)).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| match r.after {
                    After::RetryAt(at) => Some(at),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
        .bind(column(|r| r.last_error.as_deref()))
        .bind(records.iter().map(|r| r.lease_until).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.blocks_key).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| {
                    r.hand_over
                        .map(|lease| i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
                })
                .collect::<Vec<_>>(),
        )
        .bind(on_row)
        .bind(in_queue)
        .bind(by_claim)
        .fetch_all(pool)
        .await
}

/// Ends a claimed delivery without an attempt, as `filtered_error` with the reason (a
/// transform that fails for its event), if the claim ending at `lease_until` still holds it.
pub async fn end_unsent(
    pool: &PgPool,
    id: Uuid,
    lease_until: DateTime<Utc>,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH ended AS (
             -- A key's head, leased in the queue.
             DELETE FROM delivery_queue WHERE delivery_id = $1 AND next_attempt_at = $2
             RETURNING delivery_id
         ), unclaimed AS (
             -- Claimed from the queue: out of its claim's note, which the pass over ended claims
             -- would otherwise queue it again from (see store::leases).
             UPDATE claims c SET deliveries = c.deliveries - $1::uuid::text
             FROM (SELECT id, (deliveries ->> $1::uuid::text)::int AS before FROM claims
                   WHERE lease_until = $2 AND deliveries ? $1::uuid::text) n
             -- Rechecked on the note as it is when locked (see `release`).
             WHERE c.id = n.id AND c.lease_until = $2 AND c.deliveries ? $1::uuid::text
             RETURNING n.before
         )
         -- Or leased on its row. The row folds in the attempts so far (migrations/0022), also
         -- one the pass numbered for a claim that ended before (the claim's `before` counts it).
         UPDATE deliveries d SET status = 'filtered_error',
                                 attempts = GREATEST(s.attempts, (SELECT before FROM unclaimed)), last_error = $3,
                                 updated_at = now(), lease_until = NULL
         FROM delivery_states s
         WHERE d.id = $1 AND s.id = $1
           AND (EXISTS (SELECT 1 FROM ended) OR EXISTS (SELECT 1 FROM unclaimed) OR d.lease_until = $2)",
    )
    .bind(id)
    .bind(lease_until)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// The headers an event was received with.
pub async fn event_headers(pool: &PgPool, event: Uuid) -> sqlx::Result<serde_json::Value> {
    sqlx::query_scalar("SELECT headers FROM events WHERE id = $1")
        .bind(event)
        .fetch_one(pool)
        .await
}

/// Puts a claimed delivery back without spending an attempt (circuit open, target paused, no
/// signing secret yet), due again at `at`, if the claim ending at `lease_until` still holds it.
/// `reason` becomes its last error; `None` keeps the one it has.
pub async fn release(
    pool: &PgPool,
    id: Uuid,
    lease_until: DateTime<Utc>,
    at: DateTime<Utc>,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH released AS (
             -- A key's head, leased in the queue: it stays, due again at $3.
             UPDATE delivery_queue SET next_attempt_at = $3, claimed = false, attempts = attempts - 1
             WHERE delivery_id = $1 AND next_attempt_at = $2
             RETURNING delivery_id
         ), unclaimed AS (
             -- Claimed from the queue: out of its claim's note (see store::leases), with the
             -- attempts it had started before the claim.
             UPDATE claims c SET deliveries = c.deliveries - $1::uuid::text
             FROM (SELECT id, (deliveries ->> $1::uuid::text)::int AS before FROM claims
                   WHERE lease_until = $2 AND deliveries ? $1::uuid::text) n
             -- Rechecked on the note as it is when locked: a cancel or a redelivery may have
             -- taken the delivery out meanwhile.
             WHERE c.id = n.id AND c.lease_until = $2 AND c.deliveries ? $1::uuid::text
             RETURNING n.before
         ), checkpoint AS (
             -- Or leased on its row, which gives up its lease. The row takes the reason and
             -- folds in the attempts so far (migrations/0022), also one the pass numbered for a
             -- claim that ended before (the claim's `before` counts it).
             UPDATE deliveries d SET lease_until = NULL, status = s.status,
                                     attempts = GREATEST(s.attempts, (SELECT before FROM unclaimed)),
                                     last_error = COALESCE($4, s.last_error), updated_at = now()
             FROM delivery_states s
             WHERE d.id = $1 AND s.id = $1
               AND (d.lease_until = $2 OR EXISTS (SELECT 1 FROM unclaimed) OR EXISTS (SELECT 1 FROM released))
             RETURNING d.id, d.namespace, d.target_kind, d.target, d.event_id, d.ordering_key, d.position,
                       GREATEST(s.attempts, (SELECT before FROM unclaimed)) AS attempts
         )
         -- Out of the queue, it enters it again, its attempt unspent.
         INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at, attempts,
                                     event_id, ordering_key, position)
         SELECT id, namespace, target_kind, target, $3, attempts, event_id, ordering_key, position
         FROM checkpoint WHERE NOT EXISTS (SELECT 1 FROM released)",
    )
    .bind(id)
    .bind(lease_until)
    .bind(at)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves the waiting deliveries of a target to `until` (its circuit opened), so the queue does
/// not keep offering work that cannot be sent. Live claims are left to their claimers.
///
/// Only an optimisation, so it never waits: rows locked by a claim or a recording are skipped
/// (waiting on them, row by row in index order, deadlocked with recordings of other replicas),
/// and rows already due in the second half of the wait are left where they are (an earlier
/// deferral put them there; every refused claim asks again).
pub async fn defer_target(pool: &PgPool, target: &TargetKey, until: DateTime<Utc>) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE delivery_queue q SET next_attempt_at = $4, claimed = false
         FROM (
             SELECT delivery_id FROM delivery_queue
             WHERE namespace = $1 AND target_kind = $2 AND target = $3
               AND next_attempt_at < now() + ($4 - now()) / 2
               AND NOT (claimed AND next_attempt_at > now())
             FOR UPDATE SKIP LOCKED
         ) waiting
         WHERE q.delivery_id = waiting.delivery_id",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Records a target's circuit state (for status and other replicas' information), and each
/// change in its history (`circuit_changes`, for the console's picture); whether the recorded
/// state changed.
pub async fn set_circuit(pool: &PgPool, target: &TargetKey, circuit: &str) -> sqlx::Result<bool> {
    let changed = sqlx::query(
        "WITH changed AS (
             INSERT INTO target_states (namespace, target_kind, target, circuit, circuit_since)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (namespace, target_kind, target)
             DO UPDATE SET circuit = EXCLUDED.circuit, circuit_since = now()
             WHERE target_states.circuit <> EXCLUDED.circuit
             RETURNING namespace, target_kind, target, circuit, circuit_since
         )
         INSERT INTO circuit_changes (namespace, target_kind, target, at, circuit)
         SELECT namespace, target_kind, target, circuit_since, circuit FROM changed
         ON CONFLICT DO NOTHING",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(circuit)
    .execute(pool)
    .await?;
    Ok(changed.rows_affected() > 0)
}

/// Pauses a target for every replica (the endpoint answered 410 Gone, or an operator asked).
/// Its deliveries keep their place and schedule; claims skip the target until it is resumed.
pub async fn pause_target(pool: &PgPool, target: &TargetKey, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO target_states (namespace, target_kind, target, paused_reason, paused_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (namespace, target_kind, target)
         DO UPDATE SET paused_reason = EXCLUDED.paused_reason, paused_at = now()",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Resumes a paused target and wakes the dispatchers: what fell due meanwhile is sent now,
/// later retries keep their schedule.
pub async fn resume_target(pool: &PgPool, target: &TargetKey) -> sqlx::Result<()> {
    sqlx::query(
        "WITH resumed AS (
             UPDATE target_states SET paused_reason = NULL, paused_at = NULL
             WHERE namespace = $1 AND target_kind = $2 AND target = $3
         )
         SELECT pg_notify($4, '')",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(super::events::DELIVERIES_CHANNEL)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deliveries in the queue: waiting, awaiting a retry, or a key's head being sent (one out on a
/// lease of its row is not counted).
pub async fn count_pending(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM delivery_queue")
        .fetch_one(pool)
        .await
}

/// The signing secret generated for a target without a secretRef, created on first use.
pub async fn generated_secret(pool: &PgPool, target: &TargetKey, candidate: &str) -> sqlx::Result<String> {
    sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO generated_secrets (namespace, target_kind, target, secret) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING secret
         )
         SELECT secret FROM inserted
         UNION ALL
         SELECT secret FROM generated_secrets WHERE namespace = $1 AND target_kind = $2 AND target = $3
         LIMIT 1",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(candidate)
    .fetch_one(pool)
    .await
}
