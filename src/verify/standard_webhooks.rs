//! Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …` over
//! `"<id>.<timestamp>.<body>"`, HMAC-SHA256 keyed with the base64-decoded `whsec_` secret. Also the
//! signer for every delivery Hookline sends.

use std::time::Duration;

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use http::HeaderMap;

use super::{
    Rejection, SecretError, SigningKey, VerifiedEvent, any_matches, body_event_type, check_timestamp, header,
    hmac_sha256,
};

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
pub const SECRET_PREFIX: &str = "whsec_";

/// Header names of one branding of the scheme (Svix sends `svix-*`).
pub(super) struct HeaderNames {
    pub id: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
}

pub(super) const STANDARD_HEADERS: HeaderNames = HeaderNames {
    id: ID_HEADER,
    timestamp: TIMESTAMP_HEADER,
    signature: SIGNATURE_HEADER,
};

/// Secrets decode as leniently as the reference libraries: padding optional, trailing bits ignored.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a `whsec_…` secret (prefix optional) into key bytes.
pub fn decode_secret(secret: &str) -> Result<SigningKey, SecretError> {
    let encoded = secret.trim().strip_prefix(SECRET_PREFIX).unwrap_or(secret.trim());
    if encoded.is_empty() {
        return Err(SecretError::Empty);
    }
    let bytes = LENIENT.decode(encoded).map_err(|_| SecretError::NotBase64)?;
    if bytes.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(SigningKey(bytes))
}

/// The signing keys of a Secret value: one or more whitespace-separated `whsec_` secrets (several
/// while rotating: each signs). The one way a target's signing secret is read, by the dispatcher
/// and by the controller when it checks one.
pub fn decode_secrets(value: &str) -> Result<Vec<SigningKey>, SecretError> {
    let keys = value
        .split_whitespace()
        .map(decode_secret)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(keys)
}

/// Encodes key bytes as a `whsec_` secret.
pub fn encode_secret(key_bytes: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key_bytes))
}

/// The `webhook-signature` value for one key: `v1,<base64>`.
pub fn sign(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac_sha256(
        key,
        &[
            msg_id.as_bytes(),
            b".",
            timestamp.to_string().as_bytes(),
            b".",
            body,
        ],
    );
    format!("v1,{}", STANDARD.encode(tag))
}

/// The `webhook-signature` value during a rotation: one `v1` entry per key, space-separated.
pub fn sign_all(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| sign(key, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn verify(
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedEvent, Rejection> {
    verify_with_names(&STANDARD_HEADERS, keys, headers, body, now, tolerance)
}

/// Verification for any branding of the scheme: `names` are tried first, then the unbranded
/// `webhook-*` headers.
pub(super) fn verify_with_names(
    names: &HeaderNames,
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedEvent, Rejection> {
    let get = |branded: &str, standard: &str| header(headers, branded).or_else(|| header(headers, standard));
    let signature =
        get(names.signature, SIGNATURE_HEADER).ok_or(Rejection::MissingSignature(names.signature.into()))?;
    let id = get(names.id, ID_HEADER).ok_or(Rejection::MissingEventId(names.id.into()))?;
    let timestamp_text =
        get(names.timestamp, TIMESTAMP_HEADER).ok_or(Rejection::MissingTimestamp(names.timestamp.into()))?;
    // The reference libraries sign the parsed integer, so parse before computing.
    let timestamp: i64 = timestamp_text
        .parse()
        .ok()
        .filter(|t| *t >= 0)
        .ok_or(Rejection::MalformedTimestamp(names.timestamp.into()))?;

    let mut candidates = Vec::new();
    let mut saw_entry = false;
    for entry in signature.split(' ').filter(|e| !e.is_empty()) {
        let (version, encoded) = entry
            .split_once(',')
            .ok_or(Rejection::MalformedSignature(names.signature.into()))?;
        saw_entry = true;
        // Only v1 (HMAC-SHA256); other versions such as v1a are skipped, per the spec.
        if version == "v1" {
            candidates.extend(STANDARD.decode(encoded).ok());
        }
    }
    if !saw_entry {
        return Err(Rejection::MalformedSignature(names.signature.into()));
    }
    let ts = timestamp.to_string();
    let expected: Vec<_> = keys
        .iter()
        .map(|k| hmac_sha256(k, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]))
        .collect();
    if !any_matches(&expected, &candidates) {
        return Err(Rejection::SignatureMismatch);
    }
    check_timestamp(timestamp_text, names.timestamp, now, tolerance)?;
    // The id is part of the signed content.
    Ok(VerifiedEvent {
        id: id.to_owned(),
        event_type: body_event_type(body),
        replay_digest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::headers;

    const X1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const X1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const X1_TS: i64 = 1614265330;
    const X1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const X1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn keys(secret: &str) -> Vec<SigningKey> {
        vec![decode_secret(secret).expect("valid secret")]
    }

    fn check(secret: &str, signature: &str, body: &[u8], now: i64) -> Result<VerifiedEvent, Rejection> {
        let hdrs = headers(&[
            ("webhook-id", X1_ID),
            ("webhook-timestamp", &X1_TS.to_string()),
            ("webhook-signature", signature),
        ]);
        verify(&keys(secret), &hdrs, body, now, TOLERANCE)
    }

    #[test]
    fn official_vectors_sign() {
        assert_eq!(sign(&keys(X1_SECRET)[0], X1_ID, X1_TS, X1_BODY), X1_SIG);
        let x2 = sign(
            &keys("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")[0],
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(x2, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn official_large_payload_vectors_sign() {
        for (n, expected) in [
            (1024 * 1024, "v1,txpEUxqWZJ5nteTnymUVa+7C4NHpBeXJ6CsBAW0c3/A="),
            (256 * 1024, "v1,Mw4Pe2WgApuT7NSqnSq0PQPV9gbLdggCl9B865x5Xh0="),
            (256 * 1024 - 1, "v1,NTItnqyWMoFhk2Bbe5V/BMdcFRWgcSQaTgqLHX7FC7c="),
        ] {
            assert_eq!(
                sign(&keys(X1_SECRET)[0], X1_ID, X1_TS, &vec![b'a'; n]),
                expected,
                "N = {n}"
            );
        }
    }

    #[test]
    fn official_vector_verifies_with_or_without_prefix() {
        let event = check(X1_SECRET, X1_SIG, X1_BODY, X1_TS).expect("X1 verifies");
        assert_eq!(event.id, X1_ID);
        assert_eq!(event.event_type, "unknown", "the X1 body has no type");
        assert!(check("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", X1_SIG, X1_BODY, X1_TS).is_ok());
    }

    #[test]
    fn unpadded_secrets_decode_like_padded_ones() {
        for secret in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr",
        ] {
            let padded = format!("{secret}{}", "=".repeat((4 - secret.len() % 4) % 4));
            assert_eq!(
                decode_secret(secret).unwrap().0,
                decode_secret(&padded).unwrap().0
            );
        }
    }

    #[test]
    fn empty_and_non_base64_secrets_are_refused() {
        assert_eq!(decode_secret("").unwrap_err(), SecretError::Empty);
        assert_eq!(decode_secret("whsec_").unwrap_err(), SecretError::Empty);
        assert_eq!(
            decode_secret("whsec_not base64!").unwrap_err(),
            SecretError::NotBase64
        );
    }

    #[test]
    fn changed_last_character_does_not_verify() {
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            check(X1_SECRET, bad, X1_BODY, X1_TS),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_skipped() {
        let junk = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        let multi = format!("{junk} v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {X1_SIG} {junk}");
        assert!(check(X1_SECRET, &multi, X1_BODY, X1_TS).is_ok());
        let only_bad = "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=";
        assert_eq!(
            check(X1_SECRET, only_bad, X1_BODY, X1_TS),
            Err(Rejection::SignatureMismatch)
        );
        let as_v1a = X1_SIG.replacen("v1,", "v1a,", 1);
        assert_eq!(
            check(X1_SECRET, &as_v1a, X1_BODY, X1_TS),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn partial_signatures_do_not_verify() {
        for partial in ["v1,", &X1_SIG[..8]] {
            assert_eq!(
                check(X1_SECRET, partial, X1_BODY, X1_TS),
                Err(Rejection::SignatureMismatch),
                "{partial}"
            );
        }
    }

    #[test]
    fn timestamps_beyond_tolerance_either_way_are_refused() {
        for now in [X1_TS + 301, X1_TS - 301] {
            assert_eq!(
                check(X1_SECRET, X1_SIG, X1_BODY, now).unwrap_err().reason(),
                "timestamp_outside_tolerance"
            );
        }
        assert!(check(X1_SECRET, X1_SIG, X1_BODY, X1_TS + 300).is_ok());
    }

    #[test]
    fn tampered_body_and_wrong_secret_are_refused() {
        assert_eq!(
            check(X1_SECRET, X1_SIG, br#"{"test":2432232314}"#, X1_TS),
            Err(Rejection::SignatureMismatch)
        );
        let other = encode_secret(b"another secret of enough length");
        assert_eq!(
            check(&other, X1_SIG, X1_BODY, X1_TS),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let k = keys(X1_SECRET);
        let ts = X1_TS.to_string();
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("webhook-id", X1_ID), ("webhook-timestamp", &ts)],
                "missing_signature",
            ),
            (
                &[("webhook-timestamp", &ts), ("webhook-signature", X1_SIG)],
                "missing_event_id",
            ),
            (
                &[("webhook-id", X1_ID), ("webhook-signature", X1_SIG)],
                "missing_timestamp",
            ),
            (
                &[
                    ("webhook-id", X1_ID),
                    ("webhook-timestamp", "soon"),
                    ("webhook-signature", X1_SIG),
                ],
                "malformed_timestamp",
            ),
            (
                &[
                    ("webhook-id", X1_ID),
                    ("webhook-timestamp", "-161426533"),
                    ("webhook-signature", X1_SIG),
                ],
                "malformed_timestamp",
            ),
            (
                &[
                    ("webhook-id", X1_ID),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", "g0hM9SsE"),
                ],
                "malformed_signature",
            ),
        ];
        for (pairs, reason) in cases {
            let got = verify(&k, &headers(pairs), X1_BODY, X1_TS, TOLERANCE).unwrap_err();
            assert_eq!(got.reason(), reason, "{pairs:?}");
        }
    }

    #[test]
    fn rotation_signs_with_every_key_and_either_verifies() {
        let old = decode_secret(X1_SECRET).unwrap();
        let new = decode_secret(&encode_secret(b"0123456789abcdef0123456789abcdef")).unwrap();
        let both = sign_all(&[new.clone(), old.clone()], X1_ID, X1_TS, X1_BODY);
        assert_eq!(both.split(' ').count(), 2);
        let hdrs = headers(&[
            ("webhook-id", X1_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &both),
        ]);
        for key in [old, new] {
            assert!(verify(&[key], &hdrs, X1_BODY, X1_TS, TOLERANCE).is_ok());
        }
    }
}
