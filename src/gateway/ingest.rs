//! `POST /ingest/{namespace}/{source}`: verify, store durably, then acknowledge.
//!
//! Order of checks: unknown source (404), client address (403, before any other work), secret
//! available (503), body size (413), signature and timestamp (401), then one atomic write of the
//! event with its deliveries; 200 only after it commits, 503 when the database fails.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use super::Gateway;
use super::fan_out::{self, Arriving};
use super::refusal::Refusal;
use super::sending;
use crate::catalog::Source;
use crate::store::events::{NewEvent, Stored};
use crate::telemetry::metrics::{IngestLabels, SourceLabels};
use crate::telemetry::throttle::Throttle;
use crate::telemetry::traces::TraceContext;
use tracing::Instrument;

pub const DUPLICATE_HEADER: &str = "hookline-duplicate";

fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().to_owned(), json!(values.join(", ")));
    }
    serde_json::Value::Object(map)
}

pub(super) async fn receive(
    State(gateway): State<Arc<Gateway>>,
    Path((namespace, source_name)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    let started = Instant::now();
    let catalog = gateway.catalog();
    let Some(source) = catalog.source(&namespace, &source_name) else {
        // Unknown names are not used as metric labels: a scanner must not create series.
        count(&gateway, "", "", "", "unknown_source", started);
        let message = format!("no WebhookSource {namespace}/{source_name}");
        return Refusal::new(StatusCode::NOT_FOUND, "unknown_source", message).into_response();
    };
    let span = crate::trace_span!(
        "ingest",
        otel.name = %format_args!("ingest {namespace}/{source_name}"),
        otel.kind = "server",
        hookline.namespace = %namespace,
        hookline.source = %source_name,
        hookline.provider = provider_label(&source),
        hookline.event_id = tracing::field::Empty,
        hookline.outcome = tracing::field::Empty,
    );
    let trace = TraceContext::from_headers(request.headers());
    trace.adopt(&span);
    let handled = handle(&gateway, &catalog, &source, peer.ip(), request, (&trace, &span))
        .instrument(span.clone())
        .await;
    let (outcome, response) = match handled {
        Ok(accepted) => accepted,
        Err(refusal) => {
            // Refusals of the request itself, not our own failures (secret or storage
            // unavailable), count towards the source's rejections.
            if refusal.is_senders_fault() {
                gateway.count_rejection(&namespace, &source_name, refusal.reason);
            }
            (refusal.reason, refusal.into_response())
        }
    };
    span.record("hookline.outcome", outcome);
    count(
        &gateway,
        &namespace,
        &source_name,
        provider_label(&source),
        outcome,
        started,
    );
    response
}

pub(super) fn provider_label(source: &Source) -> &'static str {
    use crate::api::Provider::*;
    match source.provider {
        Stripe => "stripe",
        Clerk => "clerk",
        Resend => "resend",
        Svix => "svix",
        StandardWebhooks => "standard-webhooks",
        Github => "github",
        GenericHmac => "generic-hmac",
    }
}

fn count(gateway: &Gateway, namespace: &str, source: &str, provider: &str, outcome: &str, started: Instant) {
    let metrics = &gateway.metrics;
    metrics
        .ingest_requests
        .get_or_create(&IngestLabels {
            namespace: namespace.to_owned(),
            source: source.to_owned(),
            provider: provider.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
    metrics.ingest_duration.observe(started.elapsed().as_secs_f64());
}

async fn handle(
    gateway: &Gateway,
    catalog: &crate::catalog::Catalog,
    source: &Source,
    peer: IpAddr,
    request: Request<Body>,
    (trace, span): (&TraceContext, &tracing::Span),
) -> Result<(&'static str, Response), Refusal> {
    let (parts, body) = request.into_parts();
    let client = gateway.client_address(peer, &parts.headers);
    let reject = |reason: &'static str, status: StatusCode, message: String| {
        tracing::warn!(namespace = %source.namespace, source = %source.name, reason, remote = %client, "{message}");
        Refusal::new(status, reason, message)
    };

    if !source.senders.admits(client) {
        let message = source
            .senders
            .problem()
            .unwrap_or_else(|| format!("{client} is not in the source's allowedSourceRanges"));
        return Err(reject(
            "source_address_not_allowed",
            StatusCode::FORBIDDEN,
            message,
        ));
    }
    let verifier = match &source.verifier {
        Ok(verifier) => verifier,
        Err(problem) => {
            tracing::error!(namespace = %source.namespace, source = %source.name, "signing secret unavailable: {problem}");
            let message = "the source's signing secret is not available; the sender should retry";
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_unavailable",
                message,
            ));
        }
    };
    let declared_length = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        reject(
            "body_too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body exceeds the source's maxBodyBytes of {}",
                source.max_body_bytes
            ),
        )
    };
    if declared_length.is_some_and(|len| len > source.max_body_bytes) {
        return Err(too_large());
    }
    // The body's bytes are reserved before it is read (all of maxBodyBytes when the length is
    // not declared) and held until it is stored.
    let reserved = (declared_length.unwrap_or(source.max_body_bytes) as u32).min(gateway.body_budget_bytes);
    let Ok(_reservation) = gateway.body_budget.try_acquire_many(reserved) else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest_busy",
            "too many request bodies are being received at once; retry shortly",
        )
        .retry_after(1));
    };
    let body = match axum::body::to_bytes(body, source.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return Err(too_large()),
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let verified = {
        let _verifying = crate::trace_span!("verify").entered();
        verifier.verify(&parts.headers, &body, now)
    };
    let event = match verified {
        Ok(event) => event,
        Err(rejection) => {
            let status = if rejection.reason() == "invalid_payload" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNAUTHORIZED
            };
            return Err(reject(rejection.reason(), status, rejection.to_string()));
        }
    };

    let mut headers = headers_json(&parts.headers);
    // A request without a trace context: its deliveries join the trace ingest started.
    if trace.traceparent.is_none() {
        for (name, value) in TraceContext::of(span, trace).headers() {
            headers[name] = value.into();
        }
    }
    let event_id = Uuid::now_v7();
    let mut deliveries = fan_out::deliveries(
        catalog,
        &gateway.metrics,
        &Arriving {
            id: event_id,
            namespace: &source.namespace,
            source: Some(source),
            event_type: &event.event_type,
            headers: &headers,
            body: &body,
            about: None,
        },
    );
    let send_now = sending::reserve(&gateway.dispatcher, &source.namespace, &mut deliveries);
    let new_event = NewEvent {
        id: event_id,
        namespace: source.namespace.clone(),
        source: source.name.clone(),
        provider: Some(provider_label(source)),
        external_id: event.id.clone(),
        replay_digest: event.replay_digest,
        event_type: event.event_type.clone(),
        headers,
        body,
        deliveries,
    };
    let send_now = send_now.of(&new_event);
    let labels = SourceLabels {
        namespace: source.namespace.clone(),
        source: source.name.clone(),
    };
    span.record("hookline.event_id", tracing::field::display(&event_id));
    let stored = gateway
        .events
        .submit(new_event)
        .instrument(crate::trace_span!("store"))
        .await;
    match stored {
        Ok(Stored::New { deliveries, claimed }) => {
            send_now.send(&gateway.dispatcher, &claimed);
            gateway.metrics.events_stored.get_or_create(&labels).inc();
            gateway.count_accepted(&source.namespace, &source.name);
            // Debug: every stored event is in the delivery log and the metrics already, and a
            // line per webhook costs more CPU than the verification at thousands a second.
            tracing::debug!(
                namespace = %source.namespace, source = %source.name, event_id = %event.id,
                event_type = %event.event_type, deliveries, "event stored"
            );
            let body = json!({"id": event_id, "eventId": event.id, "type": event.event_type, "deliveries": deliveries});
            Ok(("accepted", (StatusCode::OK, Json(body)).into_response()))
        }
        Ok(Stored::Duplicate) => {
            gateway.metrics.duplicates.get_or_create(&labels).inc();
            let mut response = (
                StatusCode::OK,
                Json(json!({"eventId": event.id, "duplicate": true})),
            )
                .into_response();
            response
                .headers_mut()
                .insert(DUPLICATE_HEADER, HeaderValue::from_static("true"));
            Ok(("duplicate", response))
        }
        Err(err) => {
            // Never acknowledge what is not committed: the provider retries a 503.
            static STORE_FAILED: Throttle = Throttle::new(std::time::Duration::from_secs(1));
            if let Some(left_out) = STORE_FAILED.admit() {
                tracing::error!(namespace = %source.namespace, source = %source.name, left_out, "cannot store event: {err}");
            }
            Err(Refusal::storage_unavailable(
                "the event could not be stored; the sender should retry",
            ))
        }
    }
}
