//! Retention: a sweep of old history while webhooks flow at 200/s (compare with e2e_200rps_*).

use std::time::{Duration, Instant};

use crate::generator::*;
use crate::rig::*;
use crate::{Scale, progress, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
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
    Ok(())
}

impl Bench {
    /// Finished history 60 days old, for retention to delete.
    pub(crate) async fn preload_old_history(&self, events: u64) -> anyhow::Result<()> {
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
    pub(crate) async fn end_to_end_during_retention(
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
}
