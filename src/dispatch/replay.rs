//! The replay worker: every gateway works through running replays (see `store::replays`), a
//! batch of at most `rate` events per replay and second for all replicas together, under a
//! lease so one replica at a time moves each replay on. An event is replayed when its target would receive it (its `events`
//! and `filter`) and the replay's `events`, `filter` and `statuses` select it: its delivery to
//! the target is queued again (the same webhook-id), or created when it has none.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wildmatch::WildMatch;

use crate::catalog::expression::{Expression, Variables};
use crate::catalog::{CatalogCell, Selection, Target};
use crate::store::replays::{self, Batch, Finished, Leased, ReplayDelivery, WindowEvent};

/// How often the worker looks for work: the replay rate's unit.
const TICK: Duration = Duration::from_secs(1);
/// How long a worker holds a replay for one step (each step gives it back); a crashed worker's
/// replay moves on after this.
const LEASE: Duration = Duration::from_secs(10);
/// Replays moved on per tick and worker at most.
const REPLAYS_PER_TICK: i64 = 16;

/// What becomes of one event of the window, from its delivery's status to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not selected, or already on its way.
    Skip,
    /// Its delivery goes again.
    Requeue,
    /// It never had a delivery to the target: one is created.
    Create,
}

/// Which statuses select an event: `all`, or the delivery's own status among those listed.
/// Deliveries waiting to be sent (`pending`) or being sent are on their way already.
pub fn decide(status: Option<&str>, statuses: &[String]) -> Decision {
    let all = statuses.iter().any(|s| s == "all");
    match status {
        None if all => Decision::Create,
        None => Decision::Skip,
        Some("pending" | "in_flight") => Decision::Skip,
        Some(status) if all || statuses.iter().any(|s| s == status) => Decision::Requeue,
        Some(_) => Decision::Skip,
    }
}

pub async fn run(pool: PgPool, catalog: Arc<CatalogCell>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
        let leased = match replays::lease(&pool, LEASE, REPLAYS_PER_TICK).await {
            Ok(leased) => leased,
            Err(err) => {
                tracing::warn!("replay worker cannot read replays: {err}");
                continue;
            }
        };
        for replay in leased {
            if let Err(err) = step(&pool, &catalog, &replay).await {
                tracing::warn!(namespace = %replay.namespace, replay = %replay.name, "replay step failed: {err}");
            }
        }
    }
}

/// One batch of one replay.
async fn step(pool: &PgPool, catalog: &CatalogCell, replay: &Leased) -> sqlx::Result<()> {
    let catalog = catalog.get();
    let key = replay.target_key();
    let failed = |why: String| Batch {
        cursor: None,
        matched: 0,
        requeue: Vec::new(),
        create: Vec::new(),
        outcome: Some(Finished::Failed(why)),
    };
    let Some(target) = catalog.target(&key) else {
        let batch = failed(format!(
            "{} {} is not configured in namespace {}",
            key.kind, key.name, key.namespace
        ));
        return finish(pool, replay, &batch).await;
    };
    let filter = match replay.filter.as_deref().map(Expression::compile).transpose() {
        Ok(filter) => filter,
        Err(why) => return finish(pool, replay, &failed(format!("filter: {why}"))).await,
    };
    let limit = i64::from(replay.rate.max(1));
    let events = replays::next_events(pool, replay, limit).await?;
    let globs: Vec<WildMatch> = replay.event_types.iter().map(|g| WildMatch::new(g)).collect();
    let mut batch = Batch {
        cursor: events.last().map(|e| (e.received_at, e.id)),
        matched: 0,
        requeue: Vec::new(),
        create: Vec::new(),
        // Done once the window holds no more and can get no more (it ends in the past).
        outcome: (events.len() < limit as usize && replay.window_to <= chrono::Utc::now())
            .then_some(Finished::Complete),
    };
    for event in &events {
        let decision = match selected(target, &globs, filter.as_ref(), event) {
            true => decide(event.delivery_status.as_deref(), &replay.statuses),
            false => Decision::Skip,
        };
        match (decision, event.delivery_id) {
            (Decision::Skip, _) => continue,
            (Decision::Requeue, Some(id)) => batch.requeue.push(id),
            (Decision::Requeue, None) => continue,
            (Decision::Create, _) => batch.create.push(ReplayDelivery {
                event: event.id,
                ordering_key: ordering_key(target, event),
            }),
        }
        batch.matched += 1;
    }
    if replay.dry_run {
        batch.requeue.clear();
        batch.create.clear();
    }
    finish(pool, replay, &batch).await
}

async fn finish(pool: &PgPool, replay: &Leased, batch: &Batch) -> sqlx::Result<()> {
    if replays::advance(pool, replay, batch, TICK).await? {
        match &batch.outcome {
            Some(Finished::Complete) => {
                tracing::info!(namespace = %replay.namespace, replay = %replay.name, "replay has enqueued every matching event")
            }
            Some(Finished::Failed(why)) => {
                tracing::warn!(namespace = %replay.namespace, replay = %replay.name, "replay failed: {why}")
            }
            None => {}
        }
    }
    Ok(())
}

fn variables(event: &WindowEvent) -> Variables {
    Variables::new(&event.event_type, &event.source, &event.headers, &event.body)
}

/// Whether the target would receive the event, and the replay's globs and filter select it.
fn selected(target: &Target, globs: &[WildMatch], filter: Option<&Expression>, event: &WindowEvent) -> bool {
    if !target.receives_from(&event.source) || !target.accepts(&event.event_type) {
        return false;
    }
    if !globs.is_empty() && !globs.iter().any(|g| g.matches(&event.event_type)) {
        return false;
    }
    let mut built: Option<Arc<Variables>> = None;
    let mut variables_once = || built.get_or_insert_with(|| Arc::new(variables(event))).clone();
    if target.select(&mut variables_once) != Selection::Deliver {
        return false;
    }
    filter.is_none_or(|f| f.matches(&variables_once()).unwrap_or(false))
}

fn ordering_key(target: &Target, event: &WindowEvent) -> Option<String> {
    let key = target.expressions.ordering_key.as_ref()?;
    key.key(&variables(event)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn statuses_select_by_how_the_delivery_ended() {
        let all = statuses(&["all"]);
        assert_eq!(decide(None, &all), Decision::Create);
        assert_eq!(decide(Some("succeeded"), &all), Decision::Requeue);
        assert_eq!(decide(Some("filtered_error"), &all), Decision::Requeue);
        assert_eq!(
            decide(Some("pending"), &all),
            Decision::Skip,
            "on its way already"
        );
        assert_eq!(decide(Some("in_flight"), &all), Decision::Skip);
        let dead = statuses(&["dead"]);
        assert_eq!(decide(Some("dead"), &dead), Decision::Requeue);
        assert_eq!(decide(Some("succeeded"), &dead), Decision::Skip);
        assert_eq!(
            decide(None, &dead),
            Decision::Skip,
            "never delivered is only for all"
        );
        let retrying = statuses(&["failed", "succeeded"]);
        assert_eq!(decide(Some("failed"), &retrying), Decision::Requeue);
        assert_eq!(decide(Some("succeeded"), &retrying), Decision::Requeue);
        assert_eq!(decide(Some("dead"), &retrying), Decision::Skip);
    }
}
