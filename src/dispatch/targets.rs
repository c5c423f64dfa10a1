//! This process's state per target: in-flight cap, claim depth, circuit breaker and rate limit.
//! Started afresh when a target's flow settings change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::breaker::{Breaker, TokenBucket};
use super::depth::ClaimDepth;
use crate::api::{CircuitBreaker, RateLimit, TargetKey};
use crate::catalog::Target;

/// Per-target state in this process.
pub(super) struct TargetRuntime {
    settings: FlowSettings,
    pub(super) in_flight: Semaphore,
    /// Deliveries claimed for the target and not yet sent (waiting for a slot, or in flight).
    claimed: AtomicUsize,
    /// How many it may hold claimed.
    pub(super) depth: ClaimDepth,
    pub(super) flow: Mutex<Flow>,
}

#[derive(Clone, Debug, PartialEq)]
struct FlowSettings {
    url: String,
    max_in_flight: usize,
    rate_limit: Option<RateLimit>,
    breaker: CircuitBreaker,
}

pub(super) struct Flow {
    pub(super) breaker: Breaker,
    pub(super) bucket: Option<TokenBucket>,
}

impl TargetRuntime {
    /// How many more deliveries the target may be given now. Its depth is at least a round of
    /// sends and three waiting, more for a target that sends fast, so it never idles while its
    /// next claim is made; one that is slow does not hold them past their lease (see
    /// `admit`).
    pub(super) fn room(&self, now: Instant) -> usize {
        self.depth
            .measure(now)
            .saturating_sub(self.claimed.load(Ordering::Relaxed))
    }

    pub(super) fn flow(&self) -> std::sync::MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every target's runtime in this process.
#[derive(Default)]
pub(super) struct Targets {
    runtimes: Mutex<HashMap<TargetKey, Arc<TargetRuntime>>>,
}

impl Targets {
    /// The runtime of a target; started afresh when its flow settings change. A target's claim
    /// depth is capped at `depth_cap`.
    pub(super) fn runtime(&self, target: &Target, depth_cap: usize) -> Arc<TargetRuntime> {
        let settings = FlowSettings {
            url: target.spec.url.clone(),
            max_in_flight: target.spec.max_in_flight.max(1) as usize,
            rate_limit: target.spec.rate_limit.clone(),
            breaker: target.spec.circuit_breaker.clone().unwrap_or_default(),
        };
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = runtimes.get(&target.key)
            && runtime.settings == settings
        {
            return runtime.clone();
        }
        let now = Instant::now();
        let runtime = Arc::new(TargetRuntime {
            in_flight: Semaphore::new(settings.max_in_flight),
            claimed: AtomicUsize::new(0),
            depth: ClaimDepth::new(settings.max_in_flight * 4, depth_cap, now),
            flow: Mutex::new(Flow {
                breaker: Breaker::new(settings.breaker.clone()),
                bucket: settings.rate_limit.as_ref().map(|l| TokenBucket::new(l, now)),
            }),
            settings,
        });
        runtimes.insert(target.key.clone(), runtime.clone());
        runtime
    }
}

/// A delivery counted in its target's `claimed` until it is sent; the claimer is woken when the
/// target is down to half its depth, so its next ones are claimed in time.
pub(super) struct Held {
    pub(super) runtime: Arc<TargetRuntime>,
    wake: Arc<Notify>,
    /// When this process's claim on the delivery ends.
    lease_ends: Instant,
}

impl Held {
    pub(super) fn new(runtime: Arc<TargetRuntime>, wake: Arc<Notify>, lease_ends: Instant) -> Self {
        runtime.claimed.fetch_add(1, Ordering::Relaxed);
        Self {
            runtime,
            wake,
            lease_ends,
        }
    }

    /// When the lease has `left` of it remaining (now, if it already has less).
    pub(super) fn leaving(&self, left: Duration) -> Instant {
        self.lease_ends.checked_sub(left).unwrap_or_else(Instant::now)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let before = self.runtime.claimed.fetch_sub(1, Ordering::Relaxed);
        if before == self.runtime.depth.get() / 2 + 1 {
            self.wake.notify_one();
        }
    }
}
