//! What a reconcile hands back to the cluster: Kubernetes Events for what changed, and status by
//! server-side apply, the same way for both kinds.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::secrets::FIELD_MANAGER;
use super::{Context, Error};

/// A Kubernetes Event a reconcile decided to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    pub fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason,
            note: note.into(),
        }
    }

    pub fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason,
            note: note.into(),
        }
    }
}

impl Context {
    /// Publishes the notices, then applies the status when it differs from the previous one.
    pub(super) async fn report<K, S>(
        &self,
        object: &K,
        previous: &S,
        status: &S,
        notices: &[Notice],
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        S: Serialize + PartialEq,
    {
        for notice in notices {
            let kind = if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.publish(object, kind, notice.reason, &notice.note).await;
        }
        if status == previous {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
        api.patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_: kind,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!("cannot publish event {reason}: {err}");
        }
    }
}
