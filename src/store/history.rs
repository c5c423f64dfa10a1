//! Reading the history for the delivery console: events with filters and cursor pagination,
//! one event with its deliveries and every attempt, and redelivery.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Filters of the event log; every field is optional.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    pub namespace: Option<String>,
    /// A WebhookSource name, or `-` for published events.
    pub source: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Events with at least one delivery in this status.
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<Uuid>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    pub id: Uuid,
    pub namespace: String,
    pub source: String,
    pub provider: Option<String>,
    pub external_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub received_at: DateTime<Utc>,
    pub deliveries: i64,
    pub succeeded: i64,
    pub pending: i64,
    pub dead: i64,
}

/// The event log's statement: the page's events first (newest first, partition by partition
/// through their primary keys), then each one's deliveries counted (a probe of each period's
/// index of deliveries by event), so a page reads about its own rows.
pub const LIST_EVENTS: &str =
    "SELECT e.id, e.namespace, e.source, e.provider, e.external_id, e.event_type, e.received_at,
        c.deliveries, c.succeeded, c.pending, c.dead
 FROM events e
 CROSS JOIN LATERAL (
     SELECT count(*) AS deliveries,
            count(*) FILTER (WHERE d.status = 'succeeded') AS succeeded,
            count(*) FILTER (WHERE d.status IN ('pending', 'failed')) AS pending,
            count(*) FILTER (WHERE d.status = 'dead') AS dead
     FROM delivery_states d WHERE d.event_id = e.id) c
 WHERE ($1::text IS NULL OR e.namespace = $1)
   AND ($2::text IS NULL OR e.source = $2)
   AND ($3::text IS NULL OR e.event_type = $3)
   AND ($4::timestamptz IS NULL OR e.received_at >= $4)
   AND ($5::timestamptz IS NULL OR e.received_at < $5)
   AND ($6::uuid IS NULL OR e.id < $6)
   AND ($7::text IS NULL OR EXISTS (SELECT 1 FROM delivery_states x WHERE x.event_id = e.id AND x.status = $7))
   AND ($9::text[] IS NULL OR e.namespace = ANY ($9))
 ORDER BY e.id DESC
 LIMIT $8";

/// One page of events, newest first; ids are UUIDv7, so the id orders by arrival. `allowed`
/// limits the namespaces (a scoped admin token); `None` for all.
pub async fn list_events(
    pool: &PgPool,
    filter: &EventFilter,
    allowed: Option<&[String]>,
) -> sqlx::Result<(Vec<EventSummary>, Option<Uuid>)> {
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let source = filter.source.as_deref().map(|s| if s == "-" { "" } else { s });
    let rows: Vec<EventSummary> = sqlx::query_as(LIST_EVENTS)
        .persistent(false)
        .bind(filter.namespace.as_deref())
        .bind(source)
        .bind(filter.event_type.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.cursor)
        .bind(filter.status.as_deref())
        .bind(limit + 1)
        .bind(allowed)
        .fetch_all(pool)
        .await?;
    let mut rows = rows;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|e| e.id)
    } else {
        None
    };
    Ok((rows, next))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    pub id: Uuid,
    pub namespace: String,
    pub source: String,
    pub provider: Option<String>,
    pub external_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub received_at: DateTime<Utc>,
    pub headers: serde_json::Value,
    #[serde(skip)]
    pub body: Vec<u8>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    pub id: Uuid,
    pub target_kind: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    /// When it is sent next; none while it is being sent or once it is finished.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Its key, when its target delivers in order.
    pub ordering_key: Option<String>,
    /// Dead, and holding its ordering key until it is redelivered or skipped.
    pub blocks_key: bool,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AttemptDetail {
    pub delivery_id: Uuid,
    pub attempt_number: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i16>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub response_headers: Option<serde_json::Value>,
    pub response_body: Option<String>,
}

pub async fn event(
    pool: &PgPool,
    id: Uuid,
) -> sqlx::Result<Option<(EventDetail, Vec<DeliveryDetail>, Vec<AttemptDetail>)>> {
    let Some(event) = sqlx::query_as::<_, EventDetail>(
        "SELECT id, namespace, source, provider, external_id, event_type, received_at, headers, body
         FROM events WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    // The state as every reader shows it (migrations/0022).
    let deliveries = sqlx::query_as(
        "SELECT id, target_kind, target, state AS status, attempts, next_attempt_at, last_error, ordering_key,
                blocks_key
         FROM delivery_states WHERE event_id = $1 ORDER BY target_kind, target",
    )
    .persistent(false)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let attempts = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt_number, a.started_at, a.duration_ms, a.status_code, a.error_class,
                a.error, a.response_headers, a.response_body
         FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.event_id = $1 ORDER BY a.delivery_id, a.attempt_number",
    )
    .persistent(false)
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some((event, deliveries, attempts)))
}

/// Sends a delivery again now, whatever became of it, unless it is being sent; returns false
/// when there is no such delivery (or it is being sent). The dispatcher records the new attempt.
pub async fn redeliver(pool: &PgPool, delivery_id: Uuid, allowed: Option<&[String]>) -> sqlx::Result<bool> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM deliveries WHERE id = $1 AND ($2::text[] IS NULL OR namespace = ANY ($2))",
    )
    .bind(delivery_id)
    .bind(allowed)
    .fetch_all(pool)
    .await?;
    Ok(requeue(pool, &ids).await? > 0)
}

/// Lets a key blocked by a dead delivery (`ordering.onDead: block`) go on without it: the dead
/// delivery leaves the queue, kept as dead, and the key's next delivery goes. Whether it was
/// blocking.
pub async fn skip_blocked(
    pool: &PgPool,
    delivery_id: Uuid,
    allowed: Option<&[String]>,
) -> sqlx::Result<bool> {
    let skipped = sqlx::query(
        "WITH skipped AS (
             DELETE FROM delivery_queue q
             WHERE q.delivery_id = $1 AND q.next_attempt_at = 'infinity' AND q.ordering_key IS NOT NULL
               AND ($2::text[] IS NULL OR q.namespace = ANY ($2))
             RETURNING delivery_id
         )
         -- The row folds in the attempts so far (migrations/0022): dead, as its last attempt left it.
         UPDATE deliveries d SET status = s.status, attempts = s.attempts, lease_until = NULL,
                                 last_error = s.last_error || ' (skipped: its key went on without it)', updated_at = now()
         FROM delivery_states s
         WHERE s.id = d.id AND d.id IN (SELECT delivery_id FROM skipped)",
    )
    .bind(delivery_id)
    .bind(allowed)
    .execute(pool)
    .await?
    .rows_affected();
    if skipped > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::events::DELIVERIES_CHANNEL)
            .execute(pool)
            .await?;
    }
    Ok(skipped > 0)
}

/// Sends every dead delivery of a target (since a time) again; returns how many.
pub async fn redeliver_dead(
    pool: &PgPool,
    target: &crate::api::TargetKey,
    since: Option<DateTime<Utc>>,
) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM delivery_states
         WHERE namespace = $1 AND target_kind = $2 AND target = $3 AND status = 'dead'
           AND ($4::timestamptz IS NULL OR settled_at >= $4)",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .bind(since)
    .fetch_all(pool)
    .await?;
    requeue(pool, &ids).await
}

/// Puts deliveries in the queue, due now, and marks them pending; those being sent are left
/// out. Wakes the dispatchers. Returns how many were requeued.
async fn requeue(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let requeued = requeue_in(&mut tx, ids, None).await?;
    if requeued > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(super::events::DELIVERIES_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(requeued)
}

/// [`requeue`] inside a caller's transaction, without the wake-up; `replay` marks the
/// deliveries as that replay's.
pub(super) async fn requeue_in(
    tx: &mut sqlx::PgConnection,
    ids: &[Uuid],
    replay: Option<Uuid>,
) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    // Their events are held until this commits, as a foreign key held them: retention skips
    // them (and a delivery it is deleting is not found below).
    sqlx::query(
        "SELECT 1 FROM events e WHERE e.id IN (SELECT d.event_id FROM deliveries d WHERE d.id = ANY ($1))
         FOR KEY SHARE OF e",
    )
    .persistent(false)
    .bind(ids)
    .execute(&mut *tx)
    .await?;
    // A claim under way deletes their queue rows and notes them in `claims` (store::leases):
    // wait for it here, so that the statements below, with snapshots taken after, see the note
    // (an insert that waited on the deleted row would otherwise queue a delivery being sent).
    sqlx::query("SELECT 1 FROM delivery_queue WHERE delivery_id = ANY ($1) ORDER BY delivery_id FOR UPDATE")
        .persistent(false)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    // The rows of those leased as they were stored, in id order as the recorder locks them
    // (before claims' notes): every outcome that counted for them has committed once this is
    // granted, and none counts after (see store::leases).
    sqlx::query(
        "SELECT 1 FROM deliveries d WHERE d.id = ANY ($1) AND d.lease_until IS NOT NULL ORDER BY d.id FOR UPDATE OF d",
    )
    .persistent(false)
    .bind(ids)
    .execute(&mut *tx)
    .await?;
    // And the notes, for the same reason.
    sqlx::query("SELECT 1 FROM claims WHERE deliveries ?| $1::uuid[]::text[] ORDER BY id FOR UPDATE")
        .persistent(false)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(sqlx::query(&format!(
        "WITH noted AS (
             {out_on_claims} AND c.deliveries ?| $1::uuid[]::text[]
         ), queued AS (
             INSERT INTO delivery_queue AS q (delivery_id, namespace, target_kind, target, next_attempt_at, attempts,
                                              ordering_key, position, event_id)
             -- Numbered after every attempt recorded, also one whose claim had expired, and one
             -- whose claim or lease on its row expired before its outcome came (see
             -- store::leases); in its key's order at the place it had. One being sent on a live
             -- claim or lease is left out.
             SELECT d.id, d.namespace, d.target_kind, d.target, now(),
                    GREATEST(d.attempts + CASE WHEN d.lease_until IS NOT NULL THEN 1 ELSE 0 END,
                             (SELECT max(attempt_number) FROM attempts a WHERE a.delivery_id = d.id),
                             (SELECT max(n.before) + 1 FROM noted n WHERE n.id = d.id)),
                    d.ordering_key, d.position, d.event_id
             FROM deliveries d WHERE d.id = ANY ($1)
               AND NOT (coalesce(d.lease_until > now(), false) AND {out_on_row})
               AND NOT EXISTS (SELECT 1 FROM noted n WHERE n.id = d.id AND n.lease_until > now())
             ON CONFLICT (delivery_id) DO UPDATE SET next_attempt_at = now(), claimed = false
                 WHERE NOT (q.claimed AND q.next_attempt_at > now())
             RETURNING delivery_id, attempts
         ), unnoted AS (
             -- Out of the notes of ended claims not yet taken over: the pass leaves them.
             UPDATE claims c SET deliveries = c.deliveries - ARRAY(SELECT delivery_id::text FROM queued)
             WHERE c.deliveries ?| ARRAY(SELECT delivery_id::text FROM queued)
         )
         -- The row is the checkpoint (migrations/0022): pending, after the attempts so far.
         UPDATE deliveries d SET status = 'pending', lease_until = NULL, updated_at = now(),
                                 attempts = (SELECT q.attempts FROM queued q WHERE q.delivery_id = d.id),
                                 last_error = (SELECT s.last_error FROM delivery_states s WHERE s.id = d.id),
                                 replay_id = COALESCE($2, d.replay_id)
         WHERE d.id = ANY (ARRAY(SELECT delivery_id FROM queued))",
        out_on_claims = super::leases::OUT_ON_CLAIMS,
        out_on_row = super::leases::OUT_ON_ROW
    ))
    .persistent(false)
    .bind(ids)
    .bind(replay)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}
