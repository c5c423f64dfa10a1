use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hookline::api::{Duration, Provider};
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
    /// Run the gateway in Kubernetes: configuration from WebhookSources, WebhookSubscriptions
    /// and the Secrets the controller mirrors into its namespace.
    Gateway(Box<GatewayArgs>),
    /// Run the operator: reconcile sources and subscriptions, manage the gateway.
    Controller(Box<ControllerArgs>),
    /// Print the CustomResourceDefinitions (YAML), generated from the Rust types.
    Crds,
    /// Print the headers a provider would send with a body: test your receiver, or Hookline.
    Sign(SignArgs),
    /// Check a request's signature the way Hookline does; exit 1 with the reason when it fails.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct SchemeArgs {
    /// Signature scheme.
    #[arg(
        long,
        value_parser = ["stripe", "svix", "clerk", "resend", "standard-webhooks", "github"],
        required_unless_present = "source"
    )]
    scheme: Option<String>,
    /// A YAML file with a WebhookSource: its provider and genericHmac settings are used (the
    /// way to sign and verify generic HMAC schemes).
    #[arg(long, value_name = "FILE", conflicts_with = "scheme")]
    source: Option<PathBuf>,
    /// The signing secret (prefer HOOKLINE_SECRET or --secret-file: command lines are visible).
    #[arg(
        long,
        env = "HOOKLINE_SECRET",
        hide_env_values = true,
        required_unless_present = "secret_file"
    )]
    secret: Option<String>,
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
    /// The body, byte for byte ('-' for standard input).
    #[arg(long, short = 'f', value_name = "FILE", default_value = "-")]
    body: PathBuf,
}

impl SchemeArgs {
    /// The provider, and generic HMAC settings when the source has them.
    fn scheme(&self) -> anyhow::Result<(Provider, Option<hookline::api::GenericHmac>)> {
        if let Some(path) = &self.source {
            let mut config = hookline::standalone::loader::Config::default();
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            hookline::standalone::loader::load_text(&text, path, &mut config)?;
            let source = config
                .sources
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("{} holds no WebhookSource", path.display()))?;
            return Ok((source.spec.provider, source.spec.generic_hmac));
        }
        let scheme = self.scheme.as_deref().unwrap_or_default();
        let provider = serde_json::from_value(serde_json::Value::from(scheme))
            .expect("value_parser admits providers only");
        Ok((provider, None))
    }

    fn secret(&self) -> anyhow::Result<String> {
        Ok(read_token(self.secret.clone(), self.secret_file.clone(), "--secret-file")?.unwrap_or_default())
    }

    fn body(&self) -> anyhow::Result<Vec<u8>> {
        if self.body.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
            Ok(body)
        } else {
            std::fs::read(&self.body).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.body.display()))
        }
    }
}

#[derive(Args)]
struct SignArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// Event id for schemes that send one in a header [default: a new msg_ id].
    #[arg(long)]
    id: Option<String>,
    /// Unix timestamp to sign [default: now].
    #[arg(long)]
    timestamp: Option<i64>,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// A request header, as 'Name: value'; repeat for each.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// How far the signed timestamp may be from now.
    #[arg(long, default_value = "5m")]
    tolerance: Duration,
}

#[derive(Args)]
struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The gateway's namespace (the downward API sets it in the managed Deployment).
    #[arg(long, env = "POD_NAMESPACE", default_value = "hookline-system")]
    namespace: String,
    /// Proxies (CIDRs) whose X-Forwarded-For header names the client address.
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<IpNet>,
    /// History older than this is deleted, in small batches (events still being delivered are
    /// kept). 720h is 30 days.
    #[arg(long, default_value = "720h")]
    retention: Duration,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

#[derive(Args)]
struct ControllerArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The controller's namespace; the managed gateway and mirrored Secrets live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "hookline-system")]
    namespace: String,
    /// Public base URL of the gateway, shown in each source's status.url.
    #[arg(
        long,
        env = "HOOKLINE_EXTERNAL_BASE_URL",
        default_value = "http://hookline-gateway.hookline-system.svc"
    )]
    external_base_url: String,
    /// Run without a leader lease (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// This replica's name in the leader lease [default: the host name].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How often status is refreshed from the database.
    #[arg(long, default_value = "10s")]
    status_interval: Duration,
    /// Do not create the gateway Deployment and Service (the gateway runs elsewhere).
    #[arg(long)]
    no_managed_gateway: bool,
    /// Image of the managed gateway.
    #[arg(
        long,
        env = "HOOKLINE_GATEWAY_IMAGE",
        default_value = "ghcr.io/hookline/hookline:latest"
    )]
    gateway_image: String,
    #[arg(long, default_value_t = 2)]
    gateway_replicas: i32,
    #[arg(long, default_value = "ClusterIP")]
    gateway_service_type: String,
    #[arg(long, default_value = "hookline-gateway")]
    gateway_service_account: String,
    /// Secret (NAME/KEY) holding the gateway's DATABASE_URL.
    #[arg(long, default_value = "hookline-database/url")]
    gateway_database_secret: String,
    /// Secret (NAME/KEY) holding the publish token; publishing is off without it.
    #[arg(long)]
    gateway_publish_token_secret: Option<String>,
    /// Secret (NAME/KEY) holding the admin token; the admin API and console are off without it.
    #[arg(long)]
    gateway_admin_token_secret: Option<String>,
    /// Container resources of the gateway, as JSON.
    #[arg(
        long,
        default_value = r#"{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"512Mi"}}"#
    )]
    gateway_resources: String,
}

fn secret_key(text: &str) -> anyhow::Result<(String, String)> {
    let (name, key) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not NAME/KEY"))?;
    Ok((name.to_owned(), key.to_owned()))
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
    /// History older than this is deleted, in small batches (events still being delivered are
    /// kept). 720h is 30 days.
    #[arg(long, default_value = "720h")]
    retention: Duration,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

#[derive(Args)]
struct TokenArgs {
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
    /// Bearer token of the admin API (/admin/v1).
    #[arg(
        long,
        env = "HOOKLINE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// File of admin tokens limited to namespaces, one per line: `<token> <ns>[,<ns>…]`.
    #[arg(long, value_name = "FILE")]
    admin_tokens_file: Option<PathBuf>,
    /// Time a client has to send a whole request; slower ones get 408.
    #[arg(long, default_value = "30s")]
    request_timeout: Duration,
}

fn read_token(value: Option<String>, file: Option<PathBuf>, flag: &str) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => {
            let token = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))?;
            Ok(Some(token.trim().to_owned()))
        }
        None => Ok(value),
    }
}

impl TokenArgs {
    fn http_options(self, trusted_proxies: Vec<IpNet>) -> anyhow::Result<hookline::gateway::GatewayOptions> {
        Ok(hookline::gateway::GatewayOptions {
            trusted_proxies,
            publish_token: read_token(
                self.publish_token,
                self.publish_token_file,
                "--publish-token-file",
            )?,
            admin_token: read_token(self.admin_token, self.admin_token_file, "--admin-token-file")?,
            request_timeout: self.request_timeout.get(),
            scoped_admin_tokens: match &self.admin_tokens_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!("cannot read --admin-tokens-file {}: {e}", path.display())
                    })?;
                    hookline::gateway::parse_scoped_tokens(&text)
                        .map_err(|e| anyhow::anyhow!("--admin-tokens-file {}: {e}", path.display()))?
                }
                None => Vec::new(),
            },
        })
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
        Command::Sign(args) => sign(args),
        Command::Verify(args) => verify(args),
        Command::Standalone(args) => standalone(*args),
        Command::Gateway(args) => gateway(*args),
        Command::Controller(args) => controller(*args),
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
        http: args.tokens.http_options(args.trusted_proxies)?,
        dispatch: args.dispatch.options(),
        retention: args.retention.get(),
    };
    run_async(hookline::standalone::run(options))
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let options = hookline::gateway::ClusterOptions {
        listen: args.listen,
        database_url: args.database_url,
        namespace: args.namespace,
        http: args.tokens.http_options(args.trusted_proxies)?,
        dispatch: args.dispatch.options(),
        retention: args.retention.get(),
    };
    run_async(hookline::gateway::run_in_cluster(options))
}

fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let gateway = if args.no_managed_gateway {
        None
    } else {
        Some(hookline::controller::GatewaySettings {
            image: args.gateway_image,
            replicas: args.gateway_replicas,
            service_type: args.gateway_service_type,
            service_account: args.gateway_service_account,
            database_secret: secret_key(&args.gateway_database_secret)?,
            publish_token_secret: args
                .gateway_publish_token_secret
                .as_deref()
                .map(secret_key)
                .transpose()?,
            admin_token_secret: args
                .gateway_admin_token_secret
                .as_deref()
                .map(secret_key)
                .transpose()?,
            resources: serde_json::from_str(&args.gateway_resources)
                .map_err(|e| anyhow::anyhow!("--gateway-resources is not JSON: {e}"))?,
        })
    };
    let identity = args.identity.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "hookline-controller".into())
    });
    let options = hookline::controller::ControllerOptions {
        namespace: args.namespace,
        database_url: args.database_url,
        external_base_url: args.external_base_url,
        listen: args.listen,
        leader_election: !args.no_leader_election,
        identity,
        status_interval: args.status_interval.get(),
        stats_window: std::time::Duration::from_secs(3600),
        gateway,
    };
    run_async(hookline::controller::run(options))
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    hookline::telemetry::init_logging();
    tokio::runtime::Runtime::new()?.block_on(future)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let body = args.scheme.body()?;
    let id = args
        .id
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    let timestamp = args.timestamp.unwrap_or_else(unix_now);
    let (provider, generic_hmac) = args.scheme.scheme()?;
    let headers = hookline::verify::sign_headers(
        provider,
        generic_hmac.as_ref(),
        &args.scheme.secret()?,
        &id,
        timestamp,
        &body,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, value) in headers {
        println!("{name}: {value}");
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let body = args.scheme.body()?;
    let secret = args.scheme.secret()?;
    let (provider, generic_hmac) = args.scheme.scheme()?;
    let verifier = hookline::verify::SourceVerifier::new(
        provider,
        generic_hmac.as_ref(),
        &[secret.as_str()],
        args.tolerance.get(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut headers = http::HeaderMap::new();
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("{line:?} is not 'Name: value'"))?;
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())?,
            http::HeaderValue::from_str(value.trim())?,
        );
    }
    match verifier.verify(&headers, &body, unix_now()) {
        Ok(event) => {
            println!("verified: event id {}, type {}", event.id, event.event_type);
            Ok(())
        }
        Err(rejection) => anyhow::bail!("not verified ({}): {rejection}", rejection.reason()),
    }
}

fn print_crds() -> anyhow::Result<()> {
    let yaml = hookline::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
