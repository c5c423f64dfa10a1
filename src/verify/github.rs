//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, keyed with the webhook
//! secret's UTF-8 bytes. Neither a timestamp nor `X-GitHub-Delivery` nor `X-GitHub-Event` is
//! signed, so replays are stopped by deduplication on the delivery id and on the body's digest.
//! The legacy SHA-1 `X-Hub-Signature` header is not accepted.

use http::HeaderMap;
use sha2::Digest;

use super::{Rejection, SigningKey, VerifiedEvent, any_matches, header, hmac_sha256};

const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const DELIVERY_HEADER: &str = "x-github-delivery";
const EVENT_HEADER: &str = "x-github-event";

/// The `X-Hub-Signature-256` value GitHub would send for `body`.
pub fn sign(key: &SigningKey, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(key, &[body])))
}

pub(super) fn verify(
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<VerifiedEvent, Rejection> {
    let value =
        header(headers, SIGNATURE_HEADER).ok_or(Rejection::MissingSignature("X-Hub-Signature-256".into()))?;
    let hex_tag = value
        .strip_prefix("sha256=")
        .ok_or(Rejection::MalformedSignature("X-Hub-Signature-256".into()))?;
    let candidate =
        hex::decode(hex_tag).map_err(|_| Rejection::MalformedSignature("X-Hub-Signature-256".into()))?;
    let expected: Vec<_> = keys.iter().map(|k| hmac_sha256(k, &[body])).collect();
    if !any_matches(&expected, &[candidate]) {
        return Err(Rejection::SignatureMismatch);
    }
    let id = header(headers, DELIVERY_HEADER).ok_or(Rejection::MissingEventId("X-GitHub-Delivery".into()))?;
    let event_type =
        header(headers, EVENT_HEADER).ok_or(Rejection::MissingEventType("X-GitHub-Event".into()))?;
    Ok(VerifiedEvent {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
        replay_digest: Some(sha2::Sha256::digest(body).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::test_support::headers;

    fn key(secret: &str) -> SigningKey {
        SigningKey::from_text(secret).unwrap()
    }

    fn check(secret: &str, signature: &str, body: &[u8]) -> Result<VerifiedEvent, Rejection> {
        let hdrs = headers(&[
            ("X-Hub-Signature-256", signature),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-GitHub-Event", "push"),
        ]);
        verify(&[key(secret)], &hdrs, body)
    }

    const G1: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn official_vectors() {
        assert_eq!(sign(&key("It's a Secret to Everybody"), b"Hello, World!"), G1);
        assert_eq!(
            sign(&key("mysecret"), br#"{"foo":"bar"}"#),
            "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"
        );
        let event = check("It's a Secret to Everybody", G1, b"Hello, World!").expect("G1 verifies");
        assert_eq!(event.id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(event.event_type, "push");
    }

    #[test]
    fn negative_cases() {
        let secret = "It's a Secret to Everybody";
        assert_eq!(
            check(secret, G1, b"Hello, World?"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check("mysecret", G1, b"Hello, World!"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            check(secret, "foo", b"Hello, World!").unwrap_err().reason(),
            "malformed_signature"
        );
        let sha1_prefix = G1.replacen("sha256=", "sha1=", 1);
        assert_eq!(
            check(secret, &sha1_prefix, b"Hello, World!")
                .unwrap_err()
                .reason(),
            "malformed_signature"
        );
        assert_eq!(
            check(secret, "sha256=zz", b"Hello, World!").unwrap_err().reason(),
            "malformed_signature"
        );
        let missing = verify(
            &[key(secret)],
            &headers(&[("X-GitHub-Event", "push")]),
            b"Hello, World!",
        );
        assert_eq!(missing.unwrap_err().reason(), "missing_signature");
    }

    #[test]
    fn delivery_and_event_headers_are_required() {
        let secret = "It's a Secret to Everybody";
        let no_id = headers(&[("X-Hub-Signature-256", G1), ("X-GitHub-Event", "push")]);
        assert_eq!(
            verify(&[key(secret)], &no_id, b"Hello, World!")
                .unwrap_err()
                .reason(),
            "missing_event_id"
        );
        let no_type = headers(&[("X-Hub-Signature-256", G1), ("X-GitHub-Delivery", "d1")]);
        assert_eq!(
            verify(&[key(secret)], &no_type, b"Hello, World!")
                .unwrap_err()
                .reason(),
            "missing_event_type"
        );
    }

    #[test]
    fn either_of_two_rotated_secrets_verifies() {
        let hdrs = headers(&[
            ("X-Hub-Signature-256", G1),
            ("X-GitHub-Delivery", "d1"),
            ("X-GitHub-Event", "push"),
        ]);
        let keys = [key("new secret"), key("It's a Secret to Everybody")];
        assert!(verify(&keys, &hdrs, b"Hello, World!").is_ok());
    }
}
