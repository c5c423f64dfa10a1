//! The identity of a delivery target across the database, the dispatcher, the controller and the
//! console: a handler of a source, or a subscription.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    Handler,
    Subscription,
}

impl TargetKind {
    /// The name stored in the database and shown in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handler => "handler",
            Self::Subscription => "subscription",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown target kind {0:?} (handler or subscription)")]
pub struct UnknownTargetKind(pub String);

impl FromStr for TargetKind {
    type Err = UnknownTargetKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "handler" => Ok(Self::Handler),
            "subscription" => Ok(Self::Subscription),
            other => Err(UnknownTargetKind(other.to_owned())),
        }
    }
}

impl TryFrom<String> for TargetKind {
    type Error = UnknownTargetKind;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// A target: namespace, kind and name. A handler's name is `source/handler` (see
/// [`TargetKey::handler`]), a subscription's is the resource's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub namespace: String,
    pub kind: TargetKind,
    pub name: String,
}

impl TargetKey {
    pub fn handler(namespace: &str, source: &str, handler: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            kind: TargetKind::Handler,
            name: handler_name(source, handler),
        }
    }

    pub fn subscription(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            kind: TargetKind::Subscription,
            name: name.to_owned(),
        }
    }

    /// For a handler, the source it belongs to.
    pub fn source(&self) -> Option<&str> {
        match self.kind {
            TargetKind::Handler => self.name.split_once('/').map(|(source, _)| source),
            TargetKind::Subscription => None,
        }
    }

    /// `kind/name`, as in metric labels and log lines: `subscription/acme-crm`,
    /// `handler/stripe/billing-api`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The target name of a source's handler: `source/handler`.
pub fn handler_name(source: &str, handler: &str) -> String {
    format!("{source}/{handler}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_handlers_know_their_source() {
        for kind in [TargetKind::Handler, TargetKind::Subscription] {
            assert_eq!(kind.as_str().parse::<TargetKind>().unwrap(), kind);
        }
        assert!("webhook".parse::<TargetKind>().is_err());
        let handler = TargetKey::handler("billing", "stripe", "api");
        assert_eq!(handler.name, "stripe/api");
        assert_eq!(handler.source(), Some("stripe"));
        assert_eq!(handler.label(), "handler/stripe/api");
        assert_eq!(TargetKey::subscription("billing", "crm").source(), None);
    }
}
