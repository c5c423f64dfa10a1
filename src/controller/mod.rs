//! `hookline controller`: reconciles WebhookSources, WebhookSubscriptions and WebhookReplays
//! (status, secrets, Events, finalizers) and keeps the managed gateway running. One replica leads at a time.

mod conditions;
pub mod leader;
pub mod managed_gateway;
mod replay;
mod report;
mod secrets;
mod source;
mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::api::{WebhookReplay, WebhookSource, WebhookSubscription};
use crate::telemetry::metrics::{ControllerMetrics, KindLabels};
pub use managed_gateway::GatewaySettings;

use crate::api::{GENERATED_SECRET_KEY, SecretKeyRef};
use crate::catalog::egress::EgressRules;
use crate::catalog::reflect::watched;

const FINALIZER: &str = "hookline.dev/cleanup";

#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// The controller's (and the managed gateway's) namespace.
    pub namespace: String,
    pub database_url: String,
    /// Public base URL of the gateway, for sources' `status.url`.
    pub external_base_url: String,
    /// Address of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    pub leader_election: bool,
    pub identity: String,
    /// How often status is refreshed from the database.
    pub status_interval: Duration,
    /// The window delivery statistics cover.
    pub stats_window: Duration,
    /// None: do not manage a gateway Deployment (it runs elsewhere).
    pub gateway: Option<GatewaySettings>,
    /// The operator's egress ranges, for status (the gateway enforces its own copy).
    pub egress: EgressRules,
    /// The namespaces whose sources and subscriptions are reconciled; every one when empty.
    pub watch_namespaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no name, namespace or uid")]
    MissingObjectKey,
}

pub struct Context {
    client: Client,
    pool: PgPool,
    options: ControllerOptions,
    recorder: Recorder,
    metrics: Arc<ControllerMetrics>,
}

/// How soon an object whose Secret is missing or unusable is reconciled again: Secrets are not
/// watched, so this is how soon creating or fixing one takes effect.
const SECRET_RECHECK: Duration = Duration::from_secs(2);

impl Context {
    /// When to reconcile an object again: after the status interval, or sooner while it waits
    /// for a Secret.
    fn recheck_after(&self, waiting_for_a_secret: bool) -> Duration {
        if waiting_for_a_secret {
            SECRET_RECHECK.min(self.options.status_interval)
        } else {
            self.options.status_interval
        }
    }

    fn window_label(&self) -> String {
        crate::api::Duration::from(self.options.stats_window).to_string()
    }
}

/// Reconciles one object of a kind through the finalizer: `apply` while it lives, `cleanup`
/// once it is being deleted.
async fn reconcile_with<K, A, C>(
    object: Arc<K>,
    ctx: Arc<Context>,
    apply: impl FnOnce(Arc<K>, Arc<Context>) -> A,
    cleanup: impl FnOnce(Arc<K>, Arc<Context>) -> C,
) -> Result<Action, Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    A: std::future::Future<Output = Result<Action, Error>>,
    C: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(object, ctx.clone()).await,
            Finalizer::Cleanup(object) => cleanup(object, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.observe(&K::kind(&()), started);
    result
}

async fn reconcile_source(source: Arc<WebhookSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with(
        source,
        ctx,
        async |s, ctx| source::apply(s, &ctx).await,
        async |s, ctx| source::cleanup(s, &ctx).await,
    )
    .await
}

async fn reconcile_subscription(sub: Arc<WebhookSubscription>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with(
        sub,
        ctx,
        async |s, ctx| subscription::apply(s, &ctx).await,
        async |s, ctx| subscription::cleanup(s, &ctx).await,
    )
    .await
}

async fn reconcile_replay(replay: Arc<WebhookReplay>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with(
        replay,
        ctx,
        async |r, ctx| replay::apply(r, &ctx).await,
        async |r, ctx| replay::cleanup(r, &ctx).await,
    )
    .await
}

impl Context {
    fn observe(&self, kind: &str, started: Instant) {
        let labels = KindLabels {
            kind: kind.to_owned(),
        };
        self.metrics.reconciles.get_or_create(&labels).inc();
        self.metrics
            .reconcile_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

fn error_policy<K: ResourceExt>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object")
        .to_owned();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&KindLabels { kind: kind.clone() })
        .inc();
    tracing::warn!(kind, namespace = ?object.namespace(), name = %object.name_any(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

async fn serve_health(listen: SocketAddr, metrics: Arc<ControllerMetrics>) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// How long reconciles still running at shutdown get to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long giving up the leader lease may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(options: ControllerOptions) -> anyhow::Result<()> {
    // SIGTERM stops the controller promptly whether or not the API server answers.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::node::shutdown_signal().await;
            stop.cancel();
        }
    });
    let client = Client::try_default().await?;
    let pool = crate::store::connect_lazy(&options.database_url, 8)?;
    crate::store::migrate(&pool).await?;
    let metrics = Arc::new(ControllerMetrics::default());
    tokio::spawn(serve_health(options.listen, metrics.clone()));

    let election = leader::LeaderElection::new(
        client.clone(),
        &options.namespace,
        "hookline-controller",
        &options.identity,
        Duration::from_secs(15),
    );
    if options.leader_election {
        tracing::info!(identity = %options.identity, "waiting to lead");
        tokio::select! {
            _ = election.acquire() => {}
            _ = stop.cancelled() => {
                tracing::info!("controller stopped before it led");
                return Ok(());
            }
        }
        tracing::info!(identity = %options.identity, "leading");
    }

    let reporter = Reporter {
        controller: "hookline-controller".into(),
        instance: Some(options.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pool,
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        options: options.clone(),
    });
    if let Some(settings) = options.gateway.clone() {
        tokio::spawn(managed_gateway::keep(
            client.clone(),
            options.namespace.clone(),
            settings,
        ));
    }
    tokio::spawn(collect_mirrors(ctx.clone()));

    // One controller per kind and watched namespace (or one per kind for the whole cluster).
    let sources = watched::<WebhookSource>(&client, &options.watch_namespaces)
        .into_iter()
        .map(|api| control(api, ctx.clone(), reconcile_source, &stop));
    let subscriptions = watched::<WebhookSubscription>(&client, &options.watch_namespaces)
        .into_iter()
        .map(|api| control(api, ctx.clone(), reconcile_subscription, &stop));
    let replays = watched::<WebhookReplay>(&client, &options.watch_namespaces)
        .into_iter()
        .map(|api| control(api, ctx.clone(), reconcile_replay, &stop));
    let sources = futures::future::join_all(sources);
    let subscriptions = futures::future::join_all(subscriptions);
    let replays = futures::future::join_all(replays);
    let controllers = async { futures::join!(sources, subscriptions, replays) };
    let overdue = async {
        stop.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        _ = controllers => {}
        _ = election.hold(), if options.leader_election => {
            anyhow::bail!("lost the leader lease; exiting so another replica leads")
        }
        _ = overdue => tracing::warn!("reconciles still running {STOP_GRACE:?} after the stop signal; stopping without them"),
    }
    if options.leader_election {
        match tokio::time::timeout(RELEASE_TIMEOUT, election.release()).await {
            Ok(Ok(())) => tracing::info!("leader lease released"),
            Ok(Err(err)) => tracing::warn!("cannot release the leader lease (it expires by itself): {err}"),
            Err(_) => tracing::warn!("the API server did not answer; the leader lease expires by itself"),
        }
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// Runs the controller of one kind in one scope. Secrets are not watched (that would take
/// list and watch on every Secret in the scope): each object is reconciled again after the
/// status interval, and sooner while a Secret it names is missing or unusable.
async fn control<K, F>(
    api: Api<K>,
    ctx: Arc<Context>,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
    stop: &CancellationToken,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await
}

/// Deletes mirrored Secrets no source or subscription uses any more, every 30 seconds.
async fn collect_mirrors(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let in_use = match in_use_secrets(&ctx.client, &ctx.options.watch_namespaces).await {
            Ok(in_use) => in_use,
            Err(err) => {
                tracing::warn!("cannot list resources for mirror collection: {err}");
                continue;
            }
        };
        match secrets::collect_mirrors(&ctx.client, &ctx.options.namespace, &in_use).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted mirrored Secrets no longer in use"),
            Err(err) => tracing::warn!("cannot collect mirrored Secrets: {err}"),
        }
    }
}

/// Every key a source or subscription in the watched namespaces references.
async fn in_use_secrets(
    client: &Client,
    watch_namespaces: &[String],
) -> Result<std::collections::HashSet<secrets::KeyInUse>, kube::Error> {
    let mut in_use = std::collections::HashSet::new();
    let generated = |name: String| SecretKeyRef {
        name,
        key: GENERATED_SECRET_KEY.to_owned(),
    };
    for api in watched::<WebhookSource>(client, watch_namespaces) {
        for source in api.list(&Default::default()).await? {
            let namespace = source.namespace().unwrap_or_default();
            let spec = &source.spec;
            let handlers = spec
                .handlers
                .iter()
                .map(|handler| match &handler.target.secret_ref {
                    Some(reference) => reference.clone(),
                    None => generated(secrets::generated_name(&[&source.name_any(), &handler.name])),
                });
            let endpoints = spec
                .handlers
                .iter()
                .flat_map(|handler| handler.target.endpoint_secrets().into_iter().map(|(_, r)| r));
            for reference in spec
                .verification_secrets()
                .cloned()
                .chain(handlers)
                .chain(endpoints)
            {
                in_use.insert((namespace.clone(), reference.name, reference.key));
            }
        }
    }
    for api in watched::<WebhookSubscription>(client, watch_namespaces) {
        for sub in api.list(&Default::default()).await? {
            let namespace = sub.namespace().unwrap_or_default();
            let reference = match &sub.spec.target.secret_ref {
                Some(reference) => reference.clone(),
                None => generated(secrets::generated_name(&[&sub.name_any()])),
            };
            for (_, reference) in sub.spec.target.endpoint_secrets() {
                in_use.insert((namespace.clone(), reference.name, reference.key));
            }
            in_use.insert((namespace, reference.name, reference.key));
        }
    }
    Ok(in_use)
}
