//! Signature verification of inbound webhooks, one file per provider scheme.
//!
//! A [`SourceVerifier`] is built from a `WebhookSource` and its resolved secrets (decoding them
//! per scheme, so a malformed secret is a configuration error, not a per-request one) and then
//! checks requests: signature first, then the timestamp, and yields the event's id and type.

mod generic_hmac;
mod github;
pub mod standard_webhooks;
pub mod stripe;
mod svix;

use std::borrow::Cow;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::api::{GenericHmac, Provider};

pub use generic_hmac::sign as sign_generic_hmac;
pub use github::sign as sign_github;

/// What a verified request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// The sender's event id: the deduplication key.
    pub id: String,
    pub event_type: String,
    /// When the scheme does not sign the event id (GitHub; generic HMAC with an id header),
    /// the SHA-256 of what it does sign. A captured request sent again with a new id header (or
    /// a new event type header) has the same digest, so it is deduplicated on this as well.
    pub replay_digest: Option<[u8; 32]>,
}

/// Why a request was refused. `reason()` is what the sender sees and what metrics count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the {0} header is missing")]
    MissingSignature(Cow<'static, str>),
    #[error("the {0} header is malformed")]
    MalformedSignature(Cow<'static, str>),
    #[error("no signature matches the body and the configured secrets")]
    SignatureMismatch,
    #[error("the {0} header is missing")]
    MissingTimestamp(Cow<'static, str>),
    #[error("the {0} header is not a unix timestamp")]
    MalformedTimestamp(Cow<'static, str>),
    #[error("the signed timestamp is {age_secs}s away from now, beyond the tolerance of {tolerance_secs}s")]
    TimestampOutsideTolerance { age_secs: i64, tolerance_secs: u64 },
    #[error("the {0} header (event id) is missing")]
    MissingEventId(Cow<'static, str>),
    #[error("the {0} header (event type) is missing")]
    MissingEventType(Cow<'static, str>),
    #[error("the body is not the JSON event the provider sends: {0}")]
    InvalidPayload(&'static str),
}

impl Rejection {
    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature(_) => "missing_signature",
            Self::MalformedSignature(_) => "malformed_signature",
            Self::SignatureMismatch => "signature_mismatch",
            Self::MissingTimestamp(_) => "missing_timestamp",
            Self::MalformedTimestamp(_) => "malformed_timestamp",
            Self::TimestampOutsideTolerance { .. } => "timestamp_outside_tolerance",
            Self::MissingEventId(_) => "missing_event_id",
            Self::MissingEventType(_) => "missing_event_type",
            Self::InvalidPayload(_) => "invalid_payload",
        }
    }
}

/// A secret that cannot be used with the source's scheme. The message never holds the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is not a whsec_ secret: after the optional whsec_ prefix it must be base64")]
    NotBase64,
    #[error("the source has no secret")]
    NoSecret,
}

/// Key material, never printed.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// The secret string's UTF-8 bytes are the key (Stripe, GitHub, generic HMAC).
    pub fn from_text(secret: &str) -> Result<Self, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Verifies requests for one source.
#[derive(Clone, Debug)]
pub struct SourceVerifier {
    scheme: Scheme,
    keys: Vec<SigningKey>,
    tolerance: Duration,
}

#[derive(Clone, Debug)]
enum Scheme {
    Stripe,
    Svix,
    StandardWebhooks,
    Github,
    GenericHmac(GenericHmac),
}

impl SourceVerifier {
    /// `secrets` are the source's secret values, primary first.
    pub fn new(
        provider: Provider,
        generic_hmac: Option<&GenericHmac>,
        secrets: &[&str],
        tolerance: Duration,
    ) -> Result<Self, SecretError> {
        let scheme = match provider {
            Provider::Stripe => Scheme::Stripe,
            Provider::Clerk | Provider::Resend | Provider::Svix => Scheme::Svix,
            Provider::StandardWebhooks => Scheme::StandardWebhooks,
            Provider::Github => Scheme::Github,
            // Admission guarantees the settings exist with this provider.
            Provider::GenericHmac => Scheme::GenericHmac(generic_hmac.cloned().ok_or(SecretError::NoSecret)?),
        };
        if secrets.is_empty() {
            return Err(SecretError::NoSecret);
        }
        let keys = secrets
            .iter()
            .map(|secret| match scheme {
                Scheme::Svix | Scheme::StandardWebhooks => standard_webhooks::decode_secret(secret),
                _ => SigningKey::from_text(secret),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            scheme,
            keys,
            tolerance,
        })
    }

    /// Checks one request; `now` is unix seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<VerifiedEvent, Rejection> {
        let event = match &self.scheme {
            Scheme::Stripe => stripe::verify(&self.keys, headers, body, now, self.tolerance),
            Scheme::Svix => svix::verify(&self.keys, headers, body, now, self.tolerance),
            Scheme::StandardWebhooks => {
                standard_webhooks::verify(&self.keys, headers, body, now, self.tolerance)
            }
            Scheme::Github => github::verify(&self.keys, headers, body),
            Scheme::GenericHmac(settings) => {
                generic_hmac::verify(settings, &self.keys, headers, body, now, self.tolerance)
            }
        }?;
        // Postgres text cannot hold NUL; such an event could never be stored.
        if event.id.contains('\0') || event.event_type.contains('\0') {
            return Err(Rejection::InvalidPayload(
                "the event id or type contains a NUL character",
            ));
        }
        Ok(event)
    }
}

type HmacSha256 = Hmac<sha2::Sha256>;

/// HMAC-SHA256 over the concatenation of `parts`.
fn hmac_sha256(key: &SigningKey, parts: &[&[u8]]) -> Vec<u8> {
    // Any key length is valid for HMAC.
    let mut mac = HmacSha256::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// True when any candidate equals any expected tag, compared in constant time.
fn any_matches(expected: &[Vec<u8>], candidates: &[Vec<u8>]) -> bool {
    let mut matched = subtle::Choice::from(0);
    for tag in expected {
        for candidate in candidates {
            matched |= tag.as_slice().ct_eq(candidate.as_slice());
        }
    }
    matched.into()
}

/// A header's value as text; absent, empty or non-UTF-8 values count as missing.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Parses a unix-seconds timestamp and checks it against the tolerance, in both directions.
fn check_timestamp(
    text: &str,
    header_name: impl Into<Cow<'static, str>>,
    now: i64,
    tolerance: Duration,
) -> Result<i64, Rejection> {
    let timestamp: i64 = text
        .parse()
        .ok()
        .filter(|t| *t >= 0)
        .ok_or_else(|| Rejection::MalformedTimestamp(header_name.into()))?;
    let age_secs = now.saturating_sub(timestamp);
    if age_secs.unsigned_abs() > tolerance.as_secs() {
        return Err(Rejection::TimestampOutsideTolerance {
            age_secs,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    Ok(timestamp)
}

/// The top-level `id` and `type` of a JSON body, when they are strings. Read in one pass that
/// skips everything else without building it.
#[derive(Default, serde::Deserialize)]
struct BodyFields<'a> {
    #[serde(borrow, default, deserialize_with = "string_or_none")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type", deserialize_with = "string_or_none")]
    event_type: Option<Cow<'a, str>>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Field<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match serde::Deserialize::deserialize(deserializer)? {
        Field::Text(text) => Some(text),
        Field::Other(_) => None,
    })
}

fn body_fields(body: &[u8]) -> BodyFields<'_> {
    serde_json::from_slice(body).unwrap_or_default()
}

/// Event type for schemes that carry it in the body; events without one are kept as `unknown`
/// (only `*` handlers receive them) rather than dropped after a valid signature.
fn body_event_type(body: &[u8]) -> String {
    body_fields(body)
        .event_type
        .map_or_else(|| "unknown".to_owned(), Cow::into_owned)
}

/// The headers a sender using `provider`'s scheme attaches to `body` (for testing a receiver, and
/// for `hookline sign`). `id` is the event id where the scheme carries one in a header;
/// generic HMAC needs the source's `genericHmac` settings.
pub fn sign_headers(
    provider: Provider,
    generic_hmac: Option<&GenericHmac>,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(String, String)>, SecretError> {
    let signer = SourceVerifier::new(provider, generic_hmac, &[secret], Duration::ZERO)?;
    Ok(signer.sign(id, timestamp, body))
}

impl SourceVerifier {
    /// The headers the source's sender attaches to `body`, signed with its primary secret:
    /// what this verifier accepts. `id` goes in a header where the scheme carries one.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
        let key = &self.keys[0];
        let named = |items: Vec<(&str, String)>| items.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        match &self.scheme {
            Scheme::Stripe => named(vec![("Stripe-Signature", stripe::sign(key, timestamp, body))]),
            Scheme::Svix | Scheme::StandardWebhooks => {
                let prefix = if matches!(self.scheme, Scheme::StandardWebhooks) {
                    "webhook"
                } else {
                    "svix"
                };
                vec![
                    (format!("{prefix}-id"), id.to_owned()),
                    (format!("{prefix}-timestamp"), timestamp.to_string()),
                    (
                        format!("{prefix}-signature"),
                        standard_webhooks::sign(key, id, timestamp, body),
                    ),
                ]
            }
            Scheme::Github => named(vec![
                ("X-Hub-Signature-256", github::sign(key, body)),
                ("X-GitHub-Delivery", id.to_owned()),
            ]),
            Scheme::GenericHmac(settings) => {
                let mut headers = vec![(
                    settings.header.clone(),
                    generic_hmac::sign(settings, key, Some(timestamp), body),
                )];
                if let Some(name) = &settings.timestamp_header {
                    headers.push((name.clone(), timestamp.to_string()));
                }
                if let Some(name) = &settings.id_header {
                    headers.push((name.clone(), id.to_owned()));
                }
                headers
            }
        }
    }

    /// The header that carries the event type, for schemes that send it outside the body.
    pub fn event_type_header(&self) -> Option<&str> {
        match &self.scheme {
            Scheme::Github => Some("X-GitHub-Event"),
            Scheme::GenericHmac(settings) => settings.event_type_header.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use http::{HeaderMap, HeaderName, HeaderValue};

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields_reads_string_id_and_type_and_skips_the_rest() {
        let fields =
            body_fields(br#"{"data":{"id":"inner","type":[1,2]},"id":"evt_1","type":"invoice.paid"}"#);
        assert_eq!(fields.id.as_deref(), Some("evt_1"));
        assert_eq!(fields.event_type.as_deref(), Some("invoice.paid"));
        let fields = body_fields(br#"{"id":42,"type":null}"#);
        assert_eq!((fields.id, fields.event_type), (None, None));
        for not_an_object in [&b"[]"[..], b"", b"\xff", b"{\"id\":"] {
            assert!(body_fields(not_an_object).id.is_none());
        }
        assert_eq!(
            body_event_type(br#"{"type":"a\"b"}"#),
            "a\"b",
            "escapes are decoded"
        );
    }

    /// Postgres text cannot hold NUL: such an event is refused (400), not retried forever (503).
    #[test]
    fn an_event_type_with_nul_is_an_invalid_payload() {
        let verifier = SourceVerifier::new(Provider::Stripe, None, &["whsec_test"], Duration::from_secs(300))
            .expect("verifier");
        let body = br#"{"id":"evt_1","type":"invoice.\u0000paid"}"#;
        let key = SigningKey::from_text("whsec_test").expect("key");
        let signature = stripe::sign(&key, 1_700_000_000, body);
        let headers = test_support::headers(&[("stripe-signature", &signature)]);
        let rejection = verifier
            .verify(&headers, body, 1_700_000_000)
            .expect_err("refused");
        assert_eq!(rejection.reason(), "invalid_payload");
    }
}
