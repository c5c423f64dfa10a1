//! One HTTP attempt: sign per Standard Webhooks, POST with the target's timeout, and keep what
//! came back (status, a few headers, the first KiB of the body) or how it failed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::store::deliveries::{Attempt, Claimed};
use crate::verify::{SigningKey, standard_webhooks};

const RESPONSE_BODY_LIMIT: usize = 1024;
pub(super) const USER_AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));

/// Response headers worth keeping in the attempt log.
const KEPT_HEADERS: [&str; 4] = ["content-type", "retry-after", "location", "x-request-id"];

pub struct Sent {
    pub attempt: Attempt,
    pub retry_after: Option<String>,
}

fn error_class(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        return "timeout";
    }
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return "tls";
        }
        source = e.source();
    }
    if err.is_connect() { "connect" } else { "http" }
}

/// The outbound headers of one attempt: the target's own (`custom`), then the format's
/// (`extra`), then the signature's, so none of Hookline's can be replaced.
pub fn signed_headers(
    delivery: &Claimed,
    keys: &[SigningKey],
    timestamp: i64,
    custom: &[(HeaderName, HeaderValue)],
    extra: &[(&'static str, String)],
) -> HeaderMap {
    let msg_id = delivery.id.to_string();
    let mut headers = HeaderMap::new();
    for (name, value) in custom {
        headers.insert(name.clone(), value.clone());
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    for (name, value) in extra {
        put(name, value);
    }
    put(
        "content-type",
        delivery.content_type.as_deref().unwrap_or("application/json"),
    );
    put(standard_webhooks::ID_HEADER, &msg_id);
    put(standard_webhooks::TIMESTAMP_HEADER, &timestamp.to_string());
    put(
        standard_webhooks::SIGNATURE_HEADER,
        &standard_webhooks::sign_all(keys, &msg_id, timestamp, &delivery.body),
    );
    if !delivery.source.is_empty() {
        put("hookline-source", &delivery.source);
    }
    put("hookline-event-type", &delivery.event_type);
    headers
}

/// The error and its causes, one line.
fn error_text(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub async fn send(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    delivery: &Claimed,
    keys: &[SigningKey],
    custom_headers: &[(HeaderName, HeaderValue)],
    extra_headers: &[(&'static str, String)],
) -> Sent {
    let started_at = Utc::now();
    let started = Instant::now();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let request = client
        .post(url)
        .timeout(timeout)
        .headers(signed_headers(
            delivery,
            keys,
            timestamp,
            custom_headers,
            extra_headers,
        ))
        .body(delivery.body.clone());
    let mut attempt = Attempt {
        started_at,
        ..Attempt::default()
    };
    let mut retry_after = None;
    match request.send().await {
        Ok(mut response) => {
            attempt.status_code = Some(response.status().as_u16() as i16);
            let mut kept = serde_json::Map::new();
            for name in KEPT_HEADERS {
                if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
                    kept.insert(name.to_owned(), value.into());
                }
            }
            retry_after = kept
                .get("retry-after")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            attempt.response_headers = Some(serde_json::Value::Object(kept));
            // Read at most 1 KiB of the body; the rest is not needed and may be large or slow.
            let mut body = Vec::new();
            let remaining = timeout.saturating_sub(started.elapsed());
            let read = tokio::time::timeout(remaining, async {
                while body.len() < RESPONSE_BODY_LIMIT {
                    match response.chunk().await {
                        Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
            });
            let _ = read.await;
            body.truncate(RESPONSE_BODY_LIMIT);
            attempt.response_body = Some(String::from_utf8_lossy(&body).into_owned());
        }
        Err(err) => {
            attempt.error_class = Some(error_class(&err));
            // Without the URL: some endpoints carry credentials in it (Slack-style hook URLs),
            // and the attempt log is shown in the console.
            attempt.error = Some(error_text(err.without_url()));
        }
    }
    attempt.duration_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    Sent { attempt, retry_after }
}
