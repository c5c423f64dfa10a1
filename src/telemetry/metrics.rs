//! Prometheus metrics (`/metrics`), all prefixed `hookline_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

pub struct Metrics {
    registry: Registry,
    pub ingest_requests: Family<IngestLabels, Counter>,
    pub ingest_duration: Histogram,
    pub events_stored: Family<SourceLabels, Counter>,
    pub duplicates: Family<SourceLabels, Counter>,
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
        Self {
            registry,
            ingest_requests,
            ingest_duration,
            events_stored,
            duplicates,
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
