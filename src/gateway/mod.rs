//! The HTTP side of the data plane: receives inbound webhooks (`ingest`) and published events
//! (`publish`), serves the admin API and console, health and metrics.

mod admin;
mod charts;
mod fan_out;
mod holds;
mod ingest;
pub mod notices;
mod publish;
pub mod refusal;
mod replays;
mod sending;
mod session;
mod ui;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ipnet::IpNet;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::normalize_path::NormalizePath;
use tower_http::timeout::TimeoutLayer;

use crate::api::notice::Notices;
use crate::catalog::egress::{EgressCache, EgressRules};
use crate::catalog::{Catalog, CatalogCell};
use crate::dispatch::Dispatcher;
use crate::store::events::{EventBatching, EventWriter, event_writer};
use crate::store::stats::IngestCounts;
use crate::telemetry::Metrics;

/// Everything a request handler reads.
pub struct Gateway {
    catalog: Arc<CatalogCell>,
    pool: PgPool,
    /// Inbound, published and test events go through here, sharing commits.
    events: EventWriter,
    metrics: Arc<Metrics>,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, ingress controllers).
    trusted_proxies: Vec<IpNet>,
    /// Bearer tokens of the publish API; publishing is refused without one.
    publish_tokens: Tokens,
    /// Bearer tokens of the admin API and console.
    admin_tokens: Tokens,
    /// A request not finished within this time is answered 408, so slow clients cannot hold
    /// connections and memory indefinitely.
    request_timeout: Duration,
    /// Bytes of request bodies being read or stored at once, all sources together: past it,
    /// ingest answers 503 with Retry-After instead of buffering without bound.
    body_budget: tokio::sync::Semaphore,
    /// The budget's size, in bytes: no single body reserves more.
    body_budget_bytes: u32,
    /// Set when the node is stopping: not ready any more (load balancers stop sending), while
    /// requests are still served.
    draining: AtomicBool,
    /// What ingest accepted and refused per source, for the sources' status.
    ingest_counts: Mutex<IngestCounts>,
    /// Failed console sign-ins per client, to slow down token guessing.
    sign_in_failures: session::SignInLimiter,
    /// The one-time sign-in code, until it is used.
    sign_in_code: Mutex<Option<String>>,
    /// Egress verdicts on target URLs, under the dispatcher's rules: why a target is held.
    egress: EgressCache,
    /// Operational events to publish (see `notices`), from the console's pause and resume.
    notices: Notices,
    /// This node's dispatcher: new deliveries it can take at once are sent by it directly
    /// (see `sending`).
    dispatcher: Arc<Dispatcher>,
}

/// Settings of the HTTP side of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub trusted_proxies: Vec<IpNet>,
    /// Publishes into every namespace: an operator's credential.
    pub publish_token: Option<String>,
    /// Publish only into their namespaces: a team's credential.
    pub scoped_publish_tokens: Vec<ScopedToken>,
    pub admin_token: Option<String>,
    pub scoped_admin_tokens: Vec<ScopedToken>,
    pub request_timeout: Duration,
    /// Bytes of inbound bodies held at once (see `Gateway::body_budget`).
    pub body_budget_bytes: usize,
    /// A code that opens a console session with the admin token once, at
    /// `/ui/sign-in/{code}` (standalone prints the link when it generated the token).
    pub sign_in_code: Option<String>,
    /// How webhooks are gathered into commits.
    pub event_batching: EventBatching,
}

/// An admin token that sees only the resources and history of some namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedToken {
    pub token: String,
    pub namespaces: Vec<String>,
}

/// Admin tokens open the console's sign-in form, where they can be guessed online: they must be
/// at least this long (`openssl rand -hex 32` gives 64 characters).
pub const MIN_ADMIN_TOKEN_LENGTH: usize = 32;

/// An admin token too short to be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{which} is {length} characters long; admin tokens need at least {MIN_ADMIN_TOKEN_LENGTH} \
     (generate one with `openssl rand -hex 32`)"
)]
pub struct WeakAdminToken {
    which: String,
    length: usize,
}

impl GatewayOptions {
    /// Refuses admin tokens shorter than [`MIN_ADMIN_TOKEN_LENGTH`], naming which one (never its
    /// value).
    pub fn check(&self) -> Result<(), WeakAdminToken> {
        let weak = |which: String, token: &str| {
            (token.len() < MIN_ADMIN_TOKEN_LENGTH).then_some(WeakAdminToken {
                which,
                length: token.len(),
            })
        };
        let global = self
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(|t| weak("the admin token".into(), t));
        let scoped = self.scoped_admin_tokens.iter().find_map(|s| {
            weak(
                format!("the scoped admin token for {}", s.namespaces.join(",")),
                &s.token,
            )
        });
        match global.or(scoped) {
            Some(weak) => Err(weak),
            None => Ok(()),
        }
    }
}

/// A line of a scoped token file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("line {0}: expected '<token> <namespace>[,<namespace>…]'")]
    Malformed(usize),
    #[error("line {0}: a token of at least 16 characters and one or more namespaces")]
    TooWeak(usize),
}

/// Reads namespace-scoped tokens: one per line, `<token> <namespace>[,<namespace>…]`; blank
/// lines and `#` comments are skipped.
pub fn parse_scoped_tokens(text: &str) -> Result<Vec<ScopedToken>, TokenFileError> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(number, line)| {
            let (token, namespaces) = line
                .split_once(char::is_whitespace)
                .ok_or(TokenFileError::Malformed(number))?;
            let namespaces: Vec<String> = namespaces
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            if token.len() < 16 || namespaces.is_empty() {
                return Err(TokenFileError::TooWeak(number));
            }
            Ok(ScopedToken {
                token: token.to_owned(),
                namespaces,
            })
        })
        .collect()
}

/// What an admin caller may see and act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    Namespaces(Vec<String>),
}

impl Access {
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(allowed) => allowed.iter().any(|n| n == namespace),
        }
    }

    /// The namespaces a query must stay within; `None` for all.
    pub fn namespaces(&self) -> Option<&[String]> {
        match self {
            Self::All => None,
            Self::Namespaces(allowed) => Some(allowed),
        }
    }
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            publish_token: None,
            scoped_publish_tokens: Vec::new(),
            admin_token: None,
            scoped_admin_tokens: Vec::new(),
            request_timeout: Duration::from_secs(30),
            body_budget_bytes: 128 << 20,
            sign_in_code: None,
            event_batching: EventBatching::default(),
        }
    }
}

impl Gateway {
    pub fn new(
        pool: PgPool,
        catalog: Arc<CatalogCell>,
        metrics: Arc<Metrics>,
        options: GatewayOptions,
        egress: Arc<EgressRules>,
        notices: Notices,
        dispatcher: Arc<Dispatcher>,
    ) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            events: event_writer(pool.clone(), options.event_batching),
            pool,
            metrics,
            trusted_proxies: options.trusted_proxies,
            publish_tokens: Tokens::new(options.publish_token, options.scoped_publish_tokens),
            admin_tokens: Tokens::new(options.admin_token, options.scoped_admin_tokens),
            request_timeout: options.request_timeout,
            body_budget: tokio::sync::Semaphore::new(options.body_budget_bytes),
            body_budget_bytes: u32::try_from(options.body_budget_bytes).unwrap_or(u32::MAX),
            draining: AtomicBool::new(false),
            ingest_counts: Mutex::default(),
            sign_in_failures: session::SignInLimiter::default(),
            sign_in_code: Mutex::new(options.sign_in_code),
            egress: EgressCache::new(egress),
            notices,
            dispatcher,
        })
    }

    /// From now on `/readyz` answers 503; requests are still served until the server stops.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The configuration in force; a request finishes with the one it started with.
    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }

    /// What senders reach: ingest and publish.
    fn public_routes() -> Router<Arc<Self>> {
        Router::new()
            .route("/ingest/{namespace}/{source}", post(ingest::receive))
            .route("/v1/namespaces/{namespace}/events", post(publish::publish))
    }

    /// What operators reach: the admin API, the console, and metrics (which name every tenant's
    /// sources and targets).
    fn operator_routes() -> Router<Arc<Self>> {
        Router::new()
            .route("/admin/v1/openapi.json", get(admin::openapi))
            .route("/admin/v1/events", get(admin::list_events))
            .route("/admin/v1/events/{id}", get(admin::get_event))
            .route("/admin/v1/deliveries/{id}/redeliver", post(admin::redeliver))
            .route("/admin/v1/deliveries/{id}/skip", post(admin::skip))
            .route("/admin/v1/replays", get(replays::list).post(replays::create))
            .route("/admin/v1/replays/{id}", axum::routing::delete(replays::stop))
            .route("/admin/v1/targets", get(admin::list_targets))
            .route("/admin/v1/targets/{action}", post(admin::target_action))
            .route("/ui/overview", get(ui::overview))
            .route("/ui/sources", get(ui::sources))
            .route("/ui/sources/send", post(ui::send_sample))
            .route("/ui/targets", get(ui::targets))
            .route("/ui/replays", get(ui::replays).post(ui::start_replay))
            .route("/ui/targets/{action}", post(ui::target_action))
            .route("/ui", get(ui::root))
            .route("/ui/login", get(ui::login_form).post(ui::login))
            .route("/ui/logout", post(ui::logout))
            .route("/ui/sign-in/{code}", get(ui::sign_in_once))
            .route("/ui/events", get(ui::events))
            .route("/ui/events/{id}", get(ui::event))
            .route("/ui/deliveries/{id}/{action}", post(ui::delivery_action))
            .route("/ui/verify", get(ui::verify_examples))
            .route("/metrics", get(metrics))
            .layer(axum::middleware::from_fn(ui::security_headers))
    }

    /// `routes` with health, the request timeout and the state: a service for one port. Every
    /// path answers with and without a trailing slash (`/ui/` is `/ui`): the slash is trimmed
    /// before routing.
    fn service(
        self: &Arc<Self>,
        routes: Router<Arc<Self>>,
    ) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<NormalizePath<Router>, SocketAddr> {
        let router = routes
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                self.request_timeout,
            ))
            .with_state(self.clone());
        axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(
            NormalizePath::trim_trailing_slash(router),
        )
    }

    /// Serves until `shutdown` completes, then stops accepting and drains requests in flight:
    /// everything on `listener`, or, given an `operators` listener, the admin API, console and
    /// metrics there only.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        operators: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let flusher = tokio::spawn(self.clone().flush_ingest_counts());
        let served = match operators {
            None => {
                let app = self.service(Self::public_routes().merge(Self::operator_routes()));
                axum::serve(listener, app).with_graceful_shutdown(shutdown).await
            }
            Some(operators) => {
                // One signal stops both servers.
                let (stop, _) = tokio::sync::watch::channel(false);
                let stopped = |stop: &tokio::sync::watch::Sender<bool>| {
                    let mut seen = stop.subscribe();
                    async move {
                        let _ = seen.wait_for(|stopped| *stopped).await;
                    }
                };
                let public = axum::serve(listener, self.service(Self::public_routes()))
                    .with_graceful_shutdown(stopped(&stop));
                let private = axum::serve(operators, self.service(Self::operator_routes()))
                    .with_graceful_shutdown(stopped(&stop));
                let signal = async move {
                    shutdown.await;
                    let _ = stop.send(true);
                };
                let (public, private, ()) = tokio::join!(
                    std::future::IntoFuture::into_future(public),
                    std::future::IntoFuture::into_future(private),
                    signal
                );
                public.and(private)
            }
        };
        flusher.abort();
        self.flush_ingest_counts_once().await;
        served
    }

    /// Counts an accepted event towards its source's `received` status.
    fn count_accepted(&self, namespace: &str, source: &str) {
        self.counts().accept(namespace, source);
    }

    /// Counts a refused request towards its source's `rejected` status.
    fn count_rejection(&self, namespace: &str, source: &str, reason: &str) {
        self.counts().reject(namespace, source, reason);
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, IngestCounts> {
        self.ingest_counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn flush_ingest_counts(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            self.flush_ingest_counts_once().await;
        }
    }

    async fn flush_ingest_counts_once(&self) {
        let counts = std::mem::take(&mut *self.counts());
        if let Err(err) = crate::store::stats::add_ingest_counts(&self.pool, &counts).await {
            tracing::warn!("cannot record the sources' ingest counts (kept for the next try): {err}");
            self.counts().merge(counts);
        }
    }
}

/// Ready when the configuration is loaded and the database answers.
async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    if gateway.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if !gateway.catalog.loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "configuration not loaded");
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&gateway.pool),
    );
    match ping.await {
        Ok(Ok(_)) => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable"),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    // Facts of the configuration in force, refreshed at each scrape.
    let unresolved = &gateway.metrics.secrets_unresolved;
    unresolved.clear();
    for source in gateway.catalog().sources().filter(|s| !s.unresolved.is_empty()) {
        let labels = crate::telemetry::metrics::SourceLabels {
            namespace: source.namespace.clone(),
            source: source.name.clone(),
        };
        unresolved
            .get_or_create(&labels)
            .set(source.unresolved.len() as i64);
    }
    if let Err(err) = holds::refresh_metric(&gateway).await {
        tracing::warn!("cannot count held deliveries for /metrics: {err}");
    }
    if let Err(err) = refresh_blocked_keys(&gateway).await {
        tracing::warn!("cannot count blocked ordering keys for /metrics: {err}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
}

/// Sets `hookline_delivery_keys_blocked` for every target with `ordering`.
async fn refresh_blocked_keys(gateway: &Gateway) -> sqlx::Result<()> {
    let catalog = gateway.catalog();
    let ordered: Vec<&crate::api::TargetKey> = catalog
        .targets()
        .filter(|t| t.spec.ordering.is_some())
        .map(|t| &t.key)
        .collect();
    let counts = crate::store::stats::blocked_key_counts(&gateway.pool, &ordered).await?;
    let family = &gateway.metrics.keys_blocked;
    family.clear();
    for (key, count) in ordered.into_iter().zip(counts) {
        let labels = crate::telemetry::metrics::TargetLabels {
            namespace: key.namespace.clone(),
            target: key.label(),
        };
        family.get_or_create(&labels).set(count);
    }
    Ok(())
}

/// The bearer token of a request, or "".
fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// Token comparison in constant time.
fn same_token(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The bearer tokens of one API: one for every namespace, and tokens scoped to some.
struct Tokens {
    all: Option<String>,
    scoped: Vec<ScopedToken>,
    /// SHA-256 of each token with what it grants, for console sessions, which keep the digest
    /// of the token they were opened with rather than the token.
    digests: Vec<([u8; 32], Access)>,
}

/// SHA-256, of tokens and session ids.
fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

impl Tokens {
    fn new(all: Option<String>, scoped: Vec<ScopedToken>) -> Self {
        let all = all.filter(|t| !t.is_empty());
        let digests = all
            .iter()
            .map(|token| (digest(token), Access::All))
            .chain(
                scoped
                    .iter()
                    .map(|s| (digest(&s.token), Access::Namespaces(s.namespaces.clone()))),
            )
            .collect();
        Self { all, scoped, digests }
    }

    /// What the token with this SHA-256 grants, if it is still one of these.
    fn access_by_digest(&self, wanted: &[u8]) -> Option<Access> {
        use subtle::ConstantTimeEq;
        self.digests
            .iter()
            .find(|(digest, _)| bool::from(digest.as_slice().ct_eq(wanted)))
            .map(|(_, access)| access.clone())
    }

    /// What a presented token grants, if it is one of these (compared in constant time).
    fn access(&self, presented: &str) -> Option<Access> {
        if presented.is_empty() {
            return None;
        }
        if self
            .all
            .as_deref()
            .is_some_and(|expected| same_token(presented, expected))
        {
            return Some(Access::All);
        }
        self.scoped
            .iter()
            .find(|scoped| same_token(presented, &scoped.token))
            .map(|scoped| Access::Namespaces(scoped.namespaces.clone()))
    }

    fn configured(&self) -> bool {
        self.all.is_some() || !self.scoped.is_empty()
    }
}

impl Gateway {
    fn admin_access(&self, presented: &str) -> Option<Access> {
        self.admin_tokens.access(presented)
    }

    /// The client's address: the socket peer, or — when the peer is a trusted proxy — the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .rev()
            .find(|ip| !self.trusts(ip))
            .unwrap_or(peer)
    }

    /// Whether the browser reached us over HTTPS: the gateway speaks plain HTTP, so only a
    /// trusted proxy that terminated TLS can say so (`X-Forwarded-Proto: https`).
    fn reached_over_https(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        self.trusts(&peer)
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }

    fn trusts(&self, peer: &IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(peer))
    }

    fn admin_configured(&self) -> bool {
        self.admin_tokens.configured()
    }

    /// The admin token, if `code` is the one-time sign-in code; the code is used up.
    fn redeem_sign_in_code(&self, code: &str) -> Option<String> {
        let mut expected = self.sign_in_code.lock().unwrap_or_else(|e| e.into_inner());
        if !expected
            .as_deref()
            .is_some_and(|expected| same_token(code, expected))
        {
            return None;
        }
        *expected = None;
        self.admin_tokens.all.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_tokens_parse_and_refuse_nonsense() {
        let text = "# team tokens\n0123456789abcdef0123 billing, shop\n\nfedcba9876543210fedc ops\n";
        let tokens = parse_scoped_tokens(text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].namespaces, ["billing", "shop"]);
        assert!(Access::Namespaces(tokens[1].namespaces.clone()).allows("ops"));
        assert!(!Access::Namespaces(tokens[1].namespaces.clone()).allows("shop"));
        assert_eq!(
            parse_scoped_tokens("short billing").unwrap_err(),
            TokenFileError::TooWeak(1)
        );
        assert!(parse_scoped_tokens("0123456789abcdef0123").is_err());
    }
}
