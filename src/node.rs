//! The one place a running gateway node is assembled: migrations, the catalog and where it comes
//! from, the HTTP side, the dispatcher, retention, and the order they stop in. `hookline gateway`,
//! `hookline standalone` and the tests all start a node here, so a test runs what production
//! runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::catalog::{Catalog, CatalogCell, reflect};
use crate::dispatch::{DispatchOptions, Dispatcher};
use crate::gateway::{Gateway, GatewayOptions};
use crate::telemetry::Metrics;

/// How often retention looks for history past its age.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub http: GatewayOptions,
    pub dispatch: DispatchOptions,
    /// History older than this is deleted (events still being delivered are kept).
    pub retention: Duration,
}

/// Where the node's configuration comes from.
pub enum Configuration {
    /// Given once (standalone's files, tests).
    Fixed(Catalog),
    /// Followed in the cluster: sources and subscriptions everywhere, and the Secrets the
    /// controller mirrors into `namespace`.
    Cluster { client: kube::Client, namespace: String },
}

/// A running node.
pub struct Node {
    /// The address it serves on.
    pub local_addr: SocketAddr,
    /// The configuration in force; setting it takes effect at once.
    pub catalog: Arc<CatalogCell>,
    pool: PgPool,
    serving: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Node {
    /// Prepares the database, serves on `listener` (health at once, ready once the configuration
    /// is in place) and starts delivering. Stops serving when `shutdown` completes; see
    /// [`Node::wait`].
    pub async fn start(
        pool: PgPool,
        listener: TcpListener,
        configuration: Configuration,
        options: NodeOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        crate::store::migrate(&pool)
            .await
            .context("preparing the database")?;
        let local_addr = listener.local_addr()?;
        let catalog = CatalogCell::new();
        let metrics = Arc::new(Metrics::new());
        let gateway = Gateway::new(pool.clone(), catalog.clone(), metrics.clone(), options.http);
        let serving = tokio::spawn(async move { gateway.serve(listener, shutdown).await });
        match configuration {
            Configuration::Fixed(fixed) => catalog.set(fixed),
            Configuration::Cluster { client, namespace } => {
                reflect::follow_cluster(client, catalog.clone(), &namespace)
                    .await
                    .context("following the cluster's configuration")?;
            }
        }
        let background = vec![
            tokio::spawn(crate::store::retention::run(
                pool.clone(),
                options.retention,
                RETENTION_EVERY,
            )),
            tokio::spawn(Dispatcher::new(pool.clone(), catalog.clone(), metrics, options.dispatch).run()),
        ];
        tracing::info!(listen = %local_addr, "gateway listening");
        Ok(Self {
            local_addr,
            catalog,
            pool,
            serving,
            background,
        })
    }

    /// Runs until the shutdown signal given to [`Node::start`] has drained the requests in
    /// flight, then stops delivering and closes the database pool.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.serving.await;
        // Deliveries in flight are abandoned here; their leases expire and they are sent again.
        for task in &self.background {
            task.abort();
        }
        self.pool.close().await;
        Ok(served??)
    }
}

/// `hookline gateway`: a node configured from the cluster, until SIGTERM.
pub async fn run_in_cluster(
    listen: SocketAddr,
    database_url: &str,
    namespace: String,
    options: NodeOptions,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let pool = crate::store::connect_lazy(database_url, 16)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let configuration = Configuration::Cluster { client, namespace };
    Node::start(pool, listener, configuration, options, shutdown_signal())
        .await?
        .wait()
        .await
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: draining requests in flight");
}
