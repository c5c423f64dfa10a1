//! Memory: the gateway's RSS under a backlog of 1M deliveries, idle and while it drains.

use std::time::{Duration, Instant};

use crate::rig::*;
use crate::{Scale, progress, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
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
    Ok(())
}

impl Bench {
    /// Peak gateway memory while the backlog drains for `window`.
    pub(crate) async fn rss_while_draining(&self, targets: &[&str], window: Duration) -> anyhow::Result<f64> {
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
