//! The admin API (`/admin/v1`), for the delivery console and for people debugging a delivery:
//! the event log with filters and cursor pagination, one event with its payload, deliveries
//! and every attempt (signature headers redacted), and redelivery. Bearer-token auth.

use crate::api::notice::{Happened, Recovery};
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::refusal::{Refusal, refuse};
use super::{Access, Gateway, holds};
use crate::api::TargetKey;
use crate::catalog::hold::Hold;
use crate::store::history::{self, EventFilter};

const REDACTED: &str = "[redacted]";

/// An authenticated admin caller and what their token grants; a request without a valid admin
/// token is answered 401 before the handler runs.
pub(super) struct Admin(pub(super) Access);

impl FromRequestParts<Arc<Gateway>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, gateway: &Arc<Gateway>) -> Result<Self, Response> {
        if !gateway.admin_configured() {
            let message = "the admin API is disabled: no admin token is configured (HOOKLINE_ADMIN_TOKEN)";
            return Err(refuse(StatusCode::UNAUTHORIZED, "unauthorized", message));
        }
        let message = "a valid Authorization: Bearer token is required";
        gateway
            .admin_access(super::bearer(&parts.headers))
            .map(Admin)
            .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "unauthorized", message))
    }
}

/// Headers that carry signatures or credentials are shown by name only: the ones the source's
/// scheme signs with (`signed`, from its configuration), and any whose name says it holds a
/// credential.
pub fn redact_headers(headers: &Value, signed: &[String]) -> Value {
    let Some(map) = headers.as_object() else {
        return headers.clone();
    };
    let sensitive = |name: &str| {
        let name = name.to_ascii_lowercase();
        signed.contains(&name)
            || [
                "signature",
                "authorization",
                "token",
                "secret",
                "cookie",
                "api-key",
            ]
            .iter()
            .any(|word| name.contains(word))
    };
    Value::Object(
        map.iter()
            .map(|(name, value)| {
                let shown = if sensitive(name) {
                    Value::from(REDACTED)
                } else {
                    value.clone()
                };
                (name.clone(), shown)
            })
            .collect(),
    )
}

/// The signature headers of the source an event came from (none for published events or a
/// source no longer configured: keyword redaction still applies).
pub(super) fn signed_headers_of(gateway: &Gateway, namespace: &str, source: &str) -> Vec<String> {
    gateway
        .catalog()
        .source(namespace, source)
        .map(|s| s.signature_headers.clone())
        .unwrap_or_default()
}

/// The payload as JSON when it is JSON, else as text.
pub fn payload(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(body).into_owned()))
}

fn storage_error(err: sqlx::Error) -> Response {
    tracing::error!("admin API: {err}");
    Refusal::storage_unavailable("the database could not be read; retry").into_response()
}

pub(super) async fn list_events(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Query(filter): Query<EventFilter>,
) -> Response {
    match history::list_events(&gateway.pool, &filter, access.namespaces()).await {
        Ok((items, next)) => Json(json!({"items": items, "nextCursor": next})).into_response(),
        Err(err) => storage_error(err),
    }
}

pub(super) async fn get_event(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Path(id): Path<Uuid>,
) -> Response {
    match history::event(&gateway.pool, id).await {
        Ok(Some((event, deliveries, attempts))) if access.allows(&event.namespace) => {
            let held = holds::of_deliveries(&gateway, &event.namespace, &deliveries).await;
            let deliveries: Vec<Value> = deliveries
                .iter()
                .map(|d| {
                    let mut value = json!(d);
                    value["held"] = held_json(held.get(&d.id));
                    value["attempts"] = json!(
                        attempts
                            .iter()
                            .filter(|a| a.delivery_id == d.id)
                            .collect::<Vec<_>>()
                    );
                    value
                })
                .collect();
            let mut body = json!(event);
            let signed = signed_headers_of(&gateway, &event.namespace, &event.source);
            body["headers"] = redact_headers(&event.headers, &signed);
            body["payload"] = payload(&event.body);
            body["deliveries"] = Value::from(deliveries);
            Json(body).into_response()
        }
        Ok(_) => refuse(StatusCode::NOT_FOUND, "not_found", "no such event"),
        Err(err) => storage_error(err),
    }
}

pub(super) async fn redeliver(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Path(id): Path<Uuid>,
) -> Response {
    match history::redeliver(&gateway.pool, id, access.namespaces()).await {
        Ok(true) => (
            StatusCode::ACCEPTED,
            Json(json!({"delivery": id, "status": "pending"})),
        )
            .into_response(),
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such delivery, or it is being sent right now",
        ),
        Err(err) => storage_error(err),
    }
}

/// `POST /admin/v1/deliveries/{id}/skip`: a dead delivery that blocks its ordering key stops
/// blocking it.
pub(super) async fn skip(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Path(id): Path<Uuid>,
) -> Response {
    match history::skip_blocked(&gateway.pool, id, access.namespaces()).await {
        Ok(true) => Json(json!({"delivery": id, "skipped": true})).into_response(),
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            "not_blocking",
            "no such delivery, or it does not block an ordering key (only dead deliveries of targets with ordering.onDead: block do)",
        ),
        Err(err) => storage_error(err),
    }
}

pub(super) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("admin-openapi.json"),
    )
}

/// Names one delivery target: `kind` is `subscription` or `handler` (then `target` is
/// `source/handler`).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TargetAction {
    pub(super) namespace: String,
    pub(super) kind: String,
    pub(super) target: String,
    /// redeliver-dead: only deliveries that died at or after this time.
    pub(super) since: Option<chrono::DateTime<chrono::Utc>>,
}

impl TargetAction {
    /// The target named, if `kind` is a kind of target.
    fn key(&self) -> Option<TargetKey> {
        Some(TargetKey {
            namespace: self.namespace.clone(),
            kind: self.kind.parse().ok()?,
            name: self.target.clone(),
        })
    }
}

/// What the console and the API can do to a target.
pub(super) enum Act {
    RedeliverDead,
    Pause,
    Resume,
    SendTest,
}

impl Act {
    /// From the URL's action name.
    pub(super) fn named(name: &str) -> Option<Self> {
        Some(match name {
            "redeliver-dead" => Self::RedeliverDead,
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "test" => Self::SendTest,
            _ => return None,
        })
    }
}

/// Carries out `act` on a configured target; the JSON answer says what happened.
pub(super) async fn act_on_target(
    gateway: &Gateway,
    action: &TargetAction,
    act: Act,
) -> Result<Value, (StatusCode, String)> {
    let catalog = gateway.catalog();
    let Some((key, target)) = action
        .key()
        .and_then(|key| Some((key.clone(), catalog.target(&key)?)))
    else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no {} {} in namespace {}",
                action.kind, action.target, action.namespace
            ),
        ));
    };
    fn unavailable(err: impl std::fmt::Display) -> (StatusCode, String) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database could not be written: {err}"),
        )
    }
    Ok(match act {
        Act::RedeliverDead => {
            let count = history::redeliver_dead(&gateway.pool, &key, action.since)
                .await
                .map_err(unavailable)?;
            json!({"redelivered": count})
        }
        Act::Pause => {
            let reason = "paused from the console";
            crate::store::deliveries::pause_target(&gateway.pool, &key, reason)
                .await
                .map_err(unavailable)?;
            gateway.notices.tell(
                &key,
                Happened::Paused {
                    reason: reason.to_owned(),
                },
            );
            json!({"paused": true})
        }
        Act::Resume => {
            crate::store::deliveries::resume_target(&gateway.pool, &key)
                .await
                .map_err(unavailable)?;
            gateway.notices.tell(
                &key,
                Happened::Recovered {
                    from: Recovery::Resumed,
                },
            );
            json!({"paused": false})
        }
        Act::SendTest => {
            use crate::store::events::{NewDelivery, NewEvent};
            let id = Uuid::now_v7();
            let body = json!({
                "type": "hookline.test",
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "data": {"message": "A test event from the Hookline console", "target": action.target},
            });
            let event = NewEvent {
                id,
                namespace: action.namespace.clone(),
                source: String::new(),
                provider: Some("test"),
                external_id: id.to_string(),
                replay_digest: None,
                event_type: "hookline.test".to_owned(),
                headers: json!({"content-type": "application/json"}),
                body: body.to_string().into(),
                deliveries: vec![NewDelivery {
                    id: crate::store::partitions::delivery_id(id),
                    target_kind: target.key.kind,
                    target: target.key.name.clone(),
                    filter_error: None,
                    ordering_key: None,
                    claim_for: None,
                }],
            };
            gateway.events.submit(event).await.map_err(unavailable)?;
            json!({"event": id})
        }
    })
}

/// `POST /admin/v1/targets/{action}` with the target as JSON; action is `redeliver-dead`,
/// `pause`, `resume` or `test`.
pub(super) async fn target_action(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Path(action): Path<String>,
    Json(target): Json<TargetAction>,
) -> Response {
    let Some(act) = Act::named(&action) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "actions: redeliver-dead, pause, resume, test",
        );
    };
    if !access.allows(&target.namespace) {
        return refuse(StatusCode::NOT_FOUND, "target_action_failed", "no such target");
    }
    match act_on_target(&gateway, &target, act).await {
        Ok(answer) => (StatusCode::ACCEPTED, Json(answer)).into_response(),
        Err((status, message)) => refuse(status, "target_action_failed", message),
    }
}

/// Targets with their delivery health over the last hour, sorted by namespace, kind and name.
/// A target's delivery health over the last hour, and what holds it back, if anything.
pub(super) struct TargetHealth {
    pub key: TargetKey,
    pub stats: crate::store::stats::TargetStats,
    pub held: Option<Hold>,
}

pub(super) async fn target_health(
    gateway: &Gateway,
    namespace: Option<&str>,
    access: &Access,
) -> Result<Vec<TargetHealth>, sqlx::Error> {
    let catalog = gateway.catalog();
    let mut targets: Vec<&crate::catalog::Target> = catalog
        .targets()
        .filter(|t| {
            namespace.is_none_or(|wanted| wanted == t.key.namespace) && access.allows(&t.key.namespace)
        })
        .collect();
    targets.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        let stats = crate::store::stats::target_stats(
            &gateway.pool,
            &target.key,
            std::time::Duration::from_secs(3600),
            target.spec.ordering.is_some(),
        )
        .await?;
        let held = holds::of(gateway, target, &stats).await;
        out.push(TargetHealth {
            key: target.key.clone(),
            stats,
            held,
        });
    }
    Ok(out)
}

/// A hold as the admin API shows it: `{"reason": "private_network_not_allowed", "message": …}`.
pub(super) fn held_json(held: Option<&Hold>) -> Value {
    held.map_or(
        Value::Null,
        |hold| json!({"reason": hold.reason(), "message": hold.to_string()}),
    )
}

#[derive(serde::Deserialize)]
pub(super) struct NamespaceQuery {
    namespace: Option<String>,
}

pub(super) async fn list_targets(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Query(query): Query<NamespaceQuery>,
) -> Response {
    match target_health(&gateway, query.namespace.as_deref(), &access).await {
        Ok(targets) => {
            let items: Vec<Value> = targets
                .iter()
                .map(|TargetHealth { key, stats, held }| {
                    json!({
                        "namespace": key.namespace, "kind": key.kind.as_str(), "target": key.name,
                        "circuit": stats.circuit.clone().unwrap_or_else(|| "closed".into()),
                        "paused": stats.paused_reason, "succeeded": stats.succeeded, "failedAttempts": stats.failed_attempts,
                        "dead": stats.dead, "pending": stats.pending, "p95LatencyMs": stats.p95_latency_ms,
                        "lastFailureReason": stats.last_failure_reason, "lastFailureTime": stats.last_failure_time,
                        "held": held_json(held.as_ref()), "blockedKeys": stats.blocked_keys,
                    })
                })
                .collect();
            Json(json!({"items": items})).into_response()
        }
        Err(err) => storage_error(err),
    }
}
