//! History: ingest and dispatch with a month of history present (30 daily partitions of
//! `history_per_day` events, each with a delivery and an attempt), then retention dropping the
//! oldest day while webhooks flow at 200/s (compare with ingest_rps, dispatch_per_s and
//! e2e_200rps_*).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline::store::partitions;

use crate::generator::*;
use crate::rig::*;
use crate::{Scale, progress, report};

/// Days of history present.
const DAYS: i64 = 30;

/// Rows a preload statement writes to each table.
const CHUNK: i64 = 100_000;

pub(crate) async fn measure(bench: &Arc<Bench>, scale: Scale) -> anyhow::Result<()> {
    bench.reset().await?;
    bench.preload_old_days(scale.history_per_day).await?;
    let present = bench.count("SELECT count(*) FROM events").await?;
    report("history_events_present", present as f64, "events");

    // Ingest with the month present, its deliveries held; then those deliveries drained.
    bench.pause(&[HANDLER_TARGET]).await?;
    let ingested = bench.ingest_closed_loop(128, scale.window).await?;
    report("history_ingest_rps", ingested.rate(), "req/s");
    report("history_ingest_p99_ms", ingested.percentile_ms(99.0), "ms");
    let queued = bench.count("SELECT count(*) FROM delivery_queue").await?;
    let per_s = bench.drain(&[HANDLER_TARGET], queued).await?;
    report("history_dispatch_per_s", per_s, "deliveries/s");

    let (during, took, dropped) = bench.end_to_end_during_drop(200.0, scale.window).await?;
    report("retention_drop_day_s", took.as_secs_f64(), "s");
    report("retention_dropped_events", dropped as f64, "events");
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
    Ok(())
}

impl Bench {
    /// Finished history in each of the 30 days before today: `per_day` events spread over the
    /// day, each with a succeeded delivery and its attempt, in the days' own partitions.
    pub(crate) async fn preload_old_days(&self, per_day: u64) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let today = now.timestamp_millis().div_euclid(86_400_000) * 86_400_000;
        partitions::ensure(
            &self.pool,
            now - chrono::Duration::days(DAYS),
            now,
            partitions::DEFAULT_PERIOD,
        )
        .await?;
        let started = Instant::now();
        let per_day = per_day as i64;
        for day in 1..=DAYS {
            let start = today - day * 86_400_000;
            for chunk in (0..per_day).step_by(CHUNK as usize) {
                let rows = (per_day - chunk).min(CHUNK);
                sqlx::query(
                    "WITH e AS (
                         INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers,
                                             body, received_at)
                         SELECT (lpad(to_hex(ms), 12, '0') || '7'
                                 || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid,
                                $1, $2, 'stripe', 'evt_old_' || $3 || '_' || n, 'invoice.paid',
                                '{\"content-type\": \"application/json\"}', '{}', to_timestamp(ms / 1000.0)
                         FROM generate_series($4::bigint, $4::bigint + $5 - 1) AS n,
                              LATERAL (SELECT $3::bigint + n * (86400000 / $6::bigint) AS ms) t
                         RETURNING id, received_at),
                     d AS (
                         INSERT INTO deliveries (id, event_id, namespace, target_kind, target, status, attempts,
                                                 created_at, updated_at)
                         SELECT (substr(replace(e.id::text, '-', ''), 1, 12) || '7'
                                 || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid,
                                e.id, $1, 'handler', $7, 'succeeded', 1, e.received_at, e.received_at
                         FROM e
                         RETURNING id, created_at)
                     INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code)
                     SELECT id, 1, created_at, 3, 200 FROM d",
                )
                .bind(NAMESPACE)
                .bind(SOURCE)
                .bind(start)
                .bind(chunk)
                .bind(rows)
                .bind(per_day)
                .bind(HANDLER_TARGET)
                .execute(&self.pool)
                .await?;
            }
            progress(&format!(
                "history: day {day} of {DAYS} written ({:.0} s)",
                started.elapsed().as_secs_f64()
            ));
        }
        sqlx::query("VACUUM ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// End-to-end latency while a retention pass (the gateway's own code) drops the oldest day:
    /// the retention is set so exactly that period has ended before `now − retention`. Returns
    /// the latencies, the pass's duration and the events the dropped day held.
    pub(crate) async fn end_to_end_during_drop(
        &self,
        rate: f64,
        window: Duration,
    ) -> anyhow::Result<(Measured, Duration, u64)> {
        let periods = partitions::list(&self.pool).await?;
        let oldest = periods.first().ok_or_else(|| anyhow::anyhow!("no partitions"))?;
        let held = self
            .count(&format!("SELECT count(*) FROM {}", oldest.partition("events")))
            .await?;
        let ended_ago = chrono::Utc::now().timestamp_millis() - oldest.until_ms;
        // Past the oldest period's end, short of the next one's.
        let retention = Duration::from_millis(ended_ago as u64 - 60_000);
        let pool = self.pool.clone();
        let sweep = tokio::spawn(async move {
            // Into the measurement, so the drop happens while requests flow.
            tokio::time::sleep(window / 4).await;
            let started = Instant::now();
            let swept =
                hookline::store::retention::sweep(&pool, &hookline::store::retention::Policy::new(retention))
                    .await;
            (swept, started.elapsed())
        });
        let measured = self.end_to_end(rate, window).await?;
        let (swept, took) = sweep.await?;
        let swept = swept?;
        progress(&format!(
            "retention dropped {} period(s) ({held} events) in {:.2} s",
            swept.periods_dropped,
            took.as_secs_f64()
        ));
        anyhow::ensure!(swept.periods_dropped == 1, "expected one day dropped: {swept:?}");
        Ok((measured, took, held))
    }
}
