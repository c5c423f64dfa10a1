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

use tokio_util::sync::CancellationToken;

use crate::api::notice::Notices;
use crate::catalog::{Catalog, CatalogCell, reflect};
use crate::dispatch::{DispatchOptions, Dispatcher};
use crate::gateway::{Gateway, GatewayOptions, notices};
use crate::telemetry::Metrics;

/// How often retention looks for history past its age.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub http: GatewayOptions,
    pub dispatch: DispatchOptions,
    /// How long history is kept (events still being delivered are kept longer).
    pub history: crate::store::retention::Policy,
    pub stopping: Stopping,
    /// Where the admin API, the console and metrics are served; on the main port when `None`.
    pub admin_listen: Option<SocketAddr>,
}

/// How a node stops once told to.
#[derive(Clone, Copy, Debug)]
pub struct Stopping {
    /// How long `/readyz` answers 503 while requests are still served, so that load balancers
    /// (a Service's endpoints) stop sending before the listener closes.
    pub unready_for: Duration,
    /// How long deliveries being sent get to finish and be recorded; the ones not yet sent are
    /// given back at once. Keep it, with `unready_for`, within the pod's grace period.
    pub drain: Duration,
}

impl Default for Stopping {
    fn default() -> Self {
        Self {
            unready_for: Duration::ZERO,
            drain: Duration::from_secs(20),
        }
    }
}

/// Where the node's configuration comes from.
pub enum Configuration {
    /// Given once (standalone's files, tests).
    Fixed(Catalog),
    /// Followed in the cluster: sources and subscriptions in `watch_namespaces` (every
    /// namespace when empty), and the Secrets the controller mirrors into `namespace`.
    Cluster {
        client: kube::Client,
        namespace: String,
        watch_namespaces: Vec<String>,
    },
}

/// A running node.
pub struct Node {
    /// The address it serves on.
    pub local_addr: SocketAddr,
    /// Where the admin API, console and metrics are, when not on `local_addr`.
    pub admin_addr: Option<SocketAddr>,
    /// The configuration in force; setting it takes effect at once.
    pub catalog: Arc<CatalogCell>,
    pool: PgPool,
    serving: JoinHandle<std::io::Result<()>>,
    dispatching: JoinHandle<()>,
    retention: JoinHandle<()>,
    replaying: JoinHandle<()>,
    publishing_notices: JoinHandle<()>,
}

impl Node {
    /// Prepares the database, serves on `listener` (health at once, ready once the configuration
    /// is in place) and starts delivering. When `shutdown` completes it stops as
    /// [`Stopping`] says; see [`Node::wait`].
    pub async fn start(
        pool: PgPool,
        listener: TcpListener,
        configuration: Configuration,
        options: NodeOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        options.http.check()?;
        crate::store::migrate(&pool)
            .await
            .context("preparing the database")?;
        let local_addr = listener.local_addr()?;
        let operators = match options.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?,
            ),
            None => None,
        };
        let admin_addr = operators.as_ref().map(TcpListener::local_addr).transpose()?;
        let catalog = CatalogCell::new();
        let metrics = Arc::new(Metrics::new());
        // Operational events from the dispatcher and the console, published by the gateway.
        let (notices, to_publish) = Notices::channel();
        // Stopping: first unready (still serving), then the listener and the dispatcher together.
        let stop = CancellationToken::new();
        let egress = options.dispatch.egress.clone();
        let dispatcher = Dispatcher::new(
            pool.clone(),
            catalog.clone(),
            metrics.clone(),
            options.dispatch,
            notices.clone(),
            stop.clone(),
        );
        let gateway = Gateway::new(
            pool.clone(),
            catalog.clone(),
            metrics,
            options.http,
            egress,
            notices,
            dispatcher.clone(),
        );
        let publishing_notices = tokio::spawn(notices::publish_all(gateway.clone(), to_publish));
        tokio::spawn({
            let (gateway, stop, unready_for) = (gateway.clone(), stop.clone(), options.stopping.unready_for);
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop.cancelled() => return,
                }
                gateway.drain();
                tokio::time::sleep(unready_for).await;
                stop.cancel();
            }
        });
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move { gateway.serve(listener, operators, stop.cancelled_owned()).await }
        });
        match configuration {
            Configuration::Fixed(fixed) => catalog.set(fixed),
            Configuration::Cluster {
                client,
                namespace,
                watch_namespaces,
            } => {
                reflect::follow_cluster(client, catalog.clone(), &namespace, &watch_namespaces)
                    .await
                    .context("following the cluster's configuration")?;
            }
        }
        let retention = tokio::spawn(crate::store::retention::run(
            pool.clone(),
            options.history.clone(),
            RETENTION_EVERY,
        ));
        let replaying = tokio::spawn(crate::dispatch::replay::run(
            pool.clone(),
            catalog.clone(),
            stop.clone(),
        ));
        let dispatching = tokio::spawn(dispatcher.run(options.stopping.drain));
        match admin_addr {
            Some(admin) => {
                tracing::info!(listen = %local_addr, %admin, "gateway listening (admin API, console and metrics on the admin address)")
            }
            None => tracing::info!(listen = %local_addr, "gateway listening"),
        }
        Ok(Self {
            local_addr,
            admin_addr,
            catalog,
            pool,
            serving,
            dispatching,
            retention,
            replaying,
            publishing_notices,
        })
    }

    /// Runs until the node has stopped: the requests in flight answered, the deliveries being
    /// sent recorded (within the drain time), the rest given back to the queue.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.serving.await;
        let dispatched = self.dispatching.await;
        self.retention.abort();
        // Notices not yet published are dropped with the node (they are best-effort).
        self.publishing_notices.abort();
        // A batch cut short is not applied (one transaction); its replay goes on from its cursor.
        self.replaying.abort();
        self.pool.close().await;
        tracing::info!("gateway stopped");
        dispatched?;
        Ok(served??)
    }
}

/// `hookline gateway`: a node configured from the cluster, until SIGTERM.
pub async fn run_in_cluster(
    listen: SocketAddr,
    database_url: &str,
    namespace: String,
    watch_namespaces: Vec<String>,
    options: NodeOptions,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let pool = crate::store::connect_lazy(database_url, 16)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let configuration = Configuration::Cluster {
        client,
        namespace,
        watch_namespaces,
    };
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
