//! Retention: history older than the retention period is deleted in small batches, so ingest
//! and dispatch never wait behind one large delete. Events whose deliveries are still waiting
//! (pending, retrying or in flight) are kept whatever their age: nothing acknowledged is dropped.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

/// Rows deleted per statement.
const BATCH: i64 = 500;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub events: u64,
    pub idempotency_keys: u64,
    pub rejection_counts: u64,
    /// Activity minutes and circuit changes (the console's pictures).
    pub activity: u64,
}

/// One pass: deletes what is older than `retention` (events with their deliveries and attempts,
/// expired idempotency keys, old rejection counts), batch by batch.
pub async fn sweep(pool: &PgPool, retention: Duration) -> sqlx::Result<Swept> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut swept = Swept::default();
    loop {
        // Deliveries and attempts go with their event (ON DELETE CASCADE).
        let deleted = sqlx::query(
            "DELETE FROM events WHERE id IN (
                 SELECT e.id FROM events e
                 WHERE e.received_at < $1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN delivery_queue q ON q.delivery_id = d.id
                                   WHERE d.event_id = e.id)
                 ORDER BY e.received_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .persistent(false)
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        swept.events += deleted;
        if deleted < BATCH as u64 {
            break;
        }
        // Let other work in between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    swept.idempotency_keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .execute(pool)
        .await?
        .rows_affected();
    swept.rejection_counts = sqlx::query("DELETE FROM ingest_rejections WHERE minute < $1")
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    // The pictures cover the last hour; a day of them is kept (at most the retention).
    let activity_cutoff = cutoff.max(Utc::now() - chrono::Duration::days(1));
    for table in ["target_minutes", "circuit_changes"] {
        let column = if table == "target_minutes" { "minute" } else { "at" };
        swept.activity += sqlx::query(&format!("DELETE FROM {table} WHERE {column} < $1"))
            .persistent(false)
            .bind(activity_cutoff)
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(swept)
}

/// Sweeps every `interval` until the task is dropped.
pub async fn run(pool: PgPool, retention: Duration, interval: Duration) {
    loop {
        match sweep(&pool, retention).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(?swept, "retention sweep"),
            Ok(_) => {}
            Err(err) => tracing::warn!("retention sweep failed (retrying later): {err}"),
        }
        tokio::time::sleep(interval).await;
    }
}
