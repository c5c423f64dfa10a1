//! Svix (Clerk and Resend send through it): Standard Webhooks under `svix-*` header names, with
//! the unbranded `webhook-*` names accepted too, as the Svix libraries do.

use std::time::Duration;

use http::HeaderMap;

use super::standard_webhooks::{HeaderNames, verify_with_names};
use super::{Rejection, SigningKey, VerifiedEvent};

const SVIX_HEADERS: HeaderNames = HeaderNames {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
};

pub(super) fn verify(
    keys: &[SigningKey],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<VerifiedEvent, Rejection> {
    verify_with_names(&SVIX_HEADERS, keys, headers, body, now, tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::standard_webhooks::{decode_secret, sign};
    use crate::verify::test_support::headers;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn official_vector_x1_verifies_under_svix_headers() {
        let hdrs = headers(&[
            ("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("svix-timestamp", "1614265330"),
            (
                "svix-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let keys = [decode_secret(SECRET).unwrap()];
        let event =
            verify(&keys, &hdrs, br#"{"test": 2432232314}"#, 1614265330, TOLERANCE).expect("verifies");
        assert_eq!(event.id, "msg_p5jXN8AQM9LWM0D4loKWxJek");
    }

    #[test]
    fn resend_event_with_unbranded_headers_verifies_and_yields_its_type() {
        let key = decode_secret(SECRET).unwrap();
        let body =
            br#"{"type":"email.delivered","created_at":"2024-02-22T23:41:12.126Z","data":{"email_id":"e1"}}"#;
        let sig = sign(&key, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_700_000_000, body);
        let hdrs = headers(&[
            ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
            ("webhook-timestamp", "1700000000"),
            ("webhook-signature", &sig),
        ]);
        let event = verify(&[key], &hdrs, body, 1_700_000_010, TOLERANCE).expect("verifies");
        assert_eq!(event.event_type, "email.delivered");
    }

    #[test]
    fn svix_headers_take_precedence_over_unbranded_ones() {
        let key = decode_secret(SECRET).unwrap();
        let body = br#"{"type":"user.created"}"#;
        let sig = sign(&key, "msg_real", 1_700_000_000, body);
        let hdrs = headers(&[
            ("svix-id", "msg_real"),
            ("svix-timestamp", "1700000000"),
            ("svix-signature", &sig),
            ("webhook-id", "msg_decoy"),
        ]);
        assert_eq!(
            verify(&[key], &hdrs, body, 1_700_000_000, TOLERANCE).unwrap().id,
            "msg_real"
        );
    }

    #[test]
    fn missing_svix_signature_is_named_after_the_svix_header() {
        let hdrs = headers(&[("svix-id", "msg_1"), ("svix-timestamp", "1700000000")]);
        let err = verify(
            &[decode_secret(SECRET).unwrap()],
            &hdrs,
            b"{}",
            1_700_000_000,
            TOLERANCE,
        )
        .unwrap_err();
        assert_eq!(err, Rejection::MissingSignature("svix-signature".into()));
    }
}
