//! The command line: one module per group of subcommands; `main` only dispatches.

pub mod controller;
pub mod node;
pub mod send_test;
pub mod signature;

use std::path::PathBuf;

/// A token given directly or as a file (a mounted Secret); the file wins.
pub fn read_token(
    value: Option<String>,
    file: Option<PathBuf>,
    flag: &str,
) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => {
            let token = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))?;
            Ok(Some(token.trim().to_owned()))
        }
        None => Ok(value),
    }
}

pub fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let traces = hookline::telemetry::init();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(future);
    // A blocking task still running (a DNS lookup, a request to an API server that does not
    // answer) must not keep a stopped process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    traces.shutdown();
    result
}
