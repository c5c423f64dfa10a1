//! Writing events and their deliveries: one statement, so an event is stored together with all
//! of its deliveries or not at all, and a duplicate creates nothing.

use sqlx::PgPool;
use uuid::Uuid;

/// An accepted event, as it goes into the database.
pub struct NewEvent<'a> {
    pub id: Uuid,
    pub namespace: &'a str,
    /// The WebhookSource name, or `""` for a published event.
    pub source: &'a str,
    pub provider: Option<&'a str>,
    pub external_id: &'a str,
    pub event_type: &'a str,
    pub headers: serde_json::Value,
    pub body: &'a [u8],
}

/// One delivery of the event to a target.
pub struct NewDelivery {
    pub id: Uuid,
    pub target_kind: &'static str,
    pub target: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// The event is new; this many deliveries were created with it.
    New { deliveries: u64 },
    /// An event with the same (namespace, source, external id) exists; nothing was written.
    Duplicate,
}

/// Channel dispatchers LISTEN on; notified in the same statement as the insert, so the
/// notification is delivered exactly when the rows are committed.
pub const DELIVERIES_CHANNEL: &str = "hookline_deliveries";

/// Stores the event and its deliveries atomically. Returns only after the commit, so a `New` or
/// `Duplicate` answer means the event is durable.
pub async fn store_event(
    pool: &PgPool,
    event: &NewEvent<'_>,
    deliveries: &[NewDelivery],
) -> sqlx::Result<Stored> {
    insert_event(pool, event, deliveries).await
}

/// The insert itself, on a pool (its own transaction) or inside a caller's transaction.
async fn insert_event<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    event: &NewEvent<'_>,
    deliveries: &[NewDelivery],
) -> sqlx::Result<Stored> {
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let kinds: Vec<&str> = deliveries.iter().map(|d| d.target_kind).collect();
    let targets: Vec<&str> = deliveries.iter().map(|d| d.target.as_str()).collect();
    let (inserted, delivery_count, _): (bool, i64, bool) = sqlx::query_as(
        r#"
        WITH event AS (
            INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT ON CONSTRAINT events_dedupe DO NOTHING
            RETURNING id
        ), delivery AS (
            INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
            SELECT d.id, event.id, $2, d.kind, d.target
            FROM event CROSS JOIN UNNEST($9::uuid[], $10::text[], $11::text[]) AS d (id, kind, target)
            RETURNING 1
        )
        SELECT
            EXISTS (SELECT 1 FROM event),
            (SELECT count(*) FROM delivery),
            (CASE WHEN EXISTS (SELECT 1 FROM delivery) THEN pg_notify($12, '') END) IS NULL
        "#,
    )
    .bind(event.id)
    .bind(event.namespace)
    .bind(event.source)
    .bind(event.provider)
    .bind(event.external_id)
    .bind(event.event_type)
    .bind(&event.headers)
    .bind(event.body)
    .bind(&ids)
    .bind(&kinds)
    .bind(&targets)
    .bind(DELIVERIES_CHANNEL)
    .fetch_one(executor)
    .await?;
    Ok(if inserted {
        Stored::New {
            deliveries: delivery_count as u64,
        }
    } else {
        Stored::Duplicate
    })
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

/// Stores a published event with its deliveries and, when given, records `answer` under the
/// idempotency key, all in one transaction. A key already in use (and not expired) is not
/// stored again: its first answer is returned, or `KeyReused` when the body differs.
pub async fn store_published(
    pool: &PgPool,
    event: &NewEvent<'_>,
    deliveries: &[NewDelivery],
    idempotency: Option<&Idempotency<'_>>,
    key_ttl: std::time::Duration,
) -> sqlx::Result<Published> {
    let mut tx = pool.begin().await?;
    if let Some(&Idempotency {
        key, request_hash, ..
    }) = idempotency
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
        .bind(event.namespace)
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
            .bind(event.namespace)
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
    let stored = insert_event(&mut *tx, event, deliveries).await?;
    if let Some(idempotency) = idempotency {
        let answer = match stored {
            Stored::New { .. } => &idempotency.answer_if_new,
            Stored::Duplicate => &idempotency.answer_if_duplicate,
        };
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE namespace = $1 AND key = $2",
        )
        .bind(event.namespace)
        .bind(idempotency.key)
        .bind(answer.status as i16)
        .bind(&answer.body)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Published::Stored(stored))
}
