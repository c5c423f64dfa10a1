//! New deliveries this gateway sends itself (see `dispatch::Reservation`): reserved before the
//! event is stored, claimed by the statement that stores it, handed to the dispatcher once it
//! commits. What the statement did not claim (its target paused at runtime, or with deliveries
//! due, which go first) is queued as usual, and its reservation let go.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::api::TargetKey;
use crate::dispatch::{Dispatcher, Reservation};
use crate::store::deliveries::{Claimed, Held};
use crate::store::events::{ClaimedAtStore, NewDelivery, NewEvent};

/// The reservations of one event's deliveries, with what sending them needs of the event.
pub(super) struct SendNow {
    reservations: Vec<(Uuid, Reservation)>,
    event: Option<EventToSend>,
}

/// What a claimed delivery carries of its event (what the claim reads from `events`).
struct EventToSend {
    id: Uuid,
    namespace: String,
    source: String,
    event_type: String,
    body: Bytes,
    content_type: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    received_at: chrono::DateTime<chrono::Utc>,
}

/// Reserves a slot for each delivery that can be sent at once, and marks it to be claimed as
/// it is stored.
pub(super) fn reserve(
    dispatcher: &Arc<Dispatcher>,
    namespace: &str,
    deliveries: &mut [NewDelivery],
) -> SendNow {
    let mut reservations = Vec::new();
    for delivery in deliveries
        .iter_mut()
        .filter(|d| d.filter_error.is_none() && d.ordering_key.is_none())
    {
        let key = TargetKey {
            namespace: namespace.to_owned(),
            kind: delivery.target_kind,
            name: delivery.target.clone(),
        };
        if let Some(reservation) = dispatcher.reserve(&key) {
            delivery.claim_for = Some(reservation.lease());
            reservations.push((delivery.id, reservation));
        }
    }
    SendNow {
        reservations,
        event: None,
    }
}

impl SendNow {
    /// Keeps what sending needs of the event (only when something was reserved).
    pub(super) fn of(mut self, event: &NewEvent) -> Self {
        if !self.reservations.is_empty() {
            let header = |name: &str| {
                event
                    .headers
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            self.event = Some(EventToSend {
                id: event.id,
                namespace: event.namespace.clone(),
                source: event.source.clone(),
                event_type: event.event_type.clone(),
                body: event.body.clone(),
                content_type: header("content-type"),
                traceparent: header("traceparent"),
                tracestate: header("tracestate"),
                received_at: chrono::Utc::now(),
            });
        }
        self
    }

    /// Hands the deliveries the statement claimed to the dispatcher; the other reservations end
    /// here.
    pub(super) fn send(self, dispatcher: &Dispatcher, claimed: &[ClaimedAtStore]) {
        let Some(event) = self.event else {
            return;
        };
        for (id, reservation) in self.reservations {
            let Some((_, lease_until)) = claimed.iter().find(|(claimed, _)| *claimed == id) else {
                continue;
            };
            let target = reservation.target();
            dispatcher.send_reserved(
                Claimed {
                    id,
                    namespace: event.namespace.clone(),
                    target_kind: target.kind,
                    target: target.name.clone(),
                    attempts: 0,
                    lease_until: *lease_until,
                    source: event.source.clone(),
                    event_type: event.event_type.clone(),
                    body: event.body.to_vec(),
                    content_type: event.content_type.clone(),
                    received_at: event.received_at,
                    event_id: event.id,
                    ordering_key: None,
                    traceparent: event.traceparent.clone(),
                    tracestate: event.tracestate.clone(),
                    held: Held::Row,
                },
                reservation,
            );
        }
    }
}
