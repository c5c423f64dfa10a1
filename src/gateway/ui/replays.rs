//! Replays: send a time window of stored events to one target again, and watch how far each
//! replay has got (whether it came from a WebhookReplay, a file, the API or this page).

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Viewer, page, unavailable};
use crate::gateway::Gateway;
use crate::gateway::replays::{ReplayRequest, start};
use crate::store::replays;

pub(in crate::gateway) async fn replays(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let csrf = viewer.csrf();
    let listed = match replays::list(&gateway.pool, viewer.access.namespaces()).await {
        Ok(listed) => listed,
        Err(err) => return unavailable(err),
    };
    let catalog = gateway.catalog();
    let mut targets: Vec<&crate::api::TargetKey> = catalog
        .targets()
        .map(|t| &t.key)
        .filter(|k| viewer.access.allows(&k.namespace))
        .collect();
    targets.sort();
    let now = chrono::Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);
    let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = html! {
        h2 { "Replay a time window to a target" }
        form method="post" action="/ui/replays" {
            input type="hidden" name="csrf" value=(csrf);
            label { "Target " select name="target" {
                @for key in &targets { option value={ (key.namespace) "|" (key.kind) "|" (key.name) } { (key.namespace) " · " (key.kind) " " (key.name) } }
            } }
            label { " From " input name="from" value=(stamp(hour_ago)) size="22"; }
            label { " to " input name="to" value=(stamp(now)) size="22"; }
            label { " Filter (CEL, optional) " input name="filter" size="40" placeholder="data.amount > 100"; }
            label { " Dry run " input type="checkbox" name="dry_run" value="true"; }
            " " button type="submit" { "Replay" }
        }
        p { small { "Only events the target would receive (its events and filter) are sent; an event keeps its webhook-id per target, so receivers drop what they already have." } }
        table.replays {
            caption { "Replays" }
            thead { tr { th scope="col" { "Namespace" } th scope="col" { "Name" } th scope="col" { "Target" } th scope="col" { "Window" } th scope="col" { "State" } th scope="col" { "Matched" } th scope="col" { "Enqueued" } th scope="col" { "Delivered" } th scope="col" { "Failed" } } }
            tbody {
                @for r in &listed {
                    tr {
                        td { (r.namespace) } td { (r.name) } td { (r.target_kind) " " (r.target) }
                        td { (stamp(r.window_from)) " – " (stamp(r.window_to)) }
                        td { (r.state) @if r.dry_run { " (dry run)" } @if let Some(m) = &r.message { ": " (m) } }
                        td { (r.matched) } td { (r.enqueued) } td { (r.delivered) } td { (r.failed) }
                    }
                }
            }
        }
    };
    page("Replays", body).into_response()
}

#[derive(Deserialize)]
pub(in crate::gateway) struct ReplayForm {
    csrf: String,
    /// `namespace|kind|name`
    target: String,
    from: String,
    to: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    dry_run: Option<String>,
}

pub(in crate::gateway) async fn start_replay(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Form(form): Form<ReplayForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let mut parts = form.target.splitn(3, '|');
    let (Some(namespace), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return (axum::http::StatusCode::BAD_REQUEST, "no target chosen").into_response();
    };
    let target = match (kind, name.split_once('/')) {
        ("handler", Some((source, handler))) => json!({"source": source, "handler": handler}),
        _ => json!({"subscription": name}),
    };
    let mut spec = serde_json::Map::new();
    spec.insert("target".into(), target);
    spec.insert("from".into(), Value::from(form.from.trim()));
    spec.insert("to".into(), Value::from(form.to.trim()));
    if !form.filter.trim().is_empty() {
        spec.insert("filter".into(), Value::from(form.filter.trim()));
    }
    spec.insert("dryRun".into(), Value::from(form.dry_run.is_some()));
    let request = ReplayRequest {
        namespace: namespace.to_owned(),
        name: None,
        spec,
    };
    match start(&gateway, &viewer.access, request).await {
        Ok(_) => Redirect::to("/ui/replays").into_response(),
        Err((status, message)) => (
            status,
            page(
                "Replay refused",
                html! { p role="alert" { (message) } a href="/ui/replays" { "Back" } },
            ),
        )
            .into_response(),
    }
}
