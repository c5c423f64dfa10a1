//! Reconciles a WebhookSubscription: its signing secret (referenced or generated), its URL
//! against the egress policy, the mirror of its secret in the gateway's namespace, and a status
//! with delivery health rolled up from Postgres — with Events on the transitions people must see.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::conditions::{condition, is_false, readiness, target_health};
use super::secrets::{self, FIELD_MANAGER, SecretProblem};
use super::{Context, Error};
use crate::api::TargetKey;
use crate::api::status::condition::{HEALTHY, SECRET_RESOLVED};
use crate::api::{CircuitState, SecretKeyRef, WebhookSubscription, WebhookSubscriptionStatus};
use crate::catalog::egress::{self, EgressRefusal};
use crate::store::stats::{self, TargetStats};
use crate::verify::standard_webhooks;

pub async fn apply(sub: Arc<WebhookSubscription>, ctx: &Context) -> Result<Action, Error> {
    let namespace = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let spec = &sub.spec;
    let client = &ctx.client;
    let previous = sub.status.clone().unwrap_or_default();
    let generation = sub.metadata.generation;

    let (reference, generated) = match &spec.target.secret_ref {
        Some(reference) => (reference.clone(), None),
        None => {
            let owner = sub.controller_owner_ref(&()).ok_or(Error::MissingObjectKey)?;
            let generated = secrets::generated_name(&[&name]);
            secrets::ensure_generated(client, &namespace, &generated, owner).await?;
            let reference = SecretKeyRef {
                name: generated.clone(),
                key: crate::api::GENERATED_SECRET_KEY.to_owned(),
            };
            (reference, Some(generated))
        }
    };
    let secret_problem = match secrets::read(client, &namespace, &reference).await {
        Ok((value, secret)) => {
            secrets::mirror(client, &ctx.options.namespace, &secret).await?;
            value
                .split_whitespace()
                .map(standard_webhooks::decode_secret)
                .collect::<Result<Vec<_>, _>>()
                .err()
                .map(|err| SecretProblem {
                    reason: "SecretInvalid",
                    message: format!("Secret {}: {err}", reference.name),
                })
        }
        Err(problem) => Some(problem),
    };

    let url_problem = egress::refusal(&spec.target.url, spec.allow_private_networks)
        .await
        .map(|refusal| {
            let message = match &refusal {
                EgressRefusal::Forbidden(why) => why.clone(),
                EgressRefusal::PrivateNotAllowed(why) => format!(
                    "{why}; set allowPrivateNetworks: true to deliver to private or cluster addresses"
                ),
            };
            (refusal.reason(), message)
        });

    let key = TargetKey::subscription(&namespace, &name);
    let stats = stats::target_stats(&ctx.pool, &key, ctx.options.stats_window)
        .await
        .ok();
    let health = target_health(stats.as_ref(), generated, &ctx.window_label());

    let [ready, secret_condition] = readiness(
        &previous.conditions,
        generation,
        secret_problem.as_ref(),
        url_problem,
        (
            "SecretResolved",
            format!("signing with Secret {}", reference.name),
        ),
        ("Ready", format!("delivering to {}", spec.target.url)),
    );
    let (healthy, healthy_reason, healthy_message) = healthiness(spec.target.paused, stats.as_ref());
    let healthy_condition = condition(
        &previous.conditions,
        HEALTHY,
        healthy,
        healthy_reason,
        healthy_message.clone(),
        generation,
    );

    let status = WebhookSubscriptionStatus {
        observed_generation: generation,
        conditions: vec![ready, secret_condition, healthy_condition],
        health,
    };
    publish_transitions(
        ctx,
        &sub,
        &previous,
        &status,
        secret_problem.as_ref(),
        stats.as_ref(),
    )
    .await;
    if status != previous {
        let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &namespace);
        let patch =
            json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "status": status});
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(ctx.options.status_interval))
}

/// Healthy, with a reason: paused (by spec or by a 410), circuit open, or failing deliveries.
fn healthiness(paused: bool, stats: Option<&TargetStats>) -> (bool, &'static str, String) {
    if paused {
        return (
            false,
            "Paused",
            "spec.paused is true; events queue until it is unpaused".into(),
        );
    }
    let Some(stats) = stats else {
        return (
            true,
            "NoData",
            "delivery statistics are not available (database unreachable)".into(),
        );
    };
    if let Some(reason) = &stats.paused_reason {
        return (false, "Paused", format!("paused: {reason}"));
    }
    if stats.circuit.as_deref() == Some("open") {
        let last = stats.last_failure_reason.as_deref().unwrap_or("failures");
        return (
            false,
            "CircuitOpen",
            format!("circuit open after consecutive failures (last: {last}); deliveries wait"),
        );
    }
    let failing_more_recently = match (stats.last_failure_time, stats.last_success_time) {
        (Some(failure), Some(success)) => failure > success,
        (Some(_), None) => true,
        _ => false,
    };
    if stats.dead > 0 && stats.dead >= stats.succeeded
        || (failing_more_recently && stats.failed_attempts >= 3)
    {
        let last = stats.last_failure_reason.as_deref().unwrap_or("errors");
        return (
            false,
            "DeliveriesFailing",
            format!(
                "{} failed attempts, {} dead in the window; last failure: {last}",
                stats.failed_attempts, stats.dead
            ),
        );
    }
    (
        true,
        "DeliveriesSucceeding",
        format!("{} delivered in the window", stats.succeeded),
    )
}

async fn publish_transitions(
    ctx: &Context,
    sub: &WebhookSubscription,
    previous: &WebhookSubscriptionStatus,
    status: &WebhookSubscriptionStatus,
    secret_problem: Option<&SecretProblem>,
    stats: Option<&TargetStats>,
) {
    if let Some(problem) = secret_problem
        && !is_false(&previous.conditions, SECRET_RESOLVED)
    {
        ctx.publish(sub, EventType::Warning, "SecretMissing", &problem.message)
            .await;
    }
    let was = previous.health.circuit.unwrap_or_default();
    let now = status.health.circuit.unwrap_or_default();
    if was != now {
        match now {
            CircuitState::Open => {
                let last = stats
                    .and_then(|s| s.last_failure_reason.as_deref())
                    .unwrap_or("failures");
                let note = format!("circuit opened after consecutive failed deliveries (last: {last})");
                ctx.publish(sub, EventType::Warning, "CircuitOpened", &note).await;
            }
            CircuitState::Closed if was == CircuitState::Open || was == CircuitState::HalfOpen => {
                ctx.publish(
                    sub,
                    EventType::Normal,
                    "CircuitClosed",
                    "deliveries succeed again; circuit closed",
                )
                .await;
            }
            _ => {}
        }
    }
    let dead_before = previous.health.deliveries.as_ref().map_or(0, |d| d.dead);
    let dead_now = status.health.deliveries.as_ref().map_or(0, |d| d.dead);
    if dead_now > dead_before {
        let note = format!(
            "{} delivery(ies) exhausted their attempts and are dead (kept, replayable)",
            dead_now - dead_before
        );
        ctx.publish(sub, EventType::Warning, "DeliveryDead", &note).await;
    }
    if let Some(reason) = stats.and_then(|s| s.paused_reason.as_deref()) {
        let was_paused = previous
            .conditions
            .iter()
            .any(|c| c.type_ == HEALTHY && c.reason == "Paused");
        if !was_paused {
            ctx.publish(sub, EventType::Warning, "TargetPaused", reason).await;
        }
    }
}

/// The subscription is being deleted: deliveries still waiting for it are cancelled; history
/// stays. Its generated Secret is owned by it and goes with it.
pub async fn cleanup(sub: Arc<WebhookSubscription>, ctx: &Context) -> Result<Action, Error> {
    let namespace = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let cancelled = stats::cancel_pending(
        &ctx.pool,
        &namespace,
        crate::api::TargetKind::Subscription,
        std::slice::from_ref(&name),
    )
    .await
    .map_err(Error::Database)?;
    tracing::info!(%namespace, subscription = %name, cancelled, "subscription deleted; pending deliveries cancelled");
    Ok(Action::await_change())
}
