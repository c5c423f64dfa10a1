//! Writing events and their deliveries: one statement, so an event is stored together with all
//! of its deliveries or not at all, and a duplicate creates nothing. Events arriving together
//! share the statement and its commit (see [`super::group_commit`]).

use bytes::Bytes;
use sqlx::PgPool;
use uuid::Uuid;

use super::group_commit::{BatchWrite, GroupCommit};
use crate::api::TargetKind;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The event is new; this many deliveries were created with it.
    New { deliveries: u64 },
    /// An event with the same (namespace, source, external id), or the same replay digest,
    /// exists; nothing was written.
    Duplicate,
}

/// Channel dispatchers LISTEN on; notified in the same statement as the insert, so the
/// notification is delivered exactly when the rows are committed. The payload names the targets
/// with new deliveries (`namespace/kind/name`, one a line); an empty one means "look at the
/// whole queue".
pub const DELIVERIES_CHANNEL: &str = "hookline_deliveries";

/// Events written concurrently share commits.
pub type EventWriter = GroupCommit<InsertEvents>;

/// Writer tasks, and so connections, the event writer uses at most.
const EVENT_WRITERS: usize = 4;
/// Events per statement at most.
const EVENT_BATCH: usize = 256;

pub fn event_writer(pool: PgPool) -> EventWriter {
    GroupCommit::start(pool, InsertEvents, EVENT_WRITERS, EVENT_BATCH)
}

/// The batch write of [`EventWriter`].
pub struct InsertEvents;

impl BatchWrite for InsertEvents {
    type Item = NewEvent;
    type Output = Stored;

    async fn write(&self, pool: &PgPool, items: &[NewEvent]) -> sqlx::Result<Vec<Stored>> {
        insert_events(pool, items).await
    }
}

/// Inserts events with their deliveries, skipping duplicates, in one statement (on a pool: its
/// own transaction; or inside a caller's). Answers each event in order.
async fn insert_events<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    events: &[NewEvent],
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
        .flat_map(|e| e.deliveries.iter().map(move |d| (e.id, d)));
    let (mut delivery_events, mut delivery_ids, mut kinds, mut targets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut filter_errors, mut ordering_keys) = (Vec::new(), Vec::new());
    for (event, d) in deliveries {
        delivery_events.push(event);
        delivery_ids.push(d.id);
        kinds.push(d.target_kind.as_str());
        targets.push(d.target.as_str());
        filter_errors.push(d.filter_error.as_deref());
        ordering_keys.push(d.ordering_key.as_deref());
    }
    let (inserted, _): (Vec<Uuid>, bool) = sqlx::query_as(
        r#"
        WITH event AS (
            INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body,
                                replay_digest)
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::jsonb[], $8::bytea[], $14::bytea[])
            -- Either key: the sender's id (events_dedupe) or the replay digest.
            ON CONFLICT DO NOTHING
            RETURNING id, namespace
        ), delivery AS (
            INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status, last_error,
                                    ordering_key, position)
            SELECT d.id, event.id, event.namespace, d.kind, d.target,
                   CASE WHEN d.filter_error IS NULL THEN 'pending' ELSE 'filtered_error' END, d.filter_error,
                   d.ordering_key,
                   CASE WHEN d.ordering_key IS NOT NULL THEN nextval('delivery_position') END
            FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::text[], $15::text[], $16::text[])
                 AS d (event_id, id, kind, target, filter_error, ordering_key)
            JOIN event ON event.id = d.event_id
            RETURNING id, namespace, target_kind, target, status, ordering_key, position
        ), queued AS (
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        ordering_key, position)
            SELECT id, namespace, target_kind, target, now(), ordering_key, position
            FROM delivery WHERE status = 'pending'
        ), targets AS (
            SELECT string_agg(DISTINCT namespace || '/' || target_kind || '/' || target, E'\n') AS names
            FROM delivery WHERE status = 'pending'
        )
        SELECT
            ARRAY(SELECT id FROM event),
            -- The notification names the targets, one a line; too many for a payload (under
            -- 8000 bytes), it names none, which asks the dispatchers for a scan of the queue.
            (SELECT pg_notify($13, CASE WHEN octet_length(names) < 7900 THEN names ELSE '' END)
             FROM targets WHERE names IS NOT NULL) IS NULL
        "#,
    )
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
    .fetch_one(executor)
    .await?;
    Ok(events
        .iter()
        .map(|event| {
            if inserted.contains(&event.id) {
                Stored::New {
                    deliveries: event.deliveries.len() as u64,
                }
            } else {
                Stored::Duplicate
            }
        })
        .collect())
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

/// Stores a published event with its deliveries and records the answer under the idempotency
/// key, all in one transaction. A key already in use (and not expired) is not
/// stored again: its first answer is returned, or `KeyReused` when the body differs.
pub async fn store_published(
    pool: &PgPool,
    event: &NewEvent,
    idempotency: &Idempotency<'_>,
    key_ttl: std::time::Duration,
) -> sqlx::Result<Published> {
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
    let stored = insert_events(&mut *tx, std::slice::from_ref(event))
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
