//! Logs, metrics and traces.

pub mod metrics;
pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::Metrics;

/// Installs the global subscriber: logs to stderr, filtered by `RUST_LOG` (default `info`), and
/// the traces exporter when the environment configures one (see [`traces`]). Call it before
/// the async runtime starts; shut the exporter down when the process ends.
pub fn init() -> traces::Exporter {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // Spans for export are not log lines.
        .add_directive(
            format!("{}=off", traces::TARGET)
                .parse()
                .expect("a static directive"),
        );
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if std::io::stdout().is_terminal() {
        logs.boxed()
    } else {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    };
    let (exported, exporter) = traces::layer();
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(exported)
        .init();
    exporter
}
