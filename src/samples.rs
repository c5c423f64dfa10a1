//! Sample events per provider (`samples/`, built into the binary), signed the way each provider
//! signs: `hookline send-test` and the console's "Send a sample" post them, so the whole path
//! can be watched without a provider account.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::{Provider, WebhookSourceSpec};
use crate::verify::SourceVerifier;

/// One sample body, with placeholders (`{{id}}`, `{{timestamp}}`, `{{timestamp_ms}}`,
/// `{{iso_time}}`) filled in when it is sent.
pub struct Sample {
    /// The directory under `samples/`: the provider's scheme.
    pub scheme: &'static str,
    pub event_type: &'static str,
    template: &'static str,
}

macro_rules! sample {
    ($scheme:literal, $event_type:literal) => {
        Sample {
            scheme: $scheme,
            event_type: $event_type,
            template: include_str!(concat!("../samples/", $scheme, "/", $event_type, ".json")),
        }
    };
}

static SAMPLES: &[Sample] = &[
    sample!("clerk", "organization.created"),
    sample!("clerk", "organizationMembership.created"),
    sample!("clerk", "session.created"),
    sample!("clerk", "user.created"),
    sample!("clerk", "user.deleted"),
    sample!("clerk", "user.updated"),
    sample!("generic-hmac", "stock.depleted"),
    sample!("generic-hmac", "stock.updated"),
    sample!("github", "ping"),
    sample!("github", "pull_request"),
    sample!("github", "push"),
    sample!("resend", "email.bounced"),
    sample!("resend", "email.clicked"),
    sample!("resend", "email.complained"),
    sample!("resend", "email.delivered"),
    sample!("resend", "email.delivery_delayed"),
    sample!("resend", "email.opened"),
    sample!("resend", "email.sent"),
    sample!("standard-webhooks", "order.created"),
    sample!("standard-webhooks", "order.paid"),
    sample!("stripe", "checkout.session.completed"),
    sample!("stripe", "customer.subscription.created"),
    sample!("stripe", "customer.subscription.deleted"),
    sample!("stripe", "customer.subscription.updated"),
    sample!("stripe", "invoice.paid"),
    sample!("stripe", "invoice.payment_failed"),
];

/// The samples directory a provider's events are in (Svix senders use the Standard Webhooks
/// shape).
fn scheme_of(provider: Provider) -> &'static str {
    match provider {
        Provider::Stripe => "stripe",
        Provider::Clerk => "clerk",
        Provider::Resend => "resend",
        Provider::Svix | Provider::StandardWebhooks => "standard-webhooks",
        Provider::Github => "github",
        Provider::GenericHmac => "generic-hmac",
    }
}

/// The samples of a provider.
pub fn of(provider: Provider) -> impl Iterator<Item = &'static Sample> {
    let scheme = scheme_of(provider);
    SAMPLES.iter().filter(move |s| s.scheme == scheme)
}

impl Sample {
    /// The body with its placeholders filled in: `id` in every id, `now` in every time.
    pub fn body(&self, id: &str, now: SystemTime) -> String {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let iso = jiff::Timestamp::try_from(now)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        self.template
            .replace("{{id}}", id)
            .replace("{{timestamp_ms}}", &since_epoch.as_millis().to_string())
            .replace("{{timestamp}}", &since_epoch.as_secs().to_string())
            .replace("{{iso_time}}", &iso)
    }
}

/// A sample request, as the source's provider would send it.
#[derive(Debug)]
pub struct SignedSample {
    pub event_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("there is no {scheme} sample of {wanted}; there are: {available}")]
    NoSuchType {
        scheme: &'static str,
        wanted: String,
        available: String,
    },
}

/// Whether one of the source's handlers takes events of a type.
pub fn routed_by(source: &WebhookSourceSpec) -> impl Fn(&str) -> bool + '_ {
    move |event_type| {
        source.handlers.iter().any(|h| {
            h.target
                .events
                .iter()
                .any(|pattern| wildmatch::WildMatch::new(pattern).matches(event_type))
        })
    }
}

/// A sample of `provider`'s, signed by `signer` (the source's verifier, so it is accepted): of
/// `event_type`, or by default the first sample `routed` (else the first).
pub fn signed(
    provider: Provider,
    signer: &SourceVerifier,
    event_type: Option<&str>,
    routed: impl Fn(&str) -> bool,
) -> Result<SignedSample, SampleError> {
    let sample = match event_type {
        Some(wanted) => of(provider).find(|s| s.event_type == wanted),
        None => of(provider)
            .find(|s| routed(s.event_type))
            .or_else(|| of(provider).next()),
    };
    let Some(sample) = sample else {
        let available: Vec<&str> = of(provider).map(|s| s.event_type).collect();
        return Err(SampleError::NoSuchType {
            scheme: scheme_of(provider),
            wanted: event_type.unwrap_or_default().to_owned(),
            available: available.join(", "),
        });
    };
    let id = hex::encode(rand::random::<[u8; 12]>());
    let now = SystemTime::now();
    let body = sample.body(&id, now).into_bytes();
    let timestamp = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut headers = signer.sign(&format!("msg_{id}"), timestamp, &body);
    headers.push(("Content-Type".into(), "application/json".into()));
    if let Some(name) = signer.event_type_header() {
        headers.push((name.to_owned(), sample.event_type.to_owned()));
    }
    Ok(SignedSample {
        event_type: sample.event_type.to_owned(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Provider;

    /// Every sample is JSON once filled in and, where the body names its type, names its own.
    #[test]
    fn every_sample_is_json_of_its_type() {
        for sample in SAMPLES {
            let body = sample.body("a1b2c3d4e5f60718293a4b5c", SystemTime::now());
            let value: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{}/{}: {e}", sample.scheme, sample.event_type));
            if sample.scheme != "github" {
                assert_eq!(value["type"], sample.event_type, "{}", sample.scheme);
            }
        }
        for provider in [
            Provider::Stripe,
            Provider::Clerk,
            Provider::Resend,
            Provider::Svix,
            Provider::StandardWebhooks,
            Provider::Github,
            Provider::GenericHmac,
        ] {
            assert!(of(provider).next().is_some(), "{provider:?} has samples");
        }
    }

    /// A signed sample is what the source accepts, of the type its handlers route by default.
    #[test]
    fn signed_samples_verify_with_the_source_secret() {
        let svix = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (provider, secret, extra, routed) in [
            ("stripe", "whsec_test", "", "checkout.session.completed"),
            ("clerk", svix, "", "user.created"),
            ("resend", svix, "", "email.bounced"),
            ("standard-webhooks", svix, "", "order.created"),
            ("github", "gh-secret", "", "pull_request"),
            (
                "generic-hmac",
                "shared",
                ", genericHmac: {header: X-Signature, timestampHeader: X-Timestamp, idHeader: X-Id}",
                "stock.depleted",
            ),
        ] {
            let spec: WebhookSourceSpec = serde_yaml::from_str(&format!(
                "{{provider: {provider}, secretRef: {{name: s, key: k}}{extra}, \
                 handlers: [{{name: h, url: 'https://x.example/', events: ['{routed}']}}]}}"
            ))
            .unwrap();
            let verifier = SourceVerifier::new(
                spec.provider,
                spec.generic_hmac.as_ref(),
                &[secret],
                std::time::Duration::from_secs(300),
            )
            .unwrap();
            let sample = signed(spec.provider, &verifier, None, routed_by(&spec)).unwrap();
            assert_eq!(
                sample.event_type, routed,
                "{provider}: the routed type by default"
            );
            let mut headers = http::HeaderMap::new();
            for (name, value) in &sample.headers {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            let event = verifier
                .verify(&headers, &sample.body, now)
                .unwrap_or_else(|e| panic!("{provider}: {e}"));
            assert_eq!(event.event_type, routed);
        }
        let spec: WebhookSourceSpec =
            serde_yaml::from_str("{provider: stripe, secretRef: {name: s, key: k}}").unwrap();
        let verifier =
            SourceVerifier::new(spec.provider, None, &["whsec_test"], std::time::Duration::ZERO).unwrap();
        let err = signed(spec.provider, &verifier, Some("invoice.unknown"), |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("there is no stripe sample of invoice.unknown; there are: "),
            "{err}"
        );
    }
}
