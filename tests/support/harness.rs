//! A gateway with its dispatcher on a fresh database, on real sockets, delivering to a real sink.

use std::path::Path;
use std::time::{Duration, Instant};

use hookline::catalog::{Catalog, GeneratedSecrets};
use hookline::dispatch::DispatchOptions;
use hookline::gateway::GatewayOptions;
use hookline::node::{Configuration, Node, NodeOptions};
use hookline::standalone::loader::{Config, load_text};
use serde_json::json;
use sqlx::PgPool;

use super::sink::Sink;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
pub const TOKEN: &str = "publish-token-for-tests";
pub const SUB_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Harness {
    pub base: String,
    pub pool: PgPool,
    pub sink: Sink,
    pub client: reqwest::Client,
}

/// Starts a gateway with a dispatcher on a fresh database; `{SINK}` in the YAML is the sink.
pub async fn harness(yaml: &str) -> Harness {
    harness_with(yaml, test_options()).await
}

pub async fn harness_with(yaml: &str, options: GatewayOptions) -> Harness {
    harness_with_dispatch(yaml, options, DispatchOptions::default()).await
}

pub async fn harness_with_dispatch(
    yaml: &str,
    options: GatewayOptions,
    dispatch: DispatchOptions,
) -> Harness {
    let sink = Sink::start().await;
    let pool = hookline::store::connect_lazy(&super::fresh_database().await, 16).expect("pool");
    hookline::store::migrate(&pool).await.expect("migrate");
    let base = start_gateway_dispatching(&pool, &yaml.replace("{SINK}", &sink.base), options, dispatch).await;
    Harness {
        base,
        pool,
        sink,
        client: reqwest::Client::new(),
    }
}

/// The options the harness gateways run with: both tokens set.
pub fn test_options() -> GatewayOptions {
    GatewayOptions {
        publish_token: Some(TOKEN.into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..GatewayOptions::default()
    }
}

pub async fn start_gateway(pool: &PgPool, yaml: &str) -> String {
    start_gateway_with(pool, yaml, test_options()).await
}

pub async fn start_gateway_with(pool: &PgPool, yaml: &str, options: GatewayOptions) -> String {
    start_gateway_dispatching(pool, yaml, options, DispatchOptions::default()).await
}

pub async fn start_gateway_dispatching(
    pool: &PgPool,
    yaml: &str,
    options: GatewayOptions,
    dispatch: DispatchOptions,
) -> String {
    start_node(pool, yaml, options, dispatch).await.1
}

/// A node as production starts one, on `pool`, configured from `yaml`; runs until the test ends.
/// Returns it with its base URL.
pub async fn start_node(
    pool: &PgPool,
    yaml: &str,
    http: GatewayOptions,
    dispatch: DispatchOptions,
) -> (std::sync::Arc<hookline::catalog::CatalogCell>, String) {
    start_node_on(pool, catalog_of(yaml), http, dispatch).await
}

/// A node on a catalog built by the caller (for configuration that never met admission).
pub async fn start_node_on(
    pool: &PgPool,
    catalog: Catalog,
    http: GatewayOptions,
    dispatch: DispatchOptions,
) -> (std::sync::Arc<hookline::catalog::CatalogCell>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = NodeOptions {
        http,
        dispatch,
        history: hookline::store::retention::Policy::new(Duration::from_secs(30 * 24 * 3600)),
        stopping: Default::default(),
        admin_listen: None,
    };
    let node = Node::start(
        pool.clone(),
        listener,
        Configuration::Fixed(catalog),
        options,
        std::future::pending(),
    )
    .await
    .expect("node starts");
    let base = format!("http://{}", node.local_addr);
    let catalog = node.catalog.clone();
    tokio::spawn(node.wait());
    (catalog, base)
}

/// The catalog of a YAML configuration, as standalone builds it.
pub fn catalog_of(yaml: &str) -> Catalog {
    let mut config = Config::default();
    load_text(yaml, Path::new("test"), &mut config).expect("config");
    Catalog::build(
        &config.sources,
        &config.subscriptions,
        &config.secrets,
        GeneratedSecrets::InDatabase,
    )
}

pub fn subscription(name: &str, path: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{url: '{{SINK}}/{path}', events: ['*'], allowPrivateNetworks: true, secretRef: {{name: signing, key: secret}}{extra}}}\n"
    )
}

pub const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: signing, namespace: shop}\nstringData: {secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n";

impl Harness {
    pub async fn publish(&self, event_type: &str, data: serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/namespaces/shop/events", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"type": event_type, "data": data}))
            .send()
            .await
            .expect("publish")
    }

    pub async fn delivery(&self, target: &str) -> Vec<(String, i32)> {
        sqlx::query_as("SELECT status, attempts FROM delivery_states WHERE target = $1 ORDER BY created_at")
            .bind(target)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub async fn wait_status(&self, target: &str, status: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.delivery(target).await;
            if rows.iter().filter(|(s, _)| s == status).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{target}: wanted {count} {status}, have {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
