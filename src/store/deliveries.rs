//! The delivery queue: claiming due work (`FOR UPDATE SKIP LOCKED`), recording attempts, and the
//! per-target runtime state shared by every gateway replica.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Identifies a target across the database: namespace, kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl TargetKey {
    /// The form the claim query compares against: `namespace/kind/name`.
    pub fn joined(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// A delivery taken for sending, with what is needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub namespace: String,
    pub target_kind: String,
    pub target: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub source: String,
    pub event_type: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub received_at: DateTime<Utc>,
}

impl Claimed {
    pub fn target_key(&self) -> TargetKey {
        TargetKey {
            namespace: self.namespace.clone(),
            kind: self.target_kind.clone(),
            name: self.target.clone(),
        }
    }
}

/// Claims up to `limit` due deliveries (and any whose claim expired because a worker died),
/// skipping rows other workers hold, targets paused at runtime, and targets in `excluded`
/// (`TargetKey::joined`).
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    excluded: &[String],
) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        r#"
        WITH due AS (
            SELECT id FROM deliveries d
            WHERE ((status IN ('pending', 'failed') AND next_attempt_at <= now())
                   OR (status = 'in_flight' AND lease_until < now()))
              AND NOT (namespace || '/' || target_kind || '/' || target = ANY ($3))
              AND NOT EXISTS (
                  SELECT 1 FROM target_states t
                  WHERE t.namespace = d.namespace AND t.target_kind = d.target_kind AND t.target = d.target
                    AND t.paused_reason IS NOT NULL)
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE deliveries d
        SET status = 'in_flight', lease_until = now() + $2 * interval '1 millisecond', updated_at = now()
        FROM due, events e
        WHERE d.id = due.id AND e.id = d.event_id
        RETURNING d.id, d.namespace, d.target_kind, d.target, d.attempts, e.source, e.event_type, e.body,
                  e.headers ->> 'content-type' AS content_type, e.received_at
        "#,
    )
    .bind(limit)
    .bind(lease.as_millis() as i64)
    .bind(excluded)
    .fetch_all(pool)
    .await
}

/// When the next delivery falls due (targets paused at runtime excluded).
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(next_attempt_at) FROM deliveries d
         WHERE status IN ('pending', 'failed')
           AND NOT EXISTS (
               SELECT 1 FROM target_states t
               WHERE t.namespace = d.namespace AND t.target_kind = d.target_kind AND t.target = d.target
                 AND t.paused_reason IS NOT NULL)",
    )
    .fetch_one(pool)
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

/// Records the attempt and moves the delivery on, in one statement. A delivery that is no longer
/// in flight (cancelled meanwhile) keeps its status; the attempt is still kept as history.
pub async fn record_attempt(
    pool: &PgPool,
    delivery: &Claimed,
    attempt: &Attempt,
    after: After,
    last_error: Option<&str>,
) -> sqlx::Result<()> {
    let (status, next) = match after {
        After::Succeeded => ("succeeded", None),
        After::RetryAt(at) => ("failed", Some(at)),
        After::Dead => ("dead", None),
    };
    sqlx::query(
        r#"
        WITH attempt AS (
            INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code,
                                  error_class, error, response_headers, response_body)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        )
        UPDATE deliveries
        SET status = $10, attempts = $2, next_attempt_at = COALESCE($11, next_attempt_at),
            lease_until = NULL, last_error = $12, updated_at = now()
        WHERE id = $1 AND status = 'in_flight'
        "#,
    )
    .bind(delivery.id)
    .bind(delivery.attempts + 1)
    .bind(attempt.started_at)
    .bind(attempt.duration_ms)
    .bind(attempt.status_code)
    .bind(attempt.error_class)
    .bind(attempt.error.as_deref())
    .bind(attempt.response_headers.as_ref())
    .bind(attempt.response_body.as_deref())
    .bind(status)
    .bind(next)
    .bind(last_error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts a claimed delivery back without spending an attempt (circuit open, target paused, no
/// signing secret yet), due again at `at`.
pub async fn release(pool: &PgPool, id: Uuid, at: DateTime<Utc>, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE deliveries
         SET status = CASE WHEN attempts = 0 THEN 'pending' ELSE 'failed' END,
             next_attempt_at = $2, lease_until = NULL, last_error = $3, updated_at = now()
         WHERE id = $1 AND status = 'in_flight'",
    )
    .bind(id)
    .bind(at)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves every waiting delivery of a target to `until` (its circuit opened), so the queue does
/// not keep offering work that cannot be sent.
pub async fn defer_target(pool: &PgPool, target: &TargetKey, until: DateTime<Utc>) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $4, updated_at = now()
         WHERE namespace = $1 AND target_kind = $2 AND target = $3
           AND status IN ('pending', 'failed') AND next_attempt_at < $4",
    )
    .bind(&target.namespace)
    .bind(&target.kind)
    .bind(&target.name)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Records a target's circuit state (for status and other replicas' information).
pub async fn set_circuit(pool: &PgPool, target: &TargetKey, circuit: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO target_states (namespace, target_kind, target, circuit, circuit_since)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (namespace, target_kind, target)
         DO UPDATE SET circuit = EXCLUDED.circuit, circuit_since = now()
         WHERE target_states.circuit <> EXCLUDED.circuit",
    )
    .bind(&target.namespace)
    .bind(&target.kind)
    .bind(&target.name)
    .bind(circuit)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pauses a target for every replica (the endpoint answered 410 Gone).
pub async fn pause_target(pool: &PgPool, target: &TargetKey, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO target_states (namespace, target_kind, target, paused_reason, paused_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (namespace, target_kind, target)
         DO UPDATE SET paused_reason = EXCLUDED.paused_reason, paused_at = now()",
    )
    .bind(&target.namespace)
    .bind(&target.kind)
    .bind(&target.name)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deliveries waiting to be sent (pending or awaiting a retry).
pub async fn count_pending(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'failed', 'in_flight')")
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
    .bind(&target.kind)
    .bind(&target.name)
    .bind(candidate)
    .fetch_one(pool)
    .await
}
