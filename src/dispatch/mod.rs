//! The delivery engine, running in every gateway process: finds the targets with waiting
//! deliveries, claims each one's due work up to the room it has (`FOR UPDATE SKIP LOCKED`, so
//! replicas never send the same delivery at once), woken by `LISTEN/NOTIFY` when work arrives, by
//! a target that has room again and by a timer for the next scheduled retry, and sends each
//! delivery under its target's circuit breaker, rate limit and in-flight cap.

mod admit;
mod agenda;
mod breaker;
mod depth;
mod direct;
mod endpoint;
pub mod framing;
mod oauth2;
mod policy;
pub mod replay;
mod sender;
pub mod settle;
mod targets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::notice::{self, Happened, Notices, Recovery};
use crate::api::{CircuitState, DeliveryFormat, OnDead, TargetKey};
use crate::catalog::egress::{EgressCache, EgressRules};
use crate::catalog::expression::{Expression, Variables};
use crate::catalog::{CatalogCell, Target};
use crate::store::activity::{self, MinuteCounter};
use crate::store::deliveries::{self, After, AttemptRecord, AttemptRecorder, Claimed, Take};
use crate::store::events::DELIVERIES_CHANNEL;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{AttemptLabels, FilteredLabels, TargetLabels};
use crate::telemetry::traces::TraceContext;
use crate::verify::SigningKey;
use admit::Release;
use agenda::Agenda;
use endpoint::Clients;
use settle::{Outcome, Settlement, Terms, later, settle};
use targets::{Held, TargetRuntime, Targets};
use tracing::Instrument;

pub use direct::Reservation;

#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// Deliveries claimed per query at most, all targets together.
    pub batch_size: usize,
    /// Deliveries this process holds at once, all targets together.
    pub max_claimed: usize,
    /// Added to a target's attempt timeout to form its claim lease; a delivery whose worker
    /// died is taken over once its lease expires.
    pub lease_margin: Duration,
    /// Upper bound on a receiver's Retry-After.
    pub max_retry_after: Duration,
    /// The operator's egress ranges, applied before sending and when connecting.
    pub egress: Arc<EgressRules>,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            batch_size: 400,
            max_claimed: 1024,
            lease_margin: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
            egress: Arc::default(),
        }
    }
}

/// How soon to look again when due work was found but other replicas held all of it.
const BUSY_RECHECK: Duration = Duration::from_millis(50);

/// Targets with waiting work read per scan of the queue: far more than one process can serve
/// at once. Past it, targets later in key order are known from notifications and notes only
/// (a scan that stops there does not forget them) until a scan finds fewer.
const TARGETS_PER_ROUND: i64 = 10_000;

pub struct Dispatcher {
    pool: PgPool,
    /// Claims and recordings, on connections that keep their plans (`deliveries::queue_writers`).
    queue: PgPool,
    catalog: Arc<CatalogCell>,
    metrics: Arc<Metrics>,
    /// The HTTP clients and OAuth2 tokens deliveries go out with.
    clients: Clients,
    /// Egress verdicts on target URLs, checked before each delivery.
    egress: EgressCache,
    options: DispatchOptions,
    targets: Targets,
    /// Deliveries this process holds (claimed, and not yet recorded), all targets together:
    /// at most `max_claimed`. Only the claimer adds to it, within what it saw free.
    holding: AtomicUsize,
    wake: Arc<Notify>,
    /// Told when `holding` drops to zero (a stopping dispatcher waits for it).
    idle: Notify,
    /// Cancelled when the node stops: no more claims, and what waits for a slot goes back.
    stop: CancellationToken,
    agenda: Mutex<Agenda>,
    /// Keys generated for targets without a secretRef (standalone), as stored in Postgres:
    /// a stored key never changes, so it is read once per process, not once per delivery.
    generated_keys: Mutex<HashMap<TargetKey, SigningKey>>,
    recorder: AttemptRecorder,
    /// Attempts per target and minute, for the console's pictures.
    activity: MinuteCounter,
    /// Operational events for the gateway to publish.
    notices: Notices,
}

fn target_label(key: &TargetKey) -> TargetLabels {
    TargetLabels {
        namespace: key.namespace.clone(),
        target: key.label(),
    }
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        catalog: Arc<CatalogCell>,
        metrics: Arc<Metrics>,
        options: DispatchOptions,
        notices: Notices,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let queue = deliveries::queue_writers(&pool);
        Arc::new(Self {
            recorder: deliveries::attempt_recorder(queue.clone()),
            queue,
            pool,
            catalog,
            metrics,
            clients: Clients::new(options.egress.clone()),
            egress: EgressCache::new(options.egress.clone()),
            holding: AtomicUsize::new(0),
            options,
            targets: Targets::default(),
            wake: Arc::new(Notify::new()),
            idle: Notify::new(),
            stop,
            agenda: Mutex::new(Agenda::default()),
            generated_keys: Mutex::default(),
            activity: MinuteCounter::default(),
            notices,
        })
    }

    /// Claims and delivers until the stop token is cancelled; then gives back what is not being
    /// sent yet and waits up to `drain` for the sends in flight to be recorded, so a rollout
    /// resends nothing that was answered. What is still out after `drain` is left to its lease.
    pub async fn run(self: Arc<Self>, drain: Duration) {
        let listening = tokio::spawn(self.clone().listen());
        let reporting = tokio::spawn(self.clone().report_backlog());
        let counting = tokio::spawn(self.clone().flush_activity());
        let leasing = tokio::spawn(self.clone().take_over_leases());
        self.claim_until_stopped().await;
        leasing.abort();
        listening.abort();
        reporting.abort();
        counting.abort();
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let held = self.holding.load(Ordering::Acquire);
            if held == 0 {
                tracing::info!("dispatcher stopped: every claimed delivery was sent or given back");
                self.flush_activity_once().await;
                return;
            }
            tokio::select! {
                _ = self.idle.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(held, "dispatcher stopped with deliveries still being sent; their leases expire and they are sent again");
                    self.flush_activity_once().await;
                    return;
                }
            }
        }
    }

    async fn claim_until_stopped(self: &Arc<Self>) {
        while !self.stop.is_cancelled() {
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
                _ = self.stop.cancelled() => {}
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

    /// Writes the attempts counted per target and minute, every second.
    async fn flush_activity(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.flush_activity_once().await;
        }
    }

    async fn flush_activity_once(&self) {
        let rows = self.activity.take();
        if let Err(err) = activity::add_minutes(&self.pool, &rows).await {
            tracing::warn!("cannot write the delivery activity per minute (kept for the next try): {err}");
            self.activity.put_back(rows);
        }
    }

    async fn report_backlog(self: Arc<Self>) {
        loop {
            if let Ok(pending) = deliveries::count_pending(&self.pool).await {
                self.metrics.deliveries_pending.set(pending);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    /// This process's state for a target. One target's claim depth is at most half of what
    /// the process may hold: one fast target leaves room for others.
    fn runtime(&self, target: &Target) -> Arc<TargetRuntime> {
        self.targets.runtime(target, self.options.max_claimed / 2)
    }

    fn agenda(&self) -> std::sync::MutexGuard<'_, Agenda> {
        self.agenda.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many deliveries to claim for which target now: each target that is due, not paused
    /// and configured here gets a fair share of this process's free slots, up to its room. Also
    /// when the earliest target with room falls due, if none is due now.
    fn plan_claims(&self) -> (Vec<Share>, Option<chrono::DateTime<Utc>>) {
        let catalog = self.catalog.get();
        let now = Utc::now();
        let instant = Instant::now();
        let mut next_due = None;
        let mut due = Vec::new();
        for (key, entry) in self.agenda().targets().filter(|(_, e)| !e.paused) {
            let Some(configured) = catalog.target(key) else {
                continue; // not configured here (yet, or any more): the controller cancels it
            };
            if configured.spec.paused {
                continue;
            }
            let runtime = self.runtime(configured);
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
                lease: self.lease_for(configured),
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
        let catalog = self.catalog.get();
        let takes: Vec<Take> = wanted
            .iter()
            .map(|s| Take {
                target: s.key.clone(),
                count: s.take,
                lease: s.lease,
                ordered: catalog.target(&s.key).is_some_and(|t| t.spec.ordering.is_some()),
            })
            .collect();
        // Taken before the database starts the leases, so none ends later than this says.
        let claimed_at = Instant::now();
        let batch = match deliveries::claim(&self.queue, &takes).await {
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
        let mut shares: HashMap<TargetKey, Share> = wanted.into_iter().map(|s| (s.key.clone(), s)).collect();
        for delivery in batch {
            let key = delivery.target_key();
            let Some(Share {
                runtime,
                take: left,
                lease,
                ..
            }) = shares.get_mut(&key)
            else {
                continue; // cannot happen: only planned targets are claimed
            };
            *left = left.saturating_sub(1);
            // Counted now, so the next round's plan sees the room this one took.
            let holding = Holding::new(self.clone());
            let held = Held::new(runtime.clone(), self.wake.clone(), claimed_at + *lease);
            tokio::spawn(async move {
                // An ordered delivery may hand over to its key's next one: sent by this task too.
                let mut next = Some((delivery, key, held));
                while let Some((delivery, key, held)) = next {
                    next = holding.dispatcher.deliver(delivery, key, held).await;
                }
                drop(holding);
            });
        }
        // A target that gave less than asked has nothing more due now.
        let mut agenda = self.agenda();
        for key in shares.values().filter(|s| s.take > 0).map(|s| &s.key) {
            agenda.exhausted(key, claimed_at);
        }
        Claim::Started
    }

    /// One claimed delivery: admitted, sent, settled, recorded; or given back unsent. An
    /// ordered one that finishes may come back with its key's next delivery, claimed.
    async fn deliver(
        &self,
        delivery: Claimed,
        key: TargetKey,
        held: Held,
    ) -> Option<(Claimed, TargetKey, Held)> {
        let catalog = self.catalog.get();
        let target = catalog.target(&key);
        let runtime = held.runtime.clone();
        let permit = match self.admit(&key, target, &runtime, &held).await {
            Ok(permit) => permit,
            Err(release) => {
                self.release(&delivery, &key, release).await;
                return None;
            }
        };
        let target = target?; // admitted targets are configured
        let span = crate::trace_span!(
            "deliver",
            otel.name = %format_args!("deliver {}", key.label()),
            otel.status_code = tracing::field::Empty,
            hookline.namespace = %key.namespace,
            hookline.target = %key.label(),
            hookline.event_id = %delivery.event_id,
            hookline.delivery_id = %delivery.id,
            hookline.attempt = delivery.attempts + 1,
            hookline.outcome = tracing::field::Empty,
        );
        let mut delivery = delivery;
        let trace = TraceContext {
            traceparent: delivery.traceparent.take(),
            tracestate: delivery.tracestate.take(),
        };
        trace.adopt(&span);
        self.attempt(delivery, key, target, permit, held, (&trace, &span))
            .instrument(span.clone())
            .await
    }

    /// The attempt of an admitted delivery: transformed, framed, sent, settled and recorded.
    async fn attempt(
        &self,
        delivery: Claimed,
        key: TargetKey,
        target: &Target,
        permit: admit::Permit<'_>,
        held: Held,
        (trace, span): (&TraceContext, &tracing::Span),
    ) -> Option<(Claimed, TargetKey, Held)> {
        let runtime = held.runtime.clone();
        let mut delivery = delivery;
        if let Some(transform) = &target.expressions.transform {
            match self.transformed(transform, &delivery).await {
                Ok((body, content_type)) => {
                    delivery.body = body;
                    delivery.content_type = Some(content_type.to_owned());
                }
                Err(why) => {
                    drop(permit);
                    drop(held);
                    self.end_unsent(&delivery, &key, &why).await;
                    return None;
                }
            }
        }
        // Standard Webhooks sends the body as it is: no copy on the common path.
        let mut format_headers = Vec::new();
        if target.spec.format != DeliveryFormat::StandardWebhooks {
            let framed = framing::frame(
                target.spec.format,
                &delivery,
                target.expressions.transform.is_some(),
            );
            delivery.body = framed.body;
            delivery.content_type = Some(framed.content_type);
            format_headers = framed.headers;
        }
        let send_span = crate::trace_span!(
            "send",
            otel.kind = "client",
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
        );
        // The receiver continues the trace from this request.
        format_headers.extend(TraceContext::of(&send_span, trace).headers());
        let sent = self
            .clients
            .send(
                &key,
                target,
                permit.endpoint,
                &delivery,
                &permit.keys,
                &format_headers,
            )
            .instrument(send_span.clone())
            .await;
        if let Some(code) = sent.attempt.status_code {
            send_span.record("http.response.status_code", code);
        }
        // The cap and the room are about requests to the target; recording happens outside.
        runtime.depth.sent();
        drop(permit);
        drop(held);
        let attempts_made = delivery.attempts as u32 + 1;
        let settlement = settle(
            Outcome {
                status: sent.attempt.status_code.map(|s| s as u16),
                error_class: sent.attempt.error_class,
                retry_after: sent.retry_after.as_deref(),
            },
            attempts_made,
            Terms {
                url: &target.spec.url,
                retry_policy: target.spec.retry_policy.as_ref(),
                max_retry_after: self.options.max_retry_after,
            },
            Utc::now(),
        );
        let lease = self.lease_for(target);
        let order = target.spec.ordering.as_ref().map(|o| KeyOrder {
            blocks_when_dead: o.on_dead == OnDead::Block,
            lease,
        });
        span.record(
            "hookline.outcome",
            match settlement.after {
                After::Succeeded => "succeeded",
                After::RetryAt(_) => "retry",
                After::Dead => "dead",
            },
        );
        if !settlement.succeeded {
            span.record("otel.status_code", "error");
        }
        // Taken before the successor's lease starts, so the hold ends no later than it.
        let recorded_at = Instant::now();
        let next = self
            .record(delivery, &key, &runtime, sent.attempt, settlement, order)
            .instrument(crate::trace_span!("record"))
            .await?;
        let held = Held::new(runtime, self.wake.clone(), recorded_at + lease);
        Some((next, key, held))
    }

    /// How long a claim holds a target's delivery: its attempt timeout and the margin.
    fn lease_for(&self, target: &Target) -> Duration {
        target.spec.attempt_timeout() + self.options.lease_margin
    }

    /// The body a target's transform builds for a delivery, and its content type.
    async fn transformed(
        &self,
        transform: &Expression,
        delivery: &Claimed,
    ) -> Result<(Vec<u8>, &'static str), String> {
        // Headers are read only by the transforms that use them.
        let headers = if transform.reads("headers") {
            deliveries::event_headers(&self.pool, delivery.event_id)
                .await
                .map_err(|err| format!("cannot read the event's headers: {err}"))?
        } else {
            serde_json::Value::Null
        };
        let variables = Variables::new(&delivery.event_type, &delivery.source, &headers, &delivery.body);
        transform
            .render(&variables)
            .map_err(|why| format!("transform: {why}"))
    }

    /// Ends a delivery its transform failed for: kept as `filtered_error`, never sent.
    async fn end_unsent(&self, delivery: &Claimed, key: &TargetKey, why: &str) {
        let labels = target_label(key);
        tracing::warn!(namespace = %key.namespace, target = %labels.target, delivery = %delivery.id, "not sent: {why}");
        self.metrics
            .deliveries_filtered
            .get_or_create(&FilteredLabels {
                namespace: labels.namespace,
                target: labels.target,
                outcome: "filtered_error".to_owned(),
            })
            .inc();
        if let Err(err) = deliveries::end_unsent(&self.pool, delivery.id, delivery.lease_until, why).await {
            tracing::warn!(delivery = %delivery.id, "cannot record the failed transform: {err}");
        }
    }

    /// Carries out a settlement: metrics, the breaker, a pause, and the attempt's record; for an
    /// ordered delivery that finished, the key's next one when the record claimed it.
    async fn record(
        &self,
        delivery: Claimed,
        key: &TargetKey,
        runtime: &TargetRuntime,
        attempt: deliveries::Attempt,
        settlement: Settlement,
        order: Option<KeyOrder>,
    ) -> Option<Claimed> {
        let labels = target_label(key);
        self.metrics
            .delivery_duration
            .observe(attempt.duration_ms as f64 / 1000.0);
        self.metrics
            .delivery_attempts
            .get_or_create(&AttemptLabels {
                namespace: labels.namespace.clone(),
                target: labels.target.clone(),
                outcome: if settlement.succeeded {
                    "succeeded"
                } else {
                    "failed"
                }
                .to_owned(),
            })
            .inc();
        self.record_breaker(key, runtime, settlement.succeeded, settlement.failure.as_deref())
            .await;
        let attempted = if settlement.succeeded {
            activity::Attempted::Succeeded
        } else {
            activity::Attempted::Failed {
                reason: settlement.failure.as_deref().unwrap_or("unknown"),
                dead: settlement.after == After::Dead,
            }
        };
        self.activity
            .count(key, attempt.started_at, attempt.duration_ms, attempted);
        if let Some(reason) = &settlement.pause {
            tracing::warn!(namespace = %key.namespace, target = %labels.target, "pausing target: {reason}");
            if deliveries::pause_target(&self.pool, key, reason).await.is_ok() {
                self.notices.tell(
                    key,
                    Happened::Paused {
                        reason: reason.clone(),
                    },
                );
            }
        }
        let after = settlement.after;
        // Of an ordered delivery (its key and the target's ordering).
        let order = order.filter(|_| delivery.ordering_key.is_some());
        let blocks_key = after == After::Dead && order.as_ref().is_some_and(|o| o.blocks_when_dead);
        let finished = !matches!(after, After::RetryAt(_)) && !blocks_key;
        let record = AttemptRecord {
            delivery: delivery.id,
            lease_until: delivery.lease_until,
            number: delivery.attempts + 1,
            held: delivery.held,
            attempt,
            after,
            last_error: settlement.failure.clone(),
            blocks_key,
            hand_over: order.as_ref().filter(|_| finished).map(|o| o.lease),
        };
        let handed = match self.recorder.submit(record).await {
            Ok(handed) => handed,
            Err(err) => {
                // The lease expires and the delivery is sent again: at-least-once.
                tracing::warn!(delivery = %delivery.id, "cannot record attempt: {err}");
                return None;
            }
        };
        if order.is_some() && finished && handed.is_none() {
            // Nothing was due to hand over to: the next head is for a claim (a retry's time, a
            // release, a new event) to find without waiting for a scan.
            self.agenda().note(key.clone(), Utc::now());
            self.wake.notify_one();
        }
        match after {
            After::RetryAt(at) => self.agenda().note(key.clone(), at),
            After::Succeeded => {
                let latency = (Utc::now() - delivery.received_at).to_std().unwrap_or_default();
                self.metrics.event_delivery_latency.observe(latency.as_secs_f64());
            }
            After::Dead => {
                self.metrics.deliveries_dead.get_or_create(&labels).inc();
                // Not for an operational event itself: one failing watcher cannot set off another.
                if !delivery.event_type.starts_with(notice::PREFIX) {
                    self.notices.tell(
                        key,
                        Happened::DeliveryDead {
                            delivery: delivery.id,
                            event: delivery.event_id,
                            event_type: delivery.event_type.clone(),
                            attempts: delivery.attempts + 1,
                            last_error: settlement.failure.clone(),
                        },
                    );
                }
                tracing::warn!(
                    namespace = %key.namespace, target = %labels.target, delivery = %delivery.id,
                    attempts = delivery.attempts + 1,
                    "delivery is dead after {}", settlement.failure.as_deref().unwrap_or("unknown")
                );
            }
        }
        // Sent by the same task, in the same place in `holding` as the delivery before it.
        handed
    }

    async fn record_breaker(
        &self,
        key: &TargetKey,
        runtime: &TargetRuntime,
        success: bool,
        failure: Option<&str>,
    ) {
        let (before, changed, reopen, failures) = {
            let mut flow = runtime.flow();
            let now = Instant::now();
            let before = flow.breaker.state();
            let changed = flow.breaker.record(success, now);
            let failures = flow.breaker.consecutive_failures();
            (before, changed, flow.breaker.reopens_in(now), failures)
        };
        let Some(state) = changed else { return };
        let name = match state {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        };
        let labels = target_label(key);
        tracing::info!(namespace = %key.namespace, target = %labels.target, "circuit {name}");
        self.metrics
            .circuit_state
            .get_or_create(&labels)
            .set(match state {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            });
        // Told once per opening and closing, by the replica that changed the shared state: a
        // failed probe (half-open to open) is the same opening.
        let shared_state_changed = deliveries::set_circuit(&self.pool, key, name)
            .await
            .unwrap_or(false);
        match (before, state) {
            (CircuitState::Closed, CircuitState::Open) if shared_state_changed => {
                self.notices.tell(
                    key,
                    Happened::CircuitOpened {
                        failures,
                        last_error: failure.map(str::to_owned),
                    },
                );
            }
            (CircuitState::HalfOpen, CircuitState::Closed) if shared_state_changed => {
                self.notices.tell(
                    key,
                    Happened::Recovered {
                        from: Recovery::CircuitClosed,
                    },
                );
            }
            _ => {}
        }
        if let Some(wait) = reopen {
            let _ = deliveries::defer_target(&self.pool, key, later(Utc::now(), wait)).await;
        }
    }

    /// Gives a delivery back unsent, due again after the release's wait; the only place
    /// deliveries are released.
    async fn release(&self, delivery: &Claimed, key: &TargetKey, release: Release) {
        let at = later(Utc::now(), release.after);
        if release.defer_target {
            let _ = deliveries::defer_target(&self.pool, key, at).await;
        }
        let reason = (!release.keeps_last_error).then_some(release.reason.as_ref());
        match deliveries::release(&self.pool, delivery.id, delivery.lease_until, at, reason).await {
            Ok(()) => self.agenda().note(key.clone(), at),
            Err(err) => tracing::warn!(delivery = %delivery.id, "cannot release delivery: {err}"),
        }
    }
}

/// What recording a delivery of an ordered target needs to know of its ordering.
struct KeyOrder {
    /// `onDead: block`.
    blocks_when_dead: bool,
    /// How long the key's next delivery is claimed for when it is handed over.
    lease: Duration,
}

/// A delivery counted in the process's `holding` until its task ends, also when it panics.
struct Holding {
    dispatcher: Arc<Dispatcher>,
}

impl Holding {
    fn new(dispatcher: Arc<Dispatcher>) -> Self {
        dispatcher.holding.fetch_add(1, Ordering::AcqRel);
        Self { dispatcher }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let this = &self.dispatcher;
        let before = this.holding.fetch_sub(1, Ordering::AcqRel);
        // Claiming again pays off once a batch's worth of room is free: woken when the count
        // passes that mark (each decrement sees its own value), not after every send beyond it.
        if before == this.options.max_claimed.saturating_sub(this.options.batch_size) + 1 {
            this.wake.notify_one();
        }
        if before == 1 {
            this.idle.notify_one();
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

/// A due target's part in a claim round.
struct Share {
    key: TargetKey,
    runtime: Arc<TargetRuntime>,
    /// Deliveries it may still be given.
    room: usize,
    /// Deliveries it is given in this round (then, once claimed, how many it did not get).
    take: usize,
    /// How long its claims hold.
    lease: Duration,
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
