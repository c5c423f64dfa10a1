//! Every provider's signature, timestamp and id headers, as a sender could craft them: the
//! verifier answers with a rejection or an event, never a panic.
#![no_main]

use std::time::Duration;

use hookline::api::Provider;
use hookline::verify::SourceVerifier;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

/// Header names each scheme reads; the fuzz input gives their values.
const SCHEMES: &[(Provider, &str, &[&str])] = &[
    (Provider::Stripe, "whsec_fuzz", &["stripe-signature"]),
    (
        Provider::Svix,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &[
            "svix-signature",
            "svix-timestamp",
            "svix-id",
            "webhook-signature",
            "webhook-timestamp",
            "webhook-id",
        ],
    ),
    (
        Provider::StandardWebhooks,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &["webhook-signature", "webhook-timestamp", "webhook-id"],
    ),
    (
        Provider::Github,
        "fuzz-secret",
        &["x-hub-signature-256", "x-github-delivery", "x-github-event"],
    ),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (provider, secret, names) = SCHEMES[selector as usize % SCHEMES.len()];
    let verifier =
        SourceVerifier::new(provider, None, &[secret], Duration::from_secs(300)).expect("valid secret");
    // Fields separated by 0xFF (never valid in a header value): one per header, then the body.
    let mut fields = rest.split(|&b| b == 0xFF);
    let mut headers = HeaderMap::new();
    for name in names {
        let Some(value) = fields.next() else { break };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let body: Vec<u8> = fields.flat_map(|f| f.iter().copied()).collect();
    let _ = verifier.verify(&headers, &body, NOW);
});
