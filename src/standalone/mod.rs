//! `hookline standalone`: the gateway without Kubernetes, configured from YAML files, with its
//! own Postgres when no `DATABASE_URL` is given.

pub mod loader;
pub mod postgres;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::catalog::{Catalog, GeneratedSecrets};
use crate::node::{Configuration, Node, NodeOptions, shutdown_signal};
use postgres::PrivatePostgres;

pub struct Options {
    pub config_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<String>,
    pub state_dir: PathBuf,
    pub node: NodeOptions,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
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
    for source in catalog.sources() {
        match &source.verifier {
            Ok(_) => tracing::info!(
                "receiving {}/{} at /ingest/{}/{}",
                source.namespace,
                source.name,
                source.namespace,
                source.name
            ),
            Err(problem) => tracing::warn!(
                "source {}/{} will answer 503 until its secret is fixed: {problem}",
                source.namespace,
                source.name
            ),
        }
    }

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
    let result = serve(&options, &url, catalog).await;
    if let Some(postgres) = private {
        tokio::task::spawn_blocking(move || postgres.stop()).await?;
    }
    result
}

async fn serve(options: &Options, database_url: &str, catalog: Catalog) -> anyhow::Result<()> {
    let pool = crate::store::connect_lazy(database_url, 16)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let configuration = Configuration::Fixed(catalog);
    Node::start(
        pool,
        listener,
        configuration,
        options.node.clone(),
        shutdown_signal(),
    )
    .await?
    .wait()
    .await
}
