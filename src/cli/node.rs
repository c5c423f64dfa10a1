//! The flags `hookline gateway` and `hookline standalone` share: where to listen, who to believe,
//! tokens, retention and delivery settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use hookline::api::Duration;
use hookline::catalog::egress::EgressRules;
use hookline::dispatch::DispatchOptions;
use hookline::gateway::GatewayOptions;
use hookline::node::{NodeOptions, Stopping};
use hookline::store::events::EventBatching;
use hookline::store::retention::Policy;
use ipnet::IpNet;

use super::read_token;

#[derive(Args)]
pub struct NodeArgs {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Serve the admin API, the console and /metrics here instead of on --listen, so only
    /// operators' networks reach them (the managed gateway uses 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Proxies (CIDRs) whose X-Forwarded-For header names the client address.
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<IpNet>,
    /// History older than this is dropped, a partition (--history-period) at a time; a period
    /// with deliveries still queued is kept. 720h is 30 days.
    #[arg(long, default_value = "720h")]
    retention: Duration,
    /// The time one partition of history covers: hours that divide a day, or whole days.
    #[arg(long, default_value = "24h", value_parser = history_period)]
    history_period: Duration,
    /// Namespaces whose history goes sooner than --retention, as `<namespace>=<duration>`
    /// (comma-separated): their older events are deleted inside the partitions kept.
    #[arg(long, value_delimiter = ',', value_parser = namespace_retention, value_name = "NS=DURATION")]
    namespace_retention: Vec<(String, Duration)>,
    /// On SIGTERM, how long /readyz answers 503 while requests are still served, so load
    /// balancers stop sending first (the managed gateway sets 5s).
    #[arg(long, default_value = "0s")]
    shutdown_delay: Duration,
    /// On SIGTERM, how long deliveries being sent get to finish; those not yet sent are given
    /// back at once. With --shutdown-delay, keep it within the pod's grace period.
    #[arg(long, default_value = "20s")]
    drain_timeout: Duration,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    dispatch: DispatchArgs,
}

impl NodeArgs {
    pub fn options(self) -> anyhow::Result<NodeOptions> {
        Ok(NodeOptions {
            http: self.tokens.http_options(self.trusted_proxies)?,
            dispatch: self.dispatch.options(),
            history: Policy {
                period: self.history_period.get(),
                ..Policy::new(self.retention.get())
            }
            .with_namespaces(
                self.namespace_retention
                    .into_iter()
                    .map(|(namespace, keep)| (namespace, keep.get()))
                    .collect(),
            )?,
            admin_listen: self.admin_listen,
            stopping: Stopping {
                unready_for: self.shutdown_delay.get(),
                drain: self.drain_timeout.get(),
            },
        })
    }
}

/// Periods start at midnight UTC and line up from one to the next: whole hours dividing a day,
/// or whole days.
fn history_period(text: &str) -> Result<Duration, String> {
    let period: Duration = text.parse().map_err(|err| format!("{err}"))?;
    let seconds = period.get().as_secs();
    let whole = period.get().subsec_nanos() == 0 && seconds.is_multiple_of(3600) && seconds > 0;
    if whole && (86_400 % seconds == 0 || seconds.is_multiple_of(86_400)) {
        Ok(period)
    } else {
        Err(
            "a number of hours that divides 24 (1h, 2h, 3h, 4h, 6h, 8h, 12h), or of whole days (24h, 48h, …)"
                .into(),
        )
    }
}

fn namespace_retention(text: &str) -> Result<(String, Duration), String> {
    let (namespace, keep) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected <namespace>=<duration>, e.g. shop=168h"))?;
    let keep: Duration = keep.parse().map_err(|err| format!("{text:?}: {err}"))?;
    Ok((namespace.to_owned(), keep))
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
    /// File holding the publish token (for example a mounted Secret). It publishes into every
    /// namespace: an operator's credential.
    #[arg(long, value_name = "FILE")]
    publish_token_file: Option<PathBuf>,
    /// File of publish tokens limited to namespaces, one per line: `<token> <ns>[,<ns>…]`
    /// (a team's token publishes only into its namespaces; 403 elsewhere).
    #[arg(long, value_name = "FILE")]
    publish_tokens_file: Option<PathBuf>,
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
    /// Bytes of inbound webhook bodies held at once, all sources together; past it ingest
    /// answers 503 with Retry-After. Keep it well under the pod's memory limit.
    #[arg(long, default_value = "134217728", value_name = "BYTES")]
    ingest_body_budget: usize,
    /// How webhooks are gathered into commits. `while-writing`: a batch gathers only while
    /// another commit is being written, so no answer waits for nothing. `paced`: above 2,000
    /// webhooks a second a batch also waits with no commit under way (up to 64 webhooks, 10 ms,
    /// or a 2 ms pause in arrivals), while the senders' rate shows it costs them nothing
    /// (probed about once a second): at 10,000/s a third of the commits, for answers about 6 ms
    /// later. For gateways whose Postgres is their limit.
    #[arg(long, default_value = "while-writing", value_name = "while-writing|paced")]
    event_batching: EventBatching,
}

impl TokenArgs {
    fn http_options(self, trusted_proxies: Vec<IpNet>) -> anyhow::Result<GatewayOptions> {
        Ok(GatewayOptions {
            trusted_proxies,
            publish_token: read_token(
                self.publish_token,
                self.publish_token_file,
                "--publish-token-file",
            )?,
            scoped_publish_tokens: scoped_tokens(
                self.publish_tokens_file.as_deref(),
                "--publish-tokens-file",
            )?,
            admin_token: read_token(self.admin_token, self.admin_token_file, "--admin-token-file")?,
            request_timeout: self.request_timeout.get(),
            body_budget_bytes: self.ingest_body_budget,
            scoped_admin_tokens: scoped_tokens(self.admin_tokens_file.as_deref(), "--admin-tokens-file")?,
            sign_in_code: None,
            event_batching: self.event_batching,
        })
    }
}

/// The tokens of a scoped token file, none without one.
fn scoped_tokens(
    path: Option<&std::path::Path>,
    flag: &str,
) -> anyhow::Result<Vec<hookline::gateway::ScopedToken>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", path.display()))?;
    hookline::gateway::parse_scoped_tokens(&text)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
}

#[derive(Args)]
struct DispatchArgs {
    /// Longest wait a receiver's Retry-After may ask for.
    #[arg(long, default_value = "1h")]
    max_retry_after: Duration,
    /// Time beyond a target's timeout before a claimed delivery of a dead worker is taken over.
    #[arg(long, default_value = "30s")]
    lease_margin: Duration,
    #[command(flatten)]
    egress: EgressArgs,
}

impl DispatchArgs {
    fn options(self) -> DispatchOptions {
        DispatchOptions {
            max_retry_after: self.max_retry_after.get(),
            lease_margin: self.lease_margin.get(),
            egress: std::sync::Arc::new(self.egress.rules()),
            ..DispatchOptions::default()
        }
    }
}

/// The namespaces served; the controller passes its own to the managed gateway.
#[derive(Args)]
pub struct WatchArgs {
    /// Serve the sources and subscriptions of these namespaces only; the chart's
    /// watchNamespaces binds the roles there alone [default: every namespace].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMESPACE",
        env = "HOOKLINE_WATCH_NAMESPACES"
    )]
    pub watch_namespaces: Vec<String>,
}

/// The operator's egress ranges; the controller passes its own to the managed gateway.
#[derive(Args)]
pub struct EgressArgs {
    /// CIDRs no delivery may connect to, whatever a subscription's allowPrivateNetworks says
    /// (handlers included), e.g. the cluster's node and pod ranges.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR",
        env = "HOOKLINE_EGRESS_DENY"
    )]
    egress_deny: Vec<IpNet>,
    /// Private CIDRs every target may reach without allowPrivateNetworks, such as an egress
    /// proxy (link-local and metadata addresses stay forbidden).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CIDR",
        env = "HOOKLINE_EGRESS_ALLOW"
    )]
    egress_allow: Vec<IpNet>,
}

impl EgressArgs {
    pub fn rules(self) -> EgressRules {
        EgressRules {
            deny: self.egress_deny,
            allow: self.egress_allow,
        }
    }
}
