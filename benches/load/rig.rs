//! What every part of the benchmark runs on: the gateway process, the sink it delivers to, the
//! configuration, and the rig that drives and inspects them.

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
use hookline::store::deliveries;
use hookline::verify::{SigningKey, stripe};
use sqlx::PgPool;

use crate::generator::*;
use crate::progress;

pub(crate) const NAMESPACE: &str = "bench";
pub(crate) const SOURCE: &str = "stripe";
pub(crate) const HANDLER_TARGET: &str = "stripe/sink";
/// The same sink behind a handler with `ordering`, for ordered against unordered dispatch.
pub(crate) const ORDERED_TARGET: &str = "stripe/ordered";
/// Webhooks a second at which ingest latency is measured (a DESIGN.md target).
pub(crate) const INGEST_TARGET_RPS: f64 = 10_000.0;
/// Webhooks a second taken in and delivered, sustained (a DESIGN.md target).
pub(crate) const SUSTAINED_RPS: f64 = 5_000.0;
pub(crate) const STRIPE_SECRET: &str = "whsec_bench_stripe_endpoint_secret";
pub(crate) const SUBSCRIPTION_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const PUBLISH_TOKEN: &str = "bench-publish-token";
pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdefghijkl";
/// The subscription whose backlog the `resumed` part publishes and resumes.
pub(crate) const RESUMED_TARGET: &str = "resumed";
pub(crate) const FANOUT_SUBSCRIPTIONS: usize = 100;
pub(crate) const BODY_BYTES: usize = 1024;

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) async fn wait_until_up(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not come up")
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A Stripe event of 1 KiB whose id carries its sequence number at a fixed offset (the sink
/// reads it back to match deliveries to requests).
pub(crate) fn stripe_event(sequence: u64, event_type: &str) -> Vec<u8> {
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
pub(crate) fn sequence_of(body: &[u8]) -> Option<u64> {
    let marker = b"\"evt_";
    let at = body.windows(marker.len()).position(|w| w == marker)? + marker.len();
    std::str::from_utf8(body.get(at..at + 12)?).ok()?.parse().ok()
}

/// The receiving end of every delivery: answers 200 at once, counts, and when asked notes
/// when each sequence number arrived.
pub(crate) struct Sink {
    pub(crate) base: String,
    pub(crate) state: Arc<SinkState>,
}

#[derive(Default)]
pub(crate) struct SinkState {
    pub(crate) received: AtomicU64,
    pub(crate) track: AtomicBool,
    pub(crate) arrivals: Mutex<Vec<(u64, Instant)>>,
}

impl Sink {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(SinkState::default());
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, state })
    }

    pub(crate) fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }
}

pub(crate) async fn receive(State(state): State<Arc<SinkState>>, body: Bytes) -> StatusCode {
    if state.track.load(Ordering::Relaxed)
        && let Some(sequence) = sequence_of(&body)
    {
        let mut arrivals = state.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        arrivals.push((sequence, Instant::now()));
    }
    state.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

pub(crate) fn fanout_targets() -> Vec<String> {
    (0..FANOUT_SUBSCRIPTIONS).map(|i| format!("fan-{i:03}")).collect()
}

/// The gateway's configuration: a Stripe source whose handler is the sink, a subscription to
/// `resumed.*` events, and 100 subscriptions to `fanout.*` events, all delivering to the sink.
pub(crate) fn write_config(dir: &Path, sink: &str) -> anyhow::Result<()> {
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
    - name: ordered
      url: {sink}/ordered
      maxInFlight: 64
      # Only the preloaded backlog reaches it: ingest's invoice.* events do not.
      events: ["ordered.*"]
      ordering: {{key: data.object.customer}}
      secretRef: {{name: stripe, key: subscription-secret}}
"#
    );
    yaml.push_str(&format!(
        r#"---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{name: {RESUMED_TARGET}, namespace: {NAMESPACE}}}
spec:
  url: {sink}/{RESUMED_TARGET}
  events: ["resumed.*"]
  maxInFlight: 64
  allowPrivateNetworks: true
  secretRef: {{name: stripe, key: subscription-secret}}
"#
    ));
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
pub(crate) struct GatewayProcess {
    pub(crate) child: Child,
    pub(crate) base: String,
}

impl GatewayProcess {
    pub(crate) async fn start(config_dir: &Path, database_url: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        // HOOKLINE_BENCH_BINARY measures another build (say, the previous commit's) with the
        // same load generator, for before/after figures.
        let binary = std::env::var_os("HOOKLINE_BENCH_BINARY")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hookline")), PathBuf::from);
        // Its logs go to a file, as a container runtime would take them.
        let log = std::fs::File::create(config_dir.with_file_name("gateway.log"))?;
        let child = Command::new(&binary)
            .args(["standalone", "-f"])
            .arg(config_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // HOOKLINE_BENCH_GATEWAY_ARGS: more flags, say `--event-batching=paced`.
            .args(
                std::env::var("HOOKLINE_BENCH_GATEWAY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("DATABASE_URL", database_url)
            .env("HOOKLINE_PUBLISH_TOKEN", PUBLISH_TOKEN)
            .env("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN)
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
    pub(crate) fn rss_mb(&self) -> anyhow::Result<f64> {
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

pub(crate) struct Bench {
    pub(crate) pool: PgPool,
    pub(crate) client: reqwest::Client,
    pub(crate) sink: Sink,
    pub(crate) gateway: GatewayProcess,
    pub(crate) next_event: AtomicU64,
    /// Where the postmaster's pid is, for Postgres' CPU time.
    pub(crate) postmaster_pid_file: std::path::PathBuf,
}

impl Bench {
    /// Empties the history between measurements, so each starts from the same state.
    pub(crate) async fn reset(&self) -> anyhow::Result<()> {
        // The gateway may still be recording the part before (the end-to-end parts stop
        // waiting at a deadline), and its statements lock these tables in another order than
        // TRUNCATE does: Postgres then ends one of them as a deadlock, and this one tries again.
        let mut tries = 0;
        loop {
            match sqlx::query(
                "TRUNCATE events, deliveries, delivery_queue, attempts, idempotency_keys, queue_leases, claims",
            )
            .execute(&self.pool)
            .await
            {
                Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("40P01") && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                done => break done.map(drop)?,
            };
        }
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn count(&self, sql: &str) -> anyhow::Result<u64> {
        Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await? as u64)
    }

    pub(crate) fn target_key(target: &str) -> TargetKey {
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
    pub(crate) async fn pause(&self, targets: &[&str]) -> anyhow::Result<()> {
        for target in targets {
            deliveries::pause_target(&self.pool, &Self::target_key(target), "benchmark").await?;
        }
        Ok(())
    }

    pub(crate) async fn resume(&self, targets: &[&str]) -> anyhow::Result<()> {
        for target in targets {
            deliveries::resume_target(&self.pool, &Self::target_key(target)).await?;
        }
        Ok(())
    }

    pub(crate) fn ingest_request(&self, event_type: &str) -> (u64, reqwest::RequestBuilder) {
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

    /// Inserts `events` events of 1 KiB with one delivery each to every target, the fastest way
    /// (SQL, not HTTP): a backlog for the dispatcher, held back by pausing the targets.
    pub(crate) async fn preload(&self, events: u64, targets: &[&str], fanout: bool) -> anyhow::Result<()> {
        self.preload_keyed(events, targets, fanout, None).await
    }

    /// [`Bench::preload`] with ordering keys: event n has key `n % keys`, in the order stored.
    pub(crate) async fn preload_keyed(
        &self,
        events: u64,
        targets: &[&str],
        fanout: bool,
        keys: Option<u64>,
    ) -> anyhow::Result<()> {
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
                     SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                             || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid,
                            $1, $2, 'stripe', 'evt_' || lpad(n::text, 12, '0'), $3,
                            '{\"content-type\": \"application/json\"}',
                            convert_to(replace($4, 'evt_000000000000', 'evt_' || lpad(n::text, 12, '0')), 'UTF8')
                     FROM generate_series($5::bigint, $5::bigint + $6 - 1) AS n
                     RETURNING id, external_id),
                 d AS (
                     INSERT INTO deliveries (id, event_id, namespace, target_kind, target, ordering_key, position)
                     -- In its event's millisecond, so in its event's partition.
                     SELECT (substr(replace(e.id::text, '-', ''), 1, 12) || '7'
                             || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid,
                            e.id, $1,
                            CASE WHEN t LIKE '%/%' THEN 'handler' ELSE 'subscription' END, t,
                            'cus_' || (substr(e.external_id, 5)::bigint % $8),
                            CASE WHEN $8 IS NOT NULL THEN nextval('delivery_position') END
                     FROM (SELECT * FROM e ORDER BY external_id) e CROSS JOIN UNNEST($7::text[]) AS t
                     RETURNING id, namespace, target_kind, target, ordering_key, position, event_id)
                 INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, ordering_key, position,
                                             event_id, next_attempt_at)
                 SELECT *, now() FROM d",
            )
            .bind(NAMESPACE)
            .bind(SOURCE)
            .bind(event_type)
            .bind(&template)
            .bind((first + chunk_start) as i64)
            .bind(chunk)
            .bind(targets)
            .bind(keys.map(|k| k as i64))
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

    /// Waits until the sink counted `target` deliveries in all (or `limit` passed).
    /// Publishes `events` events through the publish API over `connections` connections,
    /// `event(i)` the i-th one; an error if any is refused.
    pub(crate) async fn publish_many(
        &self,
        events: u64,
        connections: u64,
        event: fn(u64) -> serde_json::Value,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v1/namespaces/{NAMESPACE}/events", self.gateway.base);
        let publishers: Vec<_> = (0..connections)
            .map(|worker| {
                let (client, url) = (self.client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut failures = 0;
                    for i in (worker..events).step_by(connections as usize) {
                        let ok = client
                            .post(&url)
                            .bearer_auth(PUBLISH_TOKEN)
                            .json(&event(i))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        failures += u64::from(!ok);
                    }
                    failures
                })
            })
            .collect();
        let mut failures = 0;
        for publisher in publishers {
            failures += publisher.await?;
        }
        anyhow::ensure!(failures == 0, "{failures} publish requests failed");
        Ok(())
    }

    pub(crate) async fn wait_for_sink(&self, target: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while self.sink.received() < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.sink.received()
    }
}
