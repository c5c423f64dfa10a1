//! The delivery console at `/ui`: server-rendered HTML (no JavaScript needed to read, no CDN;
//! everything ships in the binary). Sign in with the admin token through a form that sets an
//! HttpOnly, SameSite=Strict session cookie (see `session.rs`), or send it as a bearer header;
//! every state-changing form carries a CSRF token tied to the session. This file holds what
//! every page shares (the viewer, the layout, the security headers) and signing in and out;
//! one file per page group beside it.

mod events;
mod overview;
mod replays;
mod sources;
mod targets;
mod verify;

pub(super) use events::{delivery_action, event, events};
pub(super) use overview::overview;
pub(super) use replays::{replays, start_replay};
pub(super) use sources::{send_sample, sources};
pub(super) use targets::{target_action, targets};
pub(super) use verify::verify_examples;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::{Access, Gateway, session};

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
                    nav { a href="/ui/overview" { "Overview" } " · " a href="/ui/events" { "Webhook log" } " · " a href="/ui/sources" { "Sources" } " · " a href="/ui/targets" { "Targets" } " · " a href="/ui/replays" { "Replays" } " · " a href="/ui/verify" { "Verifying signatures" } }
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

pub(super) async fn root() -> Redirect {
    Redirect::to("/ui/events")
}

/// The page for a database that cannot be read.
fn unavailable(err: sqlx::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the database could not be read: {err}"),
    )
        .into_response()
}
