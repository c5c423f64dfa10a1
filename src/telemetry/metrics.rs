//! Prometheus metrics (`/metrics`), all prefixed `hookline_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub namespace: String,
    pub source: String,
    pub provider: String,
    /// accepted, duplicate, or the rejection reason (signature_mismatch, body_too_large, …).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub namespace: String,
    pub source: String,
}

/// A target whose deliveries are held back, and why (see `catalog::hold`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabels {
    pub namespace: String,
    pub target: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub namespace: String,
    /// `subscription/<name>` or `handler/<source>/<handler>`.
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub namespace: String,
    pub target: String,
    /// succeeded or failed.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilteredLabels {
    pub namespace: String,
    pub target: String,
    /// `skipped` (the filter is false) or `filtered_error` (an expression failed for the event).
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub ingest_requests: Family<IngestLabels, Counter>,
    pub ingest_duration: Histogram,
    pub events_stored: Family<SourceLabels, Counter>,
    pub duplicates: Family<SourceLabels, Counter>,
    pub delivery_attempts: Family<AttemptLabels, Counter>,
    pub delivery_duration: Histogram,
    pub deliveries_dead: Family<TargetLabels, Counter>,
    pub deliveries_pending: Gauge,
    pub circuit_state: Family<TargetLabels, Gauge>,
    pub event_delivery_latency: Histogram,
    /// Per source, verification secrets that do not resolve while others do.
    pub secrets_unresolved: Family<SourceLabels, Gauge>,
    /// Per held target, the deliveries waiting while it is held.
    pub deliveries_held: Family<HeldLabels, Gauge>,
    pub keys_blocked: Family<TargetLabels, Gauge>,
    /// Events a target's `filter` skipped, and deliveries ended by a failing expression.
    pub deliveries_filtered: Family<FilteredLabels, Counter>,
    /// Deliveries of targets with `ordering` whose key was null or failed: sent unordered.
    pub deliveries_unordered: Family<TargetLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookline");
        let ingest_requests = Family::<IngestLabels, Counter>::default();
        registry.register(
            "ingest_requests",
            "Inbound webhook requests by outcome",
            ingest_requests.clone(),
        );
        // 0.5 ms … ~4 s
        let ingest_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "ingest_duration_seconds",
            "Time from request to answer for inbound webhooks",
            ingest_duration.clone(),
        );
        let events_stored = Family::<SourceLabels, Counter>::default();
        registry.register(
            "events_stored",
            "Events accepted and stored",
            events_stored.clone(),
        );
        let duplicates = Family::<SourceLabels, Counter>::default();
        registry.register(
            "ingest_duplicates",
            "Events received again and not stored twice",
            duplicates.clone(),
        );
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "HTTP attempts to deliver events, by target and outcome",
            delivery_attempts.clone(),
        );
        let delivery_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "delivery_duration_seconds",
            "Duration of one delivery attempt",
            delivery_duration.clone(),
        );
        let deliveries_dead = Family::<TargetLabels, Counter>::default();
        registry.register(
            "deliveries_dead",
            "Deliveries that exhausted their attempts",
            deliveries_dead.clone(),
        );
        let deliveries_pending = Gauge::default();
        registry.register(
            "deliveries_pending",
            "Deliveries waiting to be sent or retried",
            deliveries_pending.clone(),
        );
        let circuit_state = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let event_delivery_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "event_delivery_latency_seconds",
            "Time from receiving an event to its successful delivery",
            event_delivery_latency.clone(),
        );
        let secrets_unresolved = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "source_secrets_unresolved",
            "Verification secrets of a source that do not resolve (requests are verified with the others)",
            secrets_unresolved.clone(),
        );
        let deliveries_held = Family::<HeldLabels, Gauge>::default();
        registry.register(
            "deliveries_held",
            "Deliveries waiting for a target that is held back (paused, circuit open, no secret, URL not allowed), by reason",
            deliveries_held.clone(),
        );
        let deliveries_filtered = Family::<FilteredLabels, Counter>::default();
        registry.register(
            "deliveries_filtered",
            "Events a target's CEL filter skipped (outcome skipped), and deliveries ended unsent because a CEL expression failed for the event (outcome filtered_error)",
            deliveries_filtered.clone(),
        );
        let deliveries_unordered = Family::<TargetLabels, Counter>::default();
        registry.register(
            "deliveries_unordered",
            "Deliveries to a target with ordering whose key was null or failed for the event, so they go unordered",
            deliveries_unordered.clone(),
        );
        let keys_blocked = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "delivery_keys_blocked",
            "Ordering keys of a target blocked by a dead delivery (ordering.onDead: block) until it is redelivered or skipped",
            keys_blocked.clone(),
        );
        Self {
            registry,
            keys_blocked,
            deliveries_filtered,
            deliveries_unordered,
            secrets_unresolved,
            deliveries_held,
            ingest_requests,
            ingest_duration,
            events_stored,
            duplicates,
            delivery_attempts,
            delivery_duration,
            deliveries_dead,
            deliveries_pending,
            circuit_state,
            event_delivery_latency,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// The controller's own metrics.
pub struct ControllerMetrics {
    registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hookline_controller");
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciliations by kind", reconciles.clone());
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations by kind",
            reconcile_duration.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
        }
    }
}

impl ControllerMetrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
