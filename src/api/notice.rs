//! Operational events: what Hookline publishes into a target's namespace when the target starts
//! failing or recovers. Subscriptions that name `hookline.*` types in `events` receive them like
//! published events (docs/notifications.md); their types and `data` are part of the API.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::TargetKey;

/// The prefix of every operational event type. Only patterns that start with it select
/// operational events: a subscription to `*` does not get them unasked.
pub const PREFIX: &str = "hookline.";
pub const CIRCUIT_OPENED: &str = "hookline.target.circuit_opened";
pub const PAUSED: &str = "hookline.target.paused";
pub const RECOVERED: &str = "hookline.target.recovered";
pub const DELIVERY_DEAD: &str = "hookline.delivery.dead";

/// Something that happened to a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub target: TargetKey,
    pub at: DateTime<Utc>,
    pub what: Happened,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    /// The circuit breaker opened after `failures` consecutive failures (not when a half-open
    /// probe fails: that is the same opening).
    CircuitOpened {
        failures: u32,
        last_error: Option<String>,
    },
    /// Paused: by a 410 Gone from the endpoint, or by hand.
    Paused { reason: String },
    /// Sending again: the circuit closed, or the target was resumed.
    Recovered { from: Recovery },
    /// A delivery used its last attempt.
    DeliveryDead {
        delivery: Uuid,
        event: Uuid,
        event_type: String,
        attempts: i32,
        last_error: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    CircuitClosed,
    Resumed,
}

impl Notice {
    pub fn new(target: TargetKey, what: Happened) -> Self {
        Self {
            target,
            at: Utc::now(),
            what,
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self.what {
            Happened::CircuitOpened { .. } => CIRCUIT_OPENED,
            Happened::Paused { .. } => PAUSED,
            Happened::Recovered { .. } => RECOVERED,
            Happened::DeliveryDead { .. } => DELIVERY_DEAD,
        }
    }

    /// The event's `data`: the target, when, and what; `suppressed` notices of the same target
    /// were dropped by the rate limit since the last one sent.
    pub fn data(&self, suppressed: u64) -> Value {
        let mut data = json!({
            "target": {
                "namespace": self.target.namespace,
                "kind": self.target.kind.as_str(),
                "name": self.target.name,
            },
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let details = match &self.what {
            Happened::CircuitOpened { failures, last_error } => {
                json!({"consecutiveFailures": failures, "lastError": last_error})
            }
            Happened::Paused { reason } => json!({"reason": reason}),
            Happened::Recovered { from } => json!({"from": match from {
                Recovery::CircuitClosed => "circuit_open",
                Recovery::Resumed => "paused",
            }}),
            Happened::DeliveryDead {
                delivery,
                event,
                event_type,
                attempts,
                last_error,
            } => json!({
                "delivery": {"id": delivery, "attempts": attempts, "lastError": last_error},
                "event": {"id": event, "type": event_type},
            }),
        };
        if let (Value::Object(data), Value::Object(details)) = (&mut data, details) {
            data.extend(details);
        }
        if suppressed > 0 {
            data["suppressed"] = suppressed.into();
        }
        data
    }
}

/// Notices waiting to be published, all targets together; past it, new ones are dropped.
const QUEUE: usize = 1024;

/// Where the dispatcher and the console hand notices to the gateway that publishes them. Never
/// waits: a full queue (a storm of failures) drops the notice; deliveries are never slowed.
#[derive(Clone, Debug)]
pub struct Notices(tokio::sync::mpsc::Sender<Notice>);

impl Notices {
    pub fn channel() -> (Self, tokio::sync::mpsc::Receiver<Notice>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE);
        (Self(sender), receiver)
    }

    pub fn tell(&self, target: &TargetKey, what: Happened) {
        if self.0.try_send(Notice::new(target.clone(), what)).is_err() {
            tracing::debug!(target = %target.label(), "notice dropped: the queue is full");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_names_the_target_and_what_happened() {
        let target = TargetKey::subscription("billing", "crm");
        let dead = Notice::new(
            target.clone(),
            Happened::DeliveryDead {
                delivery: Uuid::nil(),
                event: Uuid::nil(),
                event_type: "invoice.paid".into(),
                attempts: 8,
                last_error: Some("HTTP 500".into()),
            },
        );
        assert_eq!(dead.event_type(), "hookline.delivery.dead");
        let data = dead.data(3);
        assert_eq!(
            data["target"],
            json!({"namespace": "billing", "kind": "subscription", "name": "crm"})
        );
        assert_eq!(data["delivery"]["attempts"], 8);
        assert_eq!(data["event"]["type"], "invoice.paid");
        assert_eq!(data["suppressed"], 3);
        let recovered = Notice::new(
            target,
            Happened::Recovered {
                from: Recovery::CircuitClosed,
            },
        );
        assert_eq!(recovered.event_type(), RECOVERED);
        assert_eq!(recovered.data(0)["from"], "circuit_open");
        assert!(recovered.data(0).get("suppressed").is_none());
    }
}
