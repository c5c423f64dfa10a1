//! The benchmark behind `hack/bench`: Hookline's throughput and latency measured beside the
//! machine's own limits, in one run on one machine. Every figure is printed to standard output as
//! one line `name value unit`; progress goes to standard error.
//!
//! Parts, all real and on loopback: a private Postgres (the machine's binaries), the `hookline
//! standalone` binary as its own process (so its memory is its own), a sink answering 200 at
//! once, and the load generator in this process. The HTTP ceiling is a minimal axum handler in a
//! child process driven by the same generator; the storage ceiling is batched inserts of
//! event-sized rows into the same Postgres.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hookline::api::{TargetKey, TargetKind};
use hookline::standalone::postgres::PrivatePostgres;
use hookline::store::deliveries;
use hookline::verify::{SigningKey, stripe};
use sqlx::PgPool;

/// Set in the environment of the child process that serves the minimal handler.
const MINIMAL_SERVER_ROLE: &str = "HOOKLINE_BENCH_MINIMAL_SERVER";
const NAMESPACE: &str = "bench";
const SOURCE: &str = "stripe";
const HANDLER_TARGET: &str = "stripe/sink";
/// Webhooks a second at which ingest latency is measured (a DESIGN.md target).
const INGEST_TARGET_RPS: f64 = 10_000.0;
/// Webhooks a second taken in and delivered, sustained (a DESIGN.md target).
const SUSTAINED_RPS: f64 = 5_000.0;
const STRIPE_SECRET: &str = "whsec_bench_stripe_endpoint_secret";
const SUBSCRIPTION_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PUBLISH_TOKEN: &str = "bench-publish-token";
const FANOUT_SUBSCRIPTIONS: usize = 100;
const BODY_BYTES: usize = 1024;

fn main() -> anyhow::Result<()> {
    if std::env::var_os(MINIMAL_SERVER_ROLE).is_some() {
        return minimal_server();
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
    old_history: u64,
}

impl Scale {
    const FULL: Self = Self {
        window: Duration::from_secs(8),
        concurrencies: &[8, 32, 128, 256],
        dispatch_backlog: 50_000,
        fanout_events: 1_000,
        rss_backlog_events: 10_000, // × 100 subscriptions = 1,000,000 deliveries
        old_history: 200_000,
    };
    /// A smoke run of every part (HOOKLINE_BENCH_QUICK=1).
    const QUICK: Self = Self {
        window: Duration::from_secs(2),
        concurrencies: &[32],
        dispatch_backlog: 2_000,
        fanout_events: 20,
        rss_backlog_events: 200,
        old_history: 2_000,
    };
}

fn report(name: &str, value: f64, unit: &str) {
    let value = if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
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
/// (comma-separated: limits, ingest, dispatch, fanout, e2e, retention, memory).
fn enabled(part: &str) -> bool {
    std::env::var("HOOKLINE_BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// HOOKLINE_BENCH_EXPLAIN_MS: log the plan (with actual times) of every statement slower than
/// this many milliseconds, for profiling.
fn explain_threshold() -> Option<u32> {
    std::env::var("HOOKLINE_BENCH_EXPLAIN_MS").ok()?.parse().ok()
}

async fn measure(scale: Scale, dir: &Path, database_url: &str) -> anyhow::Result<()> {
    let pool = hookline::store::connect_lazy(database_url, 8)?;
    hookline::store::migrate(&pool).await?;
    if let Some(threshold) = explain_threshold() {
        // Sessions opened from now on (the gateway's) load auto_explain.
        let mut session = pool.acquire().await?;
        for setting in [
            "LOAD 'auto_explain'".to_owned(),
            "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'".to_owned(),
            format!("ALTER SYSTEM SET auto_explain.log_min_duration = '{threshold}ms'"),
            "ALTER SYSTEM SET auto_explain.log_analyze = on".to_owned(),
            "ALTER SYSTEM SET auto_explain.log_nested_statements = on".to_owned(),
        ] {
            sqlx::query(&setting).execute(&mut *session).await?;
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut *session)
            .await?;
    }
    let client = load_client();

    // The machine's limits.
    let mut limits = None;
    if enabled("limits") {
        let http_limit = http_limit(&client, scale).await?;
        report("limit_http_rps", http_limit, "req/s");
        let pg_limit = pg_rows_limit(&pool, scale).await?;
        report("limit_pg_rows_per_s", pg_limit, "rows/s");
        report(
            "limit_pg_commits_per_s",
            pg_commit_limit(&pool, scale).await?,
            "commits/s",
        );
        limits = Some((http_limit, pg_limit));
    }

    let sink = Sink::start().await?;
    let config_dir = dir.join("config");
    write_config(&config_dir, &sink.base)?;
    let gateway = GatewayProcess::start(&config_dir, database_url).await?;
    let bench = Arc::new(Bench {
        pool,
        client,
        sink,
        gateway,
        next_event: AtomicU64::new(1),
    });

    // Ingest alone: the handler is paused so nothing is delivered meanwhile.
    let mut ingest_rps = std::env::var("HOOKLINE_BENCH_INGEST_RPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1000.0);
    if enabled("ingest") {
        bench.pause(&[HANDLER_TARGET]).await?;
        let mut best: Option<(usize, Measured)> = None;
        for &concurrency in scale.concurrencies {
            bench.reset().await?;
            let measured = bench.ingest_closed_loop(concurrency, scale.window).await?;
            progress(&format!(
                "ingest at concurrency {concurrency}: {:.0} req/s, p99 {:.1} ms, {} errors",
                measured.rate(),
                measured.percentile_ms(99.0),
                measured.errors
            ));
            // Every acknowledged webhook must be stored.
            let stored = bench.count("SELECT count(*) FROM events").await?;
            if stored < measured.ok {
                bail!(
                    "{} webhooks were acknowledged but only {stored} events are stored",
                    measured.ok
                );
            }
            if best.as_ref().is_none_or(|(_, b)| measured.rate() > b.rate()) {
                best = Some((concurrency, measured));
            }
        }
        let (concurrency, best) = best.context("no concurrency measured")?;
        ingest_rps = best.rate();
        report("ingest_rps", ingest_rps, "req/s");
        report("ingest_p99_ms", best.percentile_ms(99.0), "ms");
        report("ingest_concurrency", concurrency as f64, "connections");
        if let Some((http_limit, pg_limit)) = limits {
            report("ingest_vs_http_limit", ingest_rps / http_limit, "ratio");
            report("ingest_vs_pg_limit", ingest_rps / pg_limit, "ratio");
        }
        // DESIGN.md's target as it is stated: latency at 10,000 webhooks a second.
        bench.reset().await?;
        let at_target = open_loop(INGEST_TARGET_RPS, scale.window, || {
            bench.ingest_request("invoice.paid").1
        })
        .await?;
        report("ingest_10000rps_p50_ms", at_target.percentile_ms(50.0), "ms");
        report("ingest_10000rps_p99_ms", at_target.percentile_ms(99.0), "ms");
        report("ingest_10000rps_errors", at_target.errors as f64, "requests");
    }

    if enabled("dispatch") {
        // Drain a backlog to the sink.
        bench.reset().await?;
        bench
            .preload(scale.dispatch_backlog, &[HANDLER_TARGET], false)
            .await?;
        let before = bench.table_writes().await?;
        let per_s = bench.drain(&[HANDLER_TARGET], scale.dispatch_backlog).await?;
        report("dispatch_per_s", per_s, "deliveries/s");
        bench.report_table_writes(&before, scale.dispatch_backlog).await?;
    }

    if enabled("fanout") {
        // Published events, each to 100 subscriptions, from publish to the last delivery.
        bench.reset().await?;
        let before = bench.table_writes().await?;
        report(
            "fanout_per_s",
            bench.fanout(scale.fanout_events).await?,
            "deliveries/s",
        );
        bench
            .report_table_writes(&before, scale.fanout_events * FANOUT_SUBSCRIPTIONS as u64)
            .await?;
    }

    // Ingest → delivered, open loop, at half the maximum ingest rate and at 200/s.
    let half = (ingest_rps / 2.0).max(1.0);
    if enabled("e2e") {
        bench.reset().await?;
        let e2e = bench.end_to_end(half, scale.window).await?;
        report("e2e_rate_rps", half, "req/s");
        report("e2e_p50_ms", e2e.percentile_ms(50.0), "ms");
        report("e2e_p99_ms", e2e.percentile_ms(99.0), "ms");
        report("e2e_delivered_ratio", e2e.ok as f64 / e2e.sent as f64, "ratio");
        // DESIGN.md's sustained ingest + delivery target.
        bench.reset().await?;
        let sustained = bench.end_to_end(SUSTAINED_RPS, scale.window).await?;
        report("e2e_5000rps_p50_ms", sustained.percentile_ms(50.0), "ms");
        report("e2e_5000rps_p99_ms", sustained.percentile_ms(99.0), "ms");
        report(
            "e2e_5000rps_delivered_ratio",
            sustained.ok as f64 / sustained.sent as f64,
            "ratio",
        );
        bench.reset().await?;
        let e2e_200 = bench.end_to_end(200.0, scale.window).await?;
        report("e2e_200rps_p50_ms", e2e_200.percentile_ms(50.0), "ms");
        report("e2e_200rps_p99_ms", e2e_200.percentile_ms(99.0), "ms");
    }

    if enabled("retention") {
        // A sweep of old history while webhooks flow at 200/s: compare with e2e_200rps_*.
        bench.reset().await?;
        bench.preload_old_history(scale.old_history).await?;
        let (during, swept_per_s) = bench.end_to_end_during_retention(200.0, scale.window).await?;
        report("retention_deleted_per_s", swept_per_s, "events/s");
        report(
            "e2e_200rps_p50_ms_during_retention",
            during.percentile_ms(50.0),
            "ms",
        );
        report(
            "e2e_200rps_p99_ms_during_retention",
            during.percentile_ms(99.0),
            "ms",
        );
    }

    if enabled("memory") {
        // Memory under a backlog of 1M deliveries while it drains.
        bench.reset().await?;
        let subscriptions = fanout_targets();
        let subscriptions: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
        bench
            .preload(scale.rss_backlog_events, &subscriptions, true)
            .await?;
        let idle = bench.gateway.rss_mb()?;
        let peak = bench.rss_while_draining(&subscriptions, scale.window * 2).await?;
        report(
            "backlog_deliveries",
            (scale.rss_backlog_events * FANOUT_SUBSCRIPTIONS as u64) as f64,
            "deliveries",
        );
        report("gateway_rss_mb_backlog_idle", idle, "MiB");
        report("gateway_rss_mb", peak, "MiB");
    }
    Ok(())
}

/// The HTTP client of the load generator: keep-alive connections, no proxy.
fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client without TLS settings builds")
}

/// Requests answered, and the latency of each successful one.
#[derive(Default)]
struct Measured {
    sent: u64,
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }

    fn merge(&mut self, other: Measured) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Sends `rate` requests a second for `window`, each when its time comes whatever the answers
/// to the earlier ones (open loop), and measures each answer from the time it was due, so a
/// generator that falls behind shows in the latency (and in the rate it reports).
async fn open_loop(
    rate: f64,
    window: Duration,
    mut request: impl FnMut() -> reqwest::RequestBuilder,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::new();
    while started.elapsed() < window {
        let due = ticker.tick().await.into_std();
        let request = request();
        requests.push(tokio::spawn(async move {
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            (ok, due.elapsed().as_micros() as u64)
        }));
    }
    progress(&format!(
        "open loop at {rate:.0}/s: sent {:.0}/s",
        requests.len() as f64 / started.elapsed().as_secs_f64()
    ));
    let mut measured = Measured::default();
    for request in requests {
        let (ok, latency_us) = request.await?;
        measured.sent += 1;
        if ok {
            measured.ok += 1;
            measured.latencies_us.push(latency_us);
        } else {
            measured.errors += 1;
        }
    }
    measured.elapsed = started.elapsed();
    Ok(measured)
}

/// `concurrency` workers each sending one request after another for `window`.
async fn closed_loop<F, Fut>(concurrency: usize, window: Duration, request: F) -> Measured
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut measured = Measured::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    measured.sent += 1;
                    if request().await {
                        measured.ok += 1;
                        measured.latencies_us.push(sent.elapsed().as_micros() as u64);
                    } else {
                        measured.errors += 1;
                    }
                }
                measured
            })
        })
        .collect();
    let mut total = Measured::default();
    for worker in workers {
        if let Ok(measured) = worker.await {
            total.merge(measured);
        }
    }
    total.elapsed = started.elapsed();
    total
}

async fn http_limit(client: &reqwest::Client, scale: Scale) -> anyhow::Result<f64> {
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

fn minimal_server() -> anyhow::Result<()> {
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
async fn pg_rows_limit(pool: &PgPool, scale: Scale) -> anyhow::Result<f64> {
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
async fn pg_commit_limit(pool: &PgPool, scale: Scale) -> anyhow::Result<f64> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_until_up(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A Stripe event of 1 KiB whose id carries its sequence number at a fixed offset (the sink
/// reads it back to match deliveries to requests).
fn stripe_event(sequence: u64, event_type: &str) -> Vec<u8> {
    let head = format!(
        r#"{{"id":"evt_{sequence:012}","object":"event","type":"{event_type}","created":{},"data":{{"object":{{"padding":""#,
        now_unix()
    );
    let tail = r#""}}}"#;
    let mut body = head.into_bytes();
    body.resize(BODY_BYTES - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The sequence number of a body made by [`stripe_event`], wherever the body was wrapped.
fn sequence_of(body: &[u8]) -> Option<u64> {
    let marker = b"\"evt_";
    let at = body.windows(marker.len()).position(|w| w == marker)? + marker.len();
    std::str::from_utf8(body.get(at..at + 12)?).ok()?.parse().ok()
}

/// The receiving end of every delivery: answers 200 at once, counts, and when asked notes
/// when each sequence number arrived.
struct Sink {
    base: String,
    state: Arc<SinkState>,
}

#[derive(Default)]
struct SinkState {
    received: AtomicU64,
    track: AtomicBool,
    arrivals: Mutex<Vec<(u64, Instant)>>,
}

impl Sink {
    async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(SinkState::default());
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, state })
    }

    fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }
}

async fn receive(State(state): State<Arc<SinkState>>, body: Bytes) -> StatusCode {
    if state.track.load(Ordering::Relaxed)
        && let Some(sequence) = sequence_of(&body)
    {
        let mut arrivals = state.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        arrivals.push((sequence, Instant::now()));
    }
    state.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

fn fanout_targets() -> Vec<String> {
    (0..FANOUT_SUBSCRIPTIONS).map(|i| format!("fan-{i:03}")).collect()
}

/// The gateway's configuration: a Stripe source whose handler is the sink, and 100
/// subscriptions to `fanout.*` events, all delivering to the sink.
fn write_config(dir: &Path, sink: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: stripe, namespace: {NAMESPACE}}}
stringData: {{signing-secret: {STRIPE_SECRET}, subscription-secret: {SUBSCRIPTION_SECRET}}}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: {{name: {SOURCE}, namespace: {NAMESPACE}}}
spec:
  provider: stripe
  secretRef: {{name: stripe, key: signing-secret}}
  handlers:
    - name: sink
      url: {sink}/handler
      # At the default of 16, one target's rate is capped at 16 / round trip: about 5,000/s
      # once ingest shares the cores (3 ms round trips).
      maxInFlight: 64
      events: ["invoice.*"]
      secretRef: {{name: stripe, key: subscription-secret}}
"#
    );
    for name in fanout_targets() {
        yaml.push_str(&format!(
            r#"---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  url: {sink}/{name}
  events: ["fanout.*"]
  allowPrivateNetworks: true
  secretRef: {{name: stripe, key: subscription-secret}}
"#
        ));
    }
    std::fs::write(dir.join("bench.yaml"), yaml)?;
    Ok(())
}

/// `hookline standalone` as its own process, on the bench's Postgres.
struct GatewayProcess {
    child: Child,
    base: String,
}

impl GatewayProcess {
    async fn start(config_dir: &Path, database_url: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_hookline"));
        // Its logs go to a file, as a container runtime would take them.
        let log = std::fs::File::create(config_dir.with_file_name("gateway.log"))?;
        let child = Command::new(&binary)
            .args(["standalone", "-f"])
            .arg(config_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("HOOKLINE_PUBLISH_TOKEN", PUBLISH_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let gateway = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_until_up(&load_client(), &format!("{}/healthz", gateway.base)).await?;
        Ok(gateway)
    }

    /// Resident memory of the gateway process.
    fn rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    pool: PgPool,
    client: reqwest::Client,
    sink: Sink,
    gateway: GatewayProcess,
    next_event: AtomicU64,
}

impl Bench {
    /// Empties the history between measurements, so each starts from the same state.
    async fn reset(&self) -> anyhow::Result<()> {
        sqlx::query("TRUNCATE events, deliveries, delivery_queue, attempts, idempotency_keys")
            .execute(&self.pool)
            .await?;
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// Rows written per table so far (inserted, updated, of those in place (HOT), deleted),
    /// to show where a measurement's writes went.
    async fn table_writes(&self) -> anyhow::Result<BTreeMap<String, [i64; 4]>> {
        // An idle backend reports its counts within 10 s (PGSTAT_IDLE_INTERVAL).
        tokio::time::sleep(Duration::from_secs(11)).await;
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(table, ins, upd, hot, del)| (table, [ins, upd, hot, del]))
            .collect())
    }

    /// Prints the rows each table had written since `before`, per `unit`s of work.
    async fn report_table_writes(
        &self,
        before: &BTreeMap<String, [i64; 4]>,
        units: u64,
    ) -> anyhow::Result<()> {
        for (table, after) in self.table_writes().await? {
            let was = before.get(&table).copied().unwrap_or_default();
            let per = |i: usize| (after[i] - was[i]) as f64 / units.max(1) as f64;
            if (0..4).any(|i| after[i] != was[i]) {
                progress(&format!(
                    "{table}: per delivery {:.2} inserted, {:.2} updated ({:.2} HOT), {:.2} deleted",
                    per(0),
                    per(1),
                    per(2),
                    per(3)
                ));
            }
        }
        Ok(())
    }

    async fn count(&self, sql: &str) -> anyhow::Result<u64> {
        Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await? as u64)
    }

    fn target_key(target: &str) -> TargetKey {
        TargetKey {
            namespace: NAMESPACE.to_owned(),
            kind: if target.contains('/') {
                TargetKind::Handler
            } else {
                TargetKind::Subscription
            },
            name: target.to_owned(),
        }
    }

    /// Pauses targets for every replica, as the console's Pause or a 410 Gone does.
    async fn pause(&self, targets: &[&str]) -> anyhow::Result<()> {
        for target in targets {
            deliveries::pause_target(&self.pool, &Self::target_key(target), "benchmark").await?;
        }
        Ok(())
    }

    async fn resume(&self, targets: &[&str]) -> anyhow::Result<()> {
        for target in targets {
            deliveries::resume_target(&self.pool, &Self::target_key(target)).await?;
        }
        Ok(())
    }

    fn ingest_request(&self, event_type: &str) -> (u64, reqwest::RequestBuilder) {
        let sequence = self.next_event.fetch_add(1, Ordering::Relaxed);
        let body = stripe_event(sequence, event_type);
        let key = SigningKey::from_text(STRIPE_SECRET).expect("the secret is not empty");
        let signature = stripe::sign(&key, now_unix(), &body);
        let request = self
            .client
            .post(format!("{}/ingest/{NAMESPACE}/{SOURCE}", self.gateway.base))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body);
        (sequence, request)
    }

    async fn ingest_closed_loop(
        self: &Arc<Self>,
        concurrency: usize,
        window: Duration,
    ) -> anyhow::Result<Measured> {
        let this = self.clone();
        Ok(closed_loop(concurrency, window, move || {
            let (_, request) = this.ingest_request("invoice.paid");
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await)
    }

    /// Inserts `events` events of 1 KiB with one delivery each to every target, the fastest way
    /// (SQL, not HTTP): a backlog for the dispatcher, held back by pausing the targets.
    async fn preload(&self, events: u64, targets: &[&str], fanout: bool) -> anyhow::Result<()> {
        self.pause(targets).await?;
        let first = self.next_event.fetch_add(events, Ordering::Relaxed);
        let event_type = if fanout { "fanout.bench" } else { "invoice.paid" };
        let template = String::from_utf8(stripe_event(0, event_type))?;
        let started = Instant::now();
        for chunk_start in (0..events).step_by(10_000) {
            let chunk = (events - chunk_start).min(10_000) as i64;
            sqlx::query(
                "WITH e AS (
                     INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body)
                     SELECT gen_random_uuid(), $1, $2, 'stripe', 'evt_' || lpad(n::text, 12, '0'), $3,
                            '{\"content-type\": \"application/json\"}',
                            convert_to(replace($4, 'evt_000000000000', 'evt_' || lpad(n::text, 12, '0')), 'UTF8')
                     FROM generate_series($5::bigint, $5::bigint + $6 - 1) AS n
                     RETURNING id),
                 d AS (
                     INSERT INTO deliveries (id, event_id, namespace, target_kind, target)
                     SELECT gen_random_uuid(), e.id, $1,
                            CASE WHEN t LIKE '%/%' THEN 'handler' ELSE 'subscription' END, t
                     FROM e CROSS JOIN UNNEST($7::text[]) AS t
                     RETURNING id, namespace, target_kind, target)
                 INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at)
                 SELECT *, now() FROM d",
            )
            .bind(NAMESPACE)
            .bind(SOURCE)
            .bind(event_type)
            .bind(&template)
            .bind((first + chunk_start) as i64)
            .bind(chunk)
            .bind(targets)
            .execute(&self.pool)
            .await?;
        }
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        progress(&format!(
            "preloaded {} deliveries in {:.1} s",
            events * targets.len() as u64,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Resumes the targets and waits until the sink has `expected` more deliveries; returns
    /// deliveries per second.
    async fn drain(&self, targets: &[&str], expected: u64) -> anyhow::Result<f64> {
        let before = self.sink.received();
        let started = Instant::now();
        self.resume(targets).await?;
        let received = self
            .wait_for_sink(before + expected, Duration::from_secs(600))
            .await
            - before;
        Ok(received as f64 / started.elapsed().as_secs_f64())
    }

    /// Waits until the sink counted `target` deliveries in all (or `limit` passed).
    async fn wait_for_sink(&self, target: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while self.sink.received() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.sink.received()
    }

    /// Publishes `events` events as fast as 32 connections allow; each goes to 100
    /// subscriptions. Deliveries per second from the first publish to the last delivery.
    async fn fanout(&self, events: u64) -> anyhow::Result<f64> {
        let targets = fanout_targets();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        self.resume(&targets).await?;
        let before = self.sink.received();
        let expected = events * FANOUT_SUBSCRIPTIONS as u64;
        let started = Instant::now();
        let url = format!("{}/v1/namespaces/{NAMESPACE}/events", self.gateway.base);
        let publishers: Vec<_> = (0..32)
            .map(|worker| {
                let (client, url) = (self.client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut failures = 0;
                    for i in (worker..events).step_by(32) {
                        let ok = client
                            .post(&url)
                            .bearer_auth(PUBLISH_TOKEN)
                            .json(&serde_json::json!({"type": "fanout.bench", "id": format!("fan_{i}"), "data": {"n": i}}))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        failures += u64::from(!ok);
                    }
                    failures
                })
            })
            .collect();
        for publisher in publishers {
            let failures = publisher.await?;
            if failures > 0 {
                bail!("{failures} publish requests failed");
            }
        }
        progress(&format!(
            "published {events} events in {:.2} s; {} of {expected} deliveries made by then",
            started.elapsed().as_secs_f64(),
            self.sink.received() - before
        ));
        let received = self
            .wait_for_sink(before + expected, Duration::from_secs(600))
            .await
            - before;
        let per_s = received as f64 / started.elapsed().as_secs_f64();
        self.pause(&targets).await?;
        Ok(per_s)
    }

    /// Sends webhooks at `rate` per second for `window` (open loop: a slow answer does not
    /// delay the next request) and measures from sending to arrival at the sink.
    async fn end_to_end(&self, rate: f64, window: Duration) -> anyhow::Result<Measured> {
        self.resume(&[HANDLER_TARGET]).await?;
        self.sink
            .state
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.sink.state.track.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let mut sent_at = std::collections::HashMap::new();
        let answered = open_loop(rate, window, || {
            let (sequence, request) = self.ingest_request("invoice.paid");
            sent_at.insert(sequence, Instant::now());
            request
        })
        .await?;
        // Where the time goes: answering the webhook, or delivering it after.
        progress(&format!(
            "at {rate:.0}/s the webhooks were answered in p50 {:.2} ms, p99 {:.2} ms",
            answered.percentile_ms(50.0),
            answered.percentile_ms(99.0)
        ));
        let sent = sent_at.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let arrived = self
                .sink
                .state
                .arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64;
            if arrived >= sent || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.sink.state.track.store(false, Ordering::Relaxed);
        let arrivals =
            std::mem::take(&mut *self.sink.state.arrivals.lock().unwrap_or_else(|e| e.into_inner()));
        let mut measured = Measured {
            sent,
            errors: answered.errors,
            elapsed: started.elapsed(),
            ..Measured::default()
        };
        for (sequence, arrived) in arrivals {
            if let Some(sent) = sent_at.remove(&sequence) {
                measured.ok += 1;
                measured
                    .latencies_us
                    .push(arrived.duration_since(sent).as_micros() as u64);
            }
        }
        Ok(measured)
    }

    /// Finished history 60 days old, for retention to delete.
    async fn preload_old_history(&self, events: u64) -> anyhow::Result<()> {
        self.preload(events, &[HANDLER_TARGET], false).await?;
        sqlx::query("UPDATE events SET received_at = now() - interval '60 days'")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "WITH finished AS (DELETE FROM delivery_queue RETURNING delivery_id)
             UPDATE deliveries SET status = 'succeeded', attempts = 1 WHERE id IN (SELECT delivery_id FROM finished)",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// End-to-end latency while a retention sweep (the gateway's own code, 30 days) deletes the
    /// old history; returns the latencies and the sweep's events deleted per second.
    async fn end_to_end_during_retention(
        &self,
        rate: f64,
        window: Duration,
    ) -> anyhow::Result<(Measured, f64)> {
        let pool = self.pool.clone();
        let sweep = tokio::spawn(async move {
            let started = Instant::now();
            let swept = hookline::store::retention::sweep(&pool, Duration::from_secs(30 * 24 * 3600)).await;
            (swept, started.elapsed())
        });
        let measured = self.end_to_end(rate, window).await?;
        let (swept, took) = sweep.await?;
        let swept = swept?;
        progress(&format!(
            "retention deleted {} events in {:.1} s",
            swept.events,
            took.as_secs_f64()
        ));
        if took > window {
            progress("the sweep outlasted the measurement window");
        }
        Ok((measured, swept.events as f64 / took.as_secs_f64()))
    }

    /// Peak gateway memory while the backlog drains for `window`.
    async fn rss_while_draining(&self, targets: &[&str], window: Duration) -> anyhow::Result<f64> {
        let before = self.sink.received();
        self.resume(targets).await?;
        let started = Instant::now();
        let mut peak = 0.0f64;
        while started.elapsed() < window {
            peak = peak.max(self.gateway.rss_mb()?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress(&format!(
            "drained {} of the backlog in {:.0} s",
            self.sink.received() - before,
            window.as_secs_f64()
        ));
        self.pause(targets).await?;
        Ok(peak)
    }
}
