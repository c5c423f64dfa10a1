use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

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
    /// Run the gateway without Kubernetes, configured from the YAML files in a directory.
    Standalone(StandaloneArgs),
    /// Print the CustomResourceDefinitions (YAML), generated from the Rust types.
    Crds,
}

#[derive(Args)]
struct StandaloneArgs {
    /// Directory of YAML files: WebhookSources, WebhookSubscriptions and Secrets.
    #[arg(short = 'f', long = "filename", value_name = "DIR")]
    config_dir: PathBuf,
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Postgres to use; without it, a private Postgres is started in the state directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the private Postgres keeps its data [default: $XDG_DATA_HOME/hookline, or
    /// /var/lib/hookline as root].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Proxies (CIDRs) whose X-Forwarded-For header names the client address.
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<IpNet>,
}

fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hookline");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hookline")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Standalone(args) => run_async(hookline::standalone::run(hookline::standalone::Options {
            config_dir: args.config_dir,
            listen: args.listen,
            database_url: args.database_url.filter(|url| !url.is_empty()),
            state_dir: args.state_dir.unwrap_or_else(default_state_dir),
            trusted_proxies: args.trusted_proxies,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    hookline::telemetry::init_logging();
    tokio::runtime::Runtime::new()?.block_on(future)
}

fn print_crds() -> anyhow::Result<()> {
    let yaml = hookline::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
