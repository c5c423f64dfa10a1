//! Roll-ups for resource status: what a source received and refused, how a target's deliveries
//! fare over a recent window.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use sqlx::PgPool;

use super::activity::{LATENCY_BOUNDS_MS, Minute};
use crate::api::TargetKey;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct SourceStats {
    pub received: i64,
    pub rejected: i64,
    pub last_event_time: Option<DateTime<Utc>>,
}

pub async fn source_stats(pool: &PgPool, namespace: &str, source: &str) -> sqlx::Result<SourceStats> {
    let (received, last_event_time, rejected): (i64, Option<DateTime<Utc>>, Option<i64>) = sqlx::query_as(
        // Accepted events from the gateways' minutes, not a count of the history (which read
        // every event the source has, at every status refresh); the newest one is read from
        // the top of each day's index.
        "SELECT (SELECT coalesce(sum(accepted), 0)::bigint FROM ingest_minutes WHERE namespace = $1 AND source = $2),
                (SELECT max(received_at) FROM events WHERE namespace = $1 AND source = $2),
                (SELECT sum(count)::bigint FROM ingest_rejections WHERE namespace = $1 AND source = $2)",
    )
    .bind(namespace)
    .bind(source)
    .fetch_one(pool)
    .await?;
    Ok(SourceStats {
        received,
        rejected: rejected.unwrap_or(0),
        last_event_time,
    })
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct TargetStats {
    pub succeeded: i64,
    pub failed_attempts: i64,
    pub dead: i64,
    pub pending: i64,
    pub p95_latency_ms: Option<i64>,
    pub last_success_time: Option<DateTime<Utc>>,
    pub last_failure_time: Option<DateTime<Utc>>,
    pub last_failure_reason: Option<String>,
    pub circuit: Option<String>,
    pub paused_reason: Option<String>,
    /// Ordering keys held by a dead delivery (`ordering.onDead: block`), now.
    pub blocked_keys: i64,
    /// Deliveries created in the window without an ordering key (null or failing), of any
    /// target; meaningful for targets with `ordering`.
    pub unordered: i64,
}

#[derive(sqlx::FromRow)]
struct WindowRow {
    succeeded: i64,
    failed_attempts: i64,
    dead: i64,
    latency_buckets: Vec<i32>,
    last_success: Option<DateTime<Utc>>,
    last_failure: Option<DateTime<Utc>>,
    last_failure_reason: Option<String>,
    pending: i64,
    blocked_keys: i64,
    unordered: i64,
}

/// The statement of [`target_stats`] (public for the plan tests). What finished in the window
/// comes from the target's minutes (`store::activity`): at most one row a minute, however busy
/// the target, where counting its deliveries and attempts read all it ever had. The queue gives
/// what waits now; the window's deliveries are read only for `unordered` ($6).
pub const TARGET_STATS: &str = "WITH minutes AS MATERIALIZED (
         SELECT succeeded, failed, dead, latency_buckets, last_success_at, last_failure_at, last_failure_reason
         FROM target_minutes
         WHERE namespace = $1 AND target_kind = $2 AND target = $3 AND minute >= $4
     ), last_failure AS (
         SELECT last_failure_at, last_failure_reason FROM minutes
         WHERE last_failure_at IS NOT NULL ORDER BY last_failure_at DESC LIMIT 1
     )
     SELECT
         (SELECT coalesce(sum(succeeded), 0) FROM minutes)::bigint AS succeeded,
         (SELECT coalesce(sum(failed), 0) FROM minutes)::bigint AS failed_attempts,
         (SELECT coalesce(sum(dead), 0) FROM minutes)::bigint AS dead,
         ARRAY(SELECT sum(b)::int FROM minutes, unnest(latency_buckets) WITH ORDINALITY AS u (b, i)
               GROUP BY i ORDER BY i) AS latency_buckets,
         (SELECT max(last_success_at) FROM minutes) AS last_success,
         (SELECT last_failure_at FROM last_failure) AS last_failure,
         (SELECT last_failure_reason FROM last_failure) AS last_failure_reason,
         (SELECT count(*) FROM delivery_queue WHERE namespace = $1 AND target_kind = $2 AND target = $3)
             AS pending,
         (SELECT count(*) FROM delivery_queue
          WHERE namespace = $1 AND target_kind = $2 AND target = $3
            AND ordering_key IS NOT NULL AND next_attempt_at = 'infinity') AS blocked_keys,
         CASE WHEN $6 THEN
             (SELECT count(*) FROM deliveries
              WHERE namespace = $1 AND target_kind = $2 AND target = $3 AND created_at >= $5
                AND ordering_key IS NULL)
         ELSE 0 END AS unordered";

/// Delivery statistics of a target: what finished over `window` (in whole minutes, back to the
/// start of the minute `window` ago), what waits now. `unordered` is counted for an `ordered`
/// target only.
pub async fn target_stats(
    pool: &PgPool,
    target: &TargetKey,
    window: Duration,
    ordered: bool,
) -> sqlx::Result<TargetStats> {
    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    let first_minute = since
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(since);
    let row: WindowRow = sqlx::query_as(TARGET_STATS)
        .persistent(false)
        .bind(&target.namespace)
        .bind(target.kind.as_str())
        .bind(&target.name)
        .bind(first_minute)
        .bind(since)
        .bind(ordered)
        .fetch_one(pool)
        .await?;
    let latency = Minute {
        latency_buckets: row.latency_buckets,
        ..Minute::default()
    };
    let state: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT circuit, paused_reason FROM target_states WHERE namespace = $1 AND target_kind = $2 AND target = $3",
    )
    .bind(&target.namespace)
    .bind(target.kind.as_str())
    .bind(&target.name)
    .fetch_optional(pool)
    .await?;
    Ok(TargetStats {
        succeeded: row.succeeded,
        dead: row.dead,
        pending: row.pending,
        blocked_keys: row.blocked_keys,
        unordered: row.unordered,
        // Past the last bound, the last bound (as Prometheus' histogram_quantile does).
        p95_latency_ms: latency
            .p95_ms()
            .map(|ms| i64::from(ms.min(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]))),
        last_success_time: row.last_success,
        last_failure_time: row.last_failure,
        failed_attempts: row.failed_attempts,
        last_failure_reason: row.last_failure_reason,
        circuit: state.as_ref().map(|s| s.0.clone()),
        paused_reason: state.and_then(|s| s.1),
    })
}

/// What the running system says about targets: (circuit, runtime pause reason) of those that
/// have a row in `target_states`.
pub async fn target_states(
    pool: &PgPool,
    targets: &[&TargetKey],
) -> sqlx::Result<HashMap<TargetKey, (String, Option<String>)>> {
    let (namespaces, kinds, names) = super::key_columns(targets.iter().copied());
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT t.namespace, t.target_kind, t.target, t.circuit, t.paused_reason
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS w (namespace, target_kind, target)
         JOIN target_states t ON t.namespace = w.namespace AND t.target_kind = w.target_kind AND t.target = w.target",
    )
    .persistent(false)
    .bind(namespaces)
    .bind(kinds)
    .bind(names)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(namespace, kind, name, circuit, paused)| {
            let kind = kind.parse().ok()?;
            Some((
                TargetKey {
                    namespace,
                    kind,
                    name,
                },
                (circuit, paused),
            ))
        })
        .collect())
}

/// Deliveries waiting per target, in the order asked.
pub async fn pending_counts(pool: &PgPool, targets: &[&TargetKey]) -> sqlx::Result<Vec<i64>> {
    let (namespaces, kinds, names) = super::key_columns(targets.iter().copied());
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM delivery_queue q
                 WHERE q.namespace = w.namespace AND q.target_kind = w.target_kind AND q.target = w.target)
         FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS w (namespace, target_kind, target, n)
         ORDER BY w.n",
    )
    .persistent(false)
    .bind(namespaces)
    .bind(kinds)
    .bind(names)
    .fetch_all(pool)
    .await
}

/// Ordering keys each of `targets` has blocked by a dead head (`onDead: block`) now, in order;
/// an index range per target (`delivery_queue_waiting`: a blocked head waits at 'infinity').
pub async fn blocked_key_counts(pool: &PgPool, targets: &[&TargetKey]) -> sqlx::Result<Vec<i64>> {
    let (namespaces, kinds, names) = super::key_columns(targets.iter().copied());
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM delivery_queue q
                 WHERE q.namespace = w.namespace AND q.target_kind = w.target_kind AND q.target = w.target
                   AND q.next_attempt_at = 'infinity' AND q.ordering_key IS NOT NULL)
         FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS w (namespace, target_kind, target, n)
         ORDER BY w.n",
    )
    .persistent(false)
    .bind(namespaces)
    .bind(kinds)
    .bind(names)
    .fetch_all(pool)
    .await
}

/// What ingest did per source since the last flush: events accepted (by namespace, then source:
/// counting a known source allocates nothing) and requests refused, by reason.
#[derive(Debug, Default)]
pub struct IngestCounts {
    accepted: HashMap<String, HashMap<String, i64>>,
    rejected: HashMap<(String, String, String), i64>,
}

impl IngestCounts {
    pub fn accept(&mut self, namespace: &str, source: &str) {
        if let Some(count) = self.accepted.get_mut(namespace).and_then(|s| s.get_mut(source)) {
            *count += 1;
            return;
        }
        self.add_accepted(namespace, source, 1);
    }

    pub fn reject(&mut self, namespace: &str, source: &str, reason: &str) {
        *self
            .rejected
            .entry((namespace.to_owned(), source.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    /// Counts that could not be written, added back for the next flush.
    pub fn merge(&mut self, other: IngestCounts) {
        for (namespace, sources) in other.accepted {
            for (source, count) in sources {
                self.add_accepted(&namespace, &source, count);
            }
        }
        for (key, count) in other.rejected {
            *self.rejected.entry(key).or_default() += count;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty() && self.rejected.is_empty()
    }

    fn add_accepted(&mut self, namespace: &str, source: &str, count: i64) {
        *self
            .accepted
            .entry(namespace.to_owned())
            .or_default()
            .entry(source.to_owned())
            .or_default() += count;
    }
}

/// Adds ingest counts to the current minute, both kinds in one statement (so a failed flush,
/// retried whole, counts nothing twice).
pub async fn add_ingest_counts(pool: &PgPool, counts: &IngestCounts) -> sqlx::Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    let (mut namespaces, mut sources, mut accepted) = (vec![], vec![], vec![]);
    for (namespace, by_source) in &counts.accepted {
        for (source, count) in by_source {
            namespaces.push(namespace.as_str());
            sources.push(source.as_str());
            accepted.push(*count);
        }
    }
    let (mut refused_namespaces, mut refused_sources, mut reasons, mut refused) =
        (vec![], vec![], vec![], vec![]);
    for ((namespace, source, reason), count) in &counts.rejected {
        refused_namespaces.push(namespace.as_str());
        refused_sources.push(source.as_str());
        reasons.push(reason.as_str());
        refused.push(*count);
    }
    sqlx::query(
        "WITH accepted AS (
             INSERT INTO ingest_minutes AS m (namespace, source, minute, accepted)
             SELECT n, s, date_trunc('minute', now()), c
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t (n, s, c)
             ON CONFLICT (namespace, source, minute) DO UPDATE SET accepted = m.accepted + EXCLUDED.accepted
         )
         INSERT INTO ingest_rejections AS r (namespace, source, reason, minute, count)
         SELECT n, s, why, date_trunc('minute', now()), c
         FROM UNNEST($4::text[], $5::text[], $6::text[], $7::bigint[]) AS t (n, s, why, c)
         ON CONFLICT (namespace, source, reason, minute) DO UPDATE SET count = r.count + EXCLUDED.count",
    )
    .bind(&namespaces)
    .bind(&sources)
    .bind(&accepted)
    .bind(&refused_namespaces)
    .bind(&refused_sources)
    .bind(&reasons)
    .bind(&refused)
    .execute(pool)
    .await?;
    Ok(())
}

/// Cancels the deliveries still waiting for these targets (their resource was deleted);
/// history stays.
pub async fn cancel_pending(
    pool: &PgPool,
    namespace: &str,
    kind: crate::api::TargetKind,
    targets: &[String],
) -> sqlx::Result<u64> {
    // A claim or a release committing while the statement runs moves a delivery between the
    // queue and a claim the run did not lock (the claim's note, the release's queue row); the
    // run then reports it left, and the next run takes it. A few runs at most. A run locks
    // claims' notes, then leased rows, then queue rows, the recorder the other way round: a
    // deadlock Postgres breaks (the recorder retries its outcomes one by one) is another run.
    const RUNS: usize = 5;
    let mut cancelled = 0;
    for run in 1..=RUNS {
        let (now_cancelled, left) = match cancel_pending_once(pool, namespace, kind, targets).await {
            // 40P01: deadlock_detected.
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("40P01") && run < RUNS => {
                continue;
            }
            ran => ran?,
        };
        cancelled += now_cancelled;
        if left == 0 {
            return Ok(cancelled);
        }
    }
    tracing::warn!(
        namespace,
        targets = ?targets,
        "deliveries of deleted targets were still being claimed after {RUNS} runs of their cancel; \
         those claimed since are left to their claims"
    );
    Ok(cancelled)
}

/// One run of [`cancel_pending`]: how many it cancelled, and how many it saw left on claims it
/// had not locked or back in the queue.
async fn cancel_pending_once(
    pool: &PgPool,
    namespace: &str,
    kind: crate::api::TargetKind,
    targets: &[String],
) -> sqlx::Result<(u64, u64)> {
    let mut tx = pool.begin().await?;
    // The notes of the claims holding deliveries of these targets (store::leases), locked in id
    // order as the recorder locks them: once granted, every outcome that counted for them has
    // committed, and the statement below, with a snapshot taken after, sees it; none counts
    // after.
    let locked: Vec<i64> = sqlx::query_scalar(
        "SELECT c.id FROM claims c
         WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(c.deliveries) AS k (id)
                       CROSS JOIN LATERAL (SELECT 1 FROM deliveries d
                                           WHERE d.id = k.id::uuid AND d.namespace = $1 AND d.target_kind = $2
                                             AND d.target = ANY ($3)
                                           OFFSET 0) d)
         ORDER BY c.id
         FOR UPDATE",
    )
    .persistent(false)
    .bind(namespace)
    .bind(kind.as_str())
    .bind(targets)
    .fetch_all(&mut *tx)
    .await?;
    // And the deliveries being sent on a lease of their row with no outcome yet, for the same
    // reason (the recorder locks the row, see store::leases): this reads the last seconds of
    // the history, and a few more rows.
    let leased: Vec<uuid::Uuid> = sqlx::query_scalar(&format!(
        "SELECT d.id FROM deliveries d
         WHERE {may_be_leased}
           AND d.namespace = $1 AND d.target_kind = $2 AND d.target = ANY ($3)
           AND {out_on_row}
         ORDER BY d.id
         FOR UPDATE OF d",
        may_be_leased = super::leases::MAY_BE_LEASED,
        out_on_row = super::leases::OUT_ON_ROW
    ))
    .persistent(false)
    .bind(namespace)
    .bind(kind.as_str())
    .bind(targets)
    .fetch_all(&mut *tx)
    .await?;
    // Both statements below take the same parameters: the targets ($1–$3), the notes ($4) and
    // the rows ($5) locked above.
    let count = async |tx: &mut sqlx::PgConnection, statement: String| -> sqlx::Result<i64> {
        sqlx::query_scalar(&statement)
            .persistent(false)
            .bind(namespace)
            .bind(kind.as_str())
            .bind(targets)
            .bind(&locked)
            .bind(&leased)
            .fetch_one(tx)
            .await
    };
    let cancelled = count(&mut tx, format!(
        "WITH dequeued AS (
             DELETE FROM delivery_queue WHERE namespace = $1 AND target_kind = $2 AND target = ANY ($3)
             RETURNING delivery_id, attempts
         ), dequeued_cancelled AS (
             -- A claim being sent keeps its attempt number: a later redelivery counts on from it.
             -- The row folds in the attempts so far (migrations/0022).
             -- A lease its first attempt left on the row ends with it (store::leases).
             UPDATE deliveries d SET status = 'cancelled', attempts = GREATEST(s.attempts, q.attempts),
                                     last_error = s.last_error, updated_at = now(), lease_until = NULL
             FROM dequeued q JOIN delivery_states s ON s.id = q.delivery_id
             WHERE d.id = q.delivery_id
             RETURNING d.id
         ), unleased AS (
             -- Being sent on a lease of its row, locked above, and still no outcome: its attempt
             -- numbered. Each looked up in its own partition by a range of one key.
             UPDATE deliveries d SET status = 'cancelled', attempts = d.attempts + 1, lease_until = NULL,
                                     updated_at = now()
             FROM UNNEST($5::uuid[]) AS l (id)
             WHERE d.id >= l.id AND d.id <= l.id AND {out_on_row}
             RETURNING d.id
         ), noted AS (
             -- Only the notes locked above: a claim noted since may have an outcome counting
             -- that this snapshot cannot see (the next run sees it).
             {out_on_claims} AND c.id = ANY ($4)
         ), unclaimed AS (
             -- Out on a claim from the queue (see store::leases): cancelled, the attempt in
             -- flight numbered. Each looked up in its own partition by a range of one key.
             UPDATE deliveries d SET status = 'cancelled', attempts = GREATEST(s.attempts, n.before + 1),
                                     last_error = s.last_error, updated_at = now(), lease_until = NULL
             FROM noted n JOIN delivery_states s ON s.id = n.id
             WHERE d.id >= n.id AND d.id <= n.id
               AND d.namespace = $1 AND d.target_kind = $2 AND d.target = ANY ($3)
             RETURNING d.id, n.claim
         ), unnoted AS (
             -- Out of their claims' notes: the pass over ended claims leaves them, and their
             -- outcomes, should they come, are history only.
             UPDATE claims c SET deliveries = c.deliveries - ARRAY(SELECT u.id::text FROM unclaimed u WHERE u.claim = c.id)
             WHERE c.id IN (SELECT claim FROM unclaimed)
         )
         SELECT (SELECT count(*) FROM dequeued_cancelled) + (SELECT count(*) FROM unleased)
                + (SELECT count(*) FROM unclaimed)",
        out_on_claims = super::leases::OUT_ON_CLAIMS,
        out_on_row = super::leases::OUT_ON_ROW
    ))
    .await?;
    // With a snapshot taken after the statement above: a claim that took these targets' queue
    // rows before it deleted them has committed by now (the delete waited for it), and its note,
    // not locked by this run, shows here; so does a queue row a release put back meanwhile, and
    // a delivery a gateway leased as it stored it after the rows were locked.
    let left = count(&mut tx, format!(
        "SELECT (SELECT count(*) FROM delivery_queue WHERE namespace = $1 AND target_kind = $2 AND target = ANY ($3))
              + (SELECT count(*) FROM ({out_on_claims} AND c.id <> ALL ($4)) n
                 WHERE EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.id >= n.id AND d.id <= n.id
                                 AND d.namespace = $1 AND d.target_kind = $2 AND d.target = ANY ($3)))
              + (SELECT count(*) FROM deliveries d
                 WHERE {may_be_leased} AND d.id <> ALL ($5)
                   AND d.namespace = $1 AND d.target_kind = $2 AND d.target = ANY ($3)
                   AND {out_on_row})",
        out_on_claims = super::leases::OUT_ON_CLAIMS,
        may_be_leased = super::leases::MAY_BE_LEASED,
        out_on_row = super::leases::OUT_ON_ROW
    ))
    .await?;
    tx.commit().await?;
    Ok((cancelled as u64, left as u64))
}
