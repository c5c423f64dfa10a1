//! `POST /v1/namespaces/{namespace}/events`: internal services publish events to the namespace's
//! subscriptions. Bearer-token auth; `Idempotency-Key` replays the first answer for the same key
//! and body for 24 hours; the event and its deliveries are written in one transaction and
//! answered only after it commits.

use crate::telemetry::throttle::Throttle;
use crate::telemetry::traces::TraceContext;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use uuid::Uuid;

use super::Gateway;
use super::fan_out::{self, Arriving};
use super::refusal::{Refusal, refuse};
use super::sending;
use crate::store::events::{Idempotency, IdempotentAnswer, NewEvent, Published, Stored};

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

#[derive(Deserialize)]
struct PublishRequest {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    id: Option<String>,
}

/// Whether the request may publish into `namespace`; the refusal says why not.
fn authorize(gateway: &Gateway, headers: &HeaderMap, namespace: &str) -> Result<(), Refusal> {
    if !gateway.publish_tokens.configured() {
        let message = "publishing is disabled: no publish token is configured (HOOKLINE_PUBLISH_TOKEN)";
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", message));
    }
    match gateway.publish_tokens.access(super::bearer(headers)) {
        Some(access) if access.allows(namespace) => Ok(()),
        Some(_) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token may not publish into namespace {namespace}"),
        )),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid Authorization: Bearer token is required",
        )),
    }
}

fn answer_for(event_id: Uuid, external_id: &str, stored: &Stored) -> IdempotentAnswer {
    match stored {
        Stored::New { deliveries, .. } => IdempotentAnswer {
            status: StatusCode::ACCEPTED.as_u16(),
            body: json!({"id": event_id, "eventId": external_id, "deliveries": deliveries}),
        },
        Stored::Duplicate => IdempotentAnswer {
            status: StatusCode::OK.as_u16(),
            body: json!({"eventId": external_id, "duplicate": true}),
        },
    }
}

fn respond(answer: IdempotentAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    (status, Json(answer.body)).into_response()
}

pub(super) async fn publish(
    State(gateway): State<Arc<Gateway>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = crate::trace_span!(
        "publish",
        otel.name = %format_args!("publish {namespace}"),
        otel.kind = "server",
        hookline.namespace = %namespace,
    );
    let trace = TraceContext::from_headers(&headers);
    trace.adopt(&span);
    // Where its deliveries belong: the publish span, or the caller's trace when not exporting.
    let trace = TraceContext::of(&span, &trace);
    publish_traced(gateway, namespace, headers, body, trace)
        .instrument(span)
        .await
}

async fn publish_traced(
    gateway: Arc<Gateway>,
    namespace: String,
    headers: HeaderMap,
    body: Bytes,
    trace: TraceContext,
) -> Response {
    if let Err(refusal) = authorize(&gateway, &headers, &namespace) {
        return refusal.into_response();
    }
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not a publish request: {err}"),
            );
        }
    };
    // Postgres text cannot hold NUL: refused here, or the event could never be stored.
    if request.event_type.is_empty() || request.event_type.len() > 256 || request.event_type.contains('\0') {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_type",
            "type must be 1 to 256 characters, without NUL",
        );
    }
    if request
        .id
        .as_deref()
        .is_some_and(|id| id.is_empty() || id.contains('\0'))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "id must not be empty or hold NUL",
        );
    }
    let idempotency_key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= 255 => Some(key.to_owned()),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible characters",
            );
        }
    };

    let event_id = Uuid::now_v7();
    let external_id = request.id.clone().unwrap_or_else(|| event_id.to_string());
    // The Standard Webhooks envelope is what subscribers receive.
    let envelope = json!({
        "type": request.event_type,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": request.data,
    });
    let catalog = gateway.catalog();
    let mut headers = json!({"content-type": "application/json"});
    for (name, value) in trace.headers() {
        headers[name] = value.into();
    }
    let envelope: Bytes = envelope.to_string().into();
    let mut deliveries = fan_out::deliveries(
        &catalog,
        &gateway.metrics,
        &Arriving {
            id: event_id,
            namespace: &namespace,
            source: None,
            event_type: &request.event_type,
            headers: &headers,
            body: &envelope,
            about: None,
        },
    );
    let send_now = sending::reserve(&gateway.dispatcher, &namespace, &mut deliveries);
    let delivery_count = deliveries.len() as u64;
    let event = NewEvent {
        id: event_id,
        namespace: namespace.clone(),
        source: String::new(),
        provider: None,
        external_id: external_id.clone(),
        replay_digest: None,
        event_type: request.event_type.clone(),
        headers,
        body: envelope,
        deliveries,
    };
    let send_now = send_now.of(&event);
    let request_hash = sha2::Sha256::digest(&body);
    let answer = |stored: &Stored| answer_for(event_id, &external_id, stored);
    let idempotency = idempotency_key.as_deref().map(|key| Idempotency {
        key,
        request_hash: request_hash.as_slice(),
        answer_if_new: answer(&Stored::New {
            deliveries: delivery_count,
            claimed: Vec::new(),
        }),
        answer_if_duplicate: answer(&Stored::Duplicate),
    });
    // Without a key the event shares commits with others; with one, the key and the event
    // are written in one transaction of their own.
    let stored = match &idempotency {
        None => gateway
            .events
            .submit(event)
            .instrument(crate::trace_span!("store"))
            .await
            .map(Published::Stored),
        Some(idempotency) => gateway
            .events
            .store_published(&gateway.pool, &event, idempotency, IDEMPOTENCY_TTL)
            .await
            .map_err(Arc::new),
    };
    match stored {
        Ok(Published::Stored(stored)) => {
            if let Stored::New { deliveries, claimed } = &stored {
                // Debug, as for inbound events: the delivery log and the metrics have each one.
                tracing::debug!(namespace = %namespace, event_type = %request.event_type, deliveries, "event published");
                send_now.send(&gateway.dispatcher, claimed);
            }
            let mut response = respond(answer(&stored));
            if stored == Stored::Duplicate {
                response
                    .headers_mut()
                    .insert(super::ingest::DUPLICATE_HEADER, HeaderValue::from_static("true"));
            }
            response
        }
        Ok(Published::Replayed(first)) => {
            let mut response = respond(first);
            response
                .headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            response
        }
        Ok(Published::KeyReused) => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different body in the last 24 hours",
        ),
        Err(err) => {
            static STORE_FAILED: Throttle = Throttle::new(Duration::from_secs(1));
            if let Some(left_out) = STORE_FAILED.admit() {
                tracing::error!(namespace = %namespace, left_out, "cannot store published event: {err}");
            }
            Refusal::storage_unavailable("the event could not be stored; retry").into_response()
        }
    }
}
