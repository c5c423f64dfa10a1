//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` over `"<t>.<body>"`, HMAC-SHA256
//! keyed with the whole `whsec_…` string. Only `v1` counts (other schemes such as `v0` are ignored
//! to prevent downgrades); any `v1` may match, which is how Stripe rolls secrets.

use std::time::Duration;

use http::HeaderMap;

use super::{
    Rejection, SigningKey, VerifiedEvent, any_matches, body_fields, check_timestamp, header, hmac_sha256,
};

pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp`.
pub fn sign(key: &SigningKey, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac_sha256(key, &[timestamp.to_string().as_bytes(), b".", body]);
    format!("t={timestamp},v1={}", hex::encode(tag))
}

pub(super) fn verify(
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedEvent, Rejection> {
    let value =
        header(headers, SIGNATURE_HEADER).ok_or(Rejection::MissingSignature("Stripe-Signature".into()))?;
    let malformed = Rejection::MalformedSignature("Stripe-Signature".into());
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for item in value.split(',') {
        let (key, val) = item.trim().split_once('=').ok_or(malformed.clone())?;
        match key {
            "t" => timestamp = Some(val),
            // A v1 value that is not hex can never match; keep looking at the others.
            "v1" => candidates.extend(hex::decode(val).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(malformed.clone())?;
    if candidates.is_empty() {
        return Err(malformed);
    }
    let expected: Vec<_> = keys
        .iter()
        .map(|k| hmac_sha256(k, &[timestamp.as_bytes(), b".", body]))
        .collect();
    if !any_matches(&expected, &candidates) {
        return Err(Rejection::SignatureMismatch);
    }
    check_timestamp(timestamp, "Stripe-Signature", now, tolerance)?;
    let fields = body_fields(body);
    let id = fields
        .id
        .ok_or(Rejection::InvalidPayload("no string field \"id\""))?
        .into_owned();
    let event_type = fields
        .event_type
        .ok_or(Rejection::InvalidPayload("no string field \"type\""))?
        .into_owned();
    // The id is in the signed body.
    Ok(VerifiedEvent {
        id,
        event_type,
        replay_digest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::headers;

    const S1_BODY: &[u8] = include_bytes!("testdata/stripe_event_test_signature.json");
    const S1_HEADER: &str = "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";
    const S1_T: i64 = 1533204620;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn key(secret: &str) -> Vec<SigningKey> {
        vec![SigningKey::from_text(secret).expect("key")]
    }

    fn check(secret: &str, header: &str, body: &[u8], now: i64) -> Result<VerifiedEvent, Rejection> {
        verify(
            &key(secret),
            &headers(&[("Stripe-Signature", header)]),
            body,
            now,
            TOLERANCE,
        )
    }

    #[test]
    fn official_vector_s1_verifies() {
        let event = check("webhook_secret", S1_HEADER, S1_BODY, S1_T + 100).expect("S1 verifies");
        assert_eq!(
            event,
            VerifiedEvent {
                id: "evt_123".into(),
                event_type: "customer.created".into(),
                replay_digest: None,
            }
        );
    }

    #[test]
    fn official_vector_s1_is_reproduced_by_sign() {
        let signed = sign(&key("webhook_secret")[0], S1_T, S1_BODY);
        assert!(S1_HEADER.starts_with(&signed), "{signed}");
    }

    #[test]
    fn official_vector_s2_hmac_primitive() {
        for (payload, expected) in [
            (
                "",
                "f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd",
            ),
            (
                r#"{"obj1":"hello","obj2":"world"}"#,
                "bebb1a643997f419b315ddba19e6f5411e1ce7f810ba6d3617ce72823092f363",
            ),
            (
                "😀",
                "837da296d05c4fe31f61d5d7ead035099d9585a5bcde87de952012a78f0b0c43",
            ),
        ] {
            assert_eq!(
                hex::encode(hmac_sha256(&key("test_secret")[0], &[payload.as_bytes()])),
                expected
            );
        }
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let stale = check("webhook_secret", S1_HEADER, S1_BODY, S1_T + 300 + 100);
        assert_eq!(stale.unwrap_err().reason(), "timestamp_outside_tolerance");
        let future = check("webhook_secret", S1_HEADER, S1_BODY, S1_T - 301);
        assert_eq!(future.unwrap_err().reason(), "timestamp_outside_tolerance");
        assert!(check("webhook_secret", S1_HEADER, S1_BODY, S1_T - 299).is_ok());
    }

    #[test]
    fn tampered_body_and_wrong_secret_are_refused() {
        let mut tampered = S1_BODY.to_vec();
        tampered.extend_from_slice(b"this_changes_the_json");
        assert_eq!(
            check("webhook_secret", S1_HEADER, &tampered, S1_T),
            Err(Rejection::SignatureMismatch)
        );
        // Byte-exact: the same JSON without its trailing newline is another body.
        let trimmed = &S1_BODY[..S1_BODY.len() - 1];
        assert_eq!(
            check("webhook_secret", S1_HEADER, trimmed, S1_T),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check("other_secret", S1_HEADER, S1_BODY, S1_T),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn any_v1_may_match_and_v0_never_counts() {
        let with_extra = format!("{S1_HEADER},v1=bad_signature,v1=00");
        assert!(check("webhook_secret", &with_extra, S1_BODY, S1_T).is_ok());
        let potato_first =
            format!("t={S1_T},v1=potato,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7");
        assert!(check("webhook_secret", &potato_first, S1_BODY, S1_T).is_ok());
        // The same signature offered under v0 only is a downgrade attempt.
        let v0_only = format!("t={S1_T},v0=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7");
        assert_eq!(
            check("webhook_secret", &v0_only, S1_BODY, S1_T)
                .unwrap_err()
                .reason(),
            "malformed_signature"
        );
    }

    #[test]
    fn rotated_secrets_each_verify() {
        let keys = [
            SigningKey::from_text("old_secret").unwrap(),
            SigningKey::from_text("webhook_secret").unwrap(),
        ];
        let hdrs = headers(&[("Stripe-Signature", S1_HEADER)]);
        assert!(verify(&keys, &hdrs, S1_BODY, S1_T, TOLERANCE).is_ok());
    }

    #[test]
    fn malformed_headers_from_the_official_tests_are_refused() {
        for bad in [
            "t=,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v0=63f3",
            "t,v1=,v0=",
            "t,v1=,v0",
            "t,v1=,",
            "t,,",
            ",,",
            "t",
            "v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7",
        ] {
            let reason = check("webhook_secret", bad, S1_BODY, S1_T).unwrap_err().reason();
            assert!(
                matches!(
                    reason,
                    "malformed_signature" | "signature_mismatch" | "malformed_timestamp"
                ),
                "{bad:?} gave {reason}"
            );
        }
    }

    #[test]
    fn missing_or_empty_header_is_missing_signature() {
        let none = verify(
            &key("webhook_secret"),
            &HeaderMap::new(),
            S1_BODY,
            S1_T,
            TOLERANCE,
        );
        assert_eq!(none.unwrap_err().reason(), "missing_signature");
        assert_eq!(
            check("webhook_secret", "", S1_BODY, S1_T).unwrap_err().reason(),
            "missing_signature"
        );
    }

    #[test]
    fn wrong_encoding_is_refused() {
        // The right MAC, base64-encoded instead of hex.
        let tag = hmac_sha256(&key("webhook_secret")[0], &[b"1533204620.", S1_BODY]);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(tag);
        let header = format!("t={S1_T},v1={b64}");
        assert!(check("webhook_secret", &header, S1_BODY, S1_T).is_err());
    }

    #[test]
    fn a_verified_body_without_id_is_invalid_payload() {
        let keys = key("whsec_test");
        let body = br#"{"type":"invoice.paid"}"#;
        let hdrs = headers(&[("Stripe-Signature", &sign(&keys[0], 1000, body))]);
        assert_eq!(
            verify(&keys, &hdrs, body, 1000, TOLERANCE).unwrap_err().reason(),
            "invalid_payload"
        );
    }
}
