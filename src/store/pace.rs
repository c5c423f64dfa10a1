//! Whether a group commit lingers: gathers a batch for a while even when no write is under way.
//!
//! Lingering makes fewer, larger commits, which costs Postgres less per item. Whether it costs
//! the senders anything depends on them, and the gateway cannot see that in a request:
//! - Senders that send whatever the answers (an open loop: many providers, each sending as
//!   events happen) arrive at the same rate whether or not a batch lingers. Their answers come a
//!   linger later; Postgres and the tail of the latency gain.
//! - Senders that wait for each answer before they send the next (a closed loop: a provider's
//!   few connections through a backlog) send less when answers come later, as much as five
//!   times less at a few connections (docs/benchmarks.md, 2026-12-06).
//!
//! So the rate is measured in short epochs, and every [`PaceSettings::probe_every`] epochs are
//! followed by a probe that does the other thing. A probe that lingers and keeps the rate turns lingering
//! on; a probe that does not linger and finds the rate higher turns it off, as does a rate too
//! low for a linger to gather much. Pure: the caller gives the time and the arrivals.

use std::time::{Duration, Instant};

/// How the rate is measured and judged.
#[derive(Clone, Copy, Debug)]
pub struct PaceSettings {
    /// The length of an epoch, in which arrivals are counted.
    pub epoch: Duration,
    /// A probe follows this many epochs that were not (so one epoch in `probe_every + 1`).
    pub probe_every: u32,
    /// Below this many arrivals a second a linger gathers too little to be worth it: no
    /// lingering, and no probes that would try it.
    pub min_rate: f64,
    /// How far a probe's rate may differ from the epoch before it and still count as the same.
    pub tolerance: f64,
}

/// The state of the measurement; see the module's documentation.
#[derive(Debug)]
pub struct Pace {
    settings: PaceSettings,
    lingering: bool,
    probing: bool,
    epoch_started: Instant,
    arrived: u64,
    /// Epochs ended since the last probe. Counted also while the rate is too low, so a burst
    /// after a quiet spell is probed after its first epoch, and probes come at most one in
    /// `probe_every` epochs whatever the rate does.
    since_probe: u32,
    /// The rate of the last epoch that was not a probe.
    last_rate: f64,
}

impl Pace {
    pub fn new(settings: PaceSettings, now: Instant) -> Self {
        assert!(!settings.epoch.is_zero(), "an epoch of no time");
        Self {
            settings,
            lingering: false,
            probing: false,
            epoch_started: now,
            arrived: 0,
            // The first epoch fast enough is followed by a probe.
            since_probe: settings.probe_every,
            last_rate: 0.0,
        }
    }

    /// Counts items that arrived.
    pub fn arrived(&mut self, items: u64) {
        self.arrived += items;
    }

    /// Whether lingering is on (probes aside), and the rate it was last judged by.
    pub fn state(&self) -> (bool, f64) {
        (self.lingering, self.last_rate)
    }

    /// Whether a batch gathered `now` lingers. Ends the epoch first if its time has come.
    pub fn lingers(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch_started);
        if elapsed >= self.settings.epoch {
            // An epoch with nothing to gather lasts until something comes: as many epochs.
            let epochs = elapsed.as_nanos() / self.settings.epoch.as_nanos();
            self.end_epoch(
                self.arrived as f64 / elapsed.as_secs_f64(),
                u32::try_from(epochs).unwrap_or(u32::MAX),
            );
            self.epoch_started = now;
            self.arrived = 0;
        }
        self.lingering != self.probing
    }

    fn end_epoch(&mut self, rate: f64, epochs: u32) {
        let PaceSettings {
            probe_every,
            min_rate,
            tolerance,
            ..
        } = self.settings;
        let was_probe = std::mem::take(&mut self.probing);
        // An epoch that was a probe starts the count again; a quiet spell counts as the epochs
        // it lasted, even one that began as a probe.
        self.since_probe = if was_probe {
            epochs.saturating_sub(1)
        } else {
            self.since_probe.saturating_add(epochs)
        };
        if rate < min_rate {
            // Too slow to gather much, probe or not: no lingering.
            self.last_rate = rate;
            self.lingering = false;
            return;
        }
        if was_probe {
            // `last_rate`, the epoch before the probe, was at least `min_rate`.
            self.lingering = if self.lingering {
                // The probe did not linger: lingering cost the senders if they sent more.
                rate <= self.last_rate * (1.0 + tolerance)
            } else {
                // The probe lingered: it cost them nothing if they sent as much.
                rate >= self.last_rate * (1.0 - tolerance)
            };
            return;
        }
        self.last_rate = rate;
        if self.since_probe >= probe_every {
            self.probing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: PaceSettings = PaceSettings {
        epoch: Duration::from_millis(50),
        probe_every: 20,
        min_rate: 2_000.0,
        tolerance: 0.1,
    };

    /// Runs `epochs` epochs whose arrivals a second `rate` gives from whether the epoch
    /// lingers; the epochs that lingered, in order.
    fn run(
        pace: &mut Pace,
        start: &mut Instant,
        epochs: usize,
        mut rate: impl FnMut(bool) -> f64,
    ) -> Vec<bool> {
        let mut lingered = Vec::new();
        for _ in 0..epochs {
            let lingering = pace.lingers(*start);
            lingered.push(lingering);
            pace.arrived((rate(lingering) * SETTINGS.epoch.as_secs_f64()) as u64);
            *start += SETTINGS.epoch;
        }
        lingered
    }

    #[test]
    fn senders_that_do_not_wait_for_answers_are_lingered_for() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        let lingered = run(&mut pace, &mut start, 200, |_| 10_000.0);
        let first = lingered.iter().position(|l| *l).expect("a probe");
        assert_eq!(first, 1, "the first epoch fast enough is followed by a probe");
        // From the probe on, every epoch lingers but the probes that do not.
        let after = &lingered[first..];
        let not = after.iter().filter(|l| !**l).count();
        assert_eq!(not, after.len() / 21, "one probe in 21 epochs does not linger");
    }

    #[test]
    fn senders_that_wait_for_answers_are_not_lingered_for() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        // Lingering gives eight waiting senders a fifth of their rate.
        let lingered = run(&mut pace, &mut start, 210, |lingering| {
            if lingering { 1_000.0 } else { 5_000.0 }
        });
        assert_eq!(
            lingered.iter().filter(|l| **l).count(),
            10,
            "only the probes linger"
        );
    }

    #[test]
    fn a_loop_that_closes_while_lingering_is_found_by_the_next_probe() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        run(&mut pace, &mut start, 30, |_| 10_000.0);
        assert!(pace.lingers(start), "open loop: lingering");
        let lingered = run(&mut pace, &mut start, 30, |lingering| {
            if lingering { 3_000.0 } else { 6_000.0 }
        });
        let last_lingering = lingered.iter().rposition(|l| *l).expect("lingered at first");
        assert!(last_lingering < 21, "the next probe ends it: {lingered:?}");
        assert!(!lingered[last_lingering + 1..].iter().any(|l| *l));
    }

    #[test]
    fn a_rate_too_low_neither_lingers_nor_probes() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        run(&mut pace, &mut start, 30, |_| 10_000.0);
        assert!(pace.lingers(start));
        let lingered = run(&mut pace, &mut start, 100, |_| 1_500.0);
        assert_eq!(lingered.iter().skip(1).filter(|l| **l).count(), 0, "{lingered:?}");
    }

    #[test]
    fn a_burst_after_a_quiet_spell_is_probed_after_its_first_epoch() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        run(&mut pace, &mut start, 100, |_| 500.0);
        let lingered = run(&mut pace, &mut start, 10, |_| 10_000.0);
        // The burst's first epoch is measured, its second is a probe that lingers, and so do
        // the ones after it.
        assert!(!lingered[0], "{lingered:?}");
        assert!(lingered[1..].iter().all(|l| *l), "{lingered:?}");
        // The same after a minute with nothing at all: one epoch, as long as the minute.
        start += Duration::from_secs(60);
        let lingered = run(&mut pace, &mut start, 10, |_| 10_000.0);
        assert!(!lingered[0], "{lingered:?}");
        assert!(lingered[1..].iter().all(|l| *l), "{lingered:?}");
    }

    #[test]
    fn a_rate_about_the_threshold_is_probed_one_epoch_in_21_at_most() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        // Waiting senders whose rate crosses 2,000 a second every other epoch.
        let mut fast = false;
        let lingered = run(&mut pace, &mut start, 210, |lingering| {
            fast = !fast;
            match (lingering, fast) {
                (true, _) => 1_000.0,
                (false, true) => 2_100.0,
                (false, false) => 1_900.0,
            }
        });
        let probes = lingered.iter().filter(|l| **l).count();
        assert!(probes <= 10, "{probes} probes: {lingered:?}");
    }

    #[test]
    fn a_quiet_spell_ends_lingering() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        run(&mut pace, &mut start, 30, |_| 10_000.0);
        // Nothing arrives for a minute: the first batch after it is measured over the minute.
        assert!(!pace.lingers(start + Duration::from_secs(60)));
    }

    #[test]
    fn a_quiet_spell_in_a_probe_ends_lingering_too() {
        let mut start = Instant::now();
        let mut pace = Pace::new(SETTINGS, start);
        run(&mut pace, &mut start, 30, |_| 10_000.0);
        // Lingering, until a probe (which does not linger) begins: the spell falls in it.
        while pace.lingers(start) {
            pace.arrived(500);
            start += SETTINGS.epoch;
        }
        assert!(pace.state().0, "a probe while lingering is on");
        start += Duration::from_secs(60);
        // Then senders who wait for their answers: lingering gives them a fifth of their rate.
        let lingered = run(&mut pace, &mut start, 10, |lingering| {
            if lingering { 1_000.0 } else { 5_000.0 }
        });
        let mut expected = [false; 10];
        expected[1] = true;
        assert_eq!(lingered, expected, "measured, a probe that lingers, then off");
    }
}
