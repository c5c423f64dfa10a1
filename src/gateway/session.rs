//! Console sign-in: sessions every gateway replica knows (in Postgres, keyed by the SHA-256 of
//! the cookie), the cookie itself, and a limit on failed sign-ins per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use super::{Access, Gateway, digest};
use crate::store::sessions::{self, ConsoleSession};

const COOKIE: &str = "hookline_session";

/// How long a console session lasts, in the cookie (Max-Age) and on the server alike.
pub(super) const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Failed sign-ins a client may make per window before it must wait for the window to end.
const FAILURES_ALLOWED: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Clients tracked at once; past it (many addresses guessing at once) they share one budget.
const TRACKED_CLIENTS: usize = 10_000;

/// A signed-in viewer: the session's CSRF token and what it may see.
pub(super) struct SignedIn {
    pub csrf: String,
    pub access: Access,
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that opens a session; `Secure` when the browser came over HTTPS.
fn set_cookie(id: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// Opens a session for a valid admin token; returns the `Set-Cookie` value.
pub(super) async fn open(gateway: &Gateway, token: &str, secure: bool) -> sqlx::Result<String> {
    let id = hex::encode(rand::random::<[u8; 32]>());
    let session = ConsoleSession {
        token_hash: digest(token).to_vec(),
        csrf: hex::encode(rand::random::<[u8; 16]>()),
    };
    let expires_at = chrono::Utc::now() + LIFETIME;
    sessions::open(&gateway.pool, &digest(&id), &session, expires_at).await?;
    Ok(set_cookie(&id, LIFETIME, secure))
}

/// The session a request's cookie names, if it is open and its token is still configured.
pub(super) async fn find(gateway: &Gateway, headers: &HeaderMap) -> Option<SignedIn> {
    let id = cookie_value(headers)?;
    let session = match sessions::find(&gateway.pool, &digest(id)).await {
        Ok(session) => session?,
        Err(err) => {
            tracing::warn!("cannot look up a console session: {err}");
            return None;
        }
    };
    let access = gateway.admin_tokens.access_by_digest(&session.token_hash)?;
    Some(SignedIn {
        csrf: session.csrf,
        access,
    })
}

/// Ends the request's session; returns the `Set-Cookie` value that forgets it in the browser.
pub(super) async fn close(gateway: &Gateway, headers: &HeaderMap, secure: bool) -> String {
    if let Some(id) = cookie_value(headers)
        && let Err(err) = sessions::close(&gateway.pool, &digest(id)).await
    {
        tracing::warn!("cannot end a console session: {err}");
    }
    set_cookie("", Duration::ZERO, secure)
}

/// Failed sign-ins per client address in the current window.
#[derive(Default)]
pub(super) struct SignInLimiter {
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SignInLimiter {
    /// How long the client must wait before trying again, if it has used up its failures.
    pub(super) fn wait(&self, client: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(&clients, client);
        let (started, failures) = clients.get(&key)?;
        let ends = *started + FAILURE_WINDOW;
        (*failures >= FAILURES_ALLOWED && ends > now).then(|| ends - now)
    }

    pub(super) fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= TRACKED_CLIENTS {
            clients.retain(|_, (started, _)| *started + FAILURE_WINDOW > now);
        }
        let key = Self::key(&clients, client);
        let entry = clients.entry(key).or_insert((now, 0));
        if entry.0 + FAILURE_WINDOW <= now {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// The client's own entry, or the shared one once too many clients are tracked.
    fn key(clients: &HashMap<IpAddr, (Instant, u32)>, client: IpAddr) -> IpAddr {
        if clients.contains_key(&client) || clients.len() < TRACKED_CLIENTS {
            client
        } else {
            IpAddr::from([0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_keeps_failing_waits_and_others_do_not() {
        let limiter = SignInLimiter::default();
        let guesser: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(limiter.wait(guesser), None);
            limiter.failed(guesser);
        }
        let wait = limiter.wait(guesser).expect("limited after the allowed failures");
        assert!(wait <= FAILURE_WINDOW && wait > FAILURE_WINDOW - Duration::from_secs(5));
        assert_eq!(limiter.wait(other), None);
    }

    #[test]
    fn the_cookie_is_secure_only_over_https() {
        let plain = set_cookie("abc", LIFETIME, false);
        assert_eq!(
            plain,
            "hookline_session=abc; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=28800"
        );
        assert!(set_cookie("abc", LIFETIME, true).ends_with("; Secure"));
    }
}
