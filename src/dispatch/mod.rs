//! The delivery engine, running in every gateway process: finds the targets with waiting
//! deliveries, claims each one's due work up to the room it has (`FOR UPDATE SKIP LOCKED`, so
//! replicas never send the same delivery at once), woken by `LISTEN/NOTIFY` when work arrives, by
//! a target that has room again and by a timer for the next scheduled retry, and sends each
//! delivery under its target's circuit breaker, rate limit and in-flight cap.

mod agenda;
mod breaker;
mod depth;
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
use agenda::Agenda;
use breaker::{Admission, Breaker, TokenBucket};
use depth::ClaimDepth;
use policy::Verdict;

#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// Deliveries claimed per query at most, all targets together.
    pub batch_size: usize,
    /// Deliveries this process holds at once, all targets together.
    pub max_claimed: usize,
    /// Added to the longest target timeout to form the claim lease; a delivery whose worker
    /// died is taken over once its lease expires.
    pub lease_margin: Duration,
    /// Upper bound on a receiver's Retry-After.
    pub max_retry_after: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 400,
            max_claimed: 1024,
            lease_margin: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// Per-target state in this process.
struct TargetRuntime {
    settings: FlowSettings,
    in_flight: Semaphore,
    /// Deliveries claimed for the target and not yet sent (waiting for a slot, or in flight).
    claimed: AtomicUsize,
    /// How many it may hold claimed.
    depth: ClaimDepth,
    flow: Mutex<Flow>,
    /// The last egress verdict (when, refusal if any): classifying a host name costs a DNS
    /// lookup, too much to repeat for every delivery.
    egress: Mutex<Option<(Instant, Option<String>)>>,
}

/// How soon to look again when due work was found but other replicas held all of it.
const BUSY_RECHECK: Duration = Duration::from_millis(50);

/// Targets with waiting work read per scan of the queue: far more than one process can serve
/// at once. Past it, targets later in key order are known from notifications and notes only
/// (a scan that stops there does not forget them) until a scan finds fewer.
const TARGETS_PER_ROUND: i64 = 10_000;

/// How long an egress verdict is reused.
const EGRESS_RECHECK: Duration = Duration::from_secs(30);

impl TargetRuntime {
    /// How many more deliveries the target may be given now. Its depth is at least a round of
    /// sends and three waiting, more for a target that sends fast, so it never idles while its
    /// next claim is made; one that is slow does not hold them past their lease (see
    /// `deliver_to`).
    fn room(&self, now: Instant) -> usize {
        self.depth
            .measure(now)
            .saturating_sub(self.claimed.load(Ordering::Relaxed))
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
    /// Deliveries this process holds (claimed, and not yet recorded), all targets together:
    /// at most `max_claimed`. Only the claimer adds to it, within what it saw free.
    holding: AtomicUsize,
    wake: Arc<Notify>,
    agenda: Mutex<Agenda>,
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
            holding: AtomicUsize::new(0),
            options,
            targets: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            agenda: Mutex::new(Agenda::default()),
        })
    }

    /// Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().listen());
        tokio::spawn(self.clone().report_backlog());
        loop {
            let wait = match self.claim_and_start().await {
                Claim::Started => continue, // more may be due for targets that still have room
                Claim::Contended => BUSY_RECHECK,
                Claim::Idle { next_due } => next_due.map_or(agenda::RESCAN_EVERY, |at| {
                    (at - Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .clamp(Duration::from_millis(1), agenda::RESCAN_EVERY)
                }),
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
                        // Notifications may have been missed meanwhile.
                        self.agenda().invalidate();
                        self.wake.notify_one();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(notification)) => self
                                    .agenda()
                                    .note_notification(notification.payload(), Utc::now()),
                                // The connection was lost and is made again: notifications
                                // sent meanwhile are gone, so the queue is scanned.
                                Ok(None) => self.agenda().invalidate(),
                                Err(_) => break,
                            }
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
            // At most half of what the process may hold: one fast target leaves room for others.
            depth: ClaimDepth::new(
                settings.max_in_flight * 4,
                self.options.max_claimed / 2,
                Instant::now(),
            ),
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

    fn agenda(&self) -> std::sync::MutexGuard<'_, Agenda> {
        self.agenda.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many deliveries to claim for which target now: each target that is due, not paused
    /// and configured here gets a fair share of this process's free slots, up to its room. Also
    /// when the earliest target with room falls due, if none is due now.
    fn plan_claims(&self) -> (Vec<Share>, Option<chrono::DateTime<Utc>>) {
        let catalog = self.gateway.catalog();
        let now = Utc::now();
        let instant = Instant::now();
        let mut next_due = None;
        let mut due = Vec::new();
        for (key, entry) in self.agenda().targets().filter(|(_, e)| !e.paused) {
            let Some(configured) = catalog.target(&key.namespace, &key.kind, &key.name) else {
                continue; // not configured here (yet, or any more): the controller cancels it
            };
            if configured.spec.paused {
                continue;
            }
            let runtime = self.runtime(key, configured);
            let room = runtime.room(instant);
            if room == 0 {
                continue; // a send finishing wakes the claimer
            }
            if entry.due > now {
                next_due = Some(next_due.map_or(entry.due, |at: chrono::DateTime<Utc>| at.min(entry.due)));
                continue;
            }
            due.push(Share {
                key: key.clone(),
                runtime,
                room,
                take: 0,
            });
        }
        let free = self
            .options
            .max_claimed
            .saturating_sub(self.holding.load(Ordering::Relaxed));
        let budget = free.min(self.options.batch_size);
        (share(due, budget), next_due)
    }

    async fn claim_and_start(self: &Arc<Self>) -> Claim {
        let scan = {
            let mut agenda = self.agenda();
            let now = Instant::now();
            let needed = agenda.needs_scan(now);
            if needed {
                agenda.scan_started(now);
            }
            needed
        };
        if scan {
            match deliveries::waiting_targets(&self.pool, TARGETS_PER_ROUND).await {
                Ok(waiting) => {
                    let complete = waiting.len() < TARGETS_PER_ROUND as usize;
                    self.agenda().replace(waiting, complete)
                }
                Err(err) => {
                    tracing::warn!("dispatcher cannot look for due deliveries: {err}");
                    self.agenda().invalidate();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Claim::Contended;
                }
            }
        }
        let (wanted, next_due) = self.plan_claims();
        if wanted.is_empty() {
            return Claim::Idle { next_due };
        }
        let takes: Vec<(TargetKey, usize)> = wanted.iter().map(|s| (s.key.clone(), s.take)).collect();
        let lease = self.lease();
        // Taken before the database starts the lease, so it never ends later than this.
        let claimed_at = Instant::now();
        let lease_ends = claimed_at + lease;
        let batch = match deliveries::claim(&self.pool, &takes, lease).await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!("dispatcher cannot claim deliveries: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Claim::Contended;
            }
        };
        if batch.is_empty() {
            // Nothing was due after all (another replica took it, or a pause came first).
            let mut agenda = self.agenda();
            for share in &wanted {
                agenda.exhausted(&share.key, claimed_at);
            }
            return Claim::Contended;
        }
        let mut shares: HashMap<TargetKey, (Arc<TargetRuntime>, usize)> =
            wanted.into_iter().map(|s| (s.key, (s.runtime, s.take))).collect();
        for delivery in batch {
            let key = delivery.target_key();
            let Some((runtime, left)) = shares.get_mut(&key) else {
                continue; // cannot happen: only planned targets are claimed
            };
            *left = left.saturating_sub(1);
            self.holding.fetch_add(1, Ordering::Relaxed);
            // Counted now, so the next round's plan sees the room this one took.
            let held = Held::new(runtime.clone(), self.wake.clone(), lease_ends);
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver(delivery, key, held).await;
                // Claiming again pays off once a batch's worth of room is free: woken when the
                // count passes that mark (each decrement sees its own value), not after every
                // send beyond it.
                let before = this.holding.fetch_sub(1, Ordering::Relaxed);
                if before == this.options.max_claimed.saturating_sub(this.options.batch_size) + 1 {
                    this.wake.notify_one();
                }
            });
        }
        // A target that gave less than asked has nothing more due now.
        let mut agenda = self.agenda();
        for (key, _) in shares.iter().filter(|(_, (_, left))| *left > 0) {
            agenda.exhausted(key, claimed_at);
        }
        Claim::Started
    }

    /// The claim lease: longer than any target's timeout, plus the margin.
    fn lease(&self) -> Duration {
        self.gateway.catalog().max_timeout() + self.options.lease_margin
    }

    async fn deliver(&self, delivery: Claimed, key: TargetKey, held: Held) {
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
        let runtime = held.runtime.clone();
        self.deliver_to(&delivery, &key, target, &runtime, held).await;
    }

    async fn deliver_to(
        &self,
        delivery: &Claimed,
        key: &TargetKey,
        target: &Target,
        runtime: &TargetRuntime,
        held: Held,
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
        // A slot must come while the lease still covers the rate limit wait and the request;
        // otherwise the delivery goes back to the queue, rather than be sent by two workers.
        let slot_by = held.leaving(target.spec.timeout.get() + self.options.lease_margin / 2);
        let slot = match tokio::time::timeout_at(slot_by.into(), runtime.in_flight.acquire()).await {
            // A free slot is taken even past the deadline (the timer is checked second).
            Ok(Ok(slot)) if Instant::now() < slot_by => slot,
            Ok(Err(_closed)) => return,
            Ok(Ok(_)) | Err(_) => {
                self.release(delivery, Duration::ZERO, "waited too long for a free slot")
                    .await;
                return;
            }
        };
        // Rate limit first, then the breaker (admitting a half-open probe commits to sending it).
        // Waiting for the rate limit, too, must leave the lease room for the request.
        let deadline =
            (Instant::now() + self.options.lease_margin / 2).min(held.leaving(target.spec.timeout.get()));
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
        // The cap and the room are about requests to the target; recording happens outside.
        runtime.depth.sent();
        drop(slot);
        drop(held);
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
            lease_until: delivery.lease_until,
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
        if let After::RetryAt(at) = after {
            self.agenda().note(key.clone(), at);
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
        match deliveries::release(&self.pool, delivery.id, delivery.lease_until, at, reason).await {
            Ok(()) => self.agenda().note(delivery.target_key(), at),
            Err(err) => tracing::warn!(delivery = %delivery.id, "cannot release delivery: {err}"),
        }
    }
}

/// What a claim round did.
enum Claim {
    /// Deliveries were claimed and are being sent.
    Started,
    /// Due work was found but not claimed (other replicas held it, or the database failed).
    Contended,
    /// Nothing is due for a target with room; the earliest such target falls due then.
    Idle { next_due: Option<chrono::DateTime<Utc>> },
}

/// A delivery counted in its target's `claimed` until it is sent; the claimer is woken when the
/// target is down to half its depth, so its next ones are claimed in time.
struct Held {
    runtime: Arc<TargetRuntime>,
    wake: Arc<Notify>,
    /// When this process's claim on the delivery ends.
    lease_ends: Instant,
}

impl Held {
    /// When the lease has `left` of it remaining (now, if it already has less).
    fn leaving(&self, left: Duration) -> Instant {
        self.lease_ends.checked_sub(left).unwrap_or_else(Instant::now)
    }

    fn new(runtime: Arc<TargetRuntime>, wake: Arc<Notify>, lease_ends: Instant) -> Self {
        runtime.claimed.fetch_add(1, Ordering::Relaxed);
        Self {
            runtime,
            wake,
            lease_ends,
        }
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

/// A due target's part in a claim round.
struct Share {
    key: TargetKey,
    runtime: Arc<TargetRuntime>,
    /// Deliveries it may still be given.
    room: usize,
    /// Deliveries it is given in this round.
    take: usize,
}

/// Splits `budget` claims between due targets: a fair share each first (so one busy target
/// cannot starve the rest), then what is left in order, each up to its room. Targets given
/// nothing are dropped.
fn share(mut due: Vec<Share>, budget: usize) -> Vec<Share> {
    if due.is_empty() {
        return due;
    }
    let fair = budget.div_ceil(due.len());
    let mut left = budget;
    for target in &mut due {
        target.take = target.room.min(fair).min(left);
        left -= target.take;
    }
    for target in &mut due {
        let more = (target.room - target.take).min(left);
        target.take += more;
        left -= more;
    }
    due.retain(|target| target.take > 0);
    due
}
