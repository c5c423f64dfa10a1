//! The webhook log: the list of events, one event with its deliveries and attempts, and Retry.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Viewer, page, unavailable};
use crate::api::TargetKey;
use crate::catalog::expression::Variables;
use crate::gateway::admin::{payload, redact_headers, signed_headers_of};
use crate::gateway::{Gateway, charts, holds};
use crate::store::history::{self, EventFilter};

fn status_counts(summary: &history::EventSummary) -> Markup {
    html! {
        span.succeeded { (summary.succeeded) " ok" } " · "
        span.pending { (summary.pending) " pending" } " · "
        span.dead { (summary.dead) " dead" }
    }
}

pub(in crate::gateway) async fn events(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Query(filter): Query<EventFilter>,
    Query(view): Query<LiveView>,
) -> Response {
    let (items, next) = match history::list_events(&gateway.pool, &filter, viewer.access.namespaces()).await {
        Ok(page) => page,
        Err(err) => return unavailable(err),
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let next_link = next.map(|cursor| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, v) in [
            ("namespace", &filter.namespace),
            ("source", &filter.source),
            ("type", &filter.event_type),
            ("status", &filter.status),
        ] {
            if let Some(v) = v {
                query.append_pair(key, v);
            }
        }
        query.append_pair("cursor", &cursor.to_string());
        format!("/ui/events?{}", query.finish())
    });
    let body = html! {
        @if view.live.is_some() { meta http-equiv="refresh" content="5"; }
        form method="get" action="/ui/events" {
            label { "Namespace " input name="namespace" value=(value(&filter.namespace)); }
            label { "Source " input name="source" value=(value(&filter.source)); }
            label { "Type " input name="type" value=(value(&filter.event_type)); }
            label { "Delivery status "
                select name="status" {
                    option value="" { "any" }
                    @for s in ["pending", "failed", "succeeded", "dead", "cancelled", "filtered_error"] {
                        option value=(s) selected[filter.status.as_deref() == Some(s)] { (s) }
                    }
                }
            }
            label { input type="checkbox" name="live" value="1" checked[view.live.is_some()]; " Live refresh" }
            button type="submit" { "Filter" }
        }
        table.events {
            caption { "Events, newest first" }
            thead { tr { th scope="col" { "Received" } th scope="col" { "Namespace" } th scope="col" { "Source" } th scope="col" { "Type" } th scope="col" { "Event id" } th scope="col" { "Deliveries" } } }
            tbody {
                @for event in &items {
                    tr {
                        td { (event.received_at.format("%Y-%m-%d %H:%M:%S UTC")) }
                        td { (event.namespace) }
                        td { @if event.source.is_empty() { em { "published" } } @else { (event.source) } }
                        td { (event.event_type) }
                        td { a href={ "/ui/events/" (event.id) } { (event.external_id) } }
                        td { (status_counts(event)) }
                    }
                }
            }
        }
        @if items.is_empty() { p { "No events match." } }
        @if let Some(link) = next_link { a href=(link) rel="next" { "Older events →" } }
    };
    page("Webhook log", body).into_response()
}

#[derive(Deserialize)]
pub(in crate::gateway) struct LiveView {
    live: Option<String>,
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub(in crate::gateway) async fn event(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Path(id): Path<Uuid>,
) -> Response {
    let (event, deliveries, attempts) = match history::event(&gateway.pool, id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page("Not found", html! { p { "No such event." } }),
            )
                .into_response();
        }
        Err(err) => return unavailable(err),
    };
    if !viewer.access.allows(&event.namespace) {
        return (
            StatusCode::NOT_FOUND,
            page("Not found", html! { p { "No such event." } }),
        )
            .into_response();
    }
    let csrf = viewer.csrf();
    let held = holds::of_deliveries(&gateway, &event.namespace, &deliveries).await;
    let catalog = gateway.catalog();
    // Parsed once, and only when a delivery's target has a transform to show.
    let variables = std::cell::OnceCell::new();
    let transformed = |delivery: &history::DeliveryDetail| -> Option<Result<String, String>> {
        let key = TargetKey {
            namespace: event.namespace.clone(),
            kind: delivery.target_kind.parse().ok()?,
            name: delivery.target.clone(),
        };
        let transform = catalog.target(&key)?.expressions.transform.as_ref()?;
        Some(
            transform
                .render(variables.get_or_init(|| {
                    Variables::new(&event.event_type, &event.source, &event.headers, &event.body)
                }))
                .map(|(body, _)| pretty(&payload(&body)))
                .map_err(|why| why.to_string()),
        )
    };
    let headers_shown = redact_headers(
        &event.headers,
        &signed_headers_of(&gateway, &event.namespace, &event.source),
    );
    let body = html! {
        dl {
            dt { "Type" } dd { (event.event_type) }
            dt { "Event id" } dd { (event.external_id) }
            dt { "Source" } dd { @if event.source.is_empty() { "published" } @else { (event.namespace) "/" (event.source) } }
            dt { "Received" } dd { (event.received_at.to_rfc3339()) }
        }
        h2 { "Payload" }
        pre.payload { (pretty(&payload(&event.body))) }
        h2 { "Headers" }
        table.headers {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
            tbody {
                @if let Some(map) = headers_shown.as_object() {
                    @for (name, value) in map { tr { td { (name) } td { (value.as_str().unwrap_or_default()) } } }
                }
            }
        }
        h2 { "Deliveries" }
        @for delivery in &deliveries {
            section.delivery aria-label={ "Delivery to " (delivery.target) } {
                h3 { (delivery.target_kind) " " (delivery.target) " — " span class=(delivery.status) { (delivery.status) } }
                @if let Some(hold) = held.get(&delivery.id) { p.held { strong { "Held: " } (hold.to_string()) } }
                @let tried: Vec<&history::AttemptDetail> = attempts.iter().filter(|a| a.delivery_id == delivery.id).collect();
                (charts::timeline(event.received_at, &tried, delivery.next_attempt_at))
                @if let Some(error) = &delivery.last_error { p { "Last error: " (error) } }
                @if let Some(key) = &delivery.ordering_key {
                    p { "Ordering key: " code { (key) }
                        @if delivery.blocks_key { strong { " — blocks its key: later deliveries with this key wait until this one is retried or skipped" } } }
                }
                @if delivery.blocks_key {
                    form.inline method="post" action={ "/ui/deliveries/" (delivery.id) "/skip" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="event" value=(event.id);
                        button type="submit" { "Skip (let the key go on)" }
                    }
                }
                @if let Some(sent) = transformed(delivery) {
                    details.transformed open {
                        summary { "Body sent: the payload above through this target's transform, as configured now" }
                        @match sent {
                            Ok(body) => pre.payload { (body) },
                            Err(why) => p { "The transform fails for this event: " (why) },
                        }
                    }
                }
                form.inline method="post" action={ "/ui/deliveries/" (delivery.id) "/redeliver" } {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="event" value=(event.id);
                    button.retry type="submit" { "Retry" }
                }
                table.attempts {
                    caption { "Attempts" }
                    thead { tr { th scope="col" { "#" } th scope="col" { "Started" } th scope="col" { "Duration" } th scope="col" { "Status" } th scope="col" { "Error" } th scope="col" { "Response" } } }
                    tbody {
                        @for attempt in attempts.iter().filter(|a| a.delivery_id == delivery.id) {
                            tr {
                                td { (attempt.attempt_number) }
                                td { (attempt.started_at.format("%H:%M:%S%.3f")) }
                                td { (attempt.duration_ms) " ms" }
                                td { @if let Some(code) = attempt.status_code { (code) } @else { "—" } }
                                td { (attempt.error_class.clone().unwrap_or_default()) " " (attempt.error.clone().unwrap_or_default()) }
                                td { code { (attempt.response_body.clone().unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&format!("Event {}", event.event_type), body).into_response()
}

#[derive(Deserialize)]
pub(in crate::gateway) struct DeliveryForm {
    csrf: String,
    event: Uuid,
}

/// `POST /ui/deliveries/{id}/{action}`: `redeliver` (send it again) or `skip` (a dead delivery
/// stops blocking its ordering key); back to the event's page.
pub(in crate::gateway) async fn delivery_action(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Path((id, action)): Path<(Uuid, String)>,
    Form(form): Form<DeliveryForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let allowed = viewer.access.namespaces();
    let done = match action.as_str() {
        "redeliver" => history::redeliver(&gateway.pool, id, allowed).await,
        "skip" => history::skip_blocked(&gateway.pool, id, allowed).await,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if let Err(err) = done {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not {action} the delivery: {err}"),
        )
            .into_response();
    }
    Redirect::to(&format!("/ui/events/{}", form.event)).into_response()
}
