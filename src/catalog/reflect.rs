//! The catalog of `hookline gateway` in Kubernetes: it comes from reflectors on WebhookSources and
//! WebhookSubscriptions (in every namespace, or in the watched ones) and on the Secrets the
//! controller mirrors into the gateway's own namespace. Any change rebuilds the catalog within a
//! moment; no restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use super::{Catalog, CatalogCell, GeneratedSecrets, Secrets};
use crate::api::{WebhookSource, WebhookSubscription};

/// Label on Secrets the controller mirrors into the gateway's namespace.
pub const MIRROR_LABEL: &str = "hookline.dev/mirror";
/// Annotations naming the Secret and the key a mirror copies (one key per mirror: only what a
/// resource references leaves its namespace).
pub const MIRROR_NAMESPACE_ANNOTATION: &str = "hookline.dev/source-namespace";
pub const MIRROR_NAME_ANNOTATION: &str = "hookline.dev/source-name";
pub const MIRROR_KEY_ANNOTATION: &str = "hookline.dev/source-key";

/// Collects the mirrored keys under the namespace and name of the Secrets they copy.
pub fn mirrored_secrets(mirrors: &[Arc<Secret>]) -> Secrets {
    let mut secrets = Secrets::default();
    for mirror in mirrors {
        let annotations = mirror.metadata.annotations.clone().unwrap_or_default();
        let (Some(namespace), Some(name)) = (
            annotations.get(MIRROR_NAMESPACE_ANNOTATION),
            annotations.get(MIRROR_NAME_ANNOTATION),
        ) else {
            continue;
        };
        let data: BTreeMap<String, Vec<u8>> = mirror
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        secrets.insert(namespace, name, data);
    }
    secrets
}

fn reflect<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => changed.notify_one(),
                Err(err) => tracing::warn!("watch error (retrying): {err}"),
            }
        }
    });
    reader
}

/// Keeps the catalog in step with the cluster. Returns once the first complete catalog is in
/// place; the watches keep running in the background.
/// The APIs of a namespaced kind to watch: every namespace when `namespaces` is empty, else
/// one per namespace (so a role bound in those namespaces only is enough).
pub fn watched<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        return vec![Api::all(client.clone())];
    }
    namespaces
        .iter()
        .map(|namespace| Api::namespaced(client.clone(), namespace))
        .collect()
}

/// Follows the cluster: sources and subscriptions in `watch_namespaces` (all when empty), the
/// mirrors in `namespace`.
pub async fn follow_cluster(
    client: Client,
    catalog: Arc<CatalogCell>,
    namespace: &str,
    watch_namespaces: &[String],
) -> Result<(), reflector::store::WriterDropped> {
    let changed = Arc::new(Notify::new());
    let sources: Vec<Store<WebhookSource>> = watched(&client, watch_namespaces)
        .into_iter()
        .map(|api| reflect(api, watcher::Config::default(), changed.clone()))
        .collect();
    let subscriptions: Vec<Store<WebhookSubscription>> = watched(&client, watch_namespaces)
        .into_iter()
        .map(|api| reflect(api, watcher::Config::default(), changed.clone()))
        .collect();
    let mirrors = reflect(
        Api::<Secret>::namespaced(client, namespace),
        watcher::Config::default().labels(&format!("{MIRROR_LABEL}=true")),
        changed.clone(),
    );
    for store in &sources {
        store.wait_until_ready().await?;
    }
    for store in &subscriptions {
        store.wait_until_ready().await?;
    }
    mirrors.wait_until_ready().await?;
    let rebuild = move || {
        let sources: Vec<WebhookSource> = sources
            .iter()
            .flat_map(|store| store.state())
            .map(|s| (*s).clone())
            .collect();
        let subscriptions: Vec<WebhookSubscription> = subscriptions
            .iter()
            .flat_map(|store| store.state())
            .map(|s| (*s).clone())
            .collect();
        let secrets = mirrored_secrets(&mirrors.state());
        Catalog::build(&sources, &subscriptions, &secrets, GeneratedSecrets::FromStatus)
    };
    catalog.set(rebuild());
    tracing::info!("configuration loaded from the cluster");
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            // Let a burst of changes settle into one rebuild.
            tokio::time::sleep(Duration::from_millis(100)).await;
            catalog.set(rebuild());
        }
    });
    Ok(())
}
