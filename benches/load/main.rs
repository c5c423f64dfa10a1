//! The benchmark behind `hack/bench`: Hookline's throughput and latency measured beside the
//! machine's own limits, in one run on one machine. Every figure is printed to standard output as
//! one line `name value unit`; progress goes to standard error.
//!
//! Parts, all real and on loopback: a private Postgres (the machine's binaries), the `hookline
//! standalone` binary as its own process (so its memory is its own), a sink answering 200 at
//! once, and the load generator in this process. The HTTP ceiling is a minimal axum handler in a
//! child process driven by the same generator; the storage ceiling is batched inserts of
//! event-sized rows into the same Postgres.

mod costs;
mod dispatch;
mod e2e;
mod fanout;
mod generator;
mod hot;
mod ingest;
mod limits;
mod memory;
mod resumed;
mod retention;
mod rig;
mod sustained;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hookline::standalone::postgres::PrivatePostgres;

use generator::load_client;
use rig::{Bench, GatewayProcess, Sink, write_config};

/// Set in the environment of the child process that serves the minimal handler.
const MINIMAL_SERVER_ROLE: &str = "HOOKLINE_BENCH_MINIMAL_SERVER";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(MINIMAL_SERVER_ROLE).is_some() {
        return limits::minimal_server();
    }
    if let Ok(role) = std::env::var(hot::ROLE) {
        return hot::run(&role);
    }
    let quick = std::env::var_os("HOOKLINE_BENCH_QUICK").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(if quick { Scale::QUICK } else { Scale::FULL }))
}

/// How long and how large each measurement is.
#[derive(Clone, Copy)]
struct Scale {
    window: Duration,
    concurrencies: &'static [usize],
    dispatch_backlog: u64,
    fanout_events: u64,
    rss_backlog_events: u64,
    /// Events in each of the 30 days of history the retention part writes.
    history_per_day: u64,
}

impl Scale {
    const FULL: Self = Self {
        window: Duration::from_secs(8),
        concurrencies: &[8, 32, 128, 256],
        dispatch_backlog: 50_000,
        fanout_events: 1_000,
        rss_backlog_events: 10_000, // × 100 subscriptions = 1,000,000 deliveries
        history_per_day: 1_000_000,
    };
    /// A smoke run of every part (HOOKLINE_BENCH_QUICK=1).
    const QUICK: Self = Self {
        window: Duration::from_secs(2),
        concurrencies: &[32],
        dispatch_backlog: 2_000,
        fanout_events: 20,
        rss_backlog_events: 200,
        history_per_day: 2_000,
    };
}

fn report(name: &str, value: f64, unit: &str) {
    // Three decimals below 1 (0.021 commits per webhook, not 0.02).
    let value = if value >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 || value == 0.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    println!("{name} {value} {unit}");
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

async fn run(scale: Scale) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hookline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let postgres = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || PrivatePostgres::start(&dir)
    })
    .await??;
    // pg_stat_statements counts the gateway's statements (its round trips to Postgres) and their
    // planning and execution times; it is loaded at server start only, so the server is
    // restarted once with it. Commit times are kept too, to tell a webhook's commit apart
    // from what follows it (e2e's stages); that, too, takes a restart.
    let admin = sqlx::PgPool::connect(&postgres.url()).await?;
    for setting in [
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        "ALTER SYSTEM SET track_commit_timestamp = on",
    ] {
        sqlx::query(setting).execute(&admin).await?;
    }
    admin.close().await;
    let postgres = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            postgres.stop();
            PrivatePostgres::start(&dir)
        }
    })
    .await??;
    let result = measure(scale, &dir, &postgres.url()).await;
    tokio::task::spawn_blocking(move || postgres.stop()).await?;
    if explain_threshold().is_some() {
        // The plans are in the server's log, which goes with the directory.
        let kept = std::env::temp_dir().join("hookline-bench-postgres.log");
        std::fs::copy(dir.join("postgres").join("postgres.log"), &kept)?;
        progress(&format!("slow statements and their plans: {}", kept.display()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Whether a part of the benchmark runs: all of them, unless HOOKLINE_BENCH_ONLY lists some
/// (comma-separated: hot, limits, ingest, dispatch, ordered, resumed, fanout, e2e, sustained,
/// retention, memory).
fn enabled(part: &str) -> bool {
    std::env::var("HOOKLINE_BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// HOOKLINE_BENCH_EXPLAIN_MS: log the plan (with actual times, unless
/// HOOKLINE_BENCH_EXPLAIN_ANALYZE=off) of every statement slower than this many milliseconds,
/// for profiling.
fn explain_threshold() -> Option<u32> {
    std::env::var("HOOKLINE_BENCH_EXPLAIN_MS").ok()?.parse().ok()
}

async fn measure(scale: Scale, dir: &Path, database_url: &str) -> anyhow::Result<()> {
    let pool = hookline::store::connect_lazy(database_url, 8)?;
    hookline::store::migrate(&pool).await?;
    // The gateway connects as its own role, so that its statements are told from the bench's.
    for setting in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "ALTER SYSTEM SET pg_stat_statements.track_planning = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(setting).execute(&pool).await?;
    }
    sqlx::query(&format!("CREATE ROLE {} LOGIN SUPERUSER", costs::GATEWAY_ROLE))
        .execute(&pool)
        .await?;
    let mut gateway_url = url::Url::parse(database_url)?;
    gateway_url
        .set_username(costs::GATEWAY_ROLE)
        .map_err(|()| anyhow::anyhow!("cannot set the user of {database_url}"))?;
    if let Some(threshold) = explain_threshold() {
        // Sessions opened from now on (the gateway's) load auto_explain.
        let mut session = pool.acquire().await?;
        for setting in [
            "LOAD 'auto_explain'".to_owned(),
            "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'".to_owned(),
            format!("ALTER SYSTEM SET auto_explain.log_min_duration = '{threshold}ms'"),
            // With actual rows and times per plan node, which slows every statement; or only the
            // plan (HOOKLINE_BENCH_EXPLAIN_ANALYZE=off), which does not.
            format!(
                "ALTER SYSTEM SET auto_explain.log_analyze = {}",
                std::env::var("HOOKLINE_BENCH_EXPLAIN_ANALYZE").as_deref() != Ok("off")
            ),
            "ALTER SYSTEM SET auto_explain.log_nested_statements = on".to_owned(),
        ] {
            sqlx::query(&setting).execute(&mut *session).await?;
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut *session)
            .await?;
    }
    if enabled("hot") {
        hot::measure(dir)?;
    }
    let client = load_client();
    // The machine's limits.
    let limits = if enabled("limits") {
        Some(limits::measure(&client, &pool, scale).await?)
    } else {
        None
    };

    let sink = Sink::start().await?;
    let config_dir = dir.join("config");
    write_config(&config_dir, &sink.base)?;
    let gateway = GatewayProcess::start(&config_dir, gateway_url.as_str()).await?;
    let bench = Arc::new(Bench {
        pool,
        client,
        sink,
        gateway,
        next_event: AtomicU64::new(1),
        postmaster_pid_file: costs::postmaster_pid_file(dir),
    });

    let mut ingest_rps = std::env::var("HOOKLINE_BENCH_INGEST_RPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1000.0);
    if enabled("ingest") {
        ingest_rps = ingest::measure(&bench, scale, limits).await?;
    }
    if enabled("dispatch") {
        dispatch::measure(&bench, scale).await?;
    }
    if enabled("ordered") {
        dispatch::measure_ordered(&bench, scale).await?;
    }
    if enabled("resumed") {
        resumed::measure(&bench, scale).await?;
    }
    if enabled("fanout") {
        fanout::measure(&bench, scale).await?;
    }
    if enabled("e2e") {
        e2e::measure(&bench, scale, ingest_rps).await?;
    }
    if enabled("sustained") {
        sustained::measure(&bench, scale).await?;
    }
    if enabled("retention") {
        retention::measure(&bench, scale).await?;
    }
    if enabled("memory") {
        memory::measure(&bench, scale).await?;
    }
    Ok(())
}
