//! What this process knows of which targets have waiting deliveries, and when each falls due.
//!
//! A scan of the queue (one index probe per target with waiting work) lays it out now and then;
//! between scans it is kept current by what happens: the notification of new deliveries names
//! their targets, this process's own retries and releases say when they fall due, and a claim
//! that got less than it asked for shows that the target has nothing more due now. A claim
//! round then costs one statement, however many targets have waiting work. Whatever this misses
//! (another replica's retries, claims that expired with the replica that made them) the next
//! scan finds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::api::{TargetKey, TargetKind};
use crate::store::deliveries::WaitingTarget;

/// How often the queue is scanned even when nothing says it changed: the most another
/// replica's retry can be late by here.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Agenda {
    targets: HashMap<TargetKey, Entry>,
    /// When the last scan started; none yet means one is needed.
    scanned: Option<Instant>,
    /// Something changed that only a scan can tell (a resumed target, redeliveries, a
    /// notification too large to name its targets, a reconnected listener).
    stale: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// When the target's earliest waiting delivery falls due.
    pub due: DateTime<Utc>,
    /// Paused at runtime (410 Gone, or from the console), as of the last scan.
    pub paused: bool,
    /// When this entry was learnt, to keep what was learnt during a scan.
    noted: Instant,
}

/// Separates the targets named in a notification's payload.
pub const PAYLOAD_SEPARATOR: char = '\n';

impl Agenda {
    pub fn needs_scan(&self, now: Instant) -> bool {
        self.stale
            || self
                .scanned
                .is_none_or(|at| now.duration_since(at) >= RESCAN_EVERY)
    }

    /// Marks a scan as started now; its result is given to `replace`.
    pub fn scan_started(&mut self, now: Instant) {
        self.scanned = Some(now);
        self.stale = false;
    }

    /// Takes a scan's result. What was learnt since the scan started is kept: the scan's
    /// snapshot may be older than it. A scan cut short by its limit (`complete` false) has not
    /// seen every target, so it forgets none.
    pub fn replace(&mut self, waiting: Vec<WaitingTarget>, complete: bool) {
        let started = self.scanned.unwrap_or_else(Instant::now);
        let mut targets: HashMap<TargetKey, Entry> = waiting
            .into_iter()
            .map(|t| {
                let entry = Entry {
                    due: t.next_attempt_at,
                    paused: t.paused,
                    noted: started,
                };
                (t.key(), entry)
            })
            .collect();
        for (key, learnt) in self
            .targets
            .drain()
            .filter(|(_, e)| !complete || e.noted > started)
        {
            let entry = targets.entry(key).or_insert(learnt);
            entry.due = entry.due.min(learnt.due);
        }
        self.targets = targets;
    }

    /// The target has a delivery falling due at `due`.
    pub fn note(&mut self, key: TargetKey, due: DateTime<Utc>) {
        let noted = Instant::now();
        self.targets
            .entry(key)
            .and_modify(|e| {
                e.due = e.due.min(due);
                e.noted = noted;
            })
            .or_insert(Entry {
                due,
                paused: false,
                noted,
            });
    }

    /// A notification on the deliveries channel: the targets it names have new deliveries due
    /// now; one that names none asks for a scan.
    pub fn note_notification(&mut self, payload: &str, now: DateTime<Utc>) {
        let keys: Vec<TargetKey> = payload
            .split(PAYLOAD_SEPARATOR)
            .filter(|line| !line.is_empty())
            .filter_map(parse_key)
            .collect();
        if keys.is_empty() {
            self.stale = true;
        }
        for key in keys {
            self.note(key, now);
        }
    }

    /// Ask for a scan before the next round.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// A claim started at `claimed` took less than it asked of the target: nothing more of it
    /// was due then. When its next delivery falls due is for a note (one learnt since the claim
    /// started stays) or the next scan to tell.
    pub fn exhausted(&mut self, key: &TargetKey, claimed: Instant) {
        if self.targets.get(key).is_some_and(|e| e.noted < claimed) {
            self.targets.remove(key);
        }
    }

    pub fn targets(&self) -> impl Iterator<Item = (&TargetKey, &Entry)> {
        self.targets.iter()
    }
}

/// `namespace/kind/name`, as `store::events` writes it (a handler's name holds a `/` of its own).
fn parse_key(line: &str) -> Option<TargetKey> {
    let mut parts = line.splitn(3, '/');
    let (namespace, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    let kind: TargetKind = kind.parse().ok()?;
    (!namespace.is_empty() && !name.is_empty()).then(|| TargetKey {
        namespace: namespace.to_owned(),
        kind,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> TargetKey {
        TargetKey {
            namespace: "shop".into(),
            kind: TargetKind::Handler,
            name: name.into(),
        }
    }

    fn waiting(name: &str, due: DateTime<Utc>) -> WaitingTarget {
        WaitingTarget {
            namespace: "shop".into(),
            target_kind: TargetKind::Handler,
            target: name.into(),
            next_attempt_at: due,
            paused: false,
        }
    }

    fn due_of(agenda: &Agenda, name: &str) -> Option<DateTime<Utc>> {
        agenda.targets().find(|(k, _)| k.name == name).map(|(_, e)| e.due)
    }

    #[test]
    fn notifications_name_targets_or_ask_for_a_scan() {
        let mut agenda = Agenda::default();
        let now = Utc::now();
        agenda.scan_started(Instant::now());
        agenda.replace(Vec::new(), true);
        assert!(!agenda.needs_scan(Instant::now()));
        agenda.note_notification("shop/handler/stripe/billing\nshop/subscription/crm", now);
        assert_eq!(due_of(&agenda, "stripe/billing"), Some(now));
        assert_eq!(due_of(&agenda, "crm"), Some(now));
        assert!(!agenda.needs_scan(Instant::now()));
        agenda.note_notification("", now);
        assert!(
            agenda.needs_scan(Instant::now()),
            "an empty payload asks for a scan"
        );
    }

    #[test]
    fn a_scan_keeps_what_was_learnt_while_it_ran() {
        let mut agenda = Agenda::default();
        let now = Utc::now();
        let later = now + chrono::Duration::minutes(5);
        agenda.scan_started(Instant::now());
        // Learnt while the scan ran: due now, though the scan saw only a later retry.
        std::thread::sleep(Duration::from_millis(2));
        agenda.note(key("a"), now);
        agenda.replace(vec![waiting("a", later), waiting("b", later)], true);
        assert_eq!(due_of(&agenda, "a"), Some(now));
        assert_eq!(due_of(&agenda, "b"), Some(later));
        // Learnt before the scan started: the scan is newer and wins.
        agenda.scan_started(Instant::now());
        agenda.replace(vec![waiting("b", later)], false);
        assert_eq!(
            due_of(&agenda, "a"),
            Some(now),
            "a scan cut short forgets nothing"
        );
        agenda.scan_started(Instant::now());
        agenda.replace(vec![waiting("b", later)], true);
        assert_eq!(due_of(&agenda, "a"), None);
    }

    #[test]
    fn notes_keep_the_earliest_due_time_and_exhausted_targets_leave_unless_noted_since() {
        let mut agenda = Agenda::default();
        let now = Utc::now();
        agenda.note(key("a"), now + chrono::Duration::seconds(30));
        agenda.note(key("a"), now);
        agenda.note(key("a"), now + chrono::Duration::seconds(60));
        assert_eq!(due_of(&agenda, "a"), Some(now));
        let claimed = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        agenda.note(key("b"), now);
        agenda.exhausted(&key("a"), claimed);
        agenda.exhausted(&key("b"), claimed);
        assert_eq!(due_of(&agenda, "a"), None);
        assert_eq!(due_of(&agenda, "b"), Some(now), "noted while the claim ran: kept");
    }

    #[test]
    fn malformed_lines_are_ignored() {
        assert_eq!(parse_key("shop/handler"), None);
        assert_eq!(parse_key("//x"), None);
        assert_eq!(
            parse_key("shop/handler/stripe/billing").map(|k| k.name),
            Some("stripe/billing".into())
        );
    }
}
