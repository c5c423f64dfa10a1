//! Reconciles a WebhookSource in three steps: gather the facts (its secrets resolve and have the
//! provider's format, its handlers have signing secrets and allowed URLs, what it received), decide
//! the status and Events from them (a pure function), and report both. The secrets in use are
//! mirrored to the gateway on the way.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::conditions::{
    EXPRESSION_INVALID, Observed, condition, healthiness, is_false, readiness, target_health, time,
};
use super::report::Notice;
use super::secrets::{self, SecretProblem};
use super::{Context, Error};
use crate::api::status::condition::{HEALTHY, SECRET_RESOLVED};
use crate::api::{HandlerStatus, TargetKey, TargetKind, WebhookSource, WebhookSourceStatus};
use crate::catalog::expression::TargetExpressions;
use crate::catalog::{Senders, egress};
use crate::store::stats::{self, SourceStats, TargetStats};
use crate::verify::{SourceVerifier, standard_webhooks};

/// What a reconcile found out about a source.
#[derive(Debug, Clone, Default)]
pub(super) struct SourceFacts {
    pub generation: Option<i64>,
    /// Where providers send it.
    pub url: String,
    /// The first problem with a secret it or a handler references that stops it working.
    pub secret_problem: Option<SecretProblem>,
    /// A verification secret that does not resolve while others do: it keeps receiving.
    pub rotation_problem: Option<SecretProblem>,
    /// allowedSourceRanges entries that do not parse (every request is refused).
    pub senders_problem: Option<String>,
    /// The first handler URL the egress policy forbids.
    pub url_problem: Option<String>,
    /// The first handler expression that does not compile (`handler NAME: field: message`).
    pub expression_problem: Option<String>,
    pub handlers: Vec<HandlerFacts>,
    /// None when the database could not be read.
    pub stats: Option<SourceStats>,
    /// The window delivery statistics cover, e.g. `1h`.
    pub window: String,
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone, Default)]
pub(super) struct HandlerFacts {
    pub name: String,
    /// The Secret the controller generated for it (no secretRef).
    pub generated: Option<String>,
    /// It has `ordering`.
    pub ordered: bool,
    /// `paused: true` in its spec.
    pub paused: bool,
    pub stats: Option<TargetStats>,
}

pub async fn apply(source: Arc<WebhookSource>, ctx: &Context) -> Result<Action, Error> {
    let previous = source.status.clone().unwrap_or_default();
    let facts = gather(&source, ctx).await?;
    let (status, notices) = decide(&previous, &facts);
    ctx.report(&*source, &previous, &status, &notices).await?;
    let waiting_for_a_secret = facts.secret_problem.is_some() || facts.rotation_problem.is_some();
    Ok(Action::requeue(ctx.recheck_after(waiting_for_a_secret)))
}

/// Reads the source's Secrets (generating the ones handlers lack), checks them and the handler
/// URLs, reads its statistics, and mirrors the Secrets in use into the gateway's namespace.
async fn gather(source: &WebhookSource, ctx: &Context) -> Result<SourceFacts, Error> {
    let namespace = source.namespace().unwrap_or_default();
    let name = source.name_any();
    let spec = &source.spec;
    let client = &ctx.client;
    let mut secret_problem: Option<SecretProblem> = None;
    let mut in_use = Vec::new();

    let mut values = Vec::new();
    let mut unresolved = Vec::new();
    for reference in spec.verification_secrets() {
        match secrets::read(client, &namespace, reference).await {
            Ok((value, secret)) => {
                values.push(value);
                in_use.push(secret);
            }
            Err(problem) => unresolved.push(problem),
        }
    }
    // Requests are verified with the secrets that resolve; only none resolving stops the source.
    let mut rotation_problem = None;
    if values.is_empty() {
        secret_problem = unresolved.into_iter().next();
    } else {
        rotation_problem = unresolved.into_iter().next();
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
    let mut expression_problem: Option<String> = None;
    let mut handlers = Vec::new();
    for handler in &spec.handlers {
        let target = &handler.target;
        let generated = match &target.secret_ref {
            Some(reference) => {
                match secrets::read(client, &namespace, reference).await {
                    Ok((value, secret)) => {
                        if let Err(err) = standard_webhooks::decode_secrets(&value) {
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
                let reference =
                    secrets::ensure_generated(client, &namespace, &[&name, &handler.name], owner).await?;
                if let Ok((_, secret)) = secrets::read(client, &namespace, &reference).await {
                    in_use.push(secret);
                }
                Some(reference.name)
            }
        };
        if let Some(problem) =
            secrets::mirror_endpoint_secrets(client, &namespace, &ctx.options.namespace, target).await?
        {
            secret_problem.get_or_insert(SecretProblem {
                message: format!("handler {}: {}", handler.name, problem.message),
                ..problem
            });
        }
        if let Some(problem) = TargetExpressions::of(target).problem() {
            expression_problem.get_or_insert(format!("handler {}: {problem}", handler.name));
        }
        // Handlers may deliver to private and cluster addresses.
        if let Some(refusal) = egress::refusal(&target.url, true, &ctx.options.egress).await {
            url_problem.get_or_insert(format!("handler {}: {}", handler.name, refusal.why()));
        }
        let key = TargetKey::handler(&namespace, &name, &handler.name);
        handlers.push(HandlerFacts {
            name: handler.name.clone(),
            generated,
            ordered: target.ordering.is_some(),
            paused: target.paused,
            stats: stats::target_stats(
                &ctx.pool,
                &key,
                ctx.options.stats_window,
                target.ordering.is_some(),
            )
            .await
            .ok(),
        });
    }

    for secret in &in_use {
        secrets::mirror(client, &ctx.options.namespace, secret).await?;
    }
    Ok(SourceFacts {
        generation: source.metadata.generation,
        url: format!(
            "{}/ingest/{namespace}/{name}",
            ctx.options.external_base_url.trim_end_matches('/')
        ),
        secret_problem,
        rotation_problem,
        senders_problem: Senders::from_entries(&spec.allowed_source_ranges).problem(),
        url_problem,
        expression_problem,
        handlers,
        stats: stats::source_stats(&ctx.pool, &namespace, &name).await.ok(),
        window: ctx.window_label(),
        now: jiff::Timestamp::now(),
    })
}

/// The status and Events that follow from the facts. Counts keep their previous values while the
/// database cannot be read.
pub(super) fn decide(
    previous: &WebhookSourceStatus,
    facts: &SourceFacts,
) -> (WebhookSourceStatus, Vec<Notice>) {
    let observed = Observed {
        previous: &previous.conditions,
        generation: facts.generation,
        now: facts.now,
    };
    let other_problem = facts
        .senders_problem
        .clone()
        .map(|why| ("SourceRangesInvalid", why))
        .or_else(|| {
            facts
                .expression_problem
                .clone()
                .map(|why| (EXPRESSION_INVALID, why))
        })
        .or_else(|| facts.url_problem.clone().map(|why| ("UrlNotAllowed", why)));
    let [ready, secret_condition] = readiness(
        observed,
        facts.secret_problem.as_ref(),
        other_problem,
        ("SecretsResolved", "every referenced secret resolves".to_owned()),
        ("Receiving", format!("receiving at {}", facts.url)),
    );
    let secret_condition = match (&facts.secret_problem, &facts.rotation_problem) {
        (None, Some(problem)) => condition(
            observed,
            SECRET_RESOLVED,
            false,
            problem.reason,
            format!(
                "{}; requests are verified with the other secrets",
                problem.message
            ),
        ),
        _ => secret_condition,
    };
    let stats = facts.stats.as_ref();
    let (healthy, healthy_reason, healthy_message) = handlers_health(&facts.handlers);
    let healthy_condition = condition(observed, HEALTHY, healthy, healthy_reason, healthy_message);
    let status = WebhookSourceStatus {
        observed_generation: facts.generation,
        conditions: vec![ready, secret_condition, healthy_condition],
        url: Some(facts.url.clone()),
        received: stats.map(|s| s.received as u64).or(previous.received),
        rejected: stats.map(|s| s.rejected as u64).or(previous.rejected),
        last_event_time: stats
            .and_then(|s| time(s.last_event_time))
            .or(previous.last_event_time.clone()),
        handlers: facts
            .handlers
            .iter()
            .map(|h| HandlerStatus {
                name: h.name.clone(),
                health: target_health(h.stats.as_ref(), h.generated.clone(), &facts.window, h.ordered),
            })
            .collect(),
    };
    let mut notices = Vec::new();
    if let Some(problem) = facts.secret_problem.as_ref().or(facts.rotation_problem.as_ref())
        && !is_false(&previous.conditions, SECRET_RESOLVED)
    {
        notices.push(Notice::warning("SecretMissing", problem.message.clone()));
    }
    (status, notices)
}

/// Healthy while every handler is, as a subscription's Healthy says; otherwise the first
/// handler that is not, by name.
fn handlers_health(handlers: &[HandlerFacts]) -> (bool, &'static str, String) {
    let mut delivered = 0;
    for handler in handlers {
        let (healthy, reason, message) = healthiness(handler.paused, handler.stats.as_ref());
        if !healthy {
            return (false, reason, format!("handler {}: {message}", handler.name));
        }
        delivered += handler.stats.as_ref().map_or(0, |s| s.succeeded);
    }
    match handlers {
        [] => (true, "NoHandlers", "no handlers: events are stored only".into()),
        _ => (
            true,
            "DeliveriesSucceeding",
            format!("{delivered} delivered to handlers in the window"),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::condition::READY;

    fn facts() -> SourceFacts {
        SourceFacts {
            generation: Some(3),
            url: "https://hooks.example/ingest/billing/stripe".into(),
            handlers: vec![HandlerFacts {
                name: "api".into(),
                generated: Some("stripe-api-signing".into()),
                ordered: false,
                paused: false,
                stats: Some(TargetStats {
                    succeeded: 9,
                    dead: 1,
                    ..TargetStats::default()
                }),
            }],
            stats: Some(SourceStats {
                received: 10,
                rejected: 2,
                last_event_time: None,
            }),
            window: "1h".into(),
            now: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            ..SourceFacts::default()
        }
    }

    fn condition<'a>(
        status: &'a WebhookSourceStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn a_healthy_source_is_ready_with_its_counts() {
        let (status, notices) = decide(&WebhookSourceStatus::default(), &facts());
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, READY).reason, "Receiving");
        assert_eq!(condition(&status, READY).observed_generation, Some(3));
        assert_eq!((status.received, status.rejected), (Some(10), Some(2)));
        let handler = &status.handlers[0].health;
        assert_eq!(
            handler.generated_secret_name.as_deref(),
            Some("stripe-api-signing")
        );
        assert_eq!(
            handler.deliveries.as_ref().unwrap().success_rate.as_deref(),
            Some("90.0%")
        );
        assert!(notices.is_empty());
    }

    #[test]
    fn a_missing_secret_is_not_ready_and_warned_about_once() {
        let broken = SourceFacts {
            secret_problem: Some(SecretProblem {
                reason: "SecretNotFound",
                message: "Secret stripe-webhook not found in namespace billing".into(),
            }),
            ..facts()
        };
        let (status, notices) = decide(&WebhookSourceStatus::default(), &broken);
        assert_eq!(condition(&status, READY).status, "False");
        assert_eq!(condition(&status, READY).reason, "SecretNotFound");
        assert_eq!(
            notices,
            [Notice::warning(
                "SecretMissing",
                "Secret stripe-webhook not found in namespace billing"
            )]
        );
        // Still missing on the next reconcile: no second Event, and the transition time stays.
        let later = SourceFacts {
            now: jiff::Timestamp::from_second(1_800_000_600).unwrap(),
            ..broken
        };
        let (again, notices) = decide(&status, &later);
        assert!(notices.is_empty());
        assert_eq!(
            condition(&again, READY).last_transition_time,
            condition(&status, READY).last_transition_time
        );
    }

    #[test]
    fn a_missing_rotation_secret_is_reported_while_the_source_keeps_receiving() {
        let rotating = SourceFacts {
            rotation_problem: Some(SecretProblem {
                reason: "SecretNotFound",
                message: "Secret stripe-next not found in namespace billing".into(),
            }),
            ..facts()
        };
        let (status, notices) = decide(&WebhookSourceStatus::default(), &rotating);
        assert_eq!(condition(&status, READY).status, "True");
        let secret = condition(&status, SECRET_RESOLVED);
        assert_eq!(
            (secret.status.as_str(), secret.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(
            secret
                .message
                .ends_with("requests are verified with the other secrets")
        );
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn unreadable_source_ranges_make_it_not_ready() {
        let invalid = SourceFacts {
            senders_problem: Some("allowedSourceRanges holds entries …".into()),
            ..facts()
        };
        let (status, _) = decide(&WebhookSourceStatus::default(), &invalid);
        assert_eq!(condition(&status, READY).reason, "SourceRangesInvalid");
    }

    #[test]
    fn a_forbidden_handler_url_is_not_ready_and_counts_survive_a_database_outage() {
        let previous = decide(&WebhookSourceStatus::default(), &facts()).0;
        let forbidden = SourceFacts {
            url_problem: Some("handler api: 169.254.169.254 is a link-local address".into()),
            stats: None,
            ..facts()
        };
        let (status, _) = decide(&previous, &forbidden);
        assert_eq!(condition(&status, READY).reason, "UrlNotAllowed");
        assert_eq!(condition(&status, SECRET_RESOLVED).status, "True");
        assert_eq!(status.received, Some(10), "kept from the previous status");
    }

    #[test]
    fn a_handler_with_blocked_keys_makes_the_source_unhealthy_by_name() {
        let (status, _) = decide(&WebhookSourceStatus::default(), &facts());
        assert_eq!(condition(&status, HEALTHY).status, "True");
        assert_eq!(condition(&status, HEALTHY).reason, "DeliveriesSucceeding");
        let mut blocked = facts();
        blocked.handlers[0].ordered = true;
        if let Some(stats) = blocked.handlers[0].stats.as_mut() {
            stats.blocked_keys = 2;
        }
        let (status, _) = decide(&WebhookSourceStatus::default(), &blocked);
        let healthy = condition(&status, HEALTHY);
        assert_eq!(
            (healthy.status.as_str(), healthy.reason.as_str()),
            ("False", "KeysBlocked")
        );
        assert!(
            healthy.message.starts_with("handler api: 2 ordering keys"),
            "{}",
            healthy.message
        );
        assert_eq!(
            status.handlers[0]
                .health
                .deliveries
                .as_ref()
                .and_then(|d| d.blocked_keys),
            Some(2)
        );
    }
}
