//! Reconciles a WebhookSubscription in three steps: gather the facts (its signing secret,
//! referenced or generated, mirrored into the gateway's namespace; its URL against the egress
//! policy; delivery health rolled up from Postgres), decide the status and the Events on the
//! transitions people must see (a pure function), and report both.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::conditions::{
    EXPRESSION_INVALID, Observed, condition, healthiness, is_false, readiness, target_health,
};
use super::report::Notice;
use super::secrets::{self, SecretProblem};
use super::{Context, Error};
use crate::api::TargetKey;
use crate::api::status::condition::{HEALTHY, SECRET_RESOLVED};
use crate::api::{CircuitState, WebhookSubscription, WebhookSubscriptionStatus};
use crate::catalog::egress::{self, EgressRefusal};
use crate::catalog::expression::{ExpressionProblem, TargetExpressions};
use crate::store::stats::{self, TargetStats};
use crate::verify::standard_webhooks;

/// What a reconcile found out about a subscription.
#[derive(Debug, Clone, Default)]
pub(super) struct SubscriptionFacts {
    pub generation: Option<i64>,
    pub url: String,
    pub paused: bool,
    /// It has `ordering`.
    pub ordered: bool,
    /// The Secret it signs with.
    pub secret_name: String,
    /// The Secret the controller generated for it (no secretRef).
    pub generated: Option<String>,
    pub secret_problem: Option<SecretProblem>,
    pub url_problem: Option<EgressRefusal>,
    /// The first of `filter` and `transform` that does not compile.
    pub expression_problem: Option<ExpressionProblem>,
    /// None when the database could not be read.
    pub stats: Option<TargetStats>,
    pub window: String,
    pub now: jiff::Timestamp,
}

pub async fn apply(sub: Arc<WebhookSubscription>, ctx: &Context) -> Result<Action, Error> {
    let previous = sub.status.clone().unwrap_or_default();
    let facts = gather(&sub, ctx).await?;
    let (status, notices) = decide(&previous, &facts);
    ctx.report(&*sub, &previous, &status, &notices).await?;
    Ok(Action::requeue(ctx.recheck_after(facts.secret_problem.is_some())))
}

async fn gather(sub: &WebhookSubscription, ctx: &Context) -> Result<SubscriptionFacts, Error> {
    let namespace = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let spec = &sub.spec;
    let client = &ctx.client;
    let (reference, generated) = match &spec.target.secret_ref {
        Some(reference) => (reference.clone(), None),
        None => {
            let owner = sub.controller_owner_ref(&()).ok_or(Error::MissingObjectKey)?;
            let reference = secrets::ensure_generated(client, &namespace, &[&name], owner).await?;
            let generated = reference.name.clone();
            (reference, Some(generated))
        }
    };
    let mut secret_problem = match secrets::read(client, &namespace, &reference).await {
        Ok((value, secret)) => {
            secrets::mirror(client, &ctx.options.namespace, &secret).await?;
            standard_webhooks::decode_secrets(&value)
                .err()
                .map(|err| SecretProblem {
                    reason: "SecretInvalid",
                    message: format!("Secret {}: {err}", reference.name),
                })
        }
        Err(problem) => Some(problem),
    };
    if let Some(problem) =
        secrets::mirror_endpoint_secrets(client, &namespace, &ctx.options.namespace, &spec.target).await?
    {
        secret_problem.get_or_insert(problem);
    }
    let key = TargetKey::subscription(&namespace, &name);
    Ok(SubscriptionFacts {
        generation: sub.metadata.generation,
        url: spec.target.url.clone(),
        paused: spec.target.paused,
        ordered: spec.target.ordering.is_some(),
        secret_name: reference.name,
        generated,
        secret_problem,
        expression_problem: TargetExpressions::of(&spec.target).problem().cloned(),
        url_problem: egress::refusal(&spec.target.url, spec.allow_private_networks, &ctx.options.egress)
            .await,
        stats: stats::target_stats(
            &ctx.pool,
            &key,
            ctx.options.stats_window,
            spec.target.ordering.is_some(),
        )
        .await
        .ok(),
        window: ctx.window_label(),
        now: jiff::Timestamp::now(),
    })
}

/// The status and Events that follow from the facts and the previous status.
pub(super) fn decide(
    previous: &WebhookSubscriptionStatus,
    facts: &SubscriptionFacts,
) -> (WebhookSubscriptionStatus, Vec<Notice>) {
    let observed = Observed {
        previous: &previous.conditions,
        generation: facts.generation,
        now: facts.now,
    };
    let url_problem = facts.url_problem.as_ref().map(|refusal| {
        let message = match refusal {
            EgressRefusal::Forbidden(why) => why.clone(),
            EgressRefusal::PrivateNotAllowed(why) => {
                format!("{why}; set allowPrivateNetworks: true to deliver to private or cluster addresses")
            }
        };
        (refusal.reason(), message)
    });
    let spec_problem = facts
        .expression_problem
        .as_ref()
        .map(|problem| (EXPRESSION_INVALID, problem.to_string()))
        .or(url_problem);
    let [ready, secret_condition] = readiness(
        observed,
        facts.secret_problem.as_ref(),
        spec_problem,
        (
            "SecretResolved",
            format!("signing with Secret {}", facts.secret_name),
        ),
        ("Ready", format!("delivering to {}", facts.url)),
    );
    let stats = facts.stats.as_ref();
    let (healthy, healthy_reason, healthy_message) = healthiness(facts.paused, stats);
    let healthy_condition = condition(observed, HEALTHY, healthy, healthy_reason, healthy_message);
    let status = WebhookSubscriptionStatus {
        observed_generation: facts.generation,
        conditions: vec![ready, secret_condition, healthy_condition],
        health: target_health(stats, facts.generated.clone(), &facts.window, facts.ordered),
    };
    let notices = transitions(previous, &status, facts.secret_problem.as_ref(), stats);
    (status, notices)
}

/// The Events people must see: a secret gone missing, the circuit opening and closing, deliveries
/// going dead, the target paused.
fn transitions(
    previous: &WebhookSubscriptionStatus,
    status: &WebhookSubscriptionStatus,
    secret_problem: Option<&SecretProblem>,
    stats: Option<&TargetStats>,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    if let Some(problem) = secret_problem
        && !is_false(&previous.conditions, SECRET_RESOLVED)
    {
        notices.push(Notice::warning("SecretMissing", problem.message.clone()));
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
                notices.push(Notice::warning("CircuitOpened", note));
            }
            CircuitState::Closed if was == CircuitState::Open || was == CircuitState::HalfOpen => {
                notices.push(Notice::normal(
                    "CircuitClosed",
                    "deliveries succeed again; circuit closed",
                ));
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
        notices.push(Notice::warning("DeliveryDead", note));
    }
    if let Some(reason) = stats.and_then(|s| s.paused_reason.as_deref()) {
        let was_paused = previous
            .conditions
            .iter()
            .any(|c| c.type_ == HEALTHY && c.reason == "Paused");
        if !was_paused {
            notices.push(Notice::warning("TargetPaused", reason));
        }
    }
    notices
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::condition::READY;

    fn facts(stats: TargetStats) -> SubscriptionFacts {
        SubscriptionFacts {
            generation: Some(2),
            url: "https://crm.example/hooks".into(),
            secret_name: "crm-signing".into(),
            stats: Some(stats),
            window: "1h".into(),
            now: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            ..SubscriptionFacts::default()
        }
    }

    fn reason<'a>(status: &'a WebhookSubscriptionStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    fn succeeding() -> TargetStats {
        TargetStats {
            succeeded: 20,
            circuit: Some("closed".into()),
            ..TargetStats::default()
        }
    }

    #[test]
    fn a_delivering_subscription_is_ready_and_healthy() {
        let (status, notices) = decide(&WebhookSubscriptionStatus::default(), &facts(succeeding()));
        assert_eq!(reason(&status, READY), ("True", "Ready"));
        assert_eq!(reason(&status, HEALTHY), ("True", "DeliveriesSucceeding"));
        assert!(notices.is_empty());
    }

    #[test]
    fn a_private_url_says_how_to_allow_it() {
        let private = SubscriptionFacts {
            url_problem: Some(EgressRefusal::PrivateNotAllowed(
                "127.0.0.1 is a loopback address".into(),
            )),
            ..facts(succeeding())
        };
        let (status, _) = decide(&WebhookSubscriptionStatus::default(), &private);
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.reason, "PrivateNetworkNotAllowed");
        assert!(
            ready.message.contains("set allowPrivateNetworks: true"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn an_expression_that_does_not_compile_makes_it_not_ready_with_the_compilers_message() {
        let spec: crate::api::WebhookSubscriptionSpec =
            serde_yaml::from_str("{url: 'https://crm.example/', events: ['*'], filter: 'data.amount >'}")
                .unwrap();
        let broken = SubscriptionFacts {
            expression_problem: TargetExpressions::of(&spec.target).problem().cloned(),
            ..facts(succeeding())
        };
        let (status, _) = decide(&WebhookSubscriptionStatus::default(), &broken);
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ExpressionInvalid")
        );
        assert!(
            ready.message.starts_with("filter: ERROR: <input>:1:"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn blocked_ordering_keys_make_it_unhealthy_and_are_counted() {
        let blocked = SubscriptionFacts {
            ordered: true,
            ..facts(TargetStats {
                blocked_keys: 2,
                unordered: 3,
                ..succeeding()
            })
        };
        let (status, _) = decide(&WebhookSubscriptionStatus::default(), &blocked);
        assert_eq!(reason(&status, HEALTHY), ("False", "KeysBlocked"));
        let deliveries = status.health.deliveries.unwrap();
        assert_eq!(
            (deliveries.blocked_keys, deliveries.unordered),
            (Some(2), Some(3))
        );
        // Without ordering, neither is shown.
        let (status, _) = decide(&WebhookSubscriptionStatus::default(), &facts(succeeding()));
        let deliveries = status.health.deliveries.unwrap();
        assert_eq!((deliveries.blocked_keys, deliveries.unordered), (None, None));
    }

    #[test]
    fn the_circuit_opening_and_closing_are_announced_once_each() {
        let healthy = decide(&WebhookSubscriptionStatus::default(), &facts(succeeding())).0;
        let open = TargetStats {
            circuit: Some("open".into()),
            failed_attempts: 5,
            last_failure_reason: Some("HTTP 503".into()),
            ..succeeding()
        };
        let (opened, notices) = decide(&healthy, &facts(open.clone()));
        assert_eq!(reason(&opened, HEALTHY), ("False", "CircuitOpen"));
        assert_eq!(
            notices,
            [Notice::warning(
                "CircuitOpened",
                "circuit opened after consecutive failed deliveries (last: HTTP 503)"
            )]
        );
        assert!(
            decide(&opened, &facts(open)).1.is_empty(),
            "still open: nothing new"
        );
        let (_, notices) = decide(&opened, &facts(succeeding()));
        assert_eq!(
            notices,
            [Notice::normal(
                "CircuitClosed",
                "deliveries succeed again; circuit closed"
            )]
        );
    }

    #[test]
    fn new_dead_deliveries_and_a_runtime_pause_are_announced() {
        let healthy = decide(&WebhookSubscriptionStatus::default(), &facts(succeeding())).0;
        let gone = TargetStats {
            dead: 2,
            paused_reason: Some("https://crm.example/hooks answered 410 Gone".into()),
            ..succeeding()
        };
        let (status, notices) = decide(&healthy, &facts(gone));
        assert_eq!(reason(&status, HEALTHY), ("False", "Paused"));
        let reasons: Vec<&str> = notices.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, ["DeliveryDead", "TargetPaused"]);
    }
}
