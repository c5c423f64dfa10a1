//! OpenTelemetry traces. Spans of ingest (verify, store), publish and each delivery attempt
//! (send, record) are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard `OTEL_*` variables;
//! otherwise no span is made at all. Either way the W3C trace context a request carries
//! (`traceparent`, `tracestate`) is stored with its event and sent with every delivery of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The target of every span meant for export; nothing else is exported.
pub const TARGET: &str = "hookline::trace";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: when not, callers make none ([`Span::none`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter, kept to flush what is buffered when the process ends.
pub struct Exporter(Option<SdkTracerProvider>);

impl Exporter {
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(err) = provider.shutdown()
        {
            eprintln!("hookline: cannot flush traces: {err}");
        }
    }
}

fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is =
        |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The layer that exports Hookline's spans, when the environment configures an endpoint. Made
/// before the async runtime starts (the exporter's client has a runtime of its own).
pub fn layer<S>() -> (Option<impl Layer<S>>, Exporter)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if !configured() {
        return (None, Exporter(None));
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("hookline: traces are off: cannot make the OTLP exporter: {err}");
            return (None, Exporter(None));
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("hookline");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("hookline"))
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
    ENABLED.store(true, Ordering::Relaxed);
    (Some(layer), Exporter(Some(provider)))
}

/// The W3C trace context of a request or an event: where its spans belong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of request headers, if they carry a valid `traceparent`.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // Most requests carry none: nothing to parse.
        let Some(traceparent) = text(TRACEPARENT) else {
            return Self::default();
        };
        Self {
            traceparent: Some(traceparent),
            tracestate: text(TRACESTATE),
        }
        .valid()
    }

    /// Itself if its `traceparent` parses (a `tracestate` without one means nothing).
    pub fn valid(self) -> Self {
        if self.otel().span().span_context().is_valid() {
            self
        } else {
            Self::default()
        }
    }

    fn otel(&self) -> opentelemetry::Context {
        let mut carrier = HashMap::new();
        for (name, value) in [(TRACEPARENT, &self.traceparent), (TRACESTATE, &self.tracestate)] {
            if let Some(value) = value {
                carrier.insert(name.to_owned(), value.clone());
            }
        }
        TraceContextPropagator::new().extract(&carrier)
    }

    /// Makes `span` a child of this context (nothing when there is none).
    pub fn adopt(&self, span: &Span) {
        if self.traceparent.is_some() && !span.is_none() {
            let _ = span.set_parent(self.otel());
        }
    }

    /// The context a span continues in: the span's own while exporting, else `fallback` (so a
    /// receiver still joins the sender's trace).
    pub fn of(span: &Span, fallback: &TraceContext) -> Self {
        if span.is_none() {
            return fallback.clone();
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        Self {
            traceparent: carrier.remove(TRACEPARENT),
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        }
        .valid()
    }

    /// As request headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        [(TRACEPARENT, &self.traceparent), (TRACESTATE, &self.tracestate)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.clone()?)))
            .collect()
    }
}

/// A span for export, child of the current one (`tracing`'s usual parent), or none when
/// traces are off.
#[macro_export]
macro_rules! trace_span {
    ($name:expr $(, $($fields:tt)*)?) => {
        if $crate::telemetry::traces::enabled() {
            ::tracing::info_span!(target: "hookline::trace", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_trace_contexts_are_kept_and_passed_on() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=opaque".parse().unwrap());
        let context = TraceContext::from_headers(&headers);
        assert_eq!(
            context.headers(),
            [
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
                ),
                ("tracestate", "vendor=opaque".to_owned())
            ]
        );
        // Traces off: a delivery passes on the sender's context.
        assert_eq!(TraceContext::of(&Span::none(), &context), context);
        headers.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            TraceContext::from_headers(&headers),
            TraceContext::default(),
            "an all-zero trace id"
        );
        headers.insert("traceparent", "not a traceparent".parse().unwrap());
        assert!(TraceContext::from_headers(&headers).headers().is_empty());
    }
}
