//! Test support on the real platform from `hack/test-env`: a kube-apiserver (KUBECONFIG) and a
//! Postgres (DATABASE_URL). Each test gets its own namespace and its own database.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde::Deserialize;
use tokio::sync::OnceCell;

pub mod harness;
pub mod peers;
pub mod process;
pub mod sink;

pub const FIELD_MANAGER: &str = "hookline-tests";

fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the test stack. Run them with hack/test, \
             or start it with: eval \"$(hack/test-env up)\""
        )
    })
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until every other session on `reader`'s database has ended (up to 10 s), and a
/// moment more: a session's statistics reach the `pg_stat_*` views when it ends.
pub async fn wait_for_other_sessions_to_end(reader: &sqlx::PgPool) {
    for _ in 0..100 {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(reader)
        .await
        .expect("sessions");
        if others == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Waits until `done` holds, checking every 50 ms; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A client for the test API server; also makes sure the CRDs are installed.
pub async fn kube_client() -> Client {
    require_env("KUBECONFIG");
    let config = Config::infer()
        .await
        .expect("KUBECONFIG must point at a valid kubeconfig");
    let client = Client::try_from(config).expect("kube client");
    install_crds(&client).await;
    client
}

/// Parses every document of a multi-document YAML stream.
pub fn yaml_documents<T: for<'de> Deserialize<'de>>(text: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| T::deserialize(doc).expect("valid YAML document"))
        .collect()
}

static CRDS_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Applies `crds/hookline.yaml` (what users install) and waits until both CRDs are Established.
async fn install_crds(client: &Client) {
    CRDS_INSTALLED
        .get_or_init(|| async {
            let text =
                std::fs::read_to_string(repo_path("crds/hookline.yaml")).expect("read crds/hookline.yaml");
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            for crd in yaml_documents::<CustomResourceDefinition>(&text) {
                let name = crd.metadata.name.clone().expect("CRD name");
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
                tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(api.clone(), &name, conditions::is_crd_established()),
                )
                .await
                .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
                .expect("watch CRD");
            }
        })
        .await;
}

/// A namespace of its own for one test, so tests can run side by side.
pub async fn temp_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Deletes a test namespace. Without kube-controller-manager it stays Terminating, which is
/// harmless; this only marks it.
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Server-side applies every document of `yaml` into `namespace`, resolving kinds by discovery.
pub async fn apply_yaml(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> Result<Vec<DynamicObject>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut applied = Vec::new();
    for mut object in yaml_documents::<DynamicObject>(yaml) {
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = kube::core::GroupVersionKind::try_from(&types).expect("valid apiVersion");
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            object.metadata.namespace = Some(namespace.to_owned());
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = object.metadata.name.clone().expect("metadata.name");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        applied.push(api.patch(&name, &params, &Patch::Apply(&object)).await?);
    }
    Ok(applied)
}

/// Writes the configuration a user would apply, in a directory of its own: a signing Secret and
/// a subscription `crm` to `url` in namespace `shop` (`extra`: more of its spec, after `, `).
pub fn subscription_config(url: &str, extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hookline-config-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: signing, namespace: shop}}\n\
             stringData: {{secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: crm, namespace: shop}}\n\
             spec: {{url: '{url}', events: ['*'], allowPrivateNetworks: true, secretRef: {{name: signing, key: secret}}{extra}}}\n"
        ),
    )
    .unwrap();
    dir
}

/// The record of a claimed delivery's attempt answered 200 in 3 ms, settled as `after`.
pub fn answered_200(
    delivery: &hookline::store::deliveries::Claimed,
    after: hookline::store::deliveries::After,
) -> hookline::store::deliveries::AttemptRecord {
    hookline::store::deliveries::AttemptRecord {
        after,
        ..answered_200_to(
            delivery.id,
            delivery.lease_until,
            delivery.attempts + 1,
            delivery.held,
        )
    }
}

/// The attempt numbers kept for a delivery, in order.
pub async fn attempt_numbers(pool: &sqlx::PgPool, delivery: uuid::Uuid) -> Vec<i32> {
    sqlx::query_scalar("SELECT attempt_number FROM attempts WHERE delivery_id = $1 ORDER BY 1")
        .bind(delivery)
        .fetch_all(pool)
        .await
        .expect("attempts")
}

/// The outcome each attempt of a delivery recorded, by attempt number (`None` for one whose
/// claim had ended: its outcome came late).
pub async fn attempt_outcomes(pool: &sqlx::PgPool, delivery: uuid::Uuid) -> Vec<(i32, Option<String>)> {
    sqlx::query_as("SELECT attempt_number, outcome::text FROM attempts WHERE delivery_id = $1 ORDER BY 1")
        .bind(delivery)
        .fetch_all(pool)
        .await
        .expect("attempts")
}

/// A 200 answer to attempt `number` of a delivery held until `lease_until` (`held` says where),
/// which succeeds it.
pub fn answered_200_to(
    delivery: uuid::Uuid,
    lease_until: chrono::DateTime<chrono::Utc>,
    number: i32,
    held: hookline::store::deliveries::Held,
) -> hookline::store::deliveries::AttemptRecord {
    hookline::store::deliveries::AttemptRecord {
        delivery,
        lease_until,
        number,
        held,
        attempt: hookline::store::deliveries::Attempt {
            started_at: chrono::Utc::now(),
            duration_ms: 3,
            status_code: Some(200),
            ..Default::default()
        },
        after: hookline::store::deliveries::After::Succeeded,
        last_error: None,
        blocks_key: false,
        hand_over: None,
    }
}

/// The migrations of a version before `version` (what an older binary knows).
pub fn migrations_before(version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            hookline::store::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..hookline::store::MIGRATOR
    }
}

/// SQL for a new UUIDv7 of the time `time` (Postgres 15 has no uuidv7()): history is
/// partitioned by the time in its ids.
pub fn sql_id_at(time: &str) -> String {
    format!(
        "(lpad(to_hex((extract(epoch FROM {time}) * 1000)::bigint), 12, '0') \
         || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid"
    )
}

/// SQL for a new UUIDv7 of the millisecond of the id in `column`: a delivery's id is made in its
/// event's.
pub fn sql_id_of(column: &str) -> String {
    format!(
        "(substr(replace({column}::text, '-', ''), 1, 12) || '7' || substr(replace(gen_random_uuid()::text, '-', ''), 14))::uuid"
    )
}

/// An empty database of its own for one test; returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = require_env("DATABASE_URL");
    let name = format!("hl_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    url_with_database(&admin_url, &name)
}

fn url_with_database(url: &str, database: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("DATABASE_URL has a database path");
    format!("{base}/{database}")
}
