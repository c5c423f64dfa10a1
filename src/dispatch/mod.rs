//! The delivery engine, running in every gateway process: claims due deliveries from Postgres in
//! batches (`FOR UPDATE SKIP LOCKED`, so replicas never send the same delivery at once), woken by
//! `LISTEN/NOTIFY` when work arrives and by a timer for the next scheduled retry, and sends each
//! under its target's circuit breaker, rate limit and in-flight cap.

mod breaker;
pub mod egress;
mod policy;
mod sender;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, Semaphore};

use crate::api::{CircuitBreaker, CircuitState, RateLimit};
use crate::gateway::Gateway;
use crate::gateway::catalog::Target;
use crate::store::deliveries::{self, After, AttemptRecord, AttemptRecorder, Claimed, TargetKey};
use crate::store::events::DELIVERIES_CHANNEL;
use crate::telemetry::metrics::TargetLabels;
use crate::verify::{SigningKey, standard_webhooks};
use breaker::{Admission, Breaker, TokenBucket};
use policy::Verdict;

#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// Deliveries claimed per query.
    pub batch_size: usize,
    /// Deliveries this process holds at once, all targets together.
    pub max_claimed: usize,
    /// Added to a target's timeout to form the claim lease; a delivery whose worker died is
    /// taken over once its lease expires.
    pub lease_margin: Duration,
    /// Upper bound on a receiver's Retry-After.
    pub max_retry_after: Duration,
    /// How often to look for due work when no notification arrives.
    pub safety_poll: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_claimed: 1024,
            lease_margin: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
            safety_poll: Duration::from_secs(5),
        }
    }
}

/// Per-target state in this process.
struct TargetRuntime {
    settings: FlowSettings,
    in_flight: Semaphore,
    claimed: AtomicUsize,
    flow: Mutex<Flow>,
    /// The last egress verdict (when, refusal if any): classifying a host name costs a DNS
    /// lookup, too much to repeat for every delivery.
    egress: Mutex<Option<(Instant, Option<String>)>>,
}

/// How soon a busy dispatcher looks for due work again without being woken.
const BUSY_RECHECK: Duration = Duration::from_millis(50);

/// How long an egress verdict is reused.
const EGRESS_RECHECK: Duration = Duration::from_secs(30);

impl TargetRuntime {
    /// Claimed deliveries at which the target gets no more claims.
    fn saturation(&self) -> usize {
        self.settings.max_in_flight * 2
    }

    async fn egress_refusal(&self, target: &Target) -> Option<String> {
        if let Some((checked, verdict)) = &*self.egress.lock().unwrap_or_else(|e| e.into_inner())
            && checked.elapsed() < EGRESS_RECHECK
        {
            return verdict.clone();
        }
        let verdict = egress_refusal(target).await;
        *self.egress.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

#[derive(Clone, Debug, PartialEq)]
struct FlowSettings {
    url: String,
    max_in_flight: usize,
    rate_limit: Option<RateLimit>,
    breaker: CircuitBreaker,
}

enum Gate {
    Go,
    RateLimited(Duration),
    CircuitOpen(Duration),
}

struct Flow {
    breaker: Breaker,
    bucket: Option<TokenBucket>,
}

pub struct Dispatcher {
    pool: PgPool,
    gateway: Arc<Gateway>,
    http: reqwest::Client,
    options: DispatchOptions,
    targets: Mutex<HashMap<TargetKey, Arc<TargetRuntime>>>,
    claimed: Arc<Semaphore>,
    wake: Notify,
    recorder: AttemptRecorder,
}

fn target_label(key: &TargetKey) -> TargetLabels {
    TargetLabels {
        namespace: key.namespace.clone(),
        target: format!("{}/{}", key.kind, key.name),
    }
}

/// Why the target's URL may not be sent to now, if it may not: link-local and metadata
/// addresses never; private and cluster addresses only for handlers and for subscriptions that
/// opted in.
async fn egress_refusal(target: &Target) -> Option<String> {
    match egress::classify(&target.spec.url).await {
        egress::Egress::Forbidden(why) => Some(format!("URL not allowed: {why}")),
        egress::Egress::Private(why) if !target.allow_private_networks => {
            Some(format!("URL not allowed: {why} (allowPrivateNetworks is false)"))
        }
        _ => None,
    }
}

impl Dispatcher {
    pub fn new(pool: PgPool, gateway: Arc<Gateway>, options: DispatchOptions) -> Arc<Self> {
        Arc::new(Self {
            recorder: deliveries::attempt_recorder(pool.clone()),
            pool,
            gateway,
            http: sender::http_client(),
            claimed: Arc::new(Semaphore::new(options.max_claimed)),
            options,
            targets: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().listen());
        tokio::spawn(self.clone().report_backlog());
        loop {
            let claimed = self.claim_and_start().await;
            if claimed == self.options.batch_size {
                continue; // more is probably due
            }
            let wait = if claimed > 0 {
                // Work is flowing: finished deliveries and notifications wake us; asking the
                // database when the next retry is due would cost a query per claim.
                BUSY_RECHECK
            } else {
                match self.until_next_due().await {
                    // Work is due but none could be claimed: its targets are saturated (a
                    // finished delivery wakes us) or another replica holds it. Do not spin.
                    wait if wait <= Duration::from_millis(5) => self.options.safety_poll,
                    wait => wait,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// LISTEN for new deliveries; reconnects after errors and then looks for work it may have
    /// missed.
    async fn listen(self: Arc<Self>) {
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => {
                    if listener.listen(DELIVERIES_CHANNEL).await.is_ok() {
                        self.wake.notify_one();
                        while listener.recv().await.is_ok() {
                            self.wake.notify_one();
                        }
                    }
                }
                Err(err) => tracing::warn!("dispatcher cannot listen for new deliveries: {err}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn report_backlog(self: Arc<Self>) {
        loop {
            if let Ok(pending) = deliveries::count_pending(&self.pool).await {
                self.gateway.metrics().deliveries_pending.set(pending);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    /// How long to sleep when no notification comes: until the next scheduled attempt, at most
    /// the safety poll.
    async fn until_next_due(&self) -> Duration {
        let next = deliveries::next_due(&self.pool).await.unwrap_or(None);
        let poll = self.options.safety_poll;
        next.map_or(poll, |at| {
            (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(poll)
        })
        .max(Duration::from_millis(5))
    }

    /// This process's state for a target; started afresh when its flow settings change.
    fn runtime(&self, key: &TargetKey, target: &Target) -> Arc<TargetRuntime> {
        let settings = FlowSettings {
            url: target.spec.url.clone(),
            max_in_flight: target.spec.max_in_flight.max(1) as usize,
            rate_limit: target.spec.rate_limit.clone(),
            breaker: target.spec.circuit_breaker.clone().unwrap_or_default(),
        };
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = targets.get(key)
            && runtime.settings == settings
        {
            return runtime.clone();
        }
        let runtime = Arc::new(TargetRuntime {
            in_flight: Semaphore::new(settings.max_in_flight),
            claimed: AtomicUsize::new(0),
            flow: Mutex::new(Flow {
                breaker: Breaker::new(settings.breaker.clone()),
                bucket: settings
                    .rate_limit
                    .as_ref()
                    .map(|l| TokenBucket::new(l, Instant::now())),
            }),
            egress: Mutex::new(None),
            settings,
        });
        targets.insert(key.clone(), runtime.clone());
        runtime
    }

    /// Targets this process will not take more work for now: paused in their spec, or already
    /// holding twice their in-flight cap, so one slow target cannot take every slot.
    fn unavailable_targets(&self) -> Vec<String> {
        let catalog = self.gateway.catalog();
        let paused = catalog
            .targets()
            .filter(|(_, target)| target.spec.paused)
            .map(|(namespace, target)| format!("{namespace}/{}/{}", target.kind.as_str(), target.name));
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets
            .iter()
            .filter(|(_, rt)| rt.claimed.load(Ordering::Relaxed) >= rt.saturation())
            .map(|(key, _)| key.joined())
            .chain(paused)
            .collect()
    }

    async fn claim_and_start(self: &Arc<Self>) -> usize {
        let available = self.claimed.available_permits().min(self.options.batch_size);
        if available == 0 {
            return 0;
        }
        let excluded = self.unavailable_targets();
        let lease = self.lease();
        let batch = match deliveries::claim(&self.pool, available as i64, lease, &excluded).await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!("dispatcher cannot claim deliveries: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return 0;
            }
        };
        let count = batch.len();
        for delivery in batch {
            let Ok(permit) = self.claimed.clone().try_acquire_owned() else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver(delivery).await;
                drop(permit);
                // Claiming again pays off once a batch's worth of room is free.
                if this.claimed.available_permits() == this.options.batch_size {
                    this.wake.notify_one();
                }
            });
        }
        count
    }

    /// The claim lease: longer than any target's timeout, plus the margin.
    fn lease(&self) -> Duration {
        self.gateway.catalog().max_timeout() + self.options.lease_margin
    }

    async fn deliver(&self, delivery: Claimed) {
        let key = delivery.target_key();
        let catalog = self.gateway.catalog();
        let Some(target) = catalog.target(&key.namespace, &key.kind, &key.name) else {
            // Not configured here (yet, or any more): leave it for the controller to cancel.
            self.release(&delivery, Duration::from_secs(60), "target is not configured")
                .await;
            return;
        };
        if target.spec.paused {
            self.release(&delivery, Duration::from_secs(30), "target is paused")
                .await;
            return;
        }
        let runtime = self.runtime(&key, target);
        runtime.claimed.fetch_add(1, Ordering::Relaxed);
        self.deliver_to(&delivery, &key, target, &runtime).await;
        if runtime.claimed.fetch_sub(1, Ordering::Relaxed) == runtime.saturation() {
            // The target was excluded from claims until now.
            self.wake.notify_one();
        }
    }

    async fn deliver_to(
        &self,
        delivery: &Claimed,
        key: &TargetKey,
        target: &Target,
        runtime: &TargetRuntime,
    ) {
        let keys = match self.signing_keys(key, target).await {
            Ok(keys) => keys,
            Err(problem) => {
                self.release(
                    delivery,
                    Duration::from_secs(5),
                    &format!("no signing secret: {problem}"),
                )
                .await;
                return;
            }
        };
        if let Some(refusal) = runtime.egress_refusal(target).await {
            // Never send where the egress policy forbids; the resource's status says why.
            self.release(delivery, Duration::from_secs(60), &refusal).await;
            return;
        }
        let Ok(slot) = runtime.in_flight.acquire().await else {
            return;
        };
        // Rate limit first, then the breaker (admitting a half-open probe commits to sending it).
        let deadline = Instant::now() + self.options.lease_margin / 2;
        loop {
            let now = Instant::now();
            let gate = {
                let mut flow = runtime.flow.lock().unwrap_or_else(|e| e.into_inner());
                match flow.bucket.as_mut().map(|b| b.take(now)) {
                    Some(Err(wait)) => Gate::RateLimited(wait),
                    _ => match flow.breaker.admit(now) {
                        Admission::Allowed => Gate::Go,
                        Admission::Wait(wait) => Gate::CircuitOpen(wait),
                    },
                }
            };
            match gate {
                Gate::Go => break,
                Gate::RateLimited(wait) if now + wait < deadline => tokio::time::sleep(wait).await,
                Gate::RateLimited(wait) => {
                    self.release(delivery, wait, "rate limited").await;
                    return;
                }
                Gate::CircuitOpen(wait) => {
                    // Deliveries wait while the circuit is open; they spend no attempt.
                    let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    let _ = deliveries::defer_target(&self.pool, key, until).await;
                    self.release(delivery, wait, "circuit open").await;
                    return;
                }
            }
        }

        let sent = sender::send(
            &self.http,
            &target.spec.url,
            target.spec.timeout.get(),
            delivery,
            &keys,
        )
        .await;
        // The cap is on requests to the target; recording happens outside it.
        drop(slot);
        let status = sent.attempt.status_code.map(|s| s as u16);
        let verdict = policy::classify(status);
        let metrics = self.gateway.metrics();
        let labels = target_label(key);
        metrics
            .delivery_duration
            .observe(sent.attempt.duration_ms as f64 / 1000.0);
        let outcome = match verdict {
            Verdict::Success => "succeeded",
            Verdict::Retryable | Verdict::Permanent | Verdict::Gone => "failed",
        };
        metrics
            .delivery_attempts
            .get_or_create(&crate::telemetry::metrics::AttemptLabels {
                namespace: labels.namespace.clone(),
                target: labels.target.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();

        self.record_breaker(key, runtime, verdict == Verdict::Success)
            .await;

        let attempts_made = delivery.attempts as u32 + 1;
        let failure = match (status, &sent.attempt.error_class) {
            (Some(code), _) => format!("HTTP {code}"),
            (None, Some(class)) => (*class).to_owned(),
            (None, None) => "unknown".to_owned(),
        };
        let policy = target.spec.retry_policy.as_ref();
        let after = match verdict {
            Verdict::Success => After::Succeeded,
            Verdict::Permanent => After::Dead,
            Verdict::Gone => {
                let reason = format!("{} answered 410 Gone", target.spec.url);
                tracing::warn!(namespace = %key.namespace, target = %labels.target, "pausing target: {reason}");
                let _ = deliveries::pause_target(&self.pool, key, &reason).await;
                After::RetryAt(Utc::now())
            }
            Verdict::Retryable if attempts_made >= policy::max_attempts(policy) => After::Dead,
            Verdict::Retryable => {
                let retry_after = sent
                    .retry_after
                    .as_deref()
                    .and_then(|v| policy::parse_retry_after(v, std::time::SystemTime::now()));
                let delay = policy::retry_delay(
                    policy::next_delay(policy, attempts_made),
                    retry_after,
                    self.options.max_retry_after,
                );
                After::RetryAt(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
            }
        };
        let record = AttemptRecord {
            delivery: delivery.id,
            number: delivery.attempts + 1,
            attempt: sent.attempt,
            after,
            last_error: (verdict != Verdict::Success).then(|| failure.clone()),
        };
        if let Err(err) = self.recorder.submit(record).await {
            // The lease expires and the delivery is sent again: at-least-once.
            tracing::warn!(delivery = %delivery.id, "cannot record attempt: {err}");
            return;
        }
        match after {
            After::Succeeded => {
                let latency = (Utc::now() - delivery.received_at).to_std().unwrap_or_default();
                metrics.event_delivery_latency.observe(latency.as_secs_f64());
            }
            After::Dead => {
                metrics.deliveries_dead.get_or_create(&labels).inc();
                tracing::warn!(
                    namespace = %key.namespace, target = %labels.target, delivery = %delivery.id,
                    attempts = attempts_made, "delivery is dead after {failure}"
                );
            }
            After::RetryAt(_) => {}
        }
    }

    async fn record_breaker(&self, key: &TargetKey, runtime: &TargetRuntime, success: bool) {
        let (changed, reopen) = {
            let mut flow = runtime.flow.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let changed = flow.breaker.record(success, now);
            (changed, flow.breaker.reopens_in(now))
        };
        let Some(state) = changed else { return };
        let name = match state {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        };
        let labels = target_label(key);
        tracing::info!(namespace = %key.namespace, target = %labels.target, "circuit {name}");
        self.gateway
            .metrics()
            .circuit_state
            .get_or_create(&labels)
            .set(match state {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            });
        let _ = deliveries::set_circuit(&self.pool, key, name).await;
        if let Some(wait) = reopen {
            let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            let _ = deliveries::defer_target(&self.pool, key, until).await;
        }
    }

    async fn signing_keys(&self, key: &TargetKey, target: &Target) -> Result<Vec<SigningKey>, String> {
        match &target.signing {
            Some(resolved) => resolved.clone(),
            None => {
                let candidate = standard_webhooks::encode_secret(&rand::random::<[u8; 32]>());
                let secret = deliveries::generated_secret(&self.pool, key, &candidate)
                    .await
                    .map_err(|e| e.to_string())?;
                standard_webhooks::decode_secret(&secret)
                    .map(|k| vec![k])
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn release(&self, delivery: &Claimed, after: Duration, reason: &str) {
        let at = Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
        if let Err(err) = deliveries::release(&self.pool, delivery.id, at, reason).await {
            tracing::warn!(delivery = %delivery.id, "cannot release delivery: {err}");
        }
    }
}
