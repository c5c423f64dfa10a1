//! OAuth2 access tokens for endpoints that ask for one: the client credentials grant (RFC 6749
//! section 4.4), fetched through the egress policy, reused until shortly before it expires, and
//! fetched again when the endpoint rejects it. One fetch at a time per target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::api::TargetKey;
use crate::catalog::endpoint::OAuth2Credentials;

/// The most of a token's life given up to fetch the next one before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Tokens per target.
#[derive(Default)]
pub struct Tokens {
    cells: Mutex<HashMap<TargetKey, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

#[derive(Clone)]
struct Token {
    /// `Bearer …`, marked sensitive.
    authorization: HeaderValue,
    /// Of the credentials it was issued for.
    credentials: [u8; 32],
    /// When it is fetched again; `None`: when the endpoint rejects it.
    refresh_at: Option<Instant>,
}

/// A token endpoint's answer (RFC 6749 sections 5.1 and 5.2).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<f64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Tokens {
    /// The `Authorization` value for a request to `key`'s endpoint: the cached token, unless it
    /// is due for refresh, was issued for other credentials, or is `rejected` (the endpoint
    /// answered 401 with it). Fetching must end by `deadline`.
    pub async fn authorization(
        &self,
        client: &reqwest::Client,
        key: &TargetKey,
        credentials: &OAuth2Credentials,
        rejected: Option<&HeaderValue>,
        deadline: Instant,
    ) -> Result<HeaderValue, String> {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry(key.clone()).or_default().clone()
        };
        // Deliveries that find the token due wait for the one fetch.
        let mut cached = cell.lock().await;
        if let Some(token) = cached.as_ref() {
            let fresh = token.refresh_at.is_none_or(|at| Instant::now() < at);
            let usable = fresh && token.credentials == credentials.fingerprint;
            // A 401 to a token fetched since counts against that older one, not this.
            if usable && rejected != Some(&token.authorization) {
                return Ok(token.authorization.clone());
            }
        }
        let token = fetch(client, credentials, deadline).await?;
        let authorization = token.authorization.clone();
        *cached = Some(token);
        Ok(authorization)
    }
}

async fn fetch(
    client: &reqwest::Client,
    credentials: &OAuth2Credentials,
    deadline: Instant,
) -> Result<Token, String> {
    // RFC 6749 section 2.3.1: the id and secret are form-encoded, then sent with HTTP Basic.
    let encode = |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let mut form = vec![("grant_type", "client_credentials")];
    if !credentials.scope.is_empty() {
        form.push(("scope", credentials.scope.as_str()));
    }
    let requested = Instant::now();
    let response = client
        .post(&credentials.token_url)
        .basic_auth(
            encode(&credentials.client_id),
            Some(encode(&credentials.client_secret)),
        )
        .header("accept", "application/json")
        .form(&form)
        .timeout(deadline.saturating_duration_since(requested))
        .send()
        .await
        .map_err(|err| format!("token endpoint: {}", err.without_url()))?;
    let status = response.status();
    let body: TokenResponse = response
        .json()
        .await
        .map_err(|_| format!("token endpoint answered {status} without a JSON token response"))?;
    if let Some(error) = body.error {
        let description = body
            .error_description
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(format!("token endpoint answered {status}: {error}{description}"));
    }
    let (Some(token), true) = (body.access_token, status.is_success()) else {
        return Err(format!(
            "token endpoint answered {status} without an access_token"
        ));
    };
    if body
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err("token endpoint issued a token that is not a Bearer token".to_owned());
    }
    let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "token endpoint issued a token that is not a header value".to_owned())?;
    authorization.set_sensitive(true);
    Ok(Token {
        authorization,
        credentials: credentials.fingerprint,
        refresh_at: body
            .expires_in
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|seconds| requested + refresh_after(Duration::from_secs_f64(seconds.min(1e9)))),
    })
}

/// How long a token is used: its lifetime less a tenth, at most [`REFRESH_MARGIN`], counted
/// from when it was asked for.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(REFRESH_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(refresh_after(Duration::from_secs(300)), Duration::from_secs(270));
        assert_eq!(refresh_after(Duration::from_secs(2)), Duration::from_millis(1800));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
