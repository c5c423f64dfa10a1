//! The admin API (`/admin/v1`), for the delivery console and for people debugging a delivery:
//! the event log with filters and cursor pagination, one event with its payload, deliveries
//! and every attempt (signature headers redacted), and redelivery. Bearer-token auth.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Gateway;
use crate::store::history::{self, EventFilter};

const REDACTED: &str = "[redacted]";

fn refuse(status: StatusCode, reason: &str, message: &str) -> Response {
    (status, Json(json!({"error": reason, "message": message}))).into_response()
}

/// The refusal for a request without the admin token, if it lacks it.
fn unauthorized(gateway: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = gateway.admin_token.as_deref() else {
        let message = "the admin API is disabled: no admin token is configured (HOOKLINE_ADMIN_TOKEN)";
        return Some(refuse(StatusCode::UNAUTHORIZED, "unauthorized", message));
    };
    let valid = super::bearer_matches(headers, expected);
    let message = "a valid Authorization: Bearer token is required";
    (!valid).then(|| refuse(StatusCode::UNAUTHORIZED, "unauthorized", message))
}

/// Headers that carry signatures or credentials are shown by name only.
pub fn redact_headers(headers: &Value) -> Value {
    let Some(map) = headers.as_object() else {
        return headers.clone();
    };
    let sensitive = |name: &str| {
        let name = name.to_ascii_lowercase();
        [
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
                (
                    name.clone(),
                    if sensitive(name) {
                        Value::from(REDACTED)
                    } else {
                        value.clone()
                    },
                )
            })
            .collect(),
    )
}

/// The payload as JSON when it is JSON, else as text.
pub fn payload(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(body).into_owned()))
}

fn storage_error(err: sqlx::Error) -> Response {
    tracing::error!("admin API: {err}");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database could not be read; retry",
    )
}

pub(super) async fn list_events(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(filter): Query<EventFilter>,
) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    match history::list_events(&gateway.pool, &filter).await {
        Ok((items, next)) => Json(json!({"items": items, "nextCursor": next})).into_response(),
        Err(err) => storage_error(err),
    }
}

pub(super) async fn get_event(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    match history::event(&gateway.pool, id).await {
        Ok(Some((event, deliveries, attempts))) => {
            let deliveries: Vec<Value> = deliveries
                .iter()
                .map(|d| {
                    let mut value = json!(d);
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
            body["headers"] = redact_headers(&event.headers);
            body["payload"] = payload(&event.body);
            body["deliveries"] = Value::from(deliveries);
            Json(body).into_response()
        }
        Ok(None) => refuse(StatusCode::NOT_FOUND, "not_found", "no such event"),
        Err(err) => storage_error(err),
    }
}

pub(super) async fn redeliver(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(denied) = unauthorized(&gateway, &headers) {
        return denied;
    }
    match history::redeliver(&gateway.pool, id).await {
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

pub(super) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("admin-openapi.json"),
    )
}
