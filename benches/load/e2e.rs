//! Ingest → delivered, open loop: at half the best ingest rate, at the sustained rate DESIGN.md
//! states, and at 200/s.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::costs::report_cpu_shares;
use crate::generator::*;
use crate::rig::*;
use crate::{Scale, progress, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale, ingest_rps: f64) -> anyhow::Result<()> {
    let half = (ingest_rps / 2.0).max(1.0);
    bench.reset().await?;
    let e2e = bench.end_to_end(half, scale.window).await?;
    report("e2e_rate_rps", half, "req/s");
    report("e2e_p50_ms", e2e.percentile_ms(50.0), "ms");
    report("e2e_p99_ms", e2e.percentile_ms(99.0), "ms");
    report("e2e_delivered_ratio", e2e.ok as f64 / e2e.sent as f64, "ratio");
    // DESIGN.md's sustained ingest + delivery target.
    bench.reset().await?;
    let cpu_before = bench.cpu_times();
    let sustained = bench.end_to_end(SUSTAINED_RPS, scale.window).await?;
    report_cpu_shares("e2e_5000rps", &cpu_before, &bench.cpu_times());
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
    Ok(())
}

impl Bench {
    /// Sends webhooks at `rate` per second for `window` (open loop: a slow answer does not
    /// delay the next request) and measures from sending to arrival at the sink.
    pub(crate) async fn end_to_end(&self, rate: f64, window: Duration) -> anyhow::Result<Measured> {
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
}
