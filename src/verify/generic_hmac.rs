//! Generic HMAC: `<header>: <prefix><encode(HMAC(secret, content))>` where content is the body, or
//! `"<timestamp>.<body>"` when a timestamp header is configured. Algorithm SHA-1/256/512, hex or
//! base64, all from the source's `genericHmac` settings.

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Digest;

use super::{Rejection, SigningKey, VerifiedEvent, any_matches, body_event_type, check_timestamp, header};
use crate::api::GenericHmac;
use crate::api::source::{HmacAlgorithm, SignatureEncoding};

fn mac(algorithm: HmacAlgorithm, key: &SigningKey, parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac =
            <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key.bytes(), parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key.bytes(), parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key.bytes(), parts),
    }
}

/// The signature header value a sender using these settings would send. `timestamp` is used
/// (and required) only when the settings name a timestamp header.
pub fn sign(settings: &GenericHmac, key: &SigningKey, timestamp: Option<i64>, body: &[u8]) -> String {
    let ts = timestamp.map(|t| t.to_string());
    let tag = match (&settings.timestamp_header, &ts) {
        (Some(_), Some(ts)) => mac(settings.algorithm, key, &[ts.as_bytes(), b".", body]),
        _ => mac(settings.algorithm, key, &[body]),
    };
    let encoded = match settings.encoding {
        SignatureEncoding::Hex => hex::encode(tag),
        SignatureEncoding::Base64 => STANDARD.encode(tag),
    };
    format!("{}{encoded}", settings.prefix.as_deref().unwrap_or(""))
}

pub(super) fn verify(
    settings: &GenericHmac,
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedEvent, Rejection> {
    let name = |n: &String| Cow::Owned(n.clone());
    let value = header(headers, &settings.header)
        .ok_or_else(|| Rejection::MissingSignature(name(&settings.header)))?;
    let malformed = || Rejection::MalformedSignature(name(&settings.header));
    let encoded = value
        .strip_prefix(settings.prefix.as_deref().unwrap_or(""))
        .ok_or_else(malformed)?;
    let candidate = match settings.encoding {
        SignatureEncoding::Hex => hex::decode(encoded).ok(),
        SignatureEncoding::Base64 => STANDARD.decode(encoded).ok(),
    }
    .ok_or_else(malformed)?;

    let timestamp = match &settings.timestamp_header {
        Some(ts_header) => {
            Some(header(headers, ts_header).ok_or_else(|| Rejection::MissingTimestamp(name(ts_header)))?)
        }
        None => None,
    };
    let expected: Vec<_> = keys
        .iter()
        .map(|k| match timestamp {
            Some(ts) => mac(settings.algorithm, k, &[ts.as_bytes(), b".", body]),
            None => mac(settings.algorithm, k, &[body]),
        })
        .collect();
    if !any_matches(&expected, &[candidate]) {
        return Err(Rejection::SignatureMismatch);
    }
    if let (Some(ts), Some(ts_header)) = (timestamp, &settings.timestamp_header) {
        check_timestamp(ts, name(ts_header), now, tolerance)?;
    }
    // What the signature covers, which a replay cannot change (a sender's retry with a new
    // timestamp keeps its id, and is deduplicated on that).
    let signed_digest: [u8; 32] = match timestamp {
        Some(ts) => sha2::Sha256::new()
            .chain_update(ts.as_bytes())
            .chain_update(b".")
            .chain_update(body)
            .finalize()
            .into(),
        None => sha2::Sha256::digest(body).into(),
    };
    let (id, replay_digest) = match &settings.id_header {
        // The id header is not signed: deduplicate on the signed content too.
        Some(id_header) => (
            header(headers, id_header)
                .ok_or_else(|| Rejection::MissingEventId(name(id_header)))?
                .to_owned(),
            Some(signed_digest),
        ),
        // Without an id header, identical bodies are the same event (a sender's retry may sign
        // a new timestamp).
        None => (hex::encode(sha2::Sha256::digest(body)), None),
    };
    let event_type = match &settings.event_type_header {
        Some(type_header) => header(headers, type_header)
            .ok_or_else(|| Rejection::MissingEventType(name(type_header)))?
            .to_owned(),
        None => body_event_type(body),
    };
    Ok(VerifiedEvent {
        id,
        event_type,
        replay_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::headers;

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn settings(algorithm: HmacAlgorithm, encoding: SignatureEncoding, prefix: Option<&str>) -> GenericHmac {
        GenericHmac {
            header: "X-Signature".into(),
            algorithm,
            encoding,
            prefix: prefix.map(str::to_owned),
            timestamp_header: None,
            id_header: Some("X-Event-Id".into()),
            event_type_header: None,
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_text("generic-secret").unwrap()
    }

    #[test]
    fn every_algorithm_and_encoding_round_trips() {
        let body = br#"{"type":"order.created","id":1}"#;
        for algorithm in [HmacAlgorithm::Sha1, HmacAlgorithm::Sha256, HmacAlgorithm::Sha512] {
            for encoding in [SignatureEncoding::Hex, SignatureEncoding::Base64] {
                let s = settings(algorithm, encoding, Some("sha="));
                let sig = sign(&s, &key(), None, body);
                let hdrs = headers(&[("X-Signature", &sig), ("X-Event-Id", "e-1")]);
                let event = verify(&s, &[key()], &hdrs, body, 0, TOLERANCE)
                    .unwrap_or_else(|e| panic!("{algorithm:?}/{encoding:?}: {e}"));
                assert_eq!(
                    event,
                    VerifiedEvent {
                        id: "e-1".into(),
                        event_type: "order.created".into(),
                        replay_digest: Some(sha2::Sha256::digest(body).into()),
                    }
                );
            }
        }
    }

    #[test]
    fn matches_a_known_hmac_sha256_hex_value() {
        // GitHub's G1 vector is a plain hex HMAC-SHA256 of the body.
        let s = settings(HmacAlgorithm::Sha256, SignatureEncoding::Hex, None);
        let k = SigningKey::from_text("It's a Secret to Everybody").unwrap();
        assert_eq!(
            sign(&s, &k, None, b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn negative_cases() {
        let s = settings(HmacAlgorithm::Sha256, SignatureEncoding::Hex, Some("sha256="));
        let body = b"{}";
        let good = sign(&s, &key(), None, body);
        let run = |sig: &str, body: &[u8]| {
            verify(
                &s,
                &[key()],
                &headers(&[("X-Signature", sig), ("X-Event-Id", "e")]),
                body,
                0,
                TOLERANCE,
            )
        };
        assert_eq!(run(&good, b"{ }"), Err(Rejection::SignatureMismatch));
        assert_eq!(
            run(&good.replacen("sha256=", "sha1=", 1), body)
                .unwrap_err()
                .reason(),
            "malformed_signature"
        );
        assert_eq!(
            run("sha256=not-hex", body).unwrap_err().reason(),
            "malformed_signature"
        );
        let b64 = format!("sha256={}", STANDARD.encode(hex::decode(&good[7..]).unwrap()));
        assert_eq!(run(&b64, body).unwrap_err().reason(), "malformed_signature");
        let wrong = SigningKey::from_text("other").unwrap();
        assert_eq!(
            run(&sign(&s, &wrong, None, body), body),
            Err(Rejection::SignatureMismatch)
        );
        let none = verify(&s, &[key()], &headers(&[("X-Event-Id", "e")]), body, 0, TOLERANCE);
        assert_eq!(none, Err(Rejection::MissingSignature("X-Signature".into())));
    }

    #[test]
    fn timestamp_header_is_signed_and_checked() {
        let mut s = settings(HmacAlgorithm::Sha256, SignatureEncoding::Base64, None);
        s.timestamp_header = Some("X-Timestamp".into());
        let body = br#"{"type":"a"}"#;
        let sig = sign(&s, &key(), Some(1000), body);
        let hdrs = |ts: &str| headers(&[("X-Signature", &sig), ("X-Timestamp", ts), ("X-Event-Id", "e")]);
        assert!(verify(&s, &[key()], &hdrs("1000"), body, 1100, TOLERANCE).is_ok());
        assert_eq!(
            verify(&s, &[key()], &hdrs("1000"), body, 1301, TOLERANCE)
                .unwrap_err()
                .reason(),
            "timestamp_outside_tolerance"
        );
        assert_eq!(
            verify(&s, &[key()], &hdrs("1000"), body, 699, TOLERANCE)
                .unwrap_err()
                .reason(),
            "timestamp_outside_tolerance"
        );
        // A different timestamp changes the signed content.
        assert_eq!(
            verify(&s, &[key()], &hdrs("1001"), body, 1001, TOLERANCE),
            Err(Rejection::SignatureMismatch)
        );
        let no_ts = headers(&[("X-Signature", &sig), ("X-Event-Id", "e")]);
        assert_eq!(
            verify(&s, &[key()], &no_ts, body, 1000, TOLERANCE)
                .unwrap_err()
                .reason(),
            "missing_timestamp"
        );
    }

    #[test]
    fn without_an_id_header_the_body_hash_is_the_id() {
        let mut s = settings(HmacAlgorithm::Sha256, SignatureEncoding::Hex, None);
        s.id_header = None;
        let body = b"payload";
        let hdrs = headers(&[("X-Signature", &sign(&s, &key(), None, body))]);
        let event = verify(&s, &[key()], &hdrs, body, 0, TOLERANCE).unwrap();
        assert_eq!(event.id, hex::encode(sha2::Sha256::digest(body)));
        assert_eq!(event.event_type, "unknown");
    }
}
