//! Leases on history rows: a new delivery the storing gateway sends itself is leased on its row
//! in `deliveries` (`lease_until`) and has no queue row while it is out (see
//! [`super::events::NewDelivery::claim_for`]). Its outcome does not write the row: the recorder
//! locks the row (FOR SHARE) while the lease still holds it and inserts the attempt, which is
//! the delivery's state (migrations/0022); the lease stays on the row, ended by that outcome
//! ([`OUT_ON_ROW`]). So a history row is written once, and the deliveries' pages need no room
//! for a second version. Should its sender die, nothing in the queue falls due again; instead,
//! one gateway at a time looks through the deliveries stored since it last looked, and those it
//! saw still out then ([`take_over_expired`]), and queues those whose lease ended without an
//! outcome. Whatever ends a lease that way (that pass, a cancel, a redelivery) locks the row
//! first and looks for the outcome with a snapshot taken after: every outcome that counted has
//! committed by then, and a recorder that comes later finds the lease gone.
//!
//! A claim from the queue notes its deliveries in `claims` instead (one row per claim and
//! lease, with the attempts each had started), however old they are; the same pass deletes the
//! notes of ended claims and queues what they name that got no outcome (migrations/0023). A
//! note locked by a recorder (FOR SHARE) is deleted once that outcome has committed; an outcome
//! that comes after finds no note and is history only. Claims by a version before 0023,
//! noted in `queue_leases` with leases on the rows, are taken over as they were.
//!
//! That look must not miss a row that commits after it: it reads ids up to [`HORIZON`] before
//! a barrier. The storing statement takes [`LEASE_LOCK`] shared before it leases and leases
//! only deliveries whose ids are less than [`HORIZON`] older than that moment (older ones are
//! queued as usual); the barrier takes the lock exclusively, so every statement that leased
//! before it has committed, and every one after leases ids newer than the barrier's time minus
//! [`HORIZON`]. Both times are Postgres' clock, so the gateways' clocks do not matter.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// The deliveries out on claims from the queue (`claim`, `lease_until`, `id`, `before`: the
/// attempts each had started before its claim): noted, and no outcome of the claim's attempt
/// has come. An outcome does not take its delivery out of the note (that would write the note
/// at every outcome); the pass deletes the note once the claim has ended. Ends in a WHERE
/// clause, so a reader may add conditions.
pub(super) const OUT_ON_CLAIMS: &str =
    "SELECT c.id AS claim, c.lease_until, n.key::uuid AS id, n.value::int AS before
     FROM claims c, jsonb_each_text(c.deliveries) AS n
     WHERE NOT EXISTS (SELECT 1 FROM attempts a
                       WHERE a.delivery_id = n.key::uuid AND a.attempt_number > n.value::int
                         AND a.outcome IS NOT NULL)";

/// A condition on the history row `d`: the delivery is out on a lease of its row (live or
/// ended). A direct send's outcome is its attempt, not a write of its row, so the lease stays
/// on the row after it: out means no attempt numbered past the row's checkpoint has an
/// outcome. Whatever else ends a lease clears it, or writes the row's status (a cancel by a
/// version before migrations/0024 left it). The attempts are probed by a range of one key, a
/// probe per row (see `direct` in `deliveries::record_attempts`).
pub(super) const OUT_ON_ROW: &str = "(d.lease_until IS NOT NULL AND d.status IN ('pending', 'failed')
      AND NOT EXISTS (SELECT 1 FROM attempts a
                      WHERE a.delivery_id >= d.id AND a.delivery_id <= d.id AND a.attempt_number > d.attempts
                        AND a.outcome IS NOT NULL))";

/// A statement's last column: wakes the dispatchers of the targets its CTE `queued` (returning
/// namespace, target_kind, target) put deliveries in the queue for, on the channel bound as
/// `channel`, one target a line; a payload too long for a notification (8000 bytes) names none,
/// which asks for a scan of the queue. Only when something was queued; true when nothing was.
fn wake_for_queued(channel: &str) -> String {
    format!(
        "(SELECT pg_notify({channel}, CASE WHEN octet_length(names) < 7900 THEN names ELSE '' END) FROM (
             SELECT string_agg(DISTINCT namespace || '/' || target_kind || '/' || target, E'\\n') AS names
             FROM queued) t
         WHERE names IS NOT NULL) IS NULL"
    )
}

/// Taken shared by a statement that leases new deliveries, exclusively by the barrier.
pub const LEASE_LOCK: i64 = 0x686c_6c65_6173_6573; // "hlleases"

/// Held (per session) by the gateway taking over expired leases, one at a time.
const SWEEP_LOCK: i64 = 0x686c_7377_6565_7073; // "hlsweeps"

/// How much older than the lease lock's moment a delivery's id may be for the storing statement
/// to lease it; the look at leases stays this far behind its barrier.
pub const HORIZON: Duration = Duration::from_secs(10);

/// The barrier waits this long at most for statements holding the lease lock: a statement
/// waiting on another's row (a duplicate in flight) while the barrier waits on it must not
/// stall behind the barrier, so the barrier gives way and the next pass tries again.
const BARRIER_TIMEOUT: &str = "200ms";

/// SQL for the smallest id made at or after the timestamp expression `at`.
pub fn id_floor_sql(at: &str) -> String {
    format!(
        "(lpad(to_hex(floor(extract(epoch FROM {at}) * 1000)::bigint), 12, '0') || repeat('0', 20))::uuid"
    )
}

/// What one pass did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Another gateway is taking over leases, or a storing statement held the barrier up.
    NotNow,
    /// Looked from the last pass's end; `taken` deliveries had an expired lease and are queued
    /// now (their targets notified), `out` are still out (looked at again next pass).
    Done { taken: u64, out: u64 },
}

/// One pass: takes the sweep lock (or leaves it to the gateway holding it), passes the barrier,
/// queues the deliveries whose lease ended without an outcome and moves `swept_to` on.
pub async fn take_over_expired(pool: &PgPool) -> sqlx::Result<Pass> {
    let mut connection = pool.acquire().await?;
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *connection)
        .await?;
    if !held {
        return Ok(Pass::NotNow);
    }
    let pass = sweep(&mut connection).await;
    let queue_leases = take_over_queue_leases(&mut connection).await;
    let claims = take_over_claims(&mut connection).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *connection)
        .await?;
    Ok(match (pass?, queue_leases?, claims?) {
        (Pass::Done { taken, out }, queued, claimed) => Pass::Done {
            taken: taken + queued + claimed,
            out,
        },
        (Pass::NotNow, ..) => Pass::NotNow,
    })
}

/// Deletes the notes of the claims whose lease has ended, and queues again the deliveries they
/// name that got no outcome from that claim. Two statements in one transaction: the notes are
/// deleted first, in id order as the recorder locks them (so the two never deadlock), waiting
/// for the outcomes that hold them; the second statement's snapshot, taken after, sees those
/// outcomes, and any outcome still to come finds no note.
async fn take_over_claims(connection: &mut sqlx::PgConnection) -> sqlx::Result<u64> {
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    let ended: Vec<(Uuid, i32)> = sqlx::query_as(
        "WITH ended AS (
             DELETE FROM claims
             WHERE id = ANY (ARRAY(SELECT id FROM claims WHERE lease_until < now() ORDER BY id FOR UPDATE))
             RETURNING deliveries
         )
         SELECT n.key::uuid, n.value::int FROM ended, jsonb_each_text(ended.deliveries) AS n",
    )
    .fetch_all(&mut *tx)
    .await?;
    if ended.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let (ids, before): (Vec<Uuid>, Vec<i32>) = ended.into_iter().unzip();
    let (taken, _): (i64, bool) = sqlx::query_as(&format!(
        r#"
        WITH ended AS (
            SELECT * FROM UNNEST($1::uuid[], $2::int[]) AS e (id, before)
        ), taken AS (
            -- No outcome came from the claim's attempt. Each looked up in its own partition by a
            -- range of one key (see `direct` in `deliveries::record_attempts`).
            SELECT d.id, d.namespace, d.target_kind, d.target, d.event_id, d.ordering_key, d.position, e.before
            FROM ended e CROSS JOIN LATERAL (
                SELECT * FROM deliveries d WHERE d.id >= e.id AND d.id <= e.id OFFSET 0
            ) d
            WHERE NOT EXISTS (SELECT 1 FROM attempts a
                              WHERE a.delivery_id = e.id AND a.attempt_number > e.before AND a.outcome IS NOT NULL)
        ), queued AS (
            -- Due now; the attempt whose outcome never came keeps its number, and the delivery
            -- its key, if it has one (claimed by a replica whose configuration did not have
            -- `ordering` yet).
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        attempts, event_id, ordering_key, position)
            SELECT id, namespace, target_kind, target, now(), before + 1, event_id, ordering_key, position
            FROM taken
            ON CONFLICT (delivery_id) DO NOTHING
            RETURNING namespace, target_kind, target
        )
        SELECT (SELECT count(*) FROM queued),
               {wake}
        "#,
        wake = wake_for_queued("$3")
    ))
    .bind(ids)
    .bind(before)
    .bind(super::DELIVERIES_CHANNEL)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken as u64)
}

/// Queues the deliveries claimed from the queue by a version before migrations/0023 whose lease
/// ended without an outcome, and forgets every such claim whose lease has ended (see
/// migrations/0018). No barrier: a claim notes its deliveries in the statement that leases
/// them.
async fn take_over_queue_leases(connection: &mut sqlx::PgConnection) -> sqlx::Result<u64> {
    let (taken, _): (i64, bool) = sqlx::query_as(&format!(
        r#"
        WITH ended AS (
            DELETE FROM queue_leases WHERE lease_until < now()
            RETURNING lease_until, deliveries
        ), leased AS (
            -- In id order, as the recorder locks a batch's rows, so the two never deadlock.
            SELECT unnest(deliveries) AS id, lease_until FROM ended ORDER BY id
        ), taken AS (
            -- Only a lease this claim set and nothing has ended since: its outcome, a cancel, a
            -- redelivery or a release clears it. Each looked up in its own partition by a range
            -- of one key (see `direct` in `deliveries::record_attempts`).
            UPDATE deliveries d SET lease_until = NULL, updated_at = now()
            FROM leased l
            WHERE d.id >= l.id AND d.id <= l.id AND d.lease_until = l.lease_until
            RETURNING d.id, d.namespace, d.target_kind, d.target, d.event_id, d.attempts, d.ordering_key,
                      d.position
        ), queued AS (
            -- Due now; the attempt whose outcome never came keeps its number (the claim put
            -- the attempts started before it on the row), and the delivery its key, if it has
            -- one (claimed by a replica whose configuration did not have `ordering` yet).
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        attempts, event_id, ordering_key, position)
            SELECT id, namespace, target_kind, target, now(), attempts + 1, event_id, ordering_key, position
            FROM taken
            ON CONFLICT (delivery_id) DO NOTHING
            RETURNING namespace, target_kind, target
        )
        SELECT (SELECT count(*) FROM taken),
               {wake}
        "#,
        wake = wake_for_queued("$1")
    ))
    .bind(super::DELIVERIES_CHANNEL)
    .fetch_one(&mut *connection)
    .await?;
    Ok(taken as u64)
}

async fn sweep(connection: &mut sqlx::PgConnection) -> sqlx::Result<Pass> {
    let Some(barrier) = barrier(connection).await? else {
        return Ok(Pass::NotNow);
    };
    let until = barrier - chrono::Duration::from_std(HORIZON).unwrap_or_default();
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    // The leases that ended without an outcome, among the deliveries stored since the last pass
    // (a range of the primary key) and those it saw still out.
    static ENDED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH sweep AS (
                 SELECT swept_to, still_out FROM lease_sweeps WHERE only_row
             ), looked AS ({looked})
             SELECT d.id FROM looked d WHERE d.lease_until < now() AND {OUT_ON_ROW}",
            looked = *LOOKED,
        )
    });
    let ended: Vec<Uuid> = sqlx::query_scalar(ENDED.as_str())
        .bind(until)
        .fetch_all(&mut *tx)
        .await?;
    if !ended.is_empty() {
        // Locked in id order, as recorders lock them: once granted, every outcome that counted
        // for them has committed, and the statement below, with a snapshot taken after, sees
        // it. A recorder that comes after waits, then finds the lease gone.
        sqlx::query(
            "SELECT 1 FROM UNNEST($1::uuid[]) AS e (id) JOIN deliveries d ON d.id >= e.id AND d.id <= e.id
             ORDER BY d.id
             FOR UPDATE OF d",
        )
        .bind(&ended)
        .execute(&mut *tx)
        .await?;
    }
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            r#"
        WITH sweep AS (
            SELECT swept_to, still_out FROM lease_sweeps WHERE only_row FOR UPDATE
        ), upto AS (
            SELECT {until} AS id
        ), looked AS ({looked}
        ), leased AS (
            -- Still out: no outcome has come.
            SELECT d.id FROM looked d WHERE {OUT_ON_ROW}
        ), taken AS (
            -- Only rows locked above. Each looked up in its own partition by a range of one key
            -- (see `direct` in `deliveries::record_attempts`).
            UPDATE deliveries d SET lease_until = NULL, updated_at = now()
            FROM leased l
            WHERE l.id = ANY ($3) AND d.id >= l.id AND d.id <= l.id
            RETURNING d.id, d.namespace, d.target_kind, d.target, d.event_id, d.attempts
        ), queued AS (
            -- Due now; the attempt whose outcome never came keeps its number.
            INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at,
                                        attempts, event_id)
            SELECT id, namespace, target_kind, target, now(), attempts + 1, event_id FROM taken
            ON CONFLICT (delivery_id) DO NOTHING
            RETURNING namespace, target_kind, target
        ), out AS (
            -- Still out and not taken (a live lease): looked at again next pass, however far
            -- `swept_to` has moved.
            SELECT ARRAY(SELECT id FROM leased WHERE id <> ALL ($3) ORDER BY id) AS ids
        ), moved AS (
            UPDATE lease_sweeps
            SET swept_to = greatest((SELECT swept_to FROM sweep), (SELECT id FROM upto)),
                still_out = (SELECT ids FROM out)
            -- By its key: a scan, even of one row, is priced so high with sequential scans off
            -- (store::connect_lazy) that Postgres would compile the statement (JIT) every time.
            WHERE only_row
        )
        SELECT (SELECT count(*) FROM taken),
               (SELECT cardinality(ids)::bigint FROM out),
               {wake}
        "#,
            until = id_floor_sql("$1::timestamptz"),
            looked = *LOOKED,
            wake = wake_for_queued("$2")
        )
    });
    let (taken, out, _): (i64, i64, bool) = sqlx::query_as(SQL.as_str())
        .bind(until)
        .bind(super::DELIVERIES_CHANNEL)
        .bind(&ended)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Pass::Done {
        taken: taken as u64,
        out: out as u64,
    })
}

/// What a pass looks at (`id`, `attempts`, `lease_until`, `status` of rows with a lease), in a
/// statement with a CTE `sweep` (`swept_to`, `still_out`) and its horizon bound as `$1`: the
/// deliveries stored since the last pass (a range of the primary key), and those it saw still
/// out (each looked up in its own partition by a range of one key).
static LOOKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT d.id, d.attempts, d.lease_until, d.status FROM deliveries d
         WHERE d.id >= (SELECT swept_to FROM sweep) AND d.id < {until} AND d.lease_until IS NOT NULL
         UNION ALL
         SELECT d.id, d.attempts, d.lease_until, d.status
         FROM unnest((SELECT still_out FROM sweep)) AS o (id)
         CROSS JOIN LATERAL (SELECT * FROM deliveries d WHERE d.id >= o.id AND d.id <= o.id OFFSET 0) d
         WHERE d.lease_until IS NOT NULL",
        until = id_floor_sql("$1::timestamptz"),
    )
});

/// A condition on the history row `d`: it may be out on a lease of its row, as stored (at or
/// past the sweep's `swept_to`, or seen still out by its last pass), or claimed from the queue
/// by a version before migrations/0023 (named in `queue_leases`: every claim not yet
/// forgotten, a few thousand deliveries at most).
pub(super) const MAY_BE_LEASED: &str = "(d.id >= (SELECT swept_to FROM lease_sweeps WHERE only_row)
      OR d.id = ANY (ARRAY(SELECT unnest(still_out) FROM lease_sweeps))
      OR d.id = ANY (ARRAY(SELECT unnest(deliveries) FROM queue_leases)))";

/// Passes the barrier: the moment (Postgres' clock) by which every statement that leased
/// before has committed; `None` when statements held the lock past [`BARRIER_TIMEOUT`].
async fn barrier(connection: &mut sqlx::PgConnection) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{BARRIER_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    // The clock is read after the lock is granted (a select list is evaluated in order).
    let passed: sqlx::Result<(chrono::DateTime<chrono::Utc>,)> =
        sqlx::query_as("SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock($1) OFFSET 0) l")
            .bind(LEASE_LOCK)
            .fetch_one(&mut *tx)
            .await;
    match passed {
        Ok((at,)) => {
            tx.commit().await?;
            Ok(Some(at))
        }
        // 55P03: lock_not_available, the timeout.
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55P03") => {
            tx.rollback().await?;
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The oldest id that may still carry a lease (see the module's comment).
pub async fn swept_to(pool: &PgPool) -> sqlx::Result<Uuid> {
    sqlx::query_scalar("SELECT swept_to FROM lease_sweeps WHERE only_row")
        .fetch_one(pool)
        .await
}
