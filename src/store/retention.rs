//! Retention: a period of history (see [`super::partitions`]) older than the retention is dropped
//! whole, its three partitions detached and dropped without holding up ingest or dispatch.
//! A period with deliveries still queued (waiting, retrying, a key's head in flight, or a dead
//! head blocking its key) or out on a lease of their rows is not dropped: nothing acknowledged is lost. Its events that have nothing queued are
//! deleted in small batches instead, as is the expired part of the history from before
//! partitioning (`*_legacy`, one period reaching back to the start), until it can go whole.
//! Namespaces with a shorter retention of their own have their older events deleted the same
//! way inside the periods that are kept, and their sources' counts with them.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use super::partitions::{self, Period};

/// Rows deleted per statement where rows are deleted.
const BATCH: i64 = 500;

/// Held (per session) by the gateway sweeping, so replicas do not drop the same period twice.
const SWEEP_LOCK: i64 = 0x686c_7265_7465_6e74; // "hlretent"

/// How long history is kept, and the period of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// History older than this is dropped, a period at a time.
    pub retention: Duration,
    /// Namespaces whose history goes sooner than `retention` (see [`Policy::with_namespaces`]).
    pub namespaces: BTreeMap<String, Duration>,
    /// The time one partition covers.
    pub period: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the retention of namespace {namespace} ({}h) is longer than the retention ({}h): history is \
     dropped a period at a time at the retention; raise it instead",
    .keep.as_secs() / 3600,
    .retention.as_secs() / 3600
)]
pub struct LongerThanRetention {
    pub namespace: String,
    pub keep: Duration,
    pub retention: Duration,
}

impl Policy {
    /// Everything kept for `retention`, in periods of a day.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            namespaces: BTreeMap::new(),
            period: super::partitions::DEFAULT_PERIOD,
        }
    }

    /// Namespaces kept for less than the retention. Longer is refused: a period is dropped
    /// whole when it passes the retention, whatever namespaces it holds.
    pub fn with_namespaces(
        mut self,
        namespaces: BTreeMap<String, Duration>,
    ) -> Result<Self, LongerThanRetention> {
        if let Some((namespace, keep)) = namespaces.iter().find(|(_, keep)| **keep > self.retention) {
            return Err(LongerThanRetention {
                namespace: namespace.clone(),
                keep: *keep,
                retention: self.retention,
            });
        }
        self.namespaces = namespaces;
        Ok(self)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Periods whose partitions were dropped.
    pub periods_dropped: u64,
    /// Expired periods kept because deliveries of theirs are still queued.
    pub periods_held: u64,
    /// Events deleted row by row (with their deliveries and attempts): from held periods, the
    /// legacy history, and namespaces with a shorter retention.
    pub events: u64,
    pub idempotency_keys: u64,
    /// Minutes of the sources' accepted and refused counts.
    pub ingest_counts: u64,
    /// Activity minutes and circuit changes (the console's pictures).
    pub activity: u64,
}

/// One pass: makes the periods ahead, drops or thins the expired ones, and deletes expired
/// idempotency keys, ingest counts and activity. Another replica's pass in progress makes
/// this one skip the history.
pub async fn sweep(pool: &PgPool, policy: &Policy) -> sqlx::Result<Swept> {
    let cutoff = cutoff(policy.retention);
    let mut swept = Swept::default();
    // Not making them now is not fatal while periods ahead are left (three are made).
    if let Err(err) = partitions::make_ahead(pool, policy.period).await {
        tracing::warn!("making the history's next partitions failed (retrying next pass): {err}");
    }
    let mut lock = pool.acquire().await?;
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *lock)
        .await?;
    if held {
        let history = sweep_history(pool, policy, &mut swept).await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SWEEP_LOCK)
            .execute(&mut *lock)
            .await?;
        history?;
    }
    swept.idempotency_keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .execute(pool)
        .await?
        .rows_affected();
    // The sources' counts cover what the history holds: a namespace's, what its own holds.
    for table in ["ingest_rejections", "ingest_minutes"] {
        swept.ingest_counts += sqlx::query(&format!("DELETE FROM {table} WHERE minute < $1"))
            .persistent(false)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected();
        for (namespace, keep) in &policy.namespaces {
            swept.ingest_counts += sqlx::query(&format!(
                "DELETE FROM {table} WHERE namespace = $1 AND minute < $2"
            ))
            .persistent(false)
            .bind(namespace)
            .bind(self::cutoff(*keep))
            .execute(pool)
            .await?
            .rows_affected();
        }
    }
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

fn cutoff(keep: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
}

async fn sweep_history(pool: &PgPool, policy: &Policy, swept: &mut Swept) -> sqlx::Result<()> {
    // A drop an earlier pass did not finish.
    partitions::finish_drops(pool).await?;
    let cutoff = cutoff(policy.retention);
    let cutoff_ms = cutoff.timestamp_millis();
    for period in partitions::list(pool).await? {
        let expired = period.until_ms <= cutoff_ms;
        if expired && !partitions::has_queued(pool, &period).await? {
            partitions::drop_period(pool, &period).await?;
            swept.periods_dropped += 1;
            continue;
        }
        if expired {
            swept.periods_held += 1;
        }
        if expired || period.from_ms.is_none() {
            swept.events += delete_expired_events(pool, &period, cutoff, None).await?;
        }
        for (namespace, keep) in &policy.namespaces {
            let cutoff = self::cutoff(*keep);
            if period.from_ms.is_none_or(|from| from < cutoff.timestamp_millis()) {
                swept.events += delete_expired_events(pool, &period, cutoff, Some(namespace)).await?;
            }
        }
    }
    Ok(())
}

/// Deletes the events of a period (of one namespace, or all) made before `cutoff` that have
/// nothing queued, with their deliveries and attempts, batch by batch.
async fn delete_expired_events(
    pool: &PgPool,
    period: &Period,
    cutoff: chrono::DateTime<Utc>,
    namespace: Option<&str>,
) -> sqlx::Result<u64> {
    let (lower, _) = period.id_bounds();
    let upper = partitions::id_floor(period.until_ms.min(cutoff.timestamp_millis()));
    let (events, deliveries, attempts) = (
        period.partition("events"),
        period.partition("deliveries"),
        period.partition("attempts"),
    );
    let statement = format!(
        "WITH doomed AS (
             SELECT e.id FROM {events} e
             WHERE e.id >= $1 AND e.id < $2 {of_namespace}
               AND NOT EXISTS (SELECT 1 FROM {deliveries} d JOIN delivery_queue q ON q.delivery_id = d.id
                               WHERE d.event_id = e.id)
               -- Nor out on a lease of its row: the lease stays on the row after the outcome,
               -- which is the attempt's (store::leases).
               AND NOT EXISTS (SELECT 1 FROM {deliveries} d
                               WHERE d.event_id = e.id AND {out_on_row})
               -- Nor out on a claim from the queue (store::leases): a few thousand at most.
               AND NOT EXISTS (SELECT 1 FROM {deliveries} d
                               WHERE d.event_id = e.id
                                 AND d.id = ANY (ARRAY(SELECT id FROM ({out_on_claims}) o)))
             ORDER BY e.id
             LIMIT $3
             FOR UPDATE SKIP LOCKED
         ), delivery AS (
             DELETE FROM {deliveries} d USING doomed WHERE d.event_id = doomed.id RETURNING d.id
         ), attempt AS (
             DELETE FROM {attempts} a USING delivery WHERE a.delivery_id = delivery.id
         ), queued AS (
             -- Queued since this statement's snapshot (a redelivery racing it): goes with its
             -- delivery, as a foreign key's cascade did.
             DELETE FROM delivery_queue q USING delivery WHERE q.delivery_id = delivery.id
         )
         DELETE FROM {events} e USING doomed WHERE e.id = doomed.id",
        out_on_claims = super::leases::OUT_ON_CLAIMS,
        out_on_row = super::leases::OUT_ON_ROW,
        of_namespace = if namespace.is_some() {
            "AND e.namespace = $4"
        } else {
            ""
        }
    );
    let mut deleted = 0;
    loop {
        let mut query = sqlx::query(&statement)
            .persistent(false)
            .bind(lower)
            .bind(upper)
            .bind(BATCH);
        if let Some(namespace) = namespace {
            query = query.bind(namespace);
        }
        let batch = query.execute(pool).await?.rows_affected();
        deleted += batch;
        if batch < BATCH as u64 {
            return Ok(deleted);
        }
        // Let other work in between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sweeps every `interval` until the task is dropped.
pub async fn run(pool: PgPool, policy: Policy, interval: Duration) {
    loop {
        match sweep(&pool, &policy).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(?swept, "retention sweep"),
            Ok(_) => {}
            Err(err) => tracing::warn!("retention sweep failed (retrying later): {err}"),
        }
        tokio::time::sleep(interval).await;
    }
}
