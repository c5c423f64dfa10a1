//! Dispatch: a backlog drained to the sink.

use std::time::{Duration, Instant};

use crate::rig::*;
use crate::{Scale, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
    bench.reset().await?;
    bench
        .preload(scale.dispatch_backlog, &[HANDLER_TARGET], false)
        .await?;
    let before = bench.snapshot().await?;
    let per_s = bench.drain(&[HANDLER_TARGET], scale.dispatch_backlog).await?;
    report("dispatch_per_s", per_s, "deliveries/s");
    bench
        .report_costs("dispatch", &before, scale.dispatch_backlog, "delivery")
        .await?;
    bench.measure_lease_pass().await
}

/// Ordered dispatch: the same backlog to a target with `ordering`, over 64 keys (as many as
/// its maxInFlight) and over 8 (one delivery per key at a time caps it at 8 in flight).
pub(crate) async fn measure_ordered(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
    for keys in [64, 8] {
        // Eight keys send eight at a time: an eighth of the backlog is enough to measure them.
        let backlog = scale.dispatch_backlog * keys / 64;
        bench.reset().await?;
        bench
            .preload_keyed(backlog, &[ORDERED_TARGET], false, Some(keys))
            .await?;
        let per_s = bench.drain(&[ORDERED_TARGET], backlog).await?;
        report(&format!("ordered_{keys}_keys_per_s"), per_s, "deliveries/s");
    }
    Ok(())
}

impl Bench {
    /// What the pass over ended claims (store::leases) costs per delivery claimed: every claim
    /// of the drain is made to have ended, and the gateway's next pass reads them all. Each
    /// delivery was settled, so each costs a look at its row and none is queued again. Claims
    /// are noted in `claims` (migrations/0023), or in `queue_leases` by a gateway before it.
    async fn measure_lease_pass(&self) -> anyhow::Result<()> {
        let claimed = self
            .count(
                "SELECT (SELECT count(*) FROM claims, jsonb_object_keys(deliveries))
                      + (SELECT coalesce(sum(cardinality(deliveries)), 0) FROM queue_leases)",
            )
            .await?;
        let pass_ms = async || -> anyhow::Result<f64> {
            Ok(sqlx::query_scalar(
                "SELECT coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements
                 WHERE query LIKE '%DELETE FROM queue_leases%' OR query LIKE '%DELETE FROM claims%'
                    OR query LIKE '%AS e (id, before)%'",
            )
            .fetch_one(&self.pool)
            .await?)
        };
        let before = pass_ms().await?;
        for ending in [
            "UPDATE queue_leases SET lease_until = now() - interval '1 second'",
            "UPDATE claims SET lease_until = now() - interval '1 second'",
        ] {
            sqlx::query(ending).execute(&self.pool).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .count("SELECT (SELECT count(*) FROM queue_leases) + (SELECT count(*) FROM claims)")
            .await?
            > 0
        {
            anyhow::ensure!(Instant::now() < deadline, "the ended claims were not taken over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let spent_ms = pass_ms().await? - before;
        if claimed > 0 {
            report(
                "dispatch_lease_pass_us_per_delivery",
                spent_ms * 1000.0 / claimed as f64,
                "us/delivery",
            );
        }
        Ok(())
    }

    /// Resumes the targets and waits until the sink has `expected` more deliveries; returns
    /// deliveries per second.
    pub(crate) async fn drain(&self, targets: &[&str], expected: u64) -> anyhow::Result<f64> {
        let before = self.sink.received();
        let started = Instant::now();
        self.resume(targets).await?;
        let received = self
            .wait_for_sink(before + expected, Duration::from_secs(600))
            .await
            - before;
        Ok(received as f64 / started.elapsed().as_secs_f64())
    }
}
