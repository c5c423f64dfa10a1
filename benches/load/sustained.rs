//! Ingest and delivery together, closed loop: as many senders as the concurrency, each sending
//! its next webhook once the last is answered, while the gateway delivers every one of them.
//! The rate is webhooks taken in and delivered per second, until the last has arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rig::*;
use crate::{Scale, progress, report};

/// Concurrencies measured: the outside comparison's (issue 20 asks for 5,000/s at 64).
const CONCURRENCIES: [usize; 2] = [64, 256];

pub(crate) async fn measure(bench: &Arc<Bench>, scale: Scale) -> anyhow::Result<()> {
    bench.resume(&[HANDLER_TARGET]).await?;
    for concurrency in CONCURRENCIES {
        bench.reset().await?;
        let before = bench.snapshot().await?;
        let delivered_before = bench.sink.received();
        let started = Instant::now();
        let taken = bench.ingest_closed_loop(concurrency, scale.window).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while bench.sink.received() - delivered_before < taken.ok && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let delivered = bench.sink.received() - delivered_before;
        let part = format!("sustained_c{concurrency}");
        progress(&format!(
            "{part}: {} webhooks taken in {:.1} s ({:.0}/s), {delivered} delivered by {:.1} s; {} errors",
            taken.ok,
            taken.elapsed.as_secs_f64(),
            taken.rate(),
            elapsed.as_secs_f64(),
            taken.errors
        ));
        report(
            &format!("{part}_per_s"),
            delivered.min(taken.ok) as f64 / elapsed.as_secs_f64(),
            "webhooks/s",
        );
        report(
            &format!("{part}_delivered_ratio"),
            delivered as f64 / taken.ok.max(1) as f64,
            "ratio",
        );
        // What a webhook cost, ingest and delivery together (the CPU shares among them).
        bench.report_costs(&part, &before, taken.ok, "webhook").await?;
    }
    Ok(())
}
