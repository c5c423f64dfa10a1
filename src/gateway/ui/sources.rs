//! The sources: where each receives, whether it can verify, and "Send a sample".

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::{Viewer, page};
use crate::gateway::{Gateway, ingest};

/// The sources, where they receive, whether they can verify, and a button per source that sends
/// it one of its provider's sample events (signed with its own secret) through ingest.
pub(in crate::gateway) async fn sources(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let csrf = viewer.csrf();
    let catalog = gateway.catalog();
    let mut sources: Vec<_> = catalog
        .sources()
        .filter(|s| viewer.access.allows(&s.namespace))
        .collect();
    sources.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let body = html! {
        table.sources {
            caption { "Webhook sources" }
            thead { tr {
                th scope="col" { "Namespace" } th scope="col" { "Source" } th scope="col" { "Provider" }
                th scope="col" { "Receives at" } th scope="col" { "State" } th scope="col" { "Try it" }
            } }
            tbody {
                @for source in &sources {
                    tr {
                        td { (source.namespace) }
                        td { (source.name) }
                        td { (ingest::provider_label(source)) }
                        td { code { "POST /ingest/" (source.namespace) "/" (source.name) } }
                        td { @match &source.verifier {
                            Ok(_) => span.succeeded { "receiving" },
                            Err(problem) => span.dead { "answers 503: " (problem.to_string()) },
                        } }
                        td {
                            @if source.verifier.is_ok() {
                                form.inline method="post" action="/ui/sources/send" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="namespace" value=(source.namespace);
                                    input type="hidden" name="source" value=(source.name);
                                    label { "Sample " select name="type" {
                                        @for sample in crate::samples::of(source.provider) {
                                            option value=(sample.event_type) { (sample.event_type) }
                                        }
                                    } }
                                    button.send-sample type="submit" { "Send a sample" }
                                }
                            }
                        }
                    }
                }
            }
        }
        p { "A sample is signed with the source's own secret, as its provider would sign it, and goes through ingest like any request: verified, stored, delivered to the handlers and subscriptions that take it." }
    };
    page("Sources", body).into_response()
}

#[derive(Deserialize)]
pub(in crate::gateway) struct SampleForm {
    csrf: String,
    namespace: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
}

/// `POST /ui/sources/send`: signs a sample for the source and hands it to ingest, then shows
/// the stored event (or what ingest answered).
pub(in crate::gateway) async fn send_sample(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    viewer: Viewer,
    Form(form): Form<SampleForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    let catalog = gateway.catalog();
    let source = catalog
        .source(&form.namespace, &form.source)
        .filter(|_| viewer.access.allows(&form.namespace));
    let Some(source) = source else {
        return (
            StatusCode::NOT_FOUND,
            page("Not found", html! { p { "No such source." } }),
        )
            .into_response();
    };
    let signed = match &source.verifier {
        Ok(verifier) => crate::samples::signed(source.provider, verifier, Some(&form.event_type), |_| true),
        Err(problem) => {
            let body = page(
                "Sources",
                html! { p role="alert" { "The source cannot verify: " (problem.to_string()) } },
            );
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    };
    let signed = match signed {
        Ok(signed) => signed,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                page("Sources", html! { p role="alert" { (err.to_string()) } }),
            )
                .into_response();
        }
    };
    let mut request = axum::http::Request::post(format!("/ingest/{}/{}", form.namespace, form.source));
    for (name, value) in &signed.headers {
        request = request.header(name, value);
    }
    let Ok(request) = request.body(axum::body::Body::from(signed.body)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let answer = ingest::receive(
        State(gateway.clone()),
        Path((form.namespace.clone(), form.source.clone())),
        // As if the browser had posted it: a source that only admits some senders judges it.
        ConnectInfo(peer),
        request,
    )
    .await;
    let status = answer.status();
    let bytes = axum::body::to_bytes(answer.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let answered: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    match answered["id"].as_str() {
        Some(id) if status.is_success() => Redirect::to(&format!("/ui/events/{id}")).into_response(),
        _ => {
            let body = page(
                "Sources",
                html! { p role="alert" { "Ingest answered " (status.as_u16()) ": " (String::from_utf8_lossy(&bytes)) } },
            );
            (StatusCode::BAD_GATEWAY, body).into_response()
        }
    }
}
