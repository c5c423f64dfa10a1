//! The targets: delivery health over the last hour (numbers and pictures), what holds a target
//! back, and the actions a person fixing an endpoint needs.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{Viewer, page, unavailable};
use crate::gateway::admin::{Act, TargetAction, TargetHealth, act_on_target, target_health};
use crate::gateway::{Gateway, charts};
use crate::store::activity;

/// Per-target delivery status, with the actions a person fixing an endpoint needs.
pub(in crate::gateway) async fn targets(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let csrf = viewer.csrf();
    let targets = match target_health(&gateway, None, &viewer.access).await {
        Ok(targets) => targets,
        Err(err) => return unavailable(err),
    };
    let now = chrono::Utc::now();
    let since = charts::first_minute(now);
    let keys: Vec<&crate::api::TargetKey> = targets.iter().map(|t| &t.key).collect();
    // The pictures are extra: without them the page still says everything in numbers.
    let minutes = activity::target_minutes(&gateway.pool, &keys, since)
        .await
        .unwrap_or_default();
    let circuits = activity::circuit_history(&gateway.pool, &keys, since)
        .await
        .unwrap_or_default();
    let action = |name: &str, label: &str, key: &crate::api::TargetKey| {
        html! {
            form.inline method="post" action={ "/ui/targets/" (name) } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="namespace" value=(key.namespace);
                input type="hidden" name="kind" value=(key.kind);
                input type="hidden" name="target" value=(key.name);
                button type="submit" class=(name) { (label) }
            }
        }
    };
    let body = html! {
        table.targets {
            caption { "Delivery targets, last hour" }
            thead { tr {
                th scope="col" { "Namespace" } th scope="col" { "Target" } th scope="col" { "Last hour" br; small { "deliveries/min · p95 · circuit" } } th scope="col" { "Success rate" }
                th scope="col" { "Circuit" } th scope="col" { "Pending" } th scope="col" { "Dead" }
                th scope="col" { "Held" } th scope="col" { "Last failure" } th scope="col" { "Actions" }
            } }
            tbody {
                @for TargetHealth { key, stats, held } in &targets {
                    @let finished = stats.succeeded + stats.dead;
                    tr {
                        td { (key.namespace) }
                        td { (key.kind) " " (key.name) }
                        td.activity {
                            @let none = Vec::new();
                            @let target_minutes = minutes.get(key).unwrap_or(&none);
                            (charts::deliveries(target_minutes, now)) br;
                            (charts::latency(target_minutes, now)) br;
                            (charts::circuit(circuits.get(key).map_or(&[][..], Vec::as_slice), now))
                        }
                        td { @if finished > 0 { (format!("{:.1}%", stats.succeeded as f64 * 100.0 / finished as f64)) } @else { "—" } }
                        td { (stats.circuit.clone().unwrap_or_else(|| "closed".into())) }
                        td { (stats.pending) }
                        td { (stats.dead) }
                        td.held { @if let Some(hold) = held { strong { (hold.reason()) } ": " (hold.to_string()) } }
                        td { (stats.last_failure_reason.clone().unwrap_or_default()) }
                        td {
                            (action("redeliver-dead", "Redeliver all dead", key))
                            (action("test", "Send test event", key))
                            @if stats.paused_reason.is_some() { (action("resume", "Resume", key)) } @else { (action("pause", "Pause", key)) }
                        }
                    }
                }
            }
        }
    };
    page("Targets", body).into_response()
}

#[derive(Deserialize)]
pub(in crate::gateway) struct TargetForm {
    csrf: String,
    namespace: String,
    kind: String,
    target: String,
}

pub(in crate::gateway) async fn target_action(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Path(action): Path<String>,
    Form(form): Form<TargetForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let Some(act) = Act::named(&action) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let target = TargetAction {
        namespace: form.namespace,
        kind: form.kind,
        target: form.target,
        since: None,
    };
    if !viewer.access.allows(&target.namespace) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match act_on_target(&gateway, &target, act).await {
        Ok(_) => Redirect::to("/ui/targets").into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}
