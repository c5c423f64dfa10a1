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
    // Statements are planned for the table sizes of each execution. A generic plan, cached
    // while the queue was nearly empty (a fresh install, a quiet night), keeps nested loops
    // over whole tables once it fills up: a claim then took a second instead of a millisecond.
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(StoreError::Connect)?
        .options([("plan_cache_mode", "force_custom_plan")]);
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
