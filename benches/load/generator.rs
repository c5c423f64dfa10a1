//! The load generator: an HTTP client, open- and closed-loop senders, and what they measured.

use std::time::{Duration, Instant};

use crate::progress;

/// The HTTP client of the load generator: keep-alive connections, no proxy.
pub(crate) fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client without TLS settings builds")
}

/// Requests answered, and the latency of each successful one.
#[derive(Default)]
pub(crate) struct Measured {
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies_us: Vec<u64>,
    /// End to end: when each webhook (by its sequence) was sent and arrived, in seconds of the
    /// wall clock.
    pub(crate) wall_times: std::collections::HashMap<u64, (f64, f64)>,
}

impl Measured {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }

    pub(crate) fn merge(&mut self, other: Measured) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.wall_times.extend(other.wall_times);
    }
}

/// Sends `rate` requests a second for `window`, each when its time comes whatever the answers
/// to the earlier ones (open loop), and measures each answer from the time it was due, so a
/// generator that falls behind shows in the latency (and in the rate it reports).
pub(crate) async fn open_loop(
    rate: f64,
    window: Duration,
    mut request: impl FnMut() -> reqwest::RequestBuilder,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::new();
    while started.elapsed() < window {
        let due = ticker.tick().await.into_std();
        let request = request();
        requests.push(tokio::spawn(async move {
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            (ok, due.elapsed().as_micros() as u64)
        }));
    }
    progress(&format!(
        "open loop at {rate:.0}/s: sent {:.0}/s",
        requests.len() as f64 / started.elapsed().as_secs_f64()
    ));
    let mut measured = Measured::default();
    for request in requests {
        let (ok, latency_us) = request.await?;
        measured.sent += 1;
        if ok {
            measured.ok += 1;
            measured.latencies_us.push(latency_us);
        } else {
            measured.errors += 1;
        }
    }
    measured.elapsed = started.elapsed();
    Ok(measured)
}

/// `concurrency` workers each sending one request after another for `window`.
pub(crate) async fn closed_loop<F, Fut>(concurrency: usize, window: Duration, request: F) -> Measured
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut measured = Measured::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    measured.sent += 1;
                    if request().await {
                        measured.ok += 1;
                        measured.latencies_us.push(sent.elapsed().as_micros() as u64);
                    } else {
                        measured.errors += 1;
                    }
                }
                measured
            })
        })
        .collect();
    let mut total = Measured::default();
    for worker in workers {
        if let Ok(measured) = worker.await {
            total.merge(measured);
        }
    }
    total.elapsed = started.elapsed();
    total
}
