//! The gates a claimed delivery passes before it is sent: configured and not paused, a signing
//! secret, the egress policy, a free in-flight slot while the lease still covers the request,
//! the rate limit and the circuit breaker. Each refusal is one reason to give the delivery back.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use tokio::sync::SemaphorePermit;

use super::Dispatcher;
use super::breaker::Admission as BreakerAdmission;
use super::targets::{Held, TargetRuntime};
use crate::api::TargetKey;
use crate::catalog::Target;
use crate::catalog::endpoint::Endpoint;
use crate::catalog::hold::{self, Hold};
use crate::store::deliveries;
use crate::verify::{SigningKey, standard_webhooks};

/// Leave to send: the keys to sign with and an in-flight slot, held until the request ends.
pub(super) struct Permit<'a> {
    pub(super) keys: Vec<SigningKey>,
    /// Its headers, TLS and OAuth2 settings, resolved.
    pub(super) endpoint: &'a Endpoint,
    /// Held, not read: dropping the permit frees the slot.
    _slot: SemaphorePermit<'a>,
}

/// Why a claimed delivery goes back to the queue unsent (no attempt spent), and when it is due
/// again.
#[derive(Debug)]
pub(super) struct Release {
    pub(super) after: Duration,
    pub(super) reason: Cow<'static, str>,
    /// The circuit is open: every waiting delivery of the target waits as long.
    pub(super) defer_target: bool,
    /// Says nothing about the target (this process is stopping): the delivery's last error stays.
    pub(super) keeps_last_error: bool,
}

impl Release {
    fn new(after: Duration, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            after,
            reason: reason.into(),
            defer_target: false,
            keeps_last_error: false,
        }
    }

    /// Given back at once for another replica (or this one, restarted) to send.
    fn stopping() -> Self {
        Self {
            keeps_last_error: true,
            ..Self::new(Duration::ZERO, "the gateway is stopping")
        }
    }
}

enum Gate {
    Go,
    RateLimited(Duration),
    CircuitOpen(Duration),
}

impl Dispatcher {
    /// Passes a delivery through every gate, in order; a half-open probe is admitted last, since
    /// admitting it commits to sending it.
    pub(super) async fn admit<'r>(
        &self,
        key: &TargetKey,
        target: Option<&'r Target>,
        runtime: &'r TargetRuntime,
        held: &Held,
    ) -> Result<Permit<'r>, Release> {
        let Some(target) = target else {
            // Not configured here (yet, or any more): left for the controller to cancel.
            return Err(Release::new(Duration::from_secs(60), "target is not configured"));
        };
        // Paused, no secret, or a URL the egress policy forbids: held, saying why.
        let egress = self
            .egress
            .refusal(&target.spec.url, target.allow_private_networks)
            .await;
        if let Some(hold) = hold::configured(target, egress) {
            return Err(Release::new(hold.recheck_after(), hold.to_string()));
        }
        let endpoint = target.endpoint.as_ref().map_err(|problem| {
            let hold = Hold::EndpointSecret(problem.to_string());
            Release::new(hold.recheck_after(), hold.to_string())
        })?;
        let keys = self.signing_keys(key, target).await.map_err(|problem| {
            let hold = Hold::SigningSecret(problem);
            Release::new(hold.recheck_after(), hold.to_string())
        })?;
        // A slot must come while the lease still covers the rate limit wait and the request;
        // otherwise the delivery goes back to the queue, rather than be sent by two workers.
        let timeout = target.spec.attempt_timeout();
        let slot_by = held.leaving(timeout + self.options.lease_margin / 2);
        let too_long = || Release::new(Duration::ZERO, "waited too long for a free slot");
        let waited = tokio::select! {
            biased; // a stopping dispatcher sends nothing new, even with a slot free
            _ = self.stop.cancelled() => return Err(Release::stopping()),
            waited = tokio::time::timeout_at(slot_by.into(), runtime.in_flight.acquire()) => waited,
        };
        let slot = match waited {
            // A free slot is taken even past the deadline (the timer is checked second).
            Ok(Ok(slot)) if Instant::now() < slot_by => slot,
            _ => return Err(too_long()),
        };
        // Waiting for the rate limit, too, must leave the lease room for the request.
        let deadline = (Instant::now() + self.options.lease_margin / 2).min(held.leaving(timeout));
        loop {
            let now = Instant::now();
            let gate = {
                let mut flow = runtime.flow();
                match flow.bucket.as_mut().map(|b| b.take(now)) {
                    Some(Err(wait)) => Gate::RateLimited(wait),
                    _ => match flow.breaker.admit(now) {
                        BreakerAdmission::Allowed => Gate::Go,
                        BreakerAdmission::Wait(wait) => Gate::CircuitOpen(wait),
                    },
                }
            };
            match gate {
                Gate::Go => {
                    return Ok(Permit {
                        keys,
                        endpoint,
                        _slot: slot,
                    });
                }
                Gate::RateLimited(wait) if now + wait < deadline => {
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return Err(Release::stopping()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Gate::RateLimited(wait) => return Err(Release::new(wait, "rate limited")),
                // Deliveries wait while the circuit is open; they spend no attempt.
                Gate::CircuitOpen(wait) => {
                    return Err(Release {
                        defer_target: true,
                        ..Release::new(wait, Hold::CircuitOpen.to_string())
                    });
                }
            }
        }
    }

    /// The keys a target signs with: its secretRef's, or (standalone) one generated and kept in
    /// Postgres on first use.
    async fn signing_keys(&self, key: &TargetKey, target: &Target) -> Result<Vec<SigningKey>, String> {
        match &target.signing {
            Some(resolved) => resolved.clone().map_err(|e| e.to_string()),
            None => {
                let known = || self.generated_keys.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(generated) = known().get(key) {
                    return Ok(vec![generated.clone()]);
                }
                let candidate = standard_webhooks::encode_secret(&rand::random::<[u8; 32]>());
                let secret = deliveries::generated_secret(&self.pool, key, &candidate)
                    .await
                    .map_err(|e| e.to_string())?;
                let generated = standard_webhooks::decode_secret(&secret).map_err(|e| e.to_string())?;
                known().insert(key.clone(), generated.clone());
                Ok(vec![generated])
            }
        }
    }
}
