//! A paused subscription's backlog, resumed through the admin API: what an operator does after
//! an endpoint outage, and how the outside comparison with Svix measured its drain (events
//! published through the API while the subscription was paused, `maxInFlight: 64`). Unlike the
//! `dispatch` part (a handler's backlog inserted with SQL, resumed in the store), every step goes
//! through the gateway's HTTP API.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::rig::*;
use crate::{Scale, progress, report};

pub(crate) async fn measure(bench: &Bench, scale: Scale) -> anyhow::Result<()> {
    bench.reset().await?;
    let events = scale.dispatch_backlog / 2;
    bench.target_action("pause", RESUMED_TARGET).await?;
    bench.publish_backlog(events).await?;
    let before = bench.snapshot().await?;
    let received_before = bench.sink.received();
    let started = Instant::now();
    bench.target_action("resume", RESUMED_TARGET).await?;
    let received = bench
        .wait_for_sink(received_before + events, Duration::from_secs(600))
        .await
        - received_before;
    if received < events {
        bail!("{received} of {events} resumed deliveries arrived");
    }
    report(
        "resumed_drain_per_s",
        received as f64 / started.elapsed().as_secs_f64(),
        "deliveries/s",
    );
    bench.report_costs("resumed", &before, events, "delivery").await?;
    Ok(())
}

impl Bench {
    /// `POST /admin/v1/targets/{action}` for a subscription, as an operator's script would.
    async fn target_action(&self, action: &str, subscription: &str) -> anyhow::Result<()> {
        let answer = self
            .client
            .post(format!("{}/admin/v1/targets/{action}", self.gateway.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(
                &serde_json::json!({"namespace": NAMESPACE, "kind": "subscription", "target": subscription}),
            )
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("{action} {subscription}: {}", answer.text().await?);
        }
        Ok(())
    }

    /// Publishes `events` events for the paused subscription over 64 connections, and waits
    /// until all their deliveries are stored.
    async fn publish_backlog(&self, events: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        self.publish_many(
            events,
            64,
            |i| serde_json::json!({"type": "resumed.bench", "id": format!("resumed_{i}"), "data": {"n": i}}),
        )
        .await?;
        let queued = self
            .count("SELECT count(*) FROM delivery_queue WHERE target = 'resumed'")
            .await?;
        progress(&format!(
            "published {events} events for a paused subscription in {:.2} s; {queued} queued",
            started.elapsed().as_secs_f64()
        ));
        if queued != events {
            bail!("{queued} of {events} deliveries queued");
        }
        Ok(())
    }
}
