//! Generic HMAC settings of every shape: what Hookline signs with them it verifies, and crafted
//! signature headers are refused without a panic.
#![no_main]

use std::time::Duration;

use hookline::api::source::{HmacAlgorithm, SignatureEncoding};
use hookline::api::{GenericHmac, Provider};
use hookline::verify::{SourceVerifier, sign_headers};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(4, |&b| b == 0xFF);
    let (prefix, secret, signature, body) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    let settings = GenericHmac {
        header: "x-signature".into(),
        algorithm: [HmacAlgorithm::Sha1, HmacAlgorithm::Sha256, HmacAlgorithm::Sha512][(flags % 3) as usize],
        encoding: if flags & 4 == 0 {
            SignatureEncoding::Hex
        } else {
            SignatureEncoding::Base64
        },
        prefix: (flags & 8 != 0).then(|| String::from_utf8_lossy(prefix).into_owned()),
        timestamp_header: (flags & 16 != 0).then(|| "x-timestamp".into()),
        id_header: (flags & 32 != 0).then(|| "x-event-id".into()),
        event_type_header: (flags & 64 != 0).then(|| "x-event-type".into()),
    };
    // Admission refuses other prefixes (see api::source::GenericHmac).
    let printable = |p: &[u8]| {
        p.first().is_some_and(|b| b.is_ascii_graphic())
            && p.last().is_some_and(|b| b.is_ascii_graphic())
            && p.iter().all(|&b| (0x20..0x7f).contains(&b))
    };
    if flags & 8 != 0 && !printable(prefix) {
        return;
    }
    let secret = String::from_utf8_lossy(secret);
    let Ok(verifier) = SourceVerifier::new(
        Provider::GenericHmac,
        Some(&settings),
        &[&secret],
        Duration::from_secs(300),
    ) else {
        return; // an empty secret is refused up front
    };

    // Round trip: a request Hookline signs with these settings verifies.
    let signed = sign_headers(
        Provider::GenericHmac,
        Some(&settings),
        &secret,
        "evt_fuzz",
        NOW,
        body,
    )
    .expect("signs");
    let mut headers = HeaderMap::new();
    let mut representable = true;
    for (name, value) in &signed {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => representable = false, // a prefix no HTTP header can carry
        }
    }
    if flags & 64 != 0 {
        headers.append("x-event-type", HeaderValue::from_static("fuzz.event"));
    }
    if representable {
        let result = verifier.verify(&headers, body, NOW);
        assert!(
            result.is_ok() || result.as_ref().is_err_and(|r| r.reason() == "invalid_payload"),
            "signed with {settings:?}, refused: {result:?}"
        );
    }

    // A crafted signature header: refused or accepted, never a panic.
    if let Ok(value) = HeaderValue::from_bytes(signature) {
        headers.insert("x-signature", value);
        let _ = verifier.verify(&headers, body, NOW);
    }
});
