//! A request the gateway does not accept, answered the same way on every path: the status, a
//! stable machine-readable reason (also the `outcome` label of the ingest metrics and the key of
//! a source's rejection counts) and a message for people.

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: Cow<'static, str>,
    /// Seconds the caller should wait before retrying (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }

    /// Postgres could not be read or written: the caller should retry.
    pub fn storage_unavailable(message: &'static str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message)
    }

    /// Whether the sender is at fault (as opposed to the gateway being unable to serve).
    pub fn is_senders_fault(&self) -> bool {
        self.status.is_client_error()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.reason, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The response of a [`Refusal`], for handlers that answer with a `Response`.
pub fn refuse(status: StatusCode, reason: &'static str, message: impl Into<Cow<'static, str>>) -> Response {
    Refusal::new(status, reason, message).into_response()
}
