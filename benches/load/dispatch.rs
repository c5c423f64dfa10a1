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
    Ok(())
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
