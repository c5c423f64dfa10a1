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
    .fetch_one(pool)
    .await?;
    Ok(if inserted {
        Stored::New {
            deliveries: delivery_count as u64,
        }
    } else {
        Stored::Duplicate
    })
}
