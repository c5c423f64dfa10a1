//! Publishing operational events (`api::notice`): each notice becomes a published event in its
//! target's namespace, delivered to the subscriptions whose `events` name `hookline.*` types,
//! never to the target it is about; at most a few per target and minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Gateway;
use super::fan_out::{self, Arriving};
use crate::api::TargetKey;
use crate::api::notice::Notice;
use crate::store::events::NewEvent;

/// Notices a target may send at once, and how often one more is allowed after that.
const BURST: f64 = 10.0;
const REFILL_EVERY: Duration = Duration::from_secs(6);

/// A token bucket per target, and the notices it dropped since the last one that went out.
#[derive(Default)]
struct Limiter {
    targets: HashMap<TargetKey, (f64, Instant, u64)>,
}

impl Limiter {
    /// Whether a notice about `target` may go now; with how many were dropped before it.
    fn admit(&mut self, target: &TargetKey, now: Instant) -> Option<u64> {
        let (tokens, updated, dropped) = self.targets.entry(target.clone()).or_insert((BURST, now, 0));
        let refilled = now.saturating_duration_since(*updated).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        *tokens = (*tokens + refilled).min(BURST);
        *updated = now;
        if *tokens < 1.0 {
            *dropped += 1;
            return None;
        }
        *tokens -= 1.0;
        Some(std::mem::take(dropped))
    }
}

/// Publishes notices until every sender is gone.
pub async fn publish_all(gateway: Arc<Gateway>, mut notices: mpsc::Receiver<Notice>) {
    let mut limiter = Limiter::default();
    while let Some(notice) = notices.recv().await {
        let Some(suppressed) = limiter.admit(&notice.target, Instant::now()) else {
            tracing::debug!(target = %notice.target.label(), kind = notice.event_type(), "notice rate limited");
            continue;
        };
        if let Err(err) = publish(&gateway, &notice, suppressed).await {
            tracing::warn!(target = %notice.target.label(), "cannot publish {}: {err}", notice.event_type());
        }
    }
}

async fn publish(gateway: &Gateway, notice: &Notice, suppressed: u64) -> Result<(), String> {
    let namespace = &notice.target.namespace;
    let event_type = notice.event_type();
    let envelope = json!({
        "type": event_type,
        "timestamp": notice.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": notice.data(suppressed),
    });
    let headers = json!({"content-type": "application/json"});
    let body: bytes::Bytes = envelope.to_string().into();
    let id = Uuid::now_v7();
    let deliveries = fan_out::deliveries(
        &gateway.catalog(),
        &gateway.metrics,
        &Arriving {
            id,
            namespace,
            source: None,
            event_type,
            headers: &headers,
            body: &body,
            about: Some(&notice.target),
        },
    );
    if deliveries.is_empty() {
        return Ok(());
    }
    let event = NewEvent {
        id,
        namespace: namespace.clone(),
        source: String::new(),
        provider: Some("hookline"),
        external_id: id.to_string(),
        replay_digest: None,
        event_type: event_type.to_owned(),
        headers,
        body,
        deliveries,
    };
    gateway
        .events
        .submit(event)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_has_its_own_allowance_and_hears_what_was_dropped() {
        let (a, b) = (
            TargetKey::subscription("billing", "a"),
            TargetKey::subscription("billing", "b"),
        );
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.admit(&a, t0), Some(0));
        }
        assert_eq!(limiter.admit(&a, t0), None);
        assert_eq!(limiter.admit(&a, t0), None);
        assert_eq!(limiter.admit(&b, t0), Some(0), "another target is not limited");
        assert_eq!(
            limiter.admit(&a, t0 + REFILL_EVERY),
            Some(2),
            "two were dropped meanwhile"
        );
        assert_eq!(limiter.admit(&a, t0 + REFILL_EVERY), None);
    }
}
