//! Reconciles a WebhookSource: its secrets resolve and have the provider's format, its handlers
//! have signing secrets and allowed URLs, the secrets in use are mirrored to the gateway, and its
//! status says all of that plus what it received.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::conditions::{is_false, readiness, target_health, time};
use super::secrets::{self, FIELD_MANAGER, SecretProblem};
use super::{Context, Error};
use crate::api::status::condition::SECRET_RESOLVED;
use crate::api::{HandlerStatus, WebhookSource, WebhookSourceStatus};
use crate::api::{TargetKey, TargetKind};
use crate::catalog::egress;
use crate::store::stats;
use crate::verify::{SourceVerifier, standard_webhooks};

pub async fn apply(source: Arc<WebhookSource>, ctx: &Context) -> Result<Action, Error> {
    let namespace = source.namespace().unwrap_or_default();
    let name = source.name_any();
    let spec = &source.spec;
    let client = &ctx.client;
    let previous = source.status.clone().unwrap_or_default();
    let mut secret_problem: Option<SecretProblem> = None;
    let mut in_use = Vec::new();

    let mut values = Vec::new();
    for reference in std::iter::once(&spec.secret_ref).chain(&spec.additional_secret_refs) {
        match secrets::read(client, &namespace, reference).await {
            Ok((value, secret)) => {
                values.push(value);
                in_use.push(secret);
            }
            Err(problem) => {
                secret_problem.get_or_insert(problem);
            }
        }
    }
    if secret_problem.is_none() {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        if let Err(err) = SourceVerifier::new(
            spec.provider,
            spec.generic_hmac.as_ref(),
            &values,
            spec.tolerance.get(),
        ) {
            secret_problem = Some(SecretProblem {
                reason: "SecretInvalid",
                message: format!(
                    "Secret {} does not hold a {:?} secret: {err}",
                    spec.secret_ref.name, spec.provider
                ),
            });
        }
    }

    let mut url_problem: Option<String> = None;
    let mut handlers = Vec::new();
    for handler in &spec.handlers {
        let target = &handler.target;
        let generated = match &target.secret_ref {
            Some(reference) => {
                match secrets::read(client, &namespace, reference).await {
                    Ok((value, secret)) => {
                        if let Err(err) = value
                            .split_whitespace()
                            .map(standard_webhooks::decode_secret)
                            .collect::<Result<Vec<_>, _>>()
                        {
                            secret_problem.get_or_insert(SecretProblem {
                                reason: "SecretInvalid",
                                message: format!(
                                    "handler {}: Secret {}: {err}",
                                    handler.name, reference.name
                                ),
                            });
                        }
                        in_use.push(secret);
                    }
                    Err(problem) => {
                        secret_problem.get_or_insert(SecretProblem {
                            reason: problem.reason,
                            message: format!("handler {}: {}", handler.name, problem.message),
                        });
                    }
                }
                None
            }
            None => {
                let owner = source.controller_owner_ref(&()).ok_or(Error::MissingObjectKey)?;
                let generated = secrets::generated_name(&[&name, &handler.name]);
                secrets::ensure_generated(client, &namespace, &generated, owner).await?;
                let reference = crate::api::SecretKeyRef {
                    name: generated.clone(),
                    key: crate::api::GENERATED_SECRET_KEY.to_owned(),
                };
                if let Ok((_, secret)) = secrets::read(client, &namespace, &reference).await {
                    in_use.push(secret);
                }
                Some(generated)
            }
        };
        // Handlers may deliver to private and cluster addresses.
        if let Some(refusal) = egress::refusal(&target.url, true).await {
            url_problem.get_or_insert(format!("handler {}: {}", handler.name, refusal.why()));
        }
        let key = TargetKey::handler(&namespace, &name, &handler.name);
        let target_stats = stats::target_stats(&ctx.pool, &key, ctx.options.stats_window)
            .await
            .ok();
        handlers.push(HandlerStatus {
            name: handler.name.clone(),
            health: target_health(target_stats.as_ref(), generated, &ctx.window_label()),
        });
    }

    for secret in &in_use {
        secrets::mirror(client, &ctx.options.namespace, secret).await?;
    }

    let generation = source.metadata.generation;
    let url = format!(
        "{}/ingest/{namespace}/{name}",
        ctx.options.external_base_url.trim_end_matches('/')
    );
    let [ready, secret_condition] = readiness(
        &previous.conditions,
        generation,
        secret_problem.as_ref(),
        url_problem.map(|why| ("UrlNotAllowed", why)),
        ("SecretsResolved", "every referenced secret resolves".to_owned()),
        ("Receiving", format!("receiving at {url}")),
    );
    let source_stats = stats::source_stats(&ctx.pool, &namespace, &name).await.ok();
    let status = WebhookSourceStatus {
        observed_generation: generation,
        conditions: vec![ready, secret_condition],
        url: Some(url),
        received: source_stats
            .as_ref()
            .map(|s| s.received as u64)
            .or(previous.received),
        rejected: source_stats
            .as_ref()
            .map(|s| s.rejected as u64)
            .or(previous.rejected),
        last_event_time: source_stats
            .as_ref()
            .and_then(|s| time(s.last_event_time))
            .or(previous.last_event_time.clone()),
        handlers,
    };

    if let Some(problem) = &secret_problem
        && !is_false(&previous.conditions, SECRET_RESOLVED)
    {
        ctx.publish(&*source, EventType::Warning, "SecretMissing", &problem.message)
            .await;
    }
    if status != previous {
        let api: Api<WebhookSource> = Api::namespaced(client.clone(), &namespace);
        let patch = json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSource", "status": status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(ctx.options.status_interval))
}

/// The source is being deleted: its ingest stops as soon as the gateway sees it gone; deliveries
/// still waiting for its handlers are cancelled (history is kept).
pub async fn cleanup(source: Arc<WebhookSource>, ctx: &Context) -> Result<Action, Error> {
    let namespace = source.namespace().unwrap_or_default();
    let name = source.name_any();
    let handlers: Vec<String> = source
        .spec
        .handlers
        .iter()
        .map(|h| crate::api::handler_name(&name, &h.name))
        .collect();
    let cancelled = stats::cancel_pending(&ctx.pool, &namespace, TargetKind::Handler, &handlers)
        .await
        .map_err(Error::Database)?;
    tracing::info!(%namespace, source = %name, cancelled, "source deleted; pending handler deliveries cancelled");
    Ok(Action::await_change())
}

impl Context {
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
