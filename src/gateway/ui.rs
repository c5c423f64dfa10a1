//! The delivery console at `/ui`: server-rendered HTML (no JavaScript needed to read, no CDN;
//! everything ships in the binary). Sign in with the admin token through a form that sets an
//! HttpOnly, SameSite=Strict session cookie (see `session.rs`), or send it as a bearer header;
//! every state-changing form carries a CSRF token tied to the session.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::admin::{
    Act, TargetAction, TargetHealth, act_on_target, payload, redact_headers, signed_headers_of, target_health,
};
use super::{Access, Gateway, charts, session};
use crate::store::activity;
use crate::store::history::{self, EventFilter};

/// Every console page: no scripts, styles only from the page itself, never framed (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24}header{background:#1b1f24;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}header a{color:#fff}main{padding:1rem;max-width:1200px}table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}pre{background:#f6f8fa;padding:.75rem;overflow:auto}.succeeded{color:#1a7f37}.dead,.failed{color:#cf222e}.pending,.in_flight{color:#9a6700}form.inline{display:inline}label{margin-right:.5rem}";

/// Who is asking (a session, or a bearer-token client) and what they may see.
pub(super) struct Viewer {
    /// The session's CSRF token; none for bearer-token clients, whose header a browser never
    /// sends on its own, so their requests cannot be forged cross-site.
    csrf: Option<String>,
    access: Access,
}

impl Viewer {
    /// The 403 for a form whose CSRF token is not the session's.
    fn refuse_forged(&self, submitted: &str) -> Option<Response> {
        let genuine = self
            .csrf
            .as_deref()
            .is_none_or(|csrf| super::same_token(submitted, csrf));
        let message = "the form is stale or forged (CSRF check failed); reload the page";
        (!genuine).then(|| (StatusCode::FORBIDDEN, message).into_response())
    }

    fn csrf(&self) -> String {
        self.csrf.clone().unwrap_or_default()
    }
}

/// Pages need a signed-in viewer (a session, or the admin token as a bearer header); anyone
/// else is sent to the sign-in form.
impl FromRequestParts<Arc<Gateway>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, gateway: &Arc<Gateway>) -> Result<Self, Response> {
        if let Some(access) = gateway.admin_access(super::bearer(&parts.headers)) {
            return Ok(Viewer { csrf: None, access });
        }
        match session::find(gateway, &parts.headers).await {
            Some(signed_in) => Ok(Viewer {
                csrf: Some(signed_in.csrf),
                access: signed_in.access,
            }),
            None => Err(sign_in_redirect()),
        }
    }
}

/// The console's security headers, on every `/ui` response.
pub(super) async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_console = request.uri().path().starts_with("/ui");
    let mut response = next.run(request).await;
    if is_console {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

/// `POST /ui/logout`: ends the session, on every replica and in the browser.
pub(super) async fn logout(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let secure = gateway.reached_over_https(peer.ip(), &headers);
    let forget = session::close(&gateway, &headers, secure).await;
    with_cookie(Redirect::to("/ui/login").into_response(), &forget)
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Hookline" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Hookline" }
                    nav { a href="/ui/overview" { "Overview" } " · " a href="/ui/events" { "Webhook log" } " · " a href="/ui/sources" { "Sources" } " · " a href="/ui/targets" { "Targets" } " · " a href="/ui/verify" { "Verifying signatures" } }
                }
                main { h1 { (title) } (body) }
                footer { form.inline method="post" action="/ui/logout" { button.logout type="submit" { "Sign out" } } }
            }
        }
    }
}

fn sign_in_redirect() -> Response {
    Redirect::to("/ui/login").into_response()
}

pub(super) async fn login_form() -> Markup {
    page(
        "Sign in",
        html! {
            form method="post" action="/ui/login" {
                label for="token" { "Admin token" }
                input id="token" name="token" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// `POST /ui/login`: opens a session for an admin token. A client that keeps presenting wrong
/// tokens is answered 429 until its window ends.
pub(super) async fn login(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let client = gateway.client_address(peer.ip(), &headers);
    if let Some(wait) = gateway.sign_in_failures.wait(client) {
        let body = page(
            "Sign in",
            html! { p role="alert" { "Too many failed sign-ins from this address; try again in " (wait.as_secs() / 60 + 1) " min." } },
        );
        let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let token = form.token.trim();
    if gateway.admin_access(token).is_none() {
        gateway.sign_in_failures.failed(client);
        tracing::info!(%client, "console sign-in refused: not an admin token");
        let body = page(
            "Sign in",
            html! { p role="alert" { "That token is not an admin token." } a href="/ui/login" { "Try again" } },
        );
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let secure = gateway.reached_over_https(peer.ip(), &headers);
    match session::open(&gateway, token, secure).await {
        Ok(cookie) => with_cookie(Redirect::to("/ui/events").into_response(), &cookie),
        Err(err) => {
            tracing::error!("cannot open a console session: {err}");
            let body = page(
                "Sign in",
                html! { p role="alert" { "The database is unavailable; try again shortly." } },
            );
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

/// `GET /ui/sign-in/{code}`: the link `hookline standalone` prints when it generated the admin
/// token; it signs the browser in once, then the code is spent.
pub(super) async fn sign_in_once(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Response {
    let client = gateway.client_address(peer.ip(), &headers);
    let token = match gateway.sign_in_failures.wait(client) {
        Some(_) => None,
        None => gateway.redeem_sign_in_code(&code),
    };
    let Some(token) = token else {
        gateway.sign_in_failures.failed(client);
        let body = page(
            "Sign in",
            html! {
                p role="alert" { "This sign-in link has been used already, or is not one." }
                p { "Sign in with the admin token: " a href="/ui/login" { "Sign in" } }
            },
        );
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    let secure = gateway.reached_over_https(peer.ip(), &headers);
    match session::open(&gateway, &token, secure).await {
        Ok(cookie) => with_cookie(Redirect::to("/ui/events").into_response(), &cookie),
        Err(err) => {
            tracing::error!("cannot open a console session: {err}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; try again shortly",
            )
                .into_response()
        }
    }
}

fn status_counts(summary: &history::EventSummary) -> Markup {
    html! {
        span.succeeded { (summary.succeeded) " ok" } " · "
        span.pending { (summary.pending) " pending" } " · "
        span.dead { (summary.dead) " dead" }
    }
}

pub(super) async fn events(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Query(filter): Query<EventFilter>,
    Query(view): Query<LiveView>,
) -> Response {
    let (items, next) = match history::list_events(&gateway.pool, &filter, viewer.access.namespaces()).await {
        Ok(page) => page,
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database could not be read: {err}"),
            )
                .into_response();
        }
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
                    @for s in ["pending", "failed", "succeeded", "dead", "cancelled"] {
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
pub(super) struct LiveView {
    live: Option<String>,
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub(super) async fn event(
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
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database could not be read: {err}"),
            )
                .into_response();
        }
    };
    if !viewer.access.allows(&event.namespace) {
        return (
            StatusCode::NOT_FOUND,
            page("Not found", html! { p { "No such event." } }),
        )
            .into_response();
    }
    let csrf = viewer.csrf();
    let held = super::holds::of_deliveries(&gateway, &event.namespace, &deliveries).await;
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
pub(super) struct RedeliverForm {
    csrf: String,
    event: Uuid,
}

pub(super) async fn redeliver(
    State(gateway): State<Arc<Gateway>>,
    viewer: Viewer,
    Path(id): Path<Uuid>,
    Form(form): Form<RedeliverForm>,
) -> Response {
    if let Some(refusal) = viewer.refuse_forged(&form.csrf) {
        return refusal;
    }
    if let Err(err) = history::redeliver(&gateway.pool, id, viewer.access.namespaces()).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not queue the redelivery: {err}"),
        )
            .into_response();
    }
    Redirect::to(&format!("/ui/events/{}", form.event)).into_response()
}

/// Signature verification for the receiving side, with Hookline's header names filled in.
pub(super) async fn verify_examples() -> Markup {
    let examples = [
        (
            "Node.js (npm install standardwebhooks)",
            "import { Webhook } from \"standardwebhooks\";\n\n// raw body (string or Buffer), exactly as received\nconst wh = new Webhook(process.env.HOOKLINE_SIGNING_SECRET); // whsec_...\nconst event = wh.verify(rawBody, {\n  \"webhook-id\": req.headers[\"webhook-id\"],\n  \"webhook-timestamp\": req.headers[\"webhook-timestamp\"],\n  \"webhook-signature\": req.headers[\"webhook-signature\"],\n}); // throws if the signature or timestamp is wrong\n// use req.headers[\"webhook-id\"] to drop duplicates (delivery is at-least-once)",
        ),
        (
            "Python (pip install standardwebhooks)",
            "from standardwebhooks.webhooks import Webhook\n\nwh = Webhook(os.environ[\"HOOKLINE_SIGNING_SECRET\"])  # whsec_...\n# request.get_data() is the raw body; headers must include webhook-id,\n# webhook-timestamp and webhook-signature\nevent = wh.verify(request.get_data(), dict(request.headers))  # raises on failure",
        ),
        (
            "Go (go get github.com/standard-webhooks/standard-webhooks/libraries)",
            "wh, err := standardwebhooks.NewWebhook(os.Getenv(\"HOOKLINE_SIGNING_SECRET\"))\nif err != nil { return err }\nbody, _ := io.ReadAll(r.Body)\n// checks webhook-id, webhook-timestamp and webhook-signature\nif err := wh.Verify(body, r.Header); err != nil {\n    http.Error(w, \"bad signature\", http.StatusUnauthorized)\n    return\n}",
        ),
        (
            "Rust (cargo add standardwebhooks)",
            "let wh = standardwebhooks::Webhook::new(&std::env::var(\"HOOKLINE_SIGNING_SECRET\")?)?;\n// body: the raw bytes; headers: http::HeaderMap with webhook-id,\n// webhook-timestamp and webhook-signature\nwh.verify(&body, &headers)?;",
        ),
    ];
    page(
        "Verifying what Hookline sends",
        html! {
            p { "Every delivery carries " code { "webhook-id" } " (the same on every retry: use it to drop duplicates), "
                code { "webhook-timestamp" } " and " code { "webhook-signature" } " ("
                code { "v1,<base64 HMAC-SHA256 of id.timestamp.body>" } "; during a secret rotation, one " code { "v1" }
                " entry per secret), plus " code { "hookline-source" } " and " code { "hookline-event-type" } ". "
                "The signing secret is the target's " code { "secretRef" } ", or the Secret named in its "
                code { "status.generatedSecretName" } " (key " code { "signing-secret" } ")." }
            @for (language, code) in examples {
                section { h2 { (language) } pre { code { (code) } } }
            }
            p { "Or check a request from the command line: " code { "hookline verify --scheme standard-webhooks -H 'webhook-id: …' …" } }
        },
    )
}

pub(super) async fn root() -> Redirect {
    Redirect::to("/ui/events")
}

/// Per-target delivery status, with the actions a person fixing an endpoint needs.
pub(super) async fn targets(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let csrf = viewer.csrf();
    let targets = match target_health(&gateway, None, &viewer.access).await {
        Ok(targets) => targets,
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database could not be read: {err}"),
            )
                .into_response();
        }
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

/// The sources, where they receive, whether they can verify, and a button per source that sends
/// it one of its provider's sample events (signed with its own secret) through ingest.
pub(super) async fn sources(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
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
                        td { (super::ingest::provider_label(source)) }
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

/// What came in over the last hour: events per minute by source, and why requests were refused.
pub(super) async fn overview(State(gateway): State<Arc<Gateway>>, viewer: Viewer) -> Response {
    let now = chrono::Utc::now();
    let since = charts::first_minute(now);
    let catalog = gateway.catalog();
    let mut sources: Vec<(String, String)> = catalog
        .sources()
        .filter(|s| viewer.access.allows(&s.namespace))
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    sources.sort();
    let (received, refused) = match tokio::try_join!(
        activity::ingest_minutes(&gateway.pool, &sources, since),
        activity::rejections_since(&gateway.pool, viewer.access.namespaces(), since),
    ) {
        Ok(found) => found,
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database could not be read: {err}"),
            )
                .into_response();
        }
    };
    let body = html! {
        table.overview {
            caption { "Events received, last hour" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Per minute" } th scope="col" { "Events" } } }
            tbody {
                @for (namespace, name) in &sources {
                    @let series: Vec<(chrono::DateTime<chrono::Utc>, i64)> = received
                        .iter()
                        .filter(|(n, s, _, _)| n == namespace && s == name)
                        .map(|(_, _, minute, count)| (*minute, *count))
                        .collect();
                    tr {
                        td { (namespace) "/" (name) }
                        td { (charts::received(&series, now)) }
                        td { (series.iter().map(|(_, c)| c).sum::<i64>()) }
                    }
                }
            }
        }
        table.rejections {
            caption { "Refused requests, last hour" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Reason" } th scope="col" { "Requests" } } }
            tbody {
                @for (namespace, source, reason, count) in &refused {
                    tr { td { (namespace) "/" (source) } td { code { (reason) } } td { (count) } }
                }
                @if refused.is_empty() { tr { td colspan="3" { "None." } } }
            }
        }
    };
    page("Overview", body).into_response()
}

#[derive(Deserialize)]
pub(super) struct SampleForm {
    csrf: String,
    namespace: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
}

/// `POST /ui/sources/send`: signs a sample for the source and hands it to ingest, then shows
/// the stored event (or what ingest answered).
pub(super) async fn send_sample(
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
    let answer = super::ingest::receive(
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

#[derive(Deserialize)]
pub(super) struct TargetForm {
    csrf: String,
    namespace: String,
    kind: String,
    target: String,
}

pub(super) async fn target_action(
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
