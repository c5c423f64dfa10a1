//! Postgres: connection pool and schema migrations.

use std::time::Duration;

pub mod deliveries;
pub mod events;
pub mod group_commit;
pub mod history;
pub mod retention;
pub mod stats;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded from `migrations/` at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] MigrateError),
}

/// Opens a pool. Connections are made lazily, so a database that is down at start-up does not
/// stop the process; callers report readiness from [`ping`].
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    // Every statement here reads by index: point lookups and short ranges of one target. Their
    // plans must not depend on table statistics, which are wrong on a fresh install, after a
    // quiet spell or a TRUNCATE, and which Postgres bakes into the plans it caches (also those
    // of the foreign-key checks): a plan made for an empty queue once read the whole table for
    // every claim. Without sequential scans, hash and merge joins, every plan is index lookups
    // whatever the statistics say, so cached plans stay good. (Re-planning every statement
    // instead, plan_cache_mode=force_custom_plan, cost about a sixth of the machine's CPU time
    // while dispatching.)
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(StoreError::Connect)?
        .options([
            ("enable_seqscan", "off"),
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies every migration not yet applied; running it again is a no-op.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
