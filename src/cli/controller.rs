//! `hookline controller`: the operator's flags.

use std::net::SocketAddr;

use clap::Args;
use hookline::api::Duration;

use super::run_async;

#[derive(Args)]
pub struct ControllerArgs {
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
    #[arg(long, env = "HOOKLINE_GATEWAY_IMAGE", default_value = "hookline:dev")]
    gateway_image: String,
    /// imagePullPolicy of the managed gateway [default: Kubernetes' default for the tag].
    #[arg(long, env = "HOOKLINE_GATEWAY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    gateway_image_pull_policy: Option<String>,
    /// An extra argument of the managed gateway (repeat for each), e.g.
    /// --gateway-arg=--trusted-proxies=10.0.0.0/8.
    #[arg(long = "gateway-arg", value_name = "ARG", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
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
    /// Secret (NAME/KEY) holding namespace-scoped publish tokens (`<token> <ns>[,<ns>…]` a
    /// line), mounted into the gateway as its --publish-tokens-file.
    #[arg(long)]
    gateway_publish_tokens_secret: Option<String>,
    /// Secret (NAME/KEY) holding namespace-scoped admin tokens, mounted as --admin-tokens-file.
    #[arg(long)]
    gateway_admin_tokens_secret: Option<String>,
    /// Container resources of the gateway, as JSON.
    #[arg(
        long,
        default_value = r#"{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"512Mi"}}"#
    )]
    gateway_resources: String,
    #[command(flatten)]
    egress: super::node::EgressArgs,
    #[command(flatten)]
    watch: super::node::WatchArgs,
}

fn secret_key(text: &str) -> anyhow::Result<(String, String)> {
    let (name, key) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not NAME/KEY"))?;
    Ok((name.to_owned(), key.to_owned()))
}

pub fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let egress = args.egress.rules();
    let gateway = if args.no_managed_gateway {
        None
    } else {
        Some(hookline::controller::GatewaySettings {
            image: args.gateway_image,
            image_pull_policy: args.gateway_image_pull_policy.filter(|p| !p.is_empty()),
            extra_args: args.gateway_args,
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
            publish_tokens_secret: args
                .gateway_publish_tokens_secret
                .as_deref()
                .map(secret_key)
                .transpose()?,
            admin_tokens_secret: args
                .gateway_admin_tokens_secret
                .as_deref()
                .map(secret_key)
                .transpose()?,
            resources: serde_json::from_str(&args.gateway_resources)
                .map_err(|e| anyhow::anyhow!("--gateway-resources is not JSON: {e}"))?,
            egress: egress.clone(),
            watch_namespaces: args.watch.watch_namespaces.clone(),
            // The gateway exports traces where the controller was told to (the chart's
            // `tracing` values), sorted so the Deployment does not change between restarts.
            otel_env: std::env::vars()
                .filter(|(name, _)| name.starts_with("OTEL_"))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect(),
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
        egress,
        watch_namespaces: args.watch.watch_namespaces,
    };
    run_async(hookline::controller::run(options))
}
