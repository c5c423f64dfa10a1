//! Reaching a target's endpoint: the HTTP client its deliveries go out on (one per egress
//! permission, and one per distinct TLS configuration), its OAuth2 token, and the one resend
//! with a fresh token that a 401 earns. The whole of it fits in the attempt's timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};

use super::oauth2::Tokens;
use super::sender::{self, Sent};
use crate::api::TargetKey;
use crate::catalog::Target;
use crate::catalog::egress::{EgressResolver, EgressRules};
use crate::catalog::endpoint::{Endpoint, TlsSettings};
use crate::store::deliveries::{Attempt, Claimed};
use crate::verify::SigningKey;

/// A TLS material's fingerprint, and whether private networks may be reached.
type TlsSlot = ([u8; 32], bool);

/// The clients deliveries go out on.
pub struct Clients {
    rules: Arc<EgressRules>,
    /// For targets that may reach private and cluster addresses (handlers, opted-in
    /// subscriptions), and for the others: each resolves through the egress policy.
    private: reqwest::Client,
    public: reqwest::Client,
    /// Per TLS material and egress permission. An entry lives while a configuration in force
    /// holds its settings; a rotated certificate gets a new client, an unchanged one keeps its
    /// connections across reloads.
    with_tls: Mutex<HashMap<TlsSlot, (Weak<TlsSettings>, reqwest::Client)>>,
    pub tokens: Tokens,
}

impl Clients {
    pub fn new(rules: Arc<EgressRules>) -> Self {
        Self {
            private: http_client(true, rules.clone(), None),
            public: http_client(false, rules.clone(), None),
            rules,
            with_tls: Mutex::default(),
            tokens: Tokens::default(),
        }
    }

    /// The client without TLS settings of its own (token endpoints use it too).
    pub fn plain(&self, allow_private_networks: bool) -> &reqwest::Client {
        if allow_private_networks {
            &self.private
        } else {
            &self.public
        }
    }

    fn for_endpoint(&self, allow_private_networks: bool, endpoint: &Endpoint) -> reqwest::Client {
        let Some(tls) = &endpoint.tls else {
            return self.plain(allow_private_networks).clone();
        };
        let mut clients = self.with_tls.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (tls.fingerprint, allow_private_networks);
        if let Some((holder, client)) = clients.get_mut(&slot) {
            *holder = Arc::downgrade(tls);
            return client.clone();
        }
        clients.retain(|_, (holder, _)| holder.strong_count() > 0);
        let client = http_client(
            allow_private_networks,
            self.rules.clone(),
            Some(tls.config.clone()),
        );
        clients.insert(slot, (Arc::downgrade(tls), client.clone()));
        client
    }

    /// One attempt to a target: with its OAuth2 token when it has one, sent once more with a
    /// fresh token when the endpoint answers 401 to a cached one.
    pub async fn send(
        &self,
        key: &TargetKey,
        target: &Target,
        endpoint: &Endpoint,
        delivery: &Claimed,
        keys: &[SigningKey],
        format_headers: &[(&'static str, String)],
    ) -> Sent {
        let started = Instant::now();
        let deadline = started + target.spec.attempt_timeout();
        let client = self.for_endpoint(target.allow_private_networks, endpoint);
        let token_client = self.plain(target.allow_private_networks);
        // Copied only to add a token.
        let mut headers: Cow<'_, [(HeaderName, HeaderValue)]> = Cow::Borrowed(&endpoint.headers);
        let mut rejected = None;
        loop {
            if let Some(credentials) = &endpoint.oauth2 {
                let token = self
                    .tokens
                    .authorization(token_client, key, credentials, rejected.as_ref(), deadline)
                    .await;
                match token {
                    Ok(token) => {
                        let headers = headers.to_mut();
                        headers.retain(|(name, _)| name != reqwest::header::AUTHORIZATION);
                        headers.push((reqwest::header::AUTHORIZATION, token));
                    }
                    Err(why) => return auth_failed(why, started),
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let sent = sender::send(
                &client,
                &target.spec.url,
                remaining.max(Duration::from_millis(1)),
                delivery,
                keys,
                &headers,
                format_headers,
            )
            .await;
            let unauthorized = sent.attempt.status_code == Some(401);
            if endpoint.oauth2.is_none() || !unauthorized || rejected.is_some() {
                return sent;
            }
            rejected = headers
                .iter()
                .find(|(name, _)| name == reqwest::header::AUTHORIZATION)
                .map(|(_, value)| value.clone());
        }
    }
}

/// The attempt of a delivery whose token could not be had: not sent, retried like a
/// connection error.
fn auth_failed(why: String, started: Instant) -> Sent {
    Sent {
        attempt: Attempt {
            started_at: chrono::Utc::now() - started.elapsed(),
            duration_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
            error_class: Some("auth"),
            error: Some(why),
            ..Attempt::default()
        },
        retry_after: None,
    }
}

/// A client: no redirects (a 3xx is the receiver's answer), rustls (with the endpoint's own
/// configuration when it has one), and host names resolved through the egress policy.
fn http_client(
    allow_private_networks: bool,
    rules: Arc<EgressRules>,
    tls: Option<rustls::ClientConfig>,
) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(EgressResolver {
            allow_private_networks,
            rules,
        }))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(sender::USER_AGENT)
        .pool_idle_timeout(Duration::from_secs(60));
    let builder = match tls {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    builder.build().expect("HTTP client configuration is static")
}
