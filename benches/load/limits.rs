//! The machine's limits, measured in the same run: a minimal axum handler driven by the same
//! generator, and batched inserts of event-sized rows into the same Postgres.

use std::process::{Command, Stdio};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use sqlx::PgPool;

use crate::generator::*;
use crate::rig::*;
use crate::{MINIMAL_SERVER_ROLE, Scale, progress, report};

/// The machine's own limits: HTTP requests a second, Postgres rows and commits a second.
pub(crate) async fn measure(
    client: &reqwest::Client,
    pool: &PgPool,
    scale: Scale,
) -> anyhow::Result<(f64, f64)> {
    let http_limit = http_limit(client, scale).await?;
    report("limit_http_rps", http_limit, "req/s");
    let pg_limit = pg_rows_limit(pool, scale).await?;
    report("limit_pg_rows_per_s", pg_limit, "rows/s");
    report(
        "limit_pg_commits_per_s",
        pg_commit_limit(pool, scale).await?,
        "commits/s",
    );
    Ok((http_limit, pg_limit))
}

pub(crate) async fn http_limit(client: &reqwest::Client, scale: Scale) -> anyhow::Result<f64> {
    let port = free_port()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(MINIMAL_SERVER_ROLE, port.to_string())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the minimal server")?;
    let url = format!("http://127.0.0.1:{port}/");
    wait_until_up(client, &url).await?;
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let mut best = 0.0f64;
    for &concurrency in scale.concurrencies {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let measured = closed_loop(concurrency, scale.window, move || {
            let request = client.post(url.clone()).body(body.clone()).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        progress(&format!(
            "minimal handler at concurrency {concurrency}: {:.0} req/s",
            measured.rate()
        ));
        best = best.max(measured.rate());
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(best)
}

pub(crate) fn minimal_server() -> anyhow::Result<()> {
    let port: u16 = std::env::var(MINIMAL_SERVER_ROLE)?.parse()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let app = Router::new().route("/", post(|_body: Bytes| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// Batches of 100 event-sized rows (1 KiB body, headers, ids), one commit each, from 4
/// connections: what this Postgres can store at best.
pub(crate) async fn pg_rows_limit(pool: &PgPool, scale: Scale) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_rows (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    )
    .execute(pool)
    .await?;
    let pool2 = pool.clone();
    let measured = closed_loop(4, scale.window, move || {
        let pool = pool2.clone();
        async move {
            sqlx::query(
                "INSERT INTO bench_rows (id, namespace, source, provider, external_id, event_type, headers, body)
                 SELECT gen_random_uuid(), 'bench', 'stripe', 'stripe', 'evt_' || gen_random_uuid(), 'invoice.paid',
                        '{\"content-type\": \"application/json\", \"stripe-signature\": \"t=1,v1=0\"}', $1
                 FROM generate_series(1, 100)",
            )
            .bind(vec![b'x'; BODY_BYTES])
            .execute(&pool)
            .await
            .is_ok()
        }
    })
    .await;
    sqlx::query("DROP TABLE bench_rows").execute(pool).await?;
    Ok(measured.rate() * 100.0)
}

/// Single-row commits from 16 connections: the ceiling without group commit.
pub(crate) async fn pg_commit_limit(pool: &PgPool, scale: Scale) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_commits (LIKE events INCLUDING DEFAULTS INCLUDING INDEXES)",
    )
    .execute(pool)
    .await?;
    let pool2 = pool.clone();
    let measured = closed_loop(16, scale.window, move || {
        let pool = pool2.clone();
        async move {
            sqlx::query(
                "INSERT INTO bench_commits (id, namespace, source, external_id, event_type, body)
                 VALUES (gen_random_uuid(), 'bench', 'stripe', gen_random_uuid()::text, 'invoice.paid', $1)",
            )
            .bind(vec![b'x'; BODY_BYTES])
            .execute(&pool)
            .await
            .is_ok()
        }
    })
    .await;
    sqlx::query("DROP TABLE bench_commits").execute(pool).await?;
    Ok(measured.rate())
}
