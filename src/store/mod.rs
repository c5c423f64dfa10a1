//! Postgres: connection pool and schema migrations.

use std::time::Duration;

pub mod activity;
pub mod deliveries;
pub mod events;
pub mod group_commit;
pub mod history;
pub mod leases;
pub mod pace;
pub mod partitions;
pub mod replays;
pub mod retention;
pub mod sessions;
pub mod stats;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Channel dispatchers LISTEN on; notified in the same statement as the rows it announces, so
/// the notification is delivered exactly when they are committed. The payload names the targets
/// with new deliveries (`namespace/kind/name`, one a line); an empty one means "look at the
/// whole queue".
pub const DELIVERIES_CHANNEL: &str = "hookline_deliveries";

/// The schema, embedded from `migrations/` at build time.
/// Migrations applied by a newer version are not an error: they only add (tables, nullable
/// columns, indexes), so an older gateway keeps running on a newer schema during a rolling
/// upgrade, and after a rollback.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!()
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] MigrateError),
    #[error("cannot make the history's partitions: {0}")]
    Partitions(#[source] sqlx::Error),
}

/// One run of the migrations on a connection of their own, waiting at most
/// [`MIGRATION_LOCK_TIMEOUT`] for any lock. The connection is closed after, not returned to the
/// pool: a failed run may leave the migrator's session lock held, and the setting set.
async fn migrate_once(pool: &PgPool) -> Result<(), MigrateError> {
    let mut connection = pool.acquire().await?;
    let result = async {
        sqlx::query(&format!("SET lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"))
            .execute(&mut *connection)
            .await?;
        MIGRATOR.run_direct(&mut *connection).await
    }
    .await;
    let _ = connection.close().await;
    result
}

/// Opens a pool. Connections are made lazily, so a database that is down at start-up does not
/// stop the process; callers report readiness from [`ping`].
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    // Plans must not depend on stale table statistics: after a fresh install, a quiet spell or
    // a TRUNCATE they describe empty tables, and Postgres bakes them into the plans it caches.
    // A claim planned for an empty queue once read the whole table for every claim, and a
    // foreign-key check planned so scanned the whole parent table for every row. So:
    // - sessions turn off sequential scans: the cached plans of single-table statements,
    //   foreign-key checks included, stay index lookups whatever the statistics said;
    // - statements that join tables are either not prepared (`persistent(false)`: planned when
    //   they run, for the tables as they are then, once per batch) or, where planning each
    //   time costs too much (inserting events, claiming, recording attempts), spell out every
    //   lookup they make and run on pools that keep one plan (`with_cached_plans`).
    // (Re-planning every statement, plan_cache_mode=force_custom_plan, foreign-key checks
    // included, cost about a sixth of the machine's CPU time while dispatching.)
    // With sequential scans off, a scan of a small table without a fitting index (the running
    // replays, looked for every second by every gateway) is priced far above `jit_above_cost`,
    // and Postgres compiled each such statement to machine code: 20 ms and more of CPU for a
    // scan of no rows, a tenth of a core per idle gateway. Every statement here is short, so
    // sessions do without JIT.
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(StoreError::Connect)?
        .options([("enable_seqscan", "off"), ("jit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// A pool of `max_connections` to the same database whose sessions always use the statements'
/// cached plans (`plan_cache_mode=force_generic_plan`), for writers whose statements are
/// written to need no other plan (the event writers; the dispatcher's claims and recordings).
/// Postgres would plan them again at every execution otherwise: a custom plan, knowing the
/// batch's size, always looks cheaper than the cached one, and planning storing events (with
/// partitions to prune) cost more than running it.
pub fn with_cached_plans(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}

/// How long a migration waits for a table's lock before it gives way. A schema change waiting
/// behind a long query (a console read, a retention batch) holds up every statement on that
/// table queued behind it, ingest and outcomes included; one that gives way is tried again.
const MIGRATION_LOCK_TIMEOUT: &str = "5s";
/// How many times migrations are tried before the process gives up (about three minutes).
const MIGRATION_TRIES: u32 = 30;

/// Applies every migration not yet applied; running it again is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tries = 1;
    while let Err(err) = migrate_once(pool).await {
        let gave_way = matches!(&err, MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)
            if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("55P03"));
        if !gave_way || tries == MIGRATION_TRIES {
            return Err(err.into());
        }
        tracing::warn!(
            "a migration waited {MIGRATION_LOCK_TIMEOUT} for a lock held by another session and gave way; trying again: {err}"
        );
        tries += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Somewhere to write from the first request on: the current period, if none holds now
    // (the node's retention pass makes the next ones, of its configured period). Another
    // replica may be making it (then this one waits for it), or dropping a period (which holds
    // the lock making one takes: then the attempt times out and is tried again).
    let mut last_error = None;
    for _ in 0..30 {
        let now = chrono::Utc::now();
        let next_ms = now + chrono::Duration::milliseconds(1);
        if let Err(err) = partitions::ensure(pool, now, next_ms, partitions::DEFAULT_PERIOD).await {
            last_error = Some(err);
        }
        if partitions::covers_now(pool)
            .await
            .map_err(StoreError::Partitions)?
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(StoreError::Partitions(
        last_error.unwrap_or(sqlx::Error::RowNotFound),
    ))
}

/// Target keys as the three arrays (namespace, kind, name) a statement UNNESTs.
pub(crate) fn key_columns<'a>(
    keys: impl IntoIterator<Item = &'a crate::api::TargetKey>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new());
    for key in keys {
        columns.0.push(key.namespace.as_str());
        columns.1.push(key.kind.as_str());
        columns.2.push(key.name.as_str());
    }
    columns
}
