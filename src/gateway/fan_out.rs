//! The deliveries a new event gets: one per target whose `events` and `filter` select it, the
//! same for a provider's webhook and a published event.

use std::sync::Arc;

use uuid::Uuid;

use crate::api::TargetKey;
use crate::catalog::expression::Variables;
use crate::catalog::{Catalog, Selection, Source};
use crate::store::events::NewDelivery;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{FilteredLabels, TargetLabels};

/// One stored event as its targets' filters see it.
pub(super) struct Arriving<'a> {
    /// The event's id: its deliveries' ids are made in its millisecond (its partition).
    pub id: Uuid,
    pub namespace: &'a str,
    /// `None` for a published event.
    pub source: Option<&'a Source>,
    pub event_type: &'a str,
    pub headers: &'a serde_json::Value,
    pub body: &'a [u8],
    /// For an operational event, the target it is about: it goes only to targets that ask for
    /// operational events by name, and never to that one.
    pub about: Option<&'a TargetKey>,
}

pub(super) fn deliveries(catalog: &Catalog, metrics: &Metrics, event: &Arriving<'_>) -> Vec<NewDelivery> {
    let mut variables: Option<Arc<Variables>> = None;
    let mut variables = || {
        variables
            .get_or_insert_with(|| {
                let source = event.source.map_or("", |s| s.name.as_str());
                Arc::new(Variables::new(
                    event.event_type,
                    source,
                    event.headers,
                    event.body,
                ))
            })
            .clone()
    };
    let mut deliveries = Vec::new();
    for target in catalog.targets_for(event.namespace, event.source, event.event_type) {
        if let Some(about) = event.about
            && (target.key == *about || !target.asks_for_operational_events())
        {
            continue;
        }
        let filter_error = match target.select(&mut variables) {
            Selection::Deliver => None,
            Selection::Skip => {
                count(metrics, target, "skipped");
                continue;
            }
            Selection::Failed(why) => {
                count(metrics, target, "filtered_error");
                Some(why)
            }
        };
        let ordering_key = match (&target.expressions.ordering_key, &filter_error) {
            (Some(key), None) => key.key(&variables()).unwrap_or_else(|why| {
                tracing::debug!(target = %target.key.label(), "ordering key: {why}; delivered unordered");
                None
            }),
            _ => None,
        };
        if target.spec.ordering.is_some() && ordering_key.is_none() && filter_error.is_none() {
            metrics
                .deliveries_unordered
                .get_or_create(&TargetLabels {
                    namespace: target.key.namespace.clone(),
                    target: target.key.label(),
                })
                .inc();
        }
        deliveries.push(NewDelivery {
            id: crate::store::partitions::delivery_id(event.id),
            target_kind: target.key.kind,
            target: target.key.name.clone(),
            filter_error,
            ordering_key,
            claim_for: None,
        });
    }
    deliveries
}

fn count(metrics: &Metrics, target: &crate::catalog::Target, outcome: &str) {
    metrics
        .deliveries_filtered
        .get_or_create(&FilteredLabels {
            namespace: target.key.namespace.clone(),
            target: target.key.label(),
            outcome: outcome.to_owned(),
        })
        .inc();
}
