//! History partitions (migrations/0014): `events`, `deliveries` and `attempts` are partitioned by
//! ranges of UUIDv7 ids, one period (a day by default) a partition, the same ranges in all three
//! tables, so a period of history is three partitions named alike (`events_20261202`,
//! `deliveries_20261202`, `attempts_20261202`) that are made and dropped together. A delivery's
//! id carries its event's time ([`delivery_id`]) and an attempt is keyed by its delivery, so
//! everything that happened to an event is in its event's period.
//!
//! Partitions are made ahead of time by whichever gateway holds the maintenance lock (an advisory
//! lock, taken for the one transaction), attached rather than created in place so ingest never
//! waits for the parent's lock, and detached concurrently before they are dropped.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The partitioned tables, in the order a period's partitions are dropped.
const TABLES: [&str; 3] = ["attempts", "deliveries", "events"];

/// The period of a partition unless configured otherwise.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Partitions exist this many periods past now, so a replica whose clock runs ahead, or a
/// maintenance pass that fails for a while, still has somewhere to write.
const AHEAD: u32 = 3;

/// Serializes the gateways' changes to the partitions (`pg_advisory_xact_lock` key).
const MAINTENANCE_LOCK: i64 = 0x686f_6f6b_6c69_6e65; // "hookline"

/// How long making partitions may wait for a lock before it gives up until the next pass.
const LOCK_TIMEOUT: &str = "2s";

const MS_PER_DAY: i64 = 86_400_000;

/// The smallest id of a millisecond since the epoch.
pub fn id_floor(ms: i64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// The smallest id made at or after `at`.
pub fn id_floor_at(at: DateTime<Utc>) -> Uuid {
    id_floor(at.timestamp_millis())
}

/// The millisecond a UUIDv7 was made in.
pub fn id_millis(id: Uuid) -> i64 {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id.as_bytes()[..6]);
    i64::from_be_bytes(ms)
}

/// A new UUIDv7 of the millisecond `ms` (random after the time).
pub fn id_at(ms: i64) -> Uuid {
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// A new id for a delivery of `event`: random, but made in the event's millisecond, so the
/// delivery and its attempts are in the event's partitions whenever they are created (a replay
/// long after, too).
pub fn delivery_id(event: Uuid) -> Uuid {
    id_at(id_millis(event))
}

/// One period of history: its three partitions and the ids they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// The partitions are `events_<suffix>`, `deliveries_<suffix>` and `attempts_<suffix>`.
    pub suffix: String,
    /// The first millisecond; `None` for the history from before partitioning (`*_legacy`),
    /// which holds everything before its end.
    pub from_ms: Option<i64>,
    /// The millisecond after its last.
    pub until_ms: i64,
}

impl Period {
    pub fn partition(&self, table: &str) -> String {
        format!("{table}_{}", self.suffix)
    }

    /// Whether the millisecond `ms` is one of the period's.
    pub fn holds(&self, ms: i64) -> bool {
        self.from_ms.is_none_or(|from| from <= ms) && ms < self.until_ms
    }

    /// The ids of the period, as bounds `lower <= id < upper`.
    pub fn id_bounds(&self) -> (Uuid, Uuid) {
        (
            self.from_ms.map_or(Uuid::nil(), id_floor),
            id_floor(self.until_ms),
        )
    }
}

/// The name of a period starting at `from_ms`: its UTC day, and its hour and minute when it
/// does not start at midnight.
fn suffix(from_ms: i64) -> String {
    let start = Utc.timestamp_millis_opt(from_ms).single().unwrap_or_default();
    if from_ms.rem_euclid(MS_PER_DAY) == 0 {
        start.format("%Y%m%d").to_string()
    } else {
        start.format("%Y%m%d_%H%M").to_string()
    }
}

/// The periods to make so that `[from_ms, until_ms)` is covered: the slots of `period_ms`
/// (counted from the epoch, so days start at midnight UTC) that meet the range, less what
/// existing periods cover. A slot partly covered (the legacy period ends mid-slot, or the period
/// was changed) is made for the part that is not.
fn missing(existing: &[Period], from_ms: i64, until_ms: i64, period_ms: i64) -> Vec<(i64, i64)> {
    let mut covered: Vec<(i64, i64)> = existing
        .iter()
        .map(|p| (p.from_ms.unwrap_or(i64::MIN), p.until_ms))
        .collect();
    covered.sort();
    let mut made = Vec::new();
    let mut slot = from_ms.div_euclid(period_ms) * period_ms;
    while slot < until_ms {
        let mut pieces = vec![(slot, slot + period_ms)];
        for &(lower, upper) in &covered {
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| {
                    let mut left = Vec::new();
                    if a < lower.min(b) {
                        left.push((a, lower.min(b)));
                    }
                    if upper.max(a) < b {
                        left.push((upper.max(a), b));
                    }
                    left
                })
                .collect();
        }
        made.extend(pieces);
        slot += period_ms;
    }
    made
}

/// Reads a partition bound as `pg_get_expr` prints it:
/// `FOR VALUES FROM (MINVALUE) TO ('0193…')` or `FOR VALUES FROM ('…') TO ('…')`.
fn parse_bound(bound: &str) -> Option<(Option<Uuid>, Uuid)> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    let uuid = |text: &str| Uuid::parse_str(text.trim_matches('\'')).ok();
    let from = if from == "MINVALUE" {
        None
    } else {
        Some(uuid(from)?)
    };
    Some((from, uuid(to)?))
}

/// The periods there are, oldest first (from the partitions of `events`).
pub async fn list<'e>(executor: impl sqlx::PgExecutor<'e>) -> sqlx::Result<Vec<Period>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass AND NOT i.inhdetachpending",
    )
    .fetch_all(executor)
    .await?;
    let mut periods: Vec<Period> = rows
        .into_iter()
        .filter_map(|(name, bound)| {
            let suffix = name.strip_prefix("events_")?.to_owned();
            let (from, to) = parse_bound(&bound)?;
            Some(Period {
                suffix,
                from_ms: from.map(id_millis),
                until_ms: id_millis(to),
            })
        })
        .collect();
    periods.sort_by_key(|p| p.from_ms);
    Ok(periods)
}

/// Whether a period holds the present (there is somewhere to write now).
pub async fn covers_now(pool: &PgPool) -> sqlx::Result<bool> {
    let now = Utc::now().timestamp_millis();
    Ok(list(pool).await?.iter().any(|p| p.holds(now)))
}

/// Where the period holding an id begins, remembered while ids fall in it: a partition's bounds
/// never change, so the catalog is read once a period, not once a statement.
#[derive(Debug, Default)]
pub struct PeriodStarts {
    last: std::sync::Mutex<Option<Period>>,
}

impl PeriodStarts {
    /// The smallest id of the period that holds `id` (nil for the legacy period, which holds
    /// everything before its end). With no period holding `id` (a write of it fails), the
    /// largest id: "every period is older", which skips none.
    pub async fn start_of<'e>(&self, executor: impl sqlx::PgExecutor<'e>, id: Uuid) -> sqlx::Result<Uuid> {
        let ms = id_millis(id);
        let remembered =
            |last: &Option<Period>| last.as_ref().filter(|p| p.holds(ms)).map(|p| p.id_bounds().0);
        if let Some(start) = remembered(&self.last.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(start);
        }
        let Some(period) = list(executor).await?.into_iter().find(|p| p.holds(ms)) else {
            return Ok(Uuid::max());
        };
        let start = period.id_bounds().0;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(period);
        Ok(start)
    }
}

/// Makes the periods needed to cover `[from, until)` (see [`missing`]); answers how many.
pub async fn ensure(
    pool: &PgPool,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    period: Duration,
) -> sqlx::Result<usize> {
    let period_ms = i64::try_from(period.as_millis())
        .unwrap_or(MS_PER_DAY)
        .max(60_000);
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    // Another replica making partitions makes the same ones: leave it to that one.
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(MAINTENANCE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !held {
        return Ok(0);
    }
    let existing = list(&mut *tx).await?;
    let wanted = missing(
        &existing,
        from.timestamp_millis(),
        until.timestamp_millis(),
        period_ms,
    );
    for &(from_ms, until_ms) in &wanted {
        let suffix = suffix(from_ms);
        let (lower, upper) = (id_floor(from_ms), id_floor(until_ms));
        // Attached in the order every other statement locks them (events first), so that
        // none waits on this transaction while holding what it waits for.
        for table in TABLES.into_iter().rev() {
            let name = format!("{table}_{suffix}");
            // Full pages: history rows are written once (migration 0024).
            sqlx::query(&format!(
                "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            ))
            .execute(&mut *tx)
            .await?;
            for index in partition_indexes(table, &name) {
                sqlx::query(&index).execute(&mut *tx).await?;
            }
            sqlx::query(&format!(
                "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{lower}') TO ('{upper}')"
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(wanted.len())
}

/// The unique indexes each partition has of its own (keys without the partition key cannot be
/// the parent's; see migrations/0014).
fn partition_indexes(table: &str, name: &str) -> Vec<String> {
    match table {
        "events" => vec![
            format!("CREATE UNIQUE INDEX {name}_dedupe ON {name} (namespace, source, external_id)"),
            format!(
                "CREATE UNIQUE INDEX {name}_dedupe_replay ON {name} (namespace, source, replay_digest)
                 WHERE replay_digest IS NOT NULL"
            ),
        ],
        "deliveries" => vec![format!(
            "CREATE UNIQUE INDEX {name}_once_per_target ON {name} (event_id, target_kind, target)"
        )],
        _ => Vec::new(),
    }
}

/// Makes the periods from the start of the current one to [`AHEAD`] periods past now.
pub async fn make_ahead(pool: &PgPool, period: Duration) -> sqlx::Result<usize> {
    let now = Utc::now();
    let ahead = chrono::Duration::from_std(period * AHEAD).unwrap_or(chrono::Duration::days(3));
    ensure(pool, now, now + ahead, period).await
}

/// Whether any delivery of the period is still queued (waiting, retrying, a key's head being
/// sent, or a dead head blocking its key), or may be out on a lease of its row (see
/// `super::leases`: leased as it was stored, only ids at or past `swept_to` or in its
/// `still_out` can be; claimed from the queue, it is noted in `claims` (or, by a version
/// before migrations/0023, in `queue_leases`) until its claim has ended and been looked at):
/// then its history is not dropped. A claim deletes the queue row and notes the delivery in one
/// statement, so this one sees one or the other.
pub async fn has_queued(pool: &PgPool, period: &Period) -> sqlx::Result<bool> {
    let (lower, upper) = period.id_bounds();
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM delivery_queue WHERE delivery_id >= $1 AND delivery_id < $2)
             OR $2 > (SELECT swept_to FROM lease_sweeps WHERE only_row)
             OR EXISTS (SELECT 1 FROM lease_sweeps s, unnest(s.still_out) AS o (id) WHERE o.id >= $1 AND o.id < $2)
             OR EXISTS (SELECT 1 FROM queue_leases l, unnest(l.deliveries) AS d (id)
                        WHERE d.id >= $1 AND d.id < $2)
             OR EXISTS ({out_on_claims} AND n.key::uuid >= $1 AND n.key::uuid < $2)",
        out_on_claims = super::leases::OUT_ON_CLAIMS
    ))
    .bind(lower)
    .bind(upper)
    .fetch_one(pool)
    .await
}

/// Drops a period's partitions: lists the period in `history_drops`, then [`finish_drops`].
pub async fn drop_period(pool: &PgPool, period: &Period) -> sqlx::Result<()> {
    let (lower, upper) = period.id_bounds();
    sqlx::query(
        "INSERT INTO history_drops (suffix, lower_id, upper_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&period.suffix)
    .bind(lower)
    .bind(upper)
    .execute(pool)
    .await?;
    finish_drops(pool).await?;
    Ok(())
}

/// Drops every period listed in `history_drops`, each step done only if not done before (so a
/// drop interrupted anywhere is finished by the next pass): each partition is detached without
/// blocking the parent (`DETACH … CONCURRENTLY` waits for the queries that may read it, and
/// holds up none; one left pending is finalized), then dropped. Queue rows of the period's ids
/// are removed with it: only a delivery queued while the period was being dropped (a replay or
/// redelivery of an event past the retention, racing it) can have one. Answers the periods.
pub async fn finish_drops(pool: &PgPool) -> sqlx::Result<u64> {
    let listed: Vec<(String, Uuid, Uuid)> =
        sqlx::query_as("SELECT suffix, lower_id, upper_id FROM history_drops ORDER BY lower_id")
            .fetch_all(pool)
            .await?;
    for (suffix, lower, upper) in &listed {
        for table in TABLES {
            let name = format!("{table}_{suffix}");
            let state: Option<Option<bool>> = sqlx::query_scalar(
                "SELECT (SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = c.oid)
                 FROM pg_class c
                 WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
            )
            .bind(&name)
            .fetch_optional(pool)
            .await?;
            let detach = match state {
                None => continue,
                Some(None) => None,
                Some(Some(false)) => Some("CONCURRENTLY"),
                Some(Some(true)) => Some("FINALIZE"),
            };
            if let Some(how) = detach {
                sqlx::query(&format!("ALTER TABLE {table} DETACH PARTITION {name} {how}"))
                    .execute(pool)
                    .await?;
            }
            sqlx::query(&format!("DROP TABLE {name}")).execute(pool).await?;
        }
        let orphans = sqlx::query("DELETE FROM delivery_queue WHERE delivery_id >= $1 AND delivery_id < $2")
            .bind(lower)
            .bind(upper)
            .execute(pool)
            .await?
            .rows_affected();
        if orphans > 0 {
            tracing::warn!(
                period = %suffix,
                "{orphans} deliveries queued while their period was dropped were removed with it"
            );
        }
        sqlx::query("DELETE FROM history_drops WHERE suffix = $1")
            .bind(suffix)
            .execute(pool)
            .await?;
    }
    Ok(listed.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = MS_PER_DAY;

    fn period(from: Option<i64>, until: i64) -> Period {
        Period {
            suffix: String::new(),
            from_ms: from,
            until_ms: until,
        }
    }

    #[test]
    fn ids_and_times_round_trip_and_sort_by_time() {
        let ms = 1_764_547_200_123; // 2025-12-01T00:00:00.123Z
        assert_eq!(id_millis(id_floor(ms)), ms);
        let now = Uuid::now_v7();
        assert_eq!(id_millis(now), Utc::now().timestamp_millis().min(id_millis(now)));
        assert!(id_floor(ms) < id_floor(ms + 1));
        let delivery = delivery_id(now);
        assert_eq!(id_millis(delivery), id_millis(now));
        assert_ne!(delivery, now);
        assert_eq!(delivery.get_version_num(), 7);
        assert!(id_floor(id_millis(now)) <= now && now < id_floor(id_millis(now) + 1));
    }

    #[test]
    fn periods_are_named_by_their_start() {
        assert_eq!(suffix(1_764_547_200_000), "20251201");
        assert_eq!(suffix(1_764_547_200_000 + 6 * 3_600_000), "20251201_0600");
    }

    #[test]
    fn missing_periods_are_whole_slots_after_what_exists() {
        let d = 20_000 * DAY;
        // Nothing yet: the slots from the one holding `from` to the one holding `until`.
        assert_eq!(
            missing(&[], d + 5, d + 2 * DAY + 1, DAY),
            [(d, d + DAY), (d + DAY, d + 2 * DAY), (d + 2 * DAY, d + 3 * DAY)]
        );
        // The legacy period covers the past; made only after its end.
        assert_eq!(
            missing(&[period(None, d + DAY)], d, d + 2 * DAY, DAY),
            [(d + DAY, d + 2 * DAY)]
        );
        // Everything covered: nothing.
        assert!(
            missing(
                &[period(Some(d), d + DAY), period(Some(d + DAY), d + 2 * DAY)],
                d,
                d + 2 * DAY,
                DAY
            )
            .is_empty()
        );
        // A slot partly covered is made for the rest (a legacy period ending at noon).
        assert_eq!(
            missing(&[period(None, d + DAY / 2)], d, d + DAY, DAY),
            [(d + DAY / 2, d + DAY)]
        );
        // Six-hour periods after a day's.
        assert_eq!(
            missing(&[period(Some(d), d + DAY)], d, d + DAY + 1, DAY / 4),
            [(d + DAY, d + DAY + DAY / 4)]
        );
    }

    #[test]
    fn bounds_are_read_as_postgres_prints_them() {
        let id = "0193a6b2-0000-0000-0000-000000000000";
        assert_eq!(
            parse_bound(&format!("FOR VALUES FROM (MINVALUE) TO ('{id}')")),
            Some((None, Uuid::parse_str(id).unwrap()))
        );
        assert_eq!(
            parse_bound(&format!("FOR VALUES FROM ('{id}') TO ('{id}')")),
            Some((Some(Uuid::parse_str(id).unwrap()), Uuid::parse_str(id).unwrap()))
        );
        assert_eq!(parse_bound("DEFAULT"), None);
    }
}
