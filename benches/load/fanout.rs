//! Fan-out: published events, each to 100 subscriptions, from publish to the last delivery.

use std::time::{Duration, Instant};

use crate::rig::*;
use crate::{Scale, progress, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
    bench.reset().await?;
    let before = bench.snapshot().await?;
    report(
        "fanout_per_s",
        bench.fanout(scale.fanout_events).await?,
        "deliveries/s",
    );
    bench
        .report_costs(
            "fanout",
            &before,
            scale.fanout_events * FANOUT_SUBSCRIPTIONS as u64,
            "delivery",
        )
        .await?;
    Ok(())
}

impl Bench {
    /// Publishes `events` events as fast as 32 connections allow; each goes to 100
    /// subscriptions. Deliveries per second from the first publish to the last delivery.
    pub(crate) async fn fanout(&self, events: u64) -> anyhow::Result<f64> {
        let targets = fanout_targets();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        self.resume(&targets).await?;
        let before = self.sink.received();
        let expected = events * FANOUT_SUBSCRIPTIONS as u64;
        let started = Instant::now();
        self.publish_many(
            events,
            32,
            |i| serde_json::json!({"type": "fanout.bench", "id": format!("fan_{i}"), "data": {"n": i}}),
        )
        .await?;
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
}
