//! Activity over time, for the console's pictures: deliveries per target and minute (added to
//! as attempts are recorded), circuit changes, ingest per source and minute (counted by the
//! gateways, `store::stats::IngestCounts`). Every read is
//! bounded by an index range: a target's or source's minutes since a time.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, Utc};
use sqlx::PgPool;

use crate::api::TargetKey;

/// Upper bounds (ms) of the latency buckets; the last bucket takes the rest.
pub const LATENCY_BOUNDS_MS: [i32; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// A target's attempts in one minute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Minute {
    pub succeeded: i32,
    pub failed: i32,
    pub latency_buckets: Vec<i32>,
    /// Deliveries whose last attempt failed in it.
    pub dead: i32,
    /// When its last successful attempt started.
    pub last_success_at: Option<DateTime<Utc>>,
    /// When its last failed attempt started, and why it failed.
    pub last_failure: Option<(DateTime<Utc>, String)>,
}

/// How a counted attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempted<'a> {
    Succeeded,
    /// `reason`: its status code or error class (`HTTP 503`, `timeout`); `dead`: it was the
    /// delivery's last.
    Failed {
        reason: &'a str,
        dead: bool,
    },
}

impl Minute {
    /// The 95th percentile latency, as the upper bound of its bucket (`None` without attempts;
    /// `i32::MAX` past the last bound).
    pub fn p95_ms(&self) -> Option<i32> {
        let total: i64 = self.latency_buckets.iter().map(|&n| i64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let wanted = (total * 95 + 99) / 100;
        let mut seen = 0;
        for (index, &count) in self.latency_buckets.iter().enumerate() {
            seen += i64::from(count);
            if seen >= wanted {
                return Some(LATENCY_BOUNDS_MS.get(index).copied().unwrap_or(i32::MAX));
            }
        }
        None
    }
}

impl Minute {
    /// Counts one attempt.
    pub fn add(&mut self, started_at: DateTime<Utc>, duration_ms: i32, attempted: Attempted<'_>) {
        if self.latency_buckets.len() != BUCKETS {
            self.latency_buckets = vec![0; BUCKETS];
        }
        match attempted {
            Attempted::Succeeded => {
                self.succeeded += 1;
                self.last_success_at = self.last_success_at.max(Some(started_at));
            }
            Attempted::Failed { reason, dead } => {
                self.failed += 1;
                self.dead += i32::from(dead);
                if self.last_failure.as_ref().is_none_or(|(at, _)| *at <= started_at) {
                    self.last_failure = Some((started_at, reason.to_owned()));
                }
            }
        }
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&bound| duration_ms <= bound)
            .unwrap_or(BUCKETS - 1);
        self.latency_buckets[bucket] += 1;
    }

    fn merge(&mut self, other: &Minute) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead += other.dead;
        self.last_success_at = self.last_success_at.max(other.last_success_at);
        if let Some((at, _)) = &other.last_failure
            && self.last_failure.as_ref().is_none_or(|(mine, _)| mine <= at)
        {
            self.last_failure = other.last_failure.clone();
        }
        if self.latency_buckets.len() != BUCKETS {
            self.latency_buckets = vec![0; BUCKETS];
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine += theirs;
        }
    }
}

/// Attempts counted per (target, minute) in memory, written out now and then (see
/// `Dispatcher::run`): one row per target and minute per flush, nothing on the delivery's own
/// path. A crash loses the last unflushed second of the pictures, never a record.
#[derive(Default)]
pub struct MinuteCounter {
    /// By target first, so counting an attempt of a known target allocates nothing.
    counted: std::sync::Mutex<HashMap<TargetKey, BTreeMap<DateTime<Utc>, Minute>>>,
}

/// (target, minute) → the attempts counted, in key order (so writers lock rows in one order).
pub type Rows = BTreeMap<(TargetKey, DateTime<Utc>), Minute>;

impl MinuteCounter {
    pub fn count(
        &self,
        target: &TargetKey,
        started_at: DateTime<Utc>,
        duration_ms: i32,
        attempted: Attempted<'_>,
    ) {
        let minute = started_at
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(started_at);
        let mut counted = self.lock();
        let minutes = match counted.get_mut(target) {
            Some(minutes) => minutes,
            None => counted.entry(target.clone()).or_default(),
        };
        minutes
            .entry(minute)
            .or_default()
            .add(started_at, duration_ms, attempted);
    }

    /// What was counted since the last take.
    pub fn take(&self) -> Rows {
        let counted = std::mem::take(&mut *self.lock());
        counted
            .into_iter()
            .flat_map(|(target, minutes)| {
                minutes
                    .into_iter()
                    .map(move |(minute, counts)| ((target.clone(), minute), counts))
            })
            .collect()
    }

    /// Counts that could not be written, for the next flush.
    pub fn put_back(&self, rows: Rows) {
        let mut counted = self.lock();
        for ((target, minute), counts) in rows {
            counted
                .entry(target)
                .or_default()
                .entry(minute)
                .or_default()
                .merge(&counts);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TargetKey, BTreeMap<DateTime<Utc>, Minute>>> {
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds rows to `target_minutes`.
pub async fn add_minutes<'e>(executor: impl sqlx::PgExecutor<'e>, rows: &Rows) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (namespaces, kinds, names) = super::key_columns(rows.keys().map(|(key, _)| key));
    let buckets: Vec<String> = rows
        .values()
        .map(|m| {
            format!(
                "{{{}}}",
                m.latency_buckets
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    sqlx::query(
        "INSERT INTO target_minutes AS t (namespace, target_kind, target, minute, succeeded, failed, latency_buckets,
                                            dead, last_success_at, last_failure_at, last_failure_reason)
         SELECT namespace, target_kind, target, minute, succeeded, failed, buckets::int[],
                dead, last_success_at, last_failure_at, last_failure_reason
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::int[], $7::text[],
                     $8::int[], $9::timestamptz[], $10::timestamptz[], $11::text[])
             AS r (namespace, target_kind, target, minute, succeeded, failed, buckets,
                   dead, last_success_at, last_failure_at, last_failure_reason)
         ON CONFLICT (namespace, target_kind, target, minute) DO UPDATE SET
             succeeded = t.succeeded + EXCLUDED.succeeded,
             failed = t.failed + EXCLUDED.failed,
             latency_buckets = ARRAY(
                 SELECT coalesce(a, 0) + coalesce(b, 0)
                 FROM unnest(t.latency_buckets, EXCLUDED.latency_buckets) WITH ORDINALITY AS x (a, b, i)
                 ORDER BY i),
             dead = t.dead + EXCLUDED.dead,
             last_success_at = GREATEST(t.last_success_at, EXCLUDED.last_success_at),
             -- Another gateway's later failure of the same minute keeps its reason.
             last_failure_reason = CASE WHEN EXCLUDED.last_failure_at >= t.last_failure_at
                                          OR t.last_failure_at IS NULL
                                        THEN EXCLUDED.last_failure_reason ELSE t.last_failure_reason END,
             last_failure_at = GREATEST(t.last_failure_at, EXCLUDED.last_failure_at)",
    )
    .persistent(false)
    .bind(namespaces)
    .bind(kinds)
    .bind(names)
    .bind(rows.keys().map(|(_, minute)| *minute).collect::<Vec<_>>())
    .bind(rows.values().map(|m| m.succeeded).collect::<Vec<_>>())
    .bind(rows.values().map(|m| m.failed).collect::<Vec<_>>())
    .bind(buckets)
    .bind(rows.values().map(|m| m.dead).collect::<Vec<_>>())
    .bind(rows.values().map(|m| m.last_success_at).collect::<Vec<_>>())
    .bind(
        rows.values()
            .map(|m| m.last_failure.as_ref().map(|(at, _)| *at))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.values()
            .map(|m| m.last_failure.as_ref().map(|(_, why)| why.as_str()))
            .collect::<Vec<_>>(),
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// The statement of [`target_minutes`] (public for the plan tests).
pub const TARGET_MINUTES: &str =
    "SELECT m.namespace, m.target_kind, m.target, m.minute, m.succeeded, m.failed, m.latency_buckets
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS w (namespace, target_kind, target)
         CROSS JOIN LATERAL (
             SELECT * FROM target_minutes m
             WHERE m.namespace = w.namespace AND m.target_kind = w.target_kind AND m.target = w.target
               AND m.minute >= $4
             ORDER BY m.minute
         ) m";

#[derive(sqlx::FromRow)]
struct MinuteRow {
    namespace: String,
    target_kind: String,
    target: String,
    minute: DateTime<Utc>,
    succeeded: i32,
    failed: i32,
    latency_buckets: Vec<i32>,
}

/// The minutes of `targets` since `since`, oldest first, per target.
pub async fn target_minutes(
    pool: &PgPool,
    targets: &[&TargetKey],
    since: DateTime<Utc>,
) -> sqlx::Result<HashMap<TargetKey, Vec<(DateTime<Utc>, Minute)>>> {
    let (namespaces, kinds, names) = super::key_columns(targets.iter().copied());
    let rows: Vec<MinuteRow> = sqlx::query_as(TARGET_MINUTES)
        .persistent(false)
        .bind(namespaces)
        .bind(kinds)
        .bind(names)
        .bind(since)
        .fetch_all(pool)
        .await?;
    let mut out: HashMap<TargetKey, Vec<(DateTime<Utc>, Minute)>> = HashMap::new();
    for row in rows {
        let Ok(kind) = row.target_kind.parse() else {
            continue;
        };
        let key = TargetKey {
            namespace: row.namespace,
            kind,
            name: row.target,
        };
        let minute = Minute {
            succeeded: row.succeeded,
            failed: row.failed,
            latency_buckets: row.latency_buckets,
            ..Minute::default()
        };
        out.entry(key).or_default().push((row.minute, minute));
    }
    Ok(out)
}

/// The statement of [`circuit_history`] (public for the plan tests).
pub const CIRCUIT_HISTORY: &str = "SELECT w.namespace, w.target_kind, w.target, c.at, c.circuit
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS w (namespace, target_kind, target)
         CROSS JOIN LATERAL (
             (SELECT at, circuit FROM circuit_changes c
              WHERE c.namespace = w.namespace AND c.target_kind = w.target_kind AND c.target = w.target
                AND c.at < $4
              ORDER BY c.at DESC LIMIT 1)
             UNION ALL
             (SELECT at, circuit FROM circuit_changes c
              WHERE c.namespace = w.namespace AND c.target_kind = w.target_kind AND c.target = w.target
                AND c.at >= $4
              ORDER BY c.at LIMIT 1000)
         ) c
         ORDER BY 1, 2, 3, 4";

/// Each target's circuit at `since` (its last change before it, if any) and its changes after.
pub async fn circuit_history(
    pool: &PgPool,
    targets: &[&TargetKey],
    since: DateTime<Utc>,
) -> sqlx::Result<HashMap<TargetKey, Vec<(DateTime<Utc>, String)>>> {
    let (namespaces, kinds, names) = super::key_columns(targets.iter().copied());
    let rows: Vec<(String, String, String, DateTime<Utc>, String)> = sqlx::query_as(CIRCUIT_HISTORY)
        .persistent(false)
        .bind(namespaces)
        .bind(kinds)
        .bind(names)
        .bind(since)
        .fetch_all(pool)
        .await?;
    let mut out: HashMap<TargetKey, Vec<(DateTime<Utc>, String)>> = HashMap::new();
    for (namespace, kind, name, at, circuit) in rows {
        let Ok(kind) = kind.parse() else { continue };
        out.entry(TargetKey {
            namespace,
            kind,
            name,
        })
        .or_default()
        .push((at, circuit));
    }
    Ok(out)
}

/// The statement of [`ingest_minutes`] (public for the plan tests).
pub const INGEST_MINUTES: &str = "SELECT w.namespace, w.source, m.minute, m.accepted
         FROM UNNEST($1::text[], $2::text[]) AS w (namespace, source)
         CROSS JOIN LATERAL (
             SELECT minute, accepted FROM ingest_minutes m
             WHERE m.namespace = w.namespace AND m.source = w.source AND m.minute >= $3
         ) m
         ORDER BY 1, 2, 3";

/// Events accepted per source and minute since `since`, as the gateways counted them (the
/// minute they wrote the count in, every 5 s): at most an hour's 60 rows per source, where
/// counting the events themselves read every event of the hour.
pub async fn ingest_minutes(
    pool: &PgPool,
    sources: &[(String, String)],
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, String, DateTime<Utc>, i64)>> {
    sqlx::query_as(INGEST_MINUTES)
        .persistent(false)
        .bind(sources.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
        .bind(sources.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>())
        .bind(since)
        .fetch_all(pool)
        .await
}

/// Refused requests per namespace, source and reason since `since`.
pub async fn rejections_since(
    pool: &PgPool,
    namespaces: Option<&[String]>,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<(String, String, String, i64)>> {
    sqlx::query_as(
        "SELECT namespace, source, reason, sum(count)::bigint FROM ingest_rejections
         WHERE minute >= $1 AND ($2::text[] IS NULL OR namespace = ANY($2))
         GROUP BY 1, 2, 3 ORDER BY 4 DESC",
    )
    .persistent(false)
    .bind(since)
    .bind(namespaces)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TargetKind;

    #[test]
    fn attempts_sum_into_minutes_and_the_p95_is_a_bucket_bound() {
        let key = TargetKey {
            namespace: "shop".into(),
            kind: TargetKind::Subscription,
            name: "crm".into(),
        };
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let counter = MinuteCounter::default();
        for i in 0..19 {
            counter.count(
                &key,
                at(&format!("2026-12-01T10:00:{i:02}Z")),
                20,
                Attempted::Succeeded,
            );
        }
        let failed = |reason, dead| Attempted::Failed { reason, dead };
        counter.count(&key, at("2026-12-01T10:00:59Z"), 900, failed("HTTP 503", false));
        counter.count(&key, at("2026-12-01T10:00:30Z"), 900, failed("timeout", true));
        counter.count(&key, at("2026-12-01T10:01:00Z"), 40_000, failed("connect", false));
        let rows = counter.take();
        let first = &rows[&(key.clone(), at("2026-12-01T10:00:00Z"))];
        assert_eq!((first.succeeded, first.failed, first.dead), (19, 2, 1));
        assert_eq!(first.p95_ms(), Some(1000), "19 of 21 within 25 ms, 21 within 1 s");
        assert_eq!(first.last_success_at, Some(at("2026-12-01T10:00:18Z")));
        assert_eq!(
            first.last_failure,
            Some((at("2026-12-01T10:00:59Z"), "HTTP 503".to_owned())),
            "the latest failure's reason, whatever the order counted"
        );
        let second = &rows[&(key.clone(), at("2026-12-01T10:01:00Z"))];
        assert_eq!(second.p95_ms(), Some(i32::MAX));
        assert_eq!(Minute::default().p95_ms(), None);
        assert!(counter.take().is_empty(), "taken");
        counter.put_back(rows.clone());
        counter.put_back(rows);
        assert_eq!(
            counter.take()[&(key, at("2026-12-01T10:00:00Z"))].succeeded,
            38,
            "merged back"
        );
    }
}
