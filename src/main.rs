use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hookline::api::Duration;
use hookline::dispatch::DispatchOptions;
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
    Standalone(Box<StandaloneArgs>),
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
    #[command(flatten)]
    publish: PublishArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

#[derive(Args)]
struct PublishArgs {
    /// Bearer token of the publish API (POST /v1/namespaces/{ns}/events).
    #[arg(
        long,
        env = "HOOKLINE_PUBLISH_TOKEN",
        hide_env_values = true,
        conflicts_with = "publish_token_file"
    )]
    publish_token: Option<String>,
    /// File holding the publish token (for example a mounted Secret).
    #[arg(long, value_name = "FILE")]
    publish_token_file: Option<PathBuf>,
}

impl PublishArgs {
    fn token(self) -> anyhow::Result<Option<String>> {
        match self.publish_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!("cannot read --publish-token-file {}: {e}", path.display())
                })?;
                Ok(Some(token.trim().to_owned()))
            }
            None => Ok(self.publish_token),
        }
    }
}

#[derive(Args)]
struct DispatchArgs {
    /// Longest wait a receiver's Retry-After may ask for.
    #[arg(long, default_value = "1h")]
    max_retry_after: Duration,
    /// Time beyond a target's timeout before a claimed delivery of a dead worker is taken over.
    #[arg(long, default_value = "30s")]
    lease_margin: Duration,
}

impl DispatchArgs {
    fn options(self) -> DispatchOptions {
        DispatchOptions {
            max_retry_after: self.max_retry_after.get(),
            lease_margin: self.lease_margin.get(),
            ..DispatchOptions::default()
        }
    }
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
        Command::Standalone(args) => standalone(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let options = hookline::standalone::Options {
        config_dir: args.config_dir,
        listen: args.listen,
        database_url: args.database_url.filter(|url| !url.is_empty()),
        state_dir: args.state_dir.unwrap_or_else(default_state_dir),
        trusted_proxies: args.trusted_proxies,
        publish_token: args.publish.token()?,
        dispatch: args.dispatch.options(),
    };
    run_async(hookline::standalone::run(options))
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
