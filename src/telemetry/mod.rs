//! Logs, metrics and traces.

pub mod metrics;
pub mod throttle;
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = !std::io::stdout().is_terminal();
    let (exported, exporter) = traces::layer();
    let Some(exported) = exported else {
        // No traces: the plain subscriber with one global filter, so a disabled log line costs
        // what it always did.
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        if json {
            logs.json().flatten_event(true).with_current_span(false).init();
        } else {
            logs.init();
        }
        return exporter;
    };
    // Spans for export are not log lines.
    let filter = filter.add_directive(
        format!("{}=off", traces::TARGET)
            .parse()
            .expect("a static directive"),
    );
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    } else {
        logs.boxed()
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(exported)
        .init();
    exporter
}
