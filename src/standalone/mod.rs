//! `hookline standalone`: the gateway without Kubernetes, configured from YAML files, with its
//! own Postgres when no `DATABASE_URL` is given.

pub mod loader;
pub mod postgres;
pub mod reload;
mod replays;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::catalog::egress::{self, EgressRules};
use crate::catalog::hold;
use crate::catalog::{Catalog, GeneratedSecrets, Source};
use crate::node::{Configuration, Node, NodeOptions, shutdown_signal};
use postgres::PrivatePostgres;

pub struct Options {
    pub config_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub state_dir: PathBuf,
    pub node: NodeOptions,
}

pub async fn run(mut options: Options) -> anyhow::Result<()> {
    let config = loader::load_dir(&options.config_dir)?;
    tracing::info!(
        sources = config.sources.len(),
        subscriptions = config.subscriptions.len(),
        dir = %options.config_dir.display(),
        "configuration loaded"
    );
    let catalog = Catalog::build(
        &config.sources,
        &config.subscriptions,
        &config.secrets,
        GeneratedSecrets::InDatabase,
    );
    let sign_in = admin_token_for_this_run(&mut options)?;

    let private = match &options.database_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking({
                let dir = options.state_dir.clone();
                move || PrivatePostgres::start(&dir)
            })
            .await??,
        ),
    };
    let url = options
        .database_url
        .clone()
        .or_else(|| private.as_ref().map(PrivatePostgres::url))
        .unwrap_or_default();
    let result = serve(&options, &url, catalog, config, sign_in).await;
    if let Some(postgres) = private {
        tokio::task::spawn_blocking(move || postgres.stop()).await?;
    }
    result
}

/// Where the generated admin token is and the one-time code that signs in with it.
struct SignIn {
    token_file: PathBuf,
    code: String,
}

/// Without a configured admin token, standalone makes one for this run (written, mode 0600, to
/// the state directory) so the console is one link away; `hookline gateway` never does.
fn admin_token_for_this_run(options: &mut Options) -> anyhow::Result<Option<SignIn>> {
    let http = &mut options.node.http;
    if http.admin_token.is_some() || !http.scoped_admin_tokens.is_empty() {
        return Ok(None);
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    std::fs::create_dir_all(&options.state_dir)
        .with_context(|| format!("cannot create {}", options.state_dir.display()))?;
    let token_file = options.state_dir.join("admin-token");
    if let Err(err) = write_private(&token_file, &token) {
        tracing::warn!("{err:#}; use the sign-in link below");
    }
    let code = hex::encode(rand::random::<[u8; 24]>());
    http.admin_token = Some(token);
    http.sign_in_code = Some(code.clone());
    Ok(Some(SignIn { token_file, code }))
}

/// Writes a file only its owner can read, replacing it whole (written aside, then renamed).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let aside = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&aside, path));
    written.with_context(|| format!("cannot write {}", path.display()))
}

async fn serve(
    options: &Options,
    database_url: &str,
    catalog: Catalog,
    config: loader::Config,
    sign_in: Option<SignIn>,
) -> anyhow::Result<()> {
    let pool = crate::store::connect_lazy(database_url, 16)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let held = held_targets(&catalog, &options.node.dispatch.egress).await;
    let mut sources: Vec<_> = catalog.sources().cloned().collect();
    sources.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let configuration = Configuration::Fixed(catalog);
    let node = Node::start(
        pool.clone(),
        listener,
        configuration,
        options.node.clone(),
        shutdown_signal(),
    )
    .await?;
    announce(&node, options, &sources, &held, sign_in.as_ref());
    replays::sync(&pool, &config.replays).await;
    tokio::spawn(reload::follow(
        options.config_dir.clone(),
        node.catalog.clone(),
        pool,
        config,
        reload::Warned {
            rules: options.node.dispatch.egress.clone(),
            held,
        },
    ));
    node.wait().await
}

/// A URL for an address a server listens on, as a person on this machine would open it.
fn base_url(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => format!("http://localhost:{}", addr.port()),
        IpAddr::V6(ip) => format!("http://[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("http://{ip}:{}", addr.port()),
    }
}

/// Targets the dispatcher will hold, and why, and filters that do not compile: said once at
/// start, in the words the console and the admin API use.
pub(crate) async fn held_targets(catalog: &Catalog, rules: &EgressRules) -> Vec<String> {
    let mut held = Vec::new();
    for target in catalog.targets() {
        let key = &target.key;
        let named = format!(
            "{} {}/{} ({})",
            key.kind,
            key.namespace,
            key.name,
            crate::dispatch::settle::without_credentials(&target.spec.url)
        );
        let egress = egress::refusal(&target.spec.url, target.allow_private_networks, rules).await;
        if let Some(hold) = hold::configured(target, egress) {
            held.push(format!("{named} is held, nothing is sent: {hold}"));
        } else if let Some(problem) = target.expressions.problem_of("filter") {
            held.push(format!(
                "{named} receives nothing: its filter does not compile, so each event it would see is recorded as filtered_error: {}",
                problem.message
            ));
        }
    }
    held
}

/// Says where everything is: ingest URLs, the publish API, the console and how to sign in.
fn announce(
    node: &Node,
    options: &Options,
    sources: &[Arc<Source>],
    held: &[String],
    sign_in: Option<&SignIn>,
) {
    let public = base_url(node.local_addr);
    let console = base_url(node.admin_addr.unwrap_or(node.local_addr));
    for source in sources {
        let url = format!("{public}/ingest/{}/{}", source.namespace, source.name);
        match &source.verifier {
            Ok(_) => tracing::info!("receiving {}/{} at {url}", source.namespace, source.name),
            Err(problem) => tracing::warn!(
                "source {}/{} at {url} answers 503 until its secret is fixed: {problem}",
                source.namespace,
                source.name
            ),
        }
    }
    for problem in held {
        tracing::warn!("{problem}");
    }
    let http = &options.node.http;
    if http.publish_token.is_some() || !http.scoped_publish_tokens.is_empty() {
        tracing::info!(
            "publish events: POST {public}/v1/namespaces/<namespace>/events with the publish token"
        );
    } else {
        tracing::info!(
            "publishing is off: set HOOKLINE_PUBLISH_TOKEN to POST events to {public}/v1/namespaces/<namespace>/events"
        );
    }
    match sign_in {
        Some(sign_in) => tracing::info!(
            "console: {console}/ui — no admin token was configured, so one was generated for this run in {}; sign in once with {console}/ui/sign-in/{}",
            sign_in.token_file.display(),
            sign_in.code
        ),
        None => tracing::info!("console: {console}/ui (sign in with the admin token)"),
    }
}
