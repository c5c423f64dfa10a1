//! Why a target's deliveries are held back instead of sent. One list of reasons, worded once:
//! the dispatcher releases deliveries with it, and the admin API, the console, the
//! `hookline_deliveries_held` metric and standalone's start-up warnings show it.

use std::time::Duration;

use super::Target;
use super::egress::EgressRefusal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// `spec.paused` is true.
    Paused,
    /// Paused while running: a 410 Gone from the endpoint, or an operator.
    PausedAtRuntime(String),
    /// The circuit breaker is open after repeated failures.
    CircuitOpen,
    /// A `secretRef` that does not resolve.
    SigningSecret(String),
    /// A Secret its endpoint settings read (headers, TLS, OAuth2) that does not resolve or
    /// holds something unusable.
    EndpointSecret(String),
    /// The egress policy refuses the URL.
    Egress(EgressRefusal),
    /// A `transform` or `ordering.key` that does not compile: sending without it would send
    /// the wrong body, or out of order.
    ExpressionInvalid(String),
}

impl Hold {
    /// A stable name: the metric's `reason` label and the admin API's `held.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::PausedAtRuntime(_) => "paused_at_runtime",
            Self::CircuitOpen => "circuit_open",
            Self::SigningSecret(_) => "signing_secret_unavailable",
            Self::EndpointSecret(_) => "endpoint_secret_unavailable",
            Self::Egress(EgressRefusal::PrivateNotAllowed(_)) => "private_network_not_allowed",
            Self::Egress(EgressRefusal::Forbidden(_)) => "url_not_allowed",
            Self::ExpressionInvalid(_) => "expression_invalid",
        }
    }

    /// How long the dispatcher waits before looking at a held delivery again.
    pub fn recheck_after(&self) -> Duration {
        match self {
            Self::Paused | Self::PausedAtRuntime(_) => Duration::from_secs(30),
            Self::CircuitOpen | Self::SigningSecret(_) | Self::EndpointSecret(_) => Duration::from_secs(5),
            Self::Egress(_) => Duration::from_secs(60),
            Self::ExpressionInvalid(_) => Duration::from_secs(10),
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused => write!(f, "paused (spec.paused is true)"),
            Self::PausedAtRuntime(why) => write!(f, "paused: {why}"),
            Self::CircuitOpen => write!(
                f,
                "circuit open: the endpoint failed too often; deliveries wait for the next probe"
            ),
            Self::SigningSecret(problem) => write!(f, "no signing secret: {problem}"),
            Self::EndpointSecret(problem) => write!(f, "cannot reach the endpoint as configured: {problem}"),
            Self::Egress(EgressRefusal::PrivateNotAllowed(why)) => {
                write!(f, "{why}; set allowPrivateNetworks: true to allow it")
            }
            Self::Egress(EgressRefusal::Forbidden(why)) => write!(f, "URL not allowed: {why}"),
            Self::ExpressionInvalid(problem) => write!(f, "expression does not compile: {problem}"),
        }
    }
}

/// What the configuration alone holds a target for: paused, its secret, its URL. `egress` is
/// the egress verdict on its URL (see `egress::refusal`).
pub fn configured(target: &Target, egress: Option<EgressRefusal>) -> Option<Hold> {
    if target.spec.paused {
        return Some(Hold::Paused);
    }
    if let Some(Err(problem)) = &target.signing {
        return Some(Hold::SigningSecret(problem.to_string()));
    }
    if let Err(problem) = &target.endpoint {
        return Some(Hold::EndpointSecret(problem.to_string()));
    }
    // A filter that does not compile is settled at ingest (`filtered_error`), not held.
    if let Some(problem) = target.expressions.problems.iter().find(|p| p.field != "filter") {
        return Some(Hold::ExpressionInvalid(problem.to_string()));
    }
    egress.map(Hold::Egress)
}

/// The configuration's hold, else what the running system adds: a runtime pause or an open
/// circuit.
pub fn current(
    configured: Option<Hold>,
    paused_at_runtime: Option<&str>,
    circuit_open: bool,
) -> Option<Hold> {
    configured
        .or_else(|| paused_at_runtime.map(|why| Hold::PausedAtRuntime(why.to_owned())))
        .or(circuit_open.then_some(Hold::CircuitOpen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, GeneratedSecrets, Secrets};

    fn with(extra: &str, check: impl FnOnce(&Target)) {
        let yaml = format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: local, namespace: default}}\n\
             spec: {{url: 'http://127.0.0.1:9999/', events: ['*']{extra}}}\n"
        );
        let subscription = serde_yaml::from_str(&yaml).unwrap();
        let catalog = Catalog::build(
            &[],
            &[subscription],
            &Secrets::default(),
            GeneratedSecrets::InDatabase,
        );
        check(catalog.targets().next().unwrap());
    }

    #[test]
    fn configuration_comes_first_then_the_runtime() {
        let loopback = EgressRefusal::PrivateNotAllowed("127.0.0.1 is a loopback address".into());
        with("", |target| {
            let held = configured(target, Some(loopback.clone())).unwrap();
            assert_eq!(held.reason(), "private_network_not_allowed");
            assert_eq!(
                held.to_string(),
                "127.0.0.1 is a loopback address; set allowPrivateNetworks: true to allow it"
            );
            assert_eq!(configured(target, None), None);
        });
        with(", paused: true", |target| {
            assert_eq!(configured(target, Some(loopback.clone())), Some(Hold::Paused));
        });
        with(", secretRef: {name: s, key: k}", |target| {
            let missing = configured(target, None).unwrap();
            assert_eq!(missing.reason(), "signing_secret_unavailable");
        });

        assert_eq!(
            current(Some(Hold::Paused), Some("410 Gone"), true),
            Some(Hold::Paused)
        );
        assert_eq!(
            current(None, Some("410 Gone"), true),
            Some(Hold::PausedAtRuntime("410 Gone".into()))
        );
        assert_eq!(current(None, None, true), Some(Hold::CircuitOpen));
        assert_eq!(current(None, None, false), None);
    }
}
