//! Logs and metrics.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use metrics::Metrics;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stdout().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).init();
    }
}
