//! New deliveries the storing gateway sends itself. A delivery to a target that can take it
//! now gets a reservation here (a slot in this process and in the target's depth) before its
//! event is stored; the statement that stores it leases it on its own row (no queue row), and
//! the gateway hands it over once that commits. It costs no queue row, no claim, no
//! notification and no claim round trip (two row writes in all when its first attempt
//! succeeds: its history row and its attempt), and keeps every guarantee of a claimed
//! delivery: committed with its event, held by one process for its lease (should that process
//! die, one gateway's pass over the leases queues it once the lease ends, see
//! `store::leases`), admitted and recorded like any other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::targets::Held;
use super::{Dispatcher, Holding};
use crate::api::{CircuitState, TargetKey};
use crate::store::deliveries::Claimed;
use crate::store::leases::{self, Pass};

/// How often each gateway offers to look for leases that ended without an outcome (one at a
/// time looks).
const LEASE_PASS_EVERY: Duration = Duration::from_secs(1);

/// A slot for one new delivery, held until it is sent or let go.
pub struct Reservation {
    key: TargetKey,
    lease: Duration,
    holding: Holding,
    held: Held,
}

impl Reservation {
    /// How long the statement that stores the delivery claims it for.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn target(&self) -> &TargetKey {
        &self.key
    }
}

impl Dispatcher {
    /// A slot for a new delivery to `key`, when it can be sent at once: the target is
    /// configured and unordered (ordered keys are claimed per key, in Postgres), not paused in
    /// its spec, its circuit closed here, and it and this process have room. Whether it is
    /// paused at runtime or has deliveries due (they go first) the storing statement checks.
    /// `None`: the delivery goes through the queue.
    pub fn reserve(self: &Arc<Self>, key: &TargetKey) -> Option<Reservation> {
        if self.stop.is_cancelled() || self.holding.load(Ordering::Relaxed) >= self.options.max_claimed {
            return None;
        }
        let catalog = self.catalog.get();
        let target = catalog.target(key)?;
        if target.spec.ordering.is_some() || target.spec.paused {
            return None;
        }
        let runtime = self.runtime(target);
        let now = Instant::now();
        if runtime.room(now) == 0 || runtime.flow().breaker.state() != CircuitState::Closed {
            return None;
        }
        let lease = self.lease_for(target);
        Some(Reservation {
            key: key.clone(),
            lease,
            holding: Holding::new(self.clone()),
            // Started before the statement starts the lease in Postgres: it ends no later.
            held: Held::new(runtime, self.wake.clone(), now + lease),
        })
    }

    /// Sends a delivery the storing statement claimed under `reservation`.
    pub fn send_reserved(&self, delivery: Claimed, reservation: Reservation) {
        let Reservation {
            key, holding, held, ..
        } = reservation;
        tokio::spawn(async move {
            let _ = holding.dispatcher.deliver(delivery, key, held).await;
            drop(holding);
        });
    }

    /// Queues the deliveries whose sender stopped before recording their outcome, once their
    /// lease ends: one pass a second, by whichever gateway gets there first.
    pub(super) async fn take_over_leases(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LEASE_PASS_EVERY).await;
            match leases::take_over_expired(&self.pool).await {
                Ok(Pass::Done { taken, .. }) if taken > 0 => {
                    tracing::warn!(
                        taken,
                        "deliveries whose sender stopped before their outcome are queued again"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("cannot look for deliveries whose lease ended: {err}"),
            }
        }
    }
}
