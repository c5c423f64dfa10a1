//! Replays from the admin API (and the console): `POST /admin/v1/replays` starts one with the
//! fields of a WebhookReplay's spec, checked by the same rules; `GET` lists them with their
//! progress; `DELETE /admin/v1/replays/{id}` stops one.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Gateway;
use super::admin::Admin;
use super::refusal::refuse;
use crate::api::WebhookReplay;
use crate::api::validate::validate;
use crate::store::replays::{self, NewReplay};

/// A replay asked for by a person: `namespace`, an optional `name`, and the fields of a
/// WebhookReplay's spec.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ReplayRequest {
    pub namespace: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub spec: serde_json::Map<String, Value>,
}

/// Checks and records a replay; its id and name, or why not (status and message).
pub(super) async fn start(
    gateway: &Gateway,
    access: &super::Access,
    request: ReplayRequest,
) -> Result<(Uuid, String), (StatusCode, String)> {
    if !access.allows(&request.namespace) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no namespace {}", request.namespace),
        ));
    }
    let id = Uuid::now_v7();
    let name = request
        .name
        .unwrap_or_else(|| format!("replay-{}", &id.simple().to_string()[20..]));
    let resource = json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookReplay",
        "metadata": {"name": name, "namespace": request.namespace},
        "spec": request.spec,
    });
    let invalid = |why: String| (StatusCode::UNPROCESSABLE_ENTITY, why);
    validate("WebhookReplay", &resource).map_err(|problems| invalid(problems.join("; ")))?;
    let replay: WebhookReplay = serde_json::from_value(resource).map_err(|err| invalid(err.to_string()))?;
    let new = NewReplay::from_resource(&replay, format!("api:{id}")).map_err(invalid)?;
    if gateway.catalog().target(&new.target).is_none() {
        return Err(invalid(format!(
            "{} {} is not configured in namespace {}",
            new.target.kind, new.target.name, new.namespace
        )));
    }
    let id = replays::upsert(&gateway.pool, &new).await.map_err(|err| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record the replay: {err}"),
        )
    })?;
    Ok((id, name))
}

pub(super) async fn create(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Json(request): Json<ReplayRequest>,
) -> Response {
    match start(&gateway, &access, request).await {
        Ok((id, name)) => (StatusCode::CREATED, Json(json!({"id": id, "name": name}))).into_response(),
        Err((status, message)) => (status, Json(json!({"error": message}))).into_response(),
    }
}

pub(super) async fn list(State(gateway): State<Arc<Gateway>>, Admin(access): Admin) -> Response {
    match replays::list(&gateway.pool, access.namespaces()).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(err) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("cannot read replays: {err}"),
        ),
    }
}

pub(super) async fn stop(
    State(gateway): State<Arc<Gateway>>,
    Admin(access): Admin,
    Path(id): Path<Uuid>,
) -> Response {
    match replays::remove_by_id(&gateway.pool, id, access.namespaces()).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such replay started through the API (stop a WebhookReplay by deleting it, or its file)",
        ),
        Err(err) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("cannot stop the replay: {err}"),
        ),
    }
}
