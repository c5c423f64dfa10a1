//! Ingest → delivered, open loop: at half the best ingest rate, at the sustained rate DESIGN.md
//! states, and at 200/s.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    // Statement times from here on are this run's alone (no part's costs span it).
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&bench.pool)
        .await?;
    let before = bench.snapshot().await?;
    let e2e_200 = bench.end_to_end(200.0, scale.window).await?;
    report("e2e_200rps_p50_ms", e2e_200.percentile_ms(50.0), "ms");
    report("e2e_200rps_p99_ms", e2e_200.percentile_ms(99.0), "ms");
    // What a webhook stored and sent at once by the gateway costs (the target is idle at
    // 200/s), once every outcome is recorded.
    bench.wait_recorded(e2e_200.ok).await?;
    bench
        .report_costs("e2e_200rps", &before, e2e_200.ok, "delivery")
        .await?;
    bench.report_stages("e2e_200rps", &e2e_200).await?;
    Ok(())
}

/// Where a webhook's time goes between being sent and arriving, as times of the wall clock
/// (one clock: everything runs on this machine): until its storing statement starts (the
/// event's `received_at`, the statement's transaction start), from there until it is committed
/// (the transaction's commit timestamp), from there until the gateway starts sending it (the
/// first attempt's `started_at`), and from there until the sink has it.
struct Stages {
    to_statement_us: Vec<u64>,
    statement_to_commit_us: Vec<u64>,
    commit_to_send_us: Vec<u64>,
    send_to_sink_us: Vec<u64>,
}

impl Bench {
    async fn report_stages(&self, part: &str, measured: &Measured) -> anyhow::Result<()> {
        let recorded: Vec<(i64, f64, f64, f64)> = sqlx::query_as(
            "SELECT substr(e.external_id, 5)::bigint, extract(epoch FROM e.received_at)::float8,
                    extract(epoch FROM pg_xact_commit_timestamp(e.xmin))::float8,
                    extract(epoch FROM a.started_at)::float8
             FROM events e JOIN deliveries d ON d.event_id = e.id
             JOIN attempts a ON a.delivery_id = d.id AND a.attempt_number = 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut stages = Stages {
            to_statement_us: Vec::new(),
            statement_to_commit_us: Vec::new(),
            commit_to_send_us: Vec::new(),
            send_to_sink_us: Vec::new(),
        };
        let micros = |from: f64, to: f64| ((to - from) * 1e6).max(0.0) as u64;
        for (sequence, received, committed, started) in recorded {
            let Some(&(sent, arrived)) = measured.wall_times.get(&(sequence as u64)) else {
                continue;
            };
            stages.to_statement_us.push(micros(sent, received));
            stages.statement_to_commit_us.push(micros(received, committed));
            stages.commit_to_send_us.push(micros(committed, started));
            stages.send_to_sink_us.push(micros(started, arrived));
        }
        let p50 = |mut us: Vec<u64>| {
            us.sort_unstable();
            us.get(us.len() / 2).map_or(f64::NAN, |&v| v as f64 / 1000.0)
        };
        // Medians of each stage on its own: they need not add up to the median of the whole.
        report(
            &format!("{part}_p50_to_statement_ms"),
            p50(stages.to_statement_us),
            "ms",
        );
        report(
            &format!("{part}_p50_statement_to_commit_ms"),
            p50(stages.statement_to_commit_us),
            "ms",
        );
        report(
            &format!("{part}_p50_commit_to_send_ms"),
            p50(stages.commit_to_send_us),
            "ms",
        );
        report(
            &format!("{part}_p50_send_to_sink_ms"),
            p50(stages.send_to_sink_us),
            "ms",
        );
        // Of the middle stage, the storing statement (its commit not included).
        let (plan_ms, exec_ms): (f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(total_plan_time) / greatest(sum(calls), 1), 0),
                    coalesce(sum(total_exec_time) / greatest(sum(calls), 1), 0)
             FROM pg_stat_statements
             WHERE userid = $1::regrole AND query LIKE '%INSERT INTO events%'",
        )
        .bind(crate::costs::GATEWAY_ROLE)
        .fetch_one(&self.pool)
        .await?;
        report(&format!("{part}_store_statement_ms"), plan_ms + exec_ms, "ms");
        Ok(())
    }
}

impl Bench {
    /// Waits (up to 10 s) until `deliveries` have their outcome recorded.
    async fn wait_recorded(&self, deliveries: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            // An outcome is its attempt's (a direct send's does not write its row).
            .count("SELECT count(*) FROM attempts WHERE outcome = 'succeeded'")
            .await?
            < deliveries
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

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
        // The wall clock at `started`, to tell the stages apart by Postgres' timestamps.
        let started_wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        let wall = |at: Instant| started_wall + at.saturating_duration_since(started).as_secs_f64();
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
                measured.wall_times.insert(sequence, (wall(sent), wall(arrived)));
            }
        }
        Ok(measured)
    }
}
