//! Console sessions, in Postgres so every gateway replica knows them. Rows are keyed by the
//! SHA-256 of the cookie value; expired rows are never returned and are deleted as sessions open.

use chrono::{DateTime, Utc};

/// A signed-in console session.
#[derive(Debug, sqlx::FromRow)]
pub struct ConsoleSession {
    /// SHA-256 of the admin token it was opened with.
    pub token_hash: Vec<u8>,
    pub csrf: String,
}

pub async fn open(
    pool: &sqlx::PgPool,
    id_hash: &[u8],
    session: &ConsoleSession,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO console_sessions (id_hash, token_hash, csrf, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id_hash)
    .bind(&session.token_hash)
    .bind(&session.csrf)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// The session, unless it has expired or ended.
pub async fn find<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id_hash: &[u8],
) -> sqlx::Result<Option<ConsoleSession>> {
    sqlx::query_as("SELECT token_hash, csrf FROM console_sessions WHERE id_hash = $1 AND expires_at > now()")
        .bind(id_hash)
        .fetch_optional(executor)
        .await
}

pub async fn close<'e>(executor: impl sqlx::PgExecutor<'e>, id_hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(executor)
        .await?;
    Ok(())
}
