use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hookline: verified inbound webhooks and reliable, signed outbound delivery, configured with
/// Kubernetes custom resources.
#[derive(Parser)]
#[command(name = "hookline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML), generated from the Rust types.
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> anyhow::Result<()> {
    let yaml = hookline::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
