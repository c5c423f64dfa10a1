//! Which targets are held back and why, for the admin API, the console and the
//! `hookline_deliveries_held` metric: the configuration's holds (`catalog::hold`) together with
//! what the running system recorded in `target_states` (a runtime pause, an open circuit).

use std::collections::HashMap;

use super::Gateway;
use crate::api::TargetKey;
use crate::catalog::Target;
use crate::catalog::hold::{self, Hold};
use crate::store::history::DeliveryDetail;
use crate::store::stats::{self, TargetStats};
use crate::telemetry::metrics::HeldLabels;

/// What the configuration holds the target for (its URL judged by the gateway's egress cache).
async fn configured(gateway: &Gateway, target: &Target) -> Option<Hold> {
    let egress = gateway
        .egress
        .refusal(&target.spec.url, target.allow_private_networks)
        .await;
    hold::configured(target, egress)
}

/// The target's hold now, given its statistics (which carry its runtime state).
pub(super) async fn of(gateway: &Gateway, target: &Target, stats: &TargetStats) -> Option<Hold> {
    hold::current(
        configured(gateway, target).await,
        stats.paused_reason.as_deref(),
        stats.circuit.as_deref() == Some("open"),
    )
}

/// The holds of `targets` now; targets not held are left out.
pub(super) async fn current(
    gateway: &Gateway,
    targets: &[&Target],
) -> sqlx::Result<HashMap<TargetKey, Hold>> {
    let keys: Vec<&TargetKey> = targets.iter().map(|t| &t.key).collect();
    let states = stats::target_states(&gateway.pool, &keys).await?;
    let mut holds = HashMap::new();
    for target in targets {
        let state = states.get(&target.key);
        let held = hold::current(
            configured(gateway, target).await,
            state.and_then(|(_, paused)| paused.as_deref()),
            state.is_some_and(|(circuit, _)| circuit == "open"),
        );
        if let Some(held) = held {
            holds.insert(target.key.clone(), held);
        }
    }
    Ok(holds)
}

/// Sets `hookline_deliveries_held` from the catalog in force and the database, at each scrape.
pub(super) async fn refresh_metric(gateway: &Gateway) -> sqlx::Result<()> {
    let catalog = gateway.catalog();
    let targets: Vec<&Target> = catalog.targets().collect();
    let holds = current(gateway, &targets).await?;
    let held: Vec<(&TargetKey, &Hold)> = holds.iter().collect();
    let keys: Vec<&TargetKey> = held.iter().map(|(key, _)| *key).collect();
    let waiting = stats::pending_counts(&gateway.pool, &keys).await?;
    let family = &gateway.metrics.deliveries_held;
    family.clear();
    for ((key, hold), count) in held.into_iter().zip(waiting) {
        let labels = HeldLabels {
            namespace: key.namespace.clone(),
            target: key.label(),
            reason: hold.reason().to_owned(),
        };
        family.get_or_create(&labels).set(count);
    }
    Ok(())
}

/// The holds of an event's deliveries that still wait (pending or failed), by delivery id.
pub(super) async fn of_deliveries(
    gateway: &Gateway,
    namespace: &str,
    deliveries: &[DeliveryDetail],
) -> HashMap<uuid::Uuid, Hold> {
    let catalog = gateway.catalog();
    let waiting: Vec<(&DeliveryDetail, &Target)> = deliveries
        .iter()
        .filter(|d| matches!(d.status.as_str(), "pending" | "failed"))
        .filter_map(|d| {
            let key = TargetKey {
                namespace: namespace.to_owned(),
                kind: d.target_kind.parse().ok()?,
                name: d.target.clone(),
            };
            Some((d, catalog.target(&key)?))
        })
        .collect();
    let targets: Vec<&Target> = waiting.iter().map(|(_, target)| *target).collect();
    let holds = match current(gateway, &targets).await {
        Ok(holds) => holds,
        Err(err) => {
            tracing::warn!("cannot tell whether deliveries are held: {err}");
            return HashMap::new();
        }
    };
    waiting
        .into_iter()
        .filter_map(|(delivery, target)| Some((delivery.id, holds.get(&target.key)?.clone())))
        .collect()
}
