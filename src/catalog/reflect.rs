//! The catalog of `hookline gateway` in Kubernetes: it comes from reflectors on WebhookSources and
//! WebhookSubscriptions (all namespaces) and on the Secrets the controller mirrors into the
//! gateway's own namespace. Any change rebuilds the catalog within a moment; no restart.

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
/// Annotations naming the Secret a mirror copies.
pub const MIRROR_NAMESPACE_ANNOTATION: &str = "hookline.dev/source-namespace";
pub const MIRROR_NAME_ANNOTATION: &str = "hookline.dev/source-name";

/// Collects the mirrored Secrets under the namespace and name of the Secrets they copy.
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
pub async fn follow_cluster(
    client: Client,
    catalog: Arc<CatalogCell>,
    namespace: &str,
) -> Result<(), reflector::store::WriterDropped> {
    let changed = Arc::new(Notify::new());
    let sources = reflect(
        Api::<WebhookSource>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let subscriptions = reflect(
        Api::<WebhookSubscription>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let mirrors = reflect(
        Api::<Secret>::namespaced(client, namespace),
        watcher::Config::default().labels(&format!("{MIRROR_LABEL}=true")),
        changed.clone(),
    );
    sources.wait_until_ready().await?;
    subscriptions.wait_until_ready().await?;
    mirrors.wait_until_ready().await?;
    let rebuild = move || {
        let sources: Vec<WebhookSource> = sources.state().iter().map(|s| (**s).clone()).collect();
        let subscriptions: Vec<WebhookSubscription> =
            subscriptions.state().iter().map(|s| (**s).clone()).collect();
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
