//! Reconciles a WebhookReplay: records it for the gateways' replay worker (once per uid; the
//! spec cannot change), and reports its progress from Postgres as status, conditions and an
//! Event when it completes or fails. Deleting it forgets the replay: what is not enqueued yet
//! never is.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::conditions::{Observed, condition, time};
use super::report::Notice;
use super::{Context, Error};
use crate::api::{WebhookReplay, WebhookReplayStatus};
use crate::store::replays::{self, NewReplay, Progress};

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";

/// How often a replay in progress is looked at.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

pub async fn apply(replay: Arc<WebhookReplay>, ctx: &Context) -> Result<Action, Error> {
    let previous = replay.status.clone().unwrap_or_default();
    let progress = match NewReplay::from_resource(&replay, replay.uid().unwrap_or_default()) {
        Ok(new) => {
            replays::upsert(&ctx.pool, &new).await.map_err(Error::Database)?;
            replays::progress(&ctx.pool, &new.namespace, &new.name, &new.uid)
                .await
                .map_err(Error::Database)?
                .ok_or_else(|| "the replay was not recorded".to_owned())
        }
        Err(problem) => Err(problem),
    };
    let (status, notices) = decide(
        &previous,
        replay.metadata.generation,
        &progress,
        jiff::Timestamp::now(),
    );
    let finished = status.conditions.iter().any(|c| c.status == "True");
    ctx.report(&*replay, &previous, &status, &notices).await?;
    Ok(Action::requeue(if finished {
        ctx.options.status_interval.max(Duration::from_secs(60))
    } else {
        PROGRESS_INTERVAL
    }))
}

/// Status and Events from the replay's progress (or why it could not be recorded).
pub(super) fn decide(
    previous: &WebhookReplayStatus,
    generation: Option<i64>,
    progress: &Result<Progress, String>,
    now: jiff::Timestamp,
) -> (WebhookReplayStatus, Vec<Notice>) {
    let observed = Observed {
        previous: &previous.conditions,
        generation,
        now,
    };
    let progress = match progress {
        Ok(progress) => progress,
        Err(problem) => {
            let status = WebhookReplayStatus {
                observed_generation: generation,
                conditions: vec![
                    condition(observed, COMPLETE, false, "Invalid", problem.clone()),
                    condition(observed, FAILED, true, "Invalid", problem.clone()),
                ],
                ..WebhookReplayStatus::default()
            };
            return (status, vec![Notice::warning("ReplayFailed", problem.clone())]);
        }
    };
    let counts = format!(
        "matched {}, enqueued {}, delivered {}, failed {}",
        progress.matched, progress.enqueued, progress.delivered, progress.failed
    );
    let (complete, failed) = match progress.state.as_str() {
        "failed" => {
            let why = progress.message.clone().unwrap_or_else(|| "failed".to_owned());
            (
                condition(observed, COMPLETE, false, "Failed", why.clone()),
                condition(observed, FAILED, true, "Failed", why),
            )
        }
        "complete" if progress.dry_run => (
            condition(
                observed,
                COMPLETE,
                true,
                "DryRun",
                format!("dry run: {} events match", progress.matched),
            ),
            condition(observed, FAILED, false, "Counted", "nothing was enqueued"),
        ),
        "complete" if progress.outstanding == 0 => (
            condition(observed, COMPLETE, true, "Delivered", counts.clone()),
            condition(
                observed,
                FAILED,
                false,
                "Delivered",
                "every enqueued delivery finished",
            ),
        ),
        "complete" => (
            condition(
                observed,
                COMPLETE,
                false,
                "Delivering",
                format!("every match enqueued; {counts}"),
            ),
            condition(
                observed,
                FAILED,
                false,
                "Delivering",
                format!("{} deliveries on their way", progress.outstanding),
            ),
        ),
        _ => (
            condition(observed, COMPLETE, false, "Enqueuing", counts.clone()),
            condition(observed, FAILED, false, "Enqueuing", "in progress"),
        ),
    };
    let newly = |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        c.status == "True"
            && !previous
                .conditions
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == "True")
    };
    let mut notices = Vec::new();
    if newly(&complete) {
        notices.push(Notice::normal("ReplayComplete", complete.message.clone()));
    }
    if newly(&failed) {
        notices.push(Notice::warning("ReplayFailed", failed.message.clone()));
    }
    let done = complete.status == "True" || failed.status == "True";
    let status = WebhookReplayStatus {
        observed_generation: generation,
        target: Some(format!("{}/{}", progress.target_kind, progress.target)),
        matched: progress.matched as u64,
        enqueued: progress.enqueued as u64,
        delivered: progress.delivered as u64,
        failed: progress.failed as u64,
        completion_time: if done { time(progress.finished_at) } else { None },
        conditions: vec![complete, failed],
    };
    (status, notices)
}

/// The replay is being deleted: forgotten, so nothing more is enqueued for it.
pub async fn cleanup(replay: Arc<WebhookReplay>, ctx: &Context) -> Result<Action, Error> {
    let namespace = replay.namespace().unwrap_or_default();
    let removed = replays::remove(
        &ctx.pool,
        &namespace,
        &replay.name_any(),
        &replay.uid().unwrap_or_default(),
    )
    .await
    .map_err(Error::Database)?;
    tracing::info!(%namespace, replay = %replay.name_any(), removed, "replay deleted; nothing more is enqueued for it");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn progress(state: &str, outstanding: i64) -> Result<Progress, String> {
        Ok(Progress {
            id: uuid::Uuid::nil(),
            namespace: "shop".into(),
            name: "r".into(),
            target_kind: "subscription".into(),
            target: "crm".into(),
            window_from: Utc::now(),
            window_to: Utc::now(),
            dry_run: false,
            state: state.into(),
            message: None,
            matched: 10,
            enqueued: 10,
            delivered: 10 - outstanding,
            failed: 0,
            outstanding,
            created_at: Utc::now(),
            finished_at: Some(Utc::now()),
        })
    }

    fn status_of(status: &WebhookReplayStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn complete_once_every_enqueued_delivery_finished_and_announced_once() {
        let now = jiff::Timestamp::now();
        let (running, notices) = decide(
            &WebhookReplayStatus::default(),
            Some(1),
            &progress("running", 4),
            now,
        );
        assert_eq!(status_of(&running, COMPLETE), "False");
        assert!(notices.is_empty());
        let (delivering, _) = decide(&running, Some(1), &progress("complete", 2), now);
        assert_eq!(status_of(&delivering, COMPLETE), "False", "still delivering");
        let (done, notices) = decide(&delivering, Some(1), &progress("complete", 0), now);
        assert_eq!(status_of(&done, COMPLETE), "True");
        assert_eq!(done.target.as_deref(), Some("subscription/crm"));
        assert_eq!(
            notices,
            [Notice::normal(
                "ReplayComplete",
                "matched 10, enqueued 10, delivered 10, failed 0"
            )]
        );
        let (_, again) = decide(&done, Some(1), &progress("complete", 0), now);
        assert!(again.is_empty(), "announced once");
    }

    #[test]
    fn a_replay_that_cannot_run_fails_saying_why() {
        let (status, notices) = decide(
            &WebhookReplayStatus::default(),
            Some(1),
            &Err("spec.target: set subscription, or source and handler".into()),
            jiff::Timestamp::now(),
        );
        assert_eq!(status_of(&status, FAILED), "True");
        assert_eq!(notices[0].reason, "ReplayFailed");
    }
}
