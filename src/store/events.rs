//! Writing events and their deliveries: one statement, so an event is stored together with all
//! of its deliveries or not at all, and a duplicate creates nothing. Events arriving together
//! share the statement and its commit (see [`super::group_commit`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::PgPool;
use uuid::Uuid;

use super::group_commit::{BatchWrite, Batching, GroupCommit, Paced, SharedError};
use super::pace::PaceSettings;
use super::partitions::PeriodStarts;
use crate::api::TargetKind;

/// How long an event's keys (the sender's id, the replay digest) refuse a second event with
/// either: three days, the longest a provider here retries (Stripe). Within its partition a key
/// is unique for as long as the partition is kept.
pub const DEDUPE_WINDOW: std::time::Duration = std::time::Duration::from_secs(72 * 3600);

/// An accepted event, as it goes into the database.
pub struct NewEvent {
    pub id: Uuid,
    pub namespace: String,
    /// The WebhookSource name, or `""` for a published event.
    pub source: String,
    pub provider: Option<&'static str>,
    pub external_id: String,
    /// A second dedupe key where `external_id` is not signed (see `VerifiedEvent`).
    pub replay_digest: Option<[u8; 32]>,
    pub event_type: String,
    pub headers: serde_json::Value,
    pub body: Bytes,
    pub deliveries: Vec<NewDelivery>,
}

/// One delivery of the event to a target.
pub struct NewDelivery {
    pub id: Uuid,
    /// The target's kind and name; its namespace is the event's.
    pub target_kind: TargetKind,
    pub target: String,
    /// Why its filter failed for this event: recorded as `filtered_error`, never queued.
    pub filter_error: Option<String>,
    /// The key its target's `ordering` gave the event; `None`: unordered.
    pub ordering_key: Option<String>,
    /// Leased on its own row in the statement that stores it, for this long, by the storing
    /// gateway, which sends it itself (`dispatch::Reservation`, `super::leases`); unless its
    /// target is paused or has deliveries due, which go first, or the statement ran too long
    /// after the delivery's id was made: then it is queued as if `None`.
    pub claim_for: Option<std::time::Duration>,
}

/// A delivery stored leased, and its lease (the claim's token, as a claim gives it).
pub type ClaimedAtStore = (Uuid, chrono::DateTime<chrono::Utc>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The event is new; this many deliveries were created with it, `claimed` of them claimed
    /// by the statement (see [`NewDelivery::claim_for`]).
    New {
        deliveries: u64,
        claimed: Vec<ClaimedAtStore>,
    },
    /// An event with the same (namespace, source, external id), or the same replay digest,
    /// exists; nothing was written.
    Duplicate,
}

pub use super::DELIVERIES_CHANNEL;

/// Writes events: those written concurrently share commits; a published one with an
/// idempotency key is written in a transaction of its own ([`EventWriter::store_published`]).
pub struct EventWriter {
    commits: GroupCommit<InsertEvents>,
    periods: Arc<PeriodStarts>,
}

/// Writer tasks, and so connections, the event writer uses at most.
const EVENT_WRITERS: usize = 4;
/// Events per statement at most.
const EVENT_BATCH: usize = 256;
/// How long a batch may keep gathering while another is being written.
const EVENT_LINGER: Duration = Duration::from_millis(5);
/// How [`EventBatching::Paced`] lingers with no write under way (see store::pace). The rate is
/// measured over 50 ms, one epoch in 21 is a probe, and nothing lingers below 2,000 webhooks a
/// second. With no write under way, a lingering batch is written at 64 webhooks, after 10 ms, or
/// once none has arrived for 2 ms (Tokio's timers tick in milliseconds): at 10,000 a second
/// every 6.4 ms, so that with the probes that do not linger a commit holds more than 50; senders
/// who wait for their answers lose 2 ms in a probe that lingers, where arrivals pause once they
/// have all sent. While a write is under way it gathers as a batch that does not linger, for up
/// to the 10 ms.
pub(super) const EVENT_PACED: Paced = Paced {
    pace: PaceSettings {
        epoch: Duration::from_millis(50),
        probe_every: 20,
        min_rate: 2_000.0,
        tolerance: 0.1,
    },
    batch: 64,
    linger: Duration::from_millis(10),
    quiet: Duration::from_millis(2),
};

/// How the event writer gathers webhooks into commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventBatching {
    /// A batch gathers only while another write is under way: no answer waits for a commit it
    /// did not have to (at 10,000 webhooks a second, about 22 a commit).
    #[default]
    WhileWriting,
    /// A batch also lingers with no write under way while the senders' rate shows that it costs
    /// them nothing (store::pace): above 2,000 webhooks a second, fewer and larger commits
    /// for answers a few ms later (docs/benchmarks.md, "Paced event batching, opt-in").
    Paced,
}

impl std::str::FromStr for EventBatching {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "while-writing" => Ok(Self::WhileWriting),
            "paced" => Ok(Self::Paced),
            other => Err(format!("{other:?}: expected while-writing or paced")),
        }
    }
}

pub fn event_writer(pool: PgPool, batching: EventBatching) -> EventWriter {
    let periods = Arc::new(PeriodStarts::default());
    EventWriter {
        commits: GroupCommit::start(
            super::with_cached_plans(&pool, EVENT_WRITERS as u32),
            InsertEvents(periods.clone()),
            Batching {
                writers: EVENT_WRITERS,
                max_batch: EVENT_BATCH,
                linger: EVENT_LINGER,
                paced: (batching == EventBatching::Paced).then_some(EVENT_PACED),
            },
        ),
        periods,
    }
}

/// The batch write of [`EventWriter`].
struct InsertEvents(Arc<PeriodStarts>);

impl BatchWrite for InsertEvents {
    type Item = NewEvent;
    type Output = Stored;

    async fn write(&self, pool: &PgPool, items: &[NewEvent]) -> sqlx::Result<Vec<Stored>> {
        let newest = items.iter().map(|e| e.id).max().unwrap_or_default();
        let own_period = self.0.start_of(pool, newest).await?;
        insert_events(pool, items, own_period).await
    }
}

/// The ids of the partitions older than the one starting at `own_period` that may hold a key
/// of the dedupe window, as SQL: a period's start never moves, so neither does this text.
fn older_ids(own_period: Uuid) -> String {
    use super::partitions::{id_floor, id_millis};
    let window = i64::try_from(DEDUPE_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let from = id_floor(id_millis(own_period).saturating_sub(window).max(0));
    format!("e.id >= '{from}'::uuid AND e.id < '{own_period}'::uuid")
}

/// The statement of [`insert_events`], `{older_ids}` in it to be replaced by [`older_ids`].
static STORE_EVENTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let horizon_ms = super::leases::HORIZON.as_millis();
    STORE_EVENTS_TEMPLATE
        .replace("{lease_lock}", &super::leases::LEASE_LOCK.to_string())
        .replace(
            "{lease_floor}",
            &super::leases::id_floor_sql(&format!(
                "(clock_timestamp() - interval '{horizon_ms} milliseconds')"
            )),
        )
});

const STORE_EVENTS_TEMPLATE: &str = r#"
        WITH event AS (
            INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body,
                                replay_digest)
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::jsonb[], $8::bytea[], $14::bytea[])
                 AS u (id, namespace, source, provider, external_id, event_type, headers, body,
                       replay_digest)
            -- Either key, the sender's id or the replay digest, in the older partitions of the
            -- dedupe window (one probe of each's index; a subquery, so never a join over them)…
            WHERE (SELECT true FROM events e
                   WHERE e.namespace = u.namespace AND e.source = u.source
                     AND e.external_id = u.external_id AND e.id >= $22 AND {older_ids}
                   LIMIT 1) IS NULL
              AND (u.replay_digest IS NULL
                   OR (SELECT true FROM events e
                       WHERE e.namespace = u.namespace AND e.source = u.source
                         AND e.replay_digest = u.replay_digest AND e.id >= $22 AND {older_ids}
                       LIMIT 1) IS NULL)
            -- … and, against events stored at the same time, in the event's own partition.
            ON CONFLICT DO NOTHING
            RETURNING id, namespace
        ), input AS MATERIALIZED (
            -- The deliveries of the events inserted (not of duplicates), with their positions.
            SELECT d.id, event.id AS event_id, event.namespace, d.kind, d.target, d.filter_error,
                   d.ordering_key, d.claim_target,
                   CASE WHEN d.ordering_key IS NOT NULL THEN nextval('delivery_position') END AS position
            FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::text[], $15::text[], $16::text[],
                        $17::int4[])
                 AS d (event_id, id, kind, target, filter_error, ordering_key, claim_target)
            JOIN event ON event.id = d.event_id
        ), claimable AS (
            -- Per target asked to claim for: not paused, and nothing of it due (that goes
            -- first; rows of this statement do not count). One index probe each.
            SELECT array_agg(
                       NOT EXISTS (
                           SELECT 1 FROM target_states s
                           WHERE s.namespace = t.namespace AND s.target_kind = t.kind AND s.target = t.name
                             AND s.paused_reason IS NOT NULL)
                       AND NOT EXISTS (
                           SELECT 1 FROM delivery_queue q
                           WHERE q.namespace = t.namespace AND q.target_kind = t.kind AND q.target = t.name
                             AND q.next_attempt_at <= now())
                       ORDER BY t.n) AS ok,
                   array_agg(t.lease_ms ORDER BY t.n) AS lease_ms
            FROM UNNEST($18::text[], $19::text[], $20::text[], $21::float8[]) WITH ORDINALITY
                 AS t (namespace, kind, name, lease_ms, n)
        ), lease_clock AS MATERIALIZED (
            -- Read only when a delivery is to be leased: the lease lock, taken shared, and the
            -- oldest id that may be leased under it (see store::leases).
            SELECT {lease_floor} AS floor
            FROM (SELECT pg_advisory_xact_lock_shared({lease_lock}) OFFSET 0) l
        ), decided AS MATERIALIZED (
            SELECT i.*, c.lease_ms,
                   CASE WHEN i.claim_target IS NULL OR i.filter_error IS NOT NULL THEN false
                        WHEN NOT coalesce((SELECT ok FROM claimable)[i.claim_target], false) THEN false
                        ELSE i.id >= (SELECT floor FROM lease_clock) END AS claim
            FROM input i CROSS JOIN LATERAL (
                SELECT (SELECT lease_ms FROM claimable)[i.claim_target] AS lease_ms
            ) c
        ), delivery AS (
            -- A delivery claimed here is leased on its own row and has no queue row while it is
            -- out: its outcome is its attempt, recorded under a lock of this row, which is
            -- not written again (see store::leases).
            INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status, last_error,
                                    ordering_key, position, lease_until)
            SELECT id, event_id, namespace, kind, target,
                   CASE WHEN filter_error IS NULL THEN 'pending' ELSE 'filtered_error' END, filter_error,
                   ordering_key, position,
                   CASE WHEN claim THEN now() + interval '1 millisecond' * lease_ms END
            FROM decided
            RETURNING id, lease_until
        ), queued AS (
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        ordering_key, position, event_id)
            SELECT id, namespace, kind, target, now(), ordering_key, position, event_id
            FROM decided
            WHERE filter_error IS NULL AND NOT claim
            RETURNING namespace, target_kind, target
        ), targets AS (
            -- Targets paused at runtime are left out (one probe per target): nothing of theirs
            -- can be claimed, and their resume asks every dispatcher for a scan. A statement
            -- that saw the pause and commits after that scan is found by the next rescan (1 s).
            SELECT string_agg(t.namespace || '/' || t.target_kind || '/' || t.target, E'\n') AS names
            FROM (SELECT DISTINCT namespace, target_kind, target FROM queued) t
            WHERE NOT EXISTS (
                SELECT 1 FROM target_states s
                WHERE s.namespace = t.namespace AND s.target_kind = t.target_kind AND s.target = t.target
                  AND s.paused_reason IS NOT NULL)
        )
        SELECT
            ARRAY(SELECT id FROM event),
            -- The notification names the targets, one a line; too many for a payload (under
            -- 8000 bytes), it names none, which asks the dispatchers for a scan of the queue.
            -- Deliveries claimed here need none: their claimer has them.
            (SELECT pg_notify($13, CASE WHEN octet_length(names) < 7900 THEN names ELSE '' END)
             FROM targets WHERE names IS NOT NULL) IS NULL,
            ARRAY(SELECT id FROM delivery WHERE lease_until IS NOT NULL ORDER BY id),
            ARRAY(SELECT lease_until FROM delivery WHERE lease_until IS NOT NULL ORDER BY id)
"#;

/// Inserts events with their deliveries, skipping duplicates, in one statement (on a pool: its
/// own transaction; or inside a caller's). Answers each event in order.
///
/// An event's keys are unique in its own partition (ON CONFLICT); the older partitions of the
/// dedupe window are probed, ids from the window's start up to `own_period`, where the period
/// of the batch's newest event starts. Excluding the event's own partition matters beyond the
/// probes saved: a new partition has no statistics, and the planner, seeing no difference, may
/// probe it through `events_by_source` and read every event of the source.
async fn insert_events<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    events: &[NewEvent],
    own_period: Uuid,
) -> sqlx::Result<Vec<Stored>> {
    // Rows are inserted in key order, so two batches holding the same keys (a sender's retries)
    // take their locks in the same order and cannot deadlock.
    let mut order: Vec<&NewEvent> = events.iter().collect();
    order.sort_by(|a, b| {
        (&a.namespace, &a.source, &a.external_id).cmp(&(&b.namespace, &b.source, &b.external_id))
    });
    let column = |f: fn(&NewEvent) -> &str| order.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let deliveries = order
        .iter()
        .flat_map(|e| e.deliveries.iter().map(move |d| (*e, d)));
    let (mut delivery_events, mut delivery_ids, mut kinds, mut targets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut filter_errors, mut ordering_keys) = (Vec::new(), Vec::new());
    // Deliveries to claim name their target by its place in `claiming` (from 1, as Postgres
    // arrays count): the statement checks each such target once, and each delivery looks its
    // target's verdict up by subscript, never by a join.
    let (mut claim_targets, mut claiming) = (Vec::new(), ClaimTargets::default());
    for (event, d) in deliveries {
        delivery_events.push(event.id);
        delivery_ids.push(d.id);
        kinds.push(d.target_kind.as_str());
        targets.push(d.target.as_str());
        filter_errors.push(d.filter_error.as_deref());
        ordering_keys.push(d.ordering_key.as_deref());
        claim_targets.push(d.claim_for.map(|lease| claiming.place(event, d, lease)));
    }
    type Inserted = (Vec<Uuid>, bool, Vec<Uuid>, Vec<chrono::DateTime<chrono::Utc>>);
    // The older partitions' bounds are literals, not parameters, so that the writers' cached
    // plan (see `with_cached_plans`) reads only those partitions: one plan per connection and
    // period.
    let older_ids = older_ids(own_period);
    let statement = STORE_EVENTS.replace("{older_ids}", &older_ids);
    let (inserted, _, claimed_ids, leases): Inserted = sqlx::query_as(&statement)
        .bind(order.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(column(|e| &e.namespace))
        .bind(column(|e| &e.source))
        .bind(order.iter().map(|e| e.provider).collect::<Vec<_>>())
        .bind(column(|e| &e.external_id))
        .bind(column(|e| &e.event_type))
        .bind(order.iter().map(|e| &e.headers).collect::<Vec<_>>())
        .bind(order.iter().map(|e| e.body.as_ref()).collect::<Vec<&[u8]>>())
        .bind(delivery_events)
        .bind(delivery_ids)
        .bind(kinds)
        .bind(targets)
        .bind(DELIVERIES_CHANNEL)
        .bind(
            order
                .iter()
                .map(|e| e.replay_digest.as_ref().map(|d| d.as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind(filter_errors)
        .bind(ordering_keys)
        .bind(claim_targets)
        .bind(claiming.namespaces)
        .bind(claiming.kinds)
        .bind(claiming.names)
        .bind(claiming.lease_ms)
        .bind(super::partitions::id_floor_at(
            chrono::Utc::now()
                - chrono::Duration::from_std(DEDUPE_WINDOW).unwrap_or(chrono::Duration::days(3)),
        ))
        .fetch_one(executor)
        .await?;
    let claimed: std::collections::HashMap<Uuid, chrono::DateTime<chrono::Utc>> =
        claimed_ids.into_iter().zip(leases).collect();
    Ok(events
        .iter()
        .map(|event| {
            if inserted.contains(&event.id) {
                Stored::New {
                    deliveries: event.deliveries.len() as u64,
                    claimed: event
                        .deliveries
                        .iter()
                        .filter_map(|d| Some((d.id, *claimed.get(&d.id)?)))
                        .collect(),
                }
            } else {
                Stored::Duplicate
            }
        })
        .collect())
}

/// The targets a batch's deliveries are to be claimed for, once each, as the statement's
/// arrays.
#[derive(Default)]
struct ClaimTargets<'a> {
    places: std::collections::HashMap<(&'a str, &'a str, &'a str), i32>,
    namespaces: Vec<&'a str>,
    kinds: Vec<&'a str>,
    names: Vec<&'a str>,
    lease_ms: Vec<f64>,
}

impl<'a> ClaimTargets<'a> {
    /// The place (from 1) of the delivery's target; a target's lease is the same for all its
    /// deliveries (its timeout and the margin), so the first one's stands.
    fn place(&mut self, event: &'a NewEvent, delivery: &'a NewDelivery, lease: std::time::Duration) -> i32 {
        let key = (
            event.namespace.as_str(),
            delivery.target_kind.as_str(),
            delivery.target.as_str(),
        );
        if let Some(place) = self.places.get(&key) {
            return *place;
        }
        self.namespaces.push(key.0);
        self.kinds.push(key.1);
        self.names.push(key.2);
        self.lease_ms.push(lease.as_secs_f64() * 1000.0);
        let place = self.namespaces.len() as i32;
        self.places.insert(key, place);
        place
    }
}

/// The answer first given to an `Idempotency-Key`, replayed for the same key and body.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// An `Idempotency-Key` with the request it came with and the answers to remember.
pub struct Idempotency<'a> {
    pub key: &'a str,
    /// SHA-256 of the request body.
    pub request_hash: &'a [u8],
    pub answer_if_new: IdempotentAnswer,
    pub answer_if_duplicate: IdempotentAnswer,
}

pub enum Published {
    /// Stored now; the answer was saved under the idempotency key, if one was given.
    Stored(Stored),
    /// The key was used before with the same body: the first answer.
    Replayed(IdempotentAnswer),
    /// The key was used before with another body.
    KeyReused,
}

impl EventWriter {
    /// Queues the event and waits for the commit that holds it.
    pub async fn submit(&self, event: NewEvent) -> Result<Stored, SharedError> {
        self.commits.submit(event).await
    }

    /// Stores a published event with its deliveries and records the answer under the idempotency
    /// key, all in one transaction. A key already in use (and not expired) is not
    /// stored again: its first answer is returned, or `KeyReused` when the body differs.
    pub async fn store_published(
        &self,
        pool: &PgPool,
        event: &NewEvent,
        idempotency: &Idempotency<'_>,
        key_ttl: std::time::Duration,
    ) -> sqlx::Result<Published> {
        let own_period = self.periods.start_of(pool, event.id).await?;
        let mut tx = pool.begin().await?;
        let &Idempotency {
            key, request_hash, ..
        } = idempotency;
        {
            // Waits for a concurrent request with the same key to finish, then sees its row.
            let claimed: Option<(bool,)> = sqlx::query_as(
                "INSERT INTO idempotency_keys (namespace, key, request_hash, response_status, response_body, expires_at)
                 VALUES ($1, $2, $3, 0, 'null', now() + $4 * interval '1 millisecond')
                 ON CONFLICT (namespace, key) DO UPDATE
                     SET request_hash = EXCLUDED.request_hash, response_status = 0, response_body = 'null',
                         created_at = now(), expires_at = EXCLUDED.expires_at
                     WHERE idempotency_keys.expires_at < now()
                 RETURNING true",
            )
            .bind(&event.namespace)
            .bind(key)
            .bind(request_hash)
            .bind(key_ttl.as_millis() as i64)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() {
                let (hash, status, body): (Vec<u8>, i16, serde_json::Value) = sqlx::query_as(
                    "SELECT request_hash, response_status, response_body FROM idempotency_keys
                     WHERE namespace = $1 AND key = $2",
                )
                .bind(&event.namespace)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                return Ok(if hash == request_hash {
                    Published::Replayed(IdempotentAnswer {
                        status: status as u16,
                        body,
                    })
                } else {
                    Published::KeyReused
                });
            }
        }
        let stored = insert_events(&mut *tx, std::slice::from_ref(event), own_period)
            .await?
            .pop()
            .ok_or(sqlx::Error::RowNotFound)?;
        let answer = match stored {
            Stored::New { .. } => &idempotency.answer_if_new,
            Stored::Duplicate => &idempotency.answer_if_duplicate,
        };
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE namespace = $1 AND key = $2",
        )
        .bind(&event.namespace)
        .bind(key)
        .bind(answer.status as i16)
        .bind(&answer.body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Published::Stored(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::partitions::id_floor;

    #[test]
    fn the_older_partitions_probed_reach_back_one_dedupe_window_from_the_own_period() {
        let day = 86_400_000;
        let own = id_floor(20_000 * day);
        assert_eq!(
            older_ids(own),
            format!(
                "e.id >= '{}'::uuid AND e.id < '{own}'::uuid",
                id_floor(19_997 * day)
            )
        );
        // The legacy period holds everything before it: nothing is older.
        let nil = Uuid::nil();
        assert_eq!(
            older_ids(nil),
            format!("e.id >= '{nil}'::uuid AND e.id < '{nil}'::uuid")
        );
    }
}
