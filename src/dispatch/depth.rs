//! How many deliveries a target holds claimed: enough that its next claim (a round trip to
//! Postgres, a few milliseconds) is back before the ones it holds are sent, measured from how
//! fast it sends. A fixed depth either starved fast targets (a claim per 32 deliveries capped
//! one target near 9,000/s) or held a slow target's work in one replica for longer than it
//! needs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Deliveries a target is claimed ahead: what it sends in this long.
const AHEAD: Duration = Duration::from_millis(50);
/// How often the send rate is measured.
const WINDOW: Duration = Duration::from_millis(250);

pub struct ClaimDepth {
    /// Never less: a few rounds of the target's in-flight cap.
    floor: usize,
    /// Never more: what the process may hold at all.
    cap: usize,
    /// Deliveries sent, since the start (those given back unsent say nothing of the pace).
    sent: AtomicU64,
    depth: AtomicUsize,
    /// Start of the current measuring window, and `sent` then.
    window: Mutex<(Instant, u64)>,
}

impl ClaimDepth {
    pub fn new(floor: usize, cap: usize, now: Instant) -> Self {
        let cap = cap.max(floor);
        Self {
            floor,
            cap,
            sent: AtomicU64::new(0),
            depth: AtomicUsize::new(floor),
            window: Mutex::new((now, 0)),
        }
    }

    /// A claimed delivery was sent.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Claimed deliveries at which the target gets no more claims.
    pub fn get(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Measures the send rate when a window has passed and sets the depth from it.
    pub fn measure(&self, now: Instant) -> usize {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (since, sent_then) = *window;
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= WINDOW {
            let sent = self.sent.load(Ordering::Relaxed);
            let per_s = (sent - sent_then) as f64 / elapsed.as_secs_f64();
            let ahead = (per_s * AHEAD.as_secs_f64()) as usize;
            self.depth
                .store(ahead.clamp(self.floor, self.cap), Ordering::Relaxed);
            *window = (now, sent);
        }
        self.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(depth: &ClaimDepth, n: usize) {
        for _ in 0..n {
            depth.sent();
        }
    }

    #[test]
    fn follows_the_send_rate_between_floor_and_cap() {
        let start = Instant::now();
        let depth = ClaimDepth::new(64, 1024, start);
        assert_eq!(depth.get(), 64);
        // 10,000 a second: 500 in 50 ms.
        send(&depth, 2_500);
        assert_eq!(depth.measure(start + WINDOW), 500);
        // Faster than the cap allows.
        send(&depth, 25_000);
        assert_eq!(depth.measure(start + 2 * WINDOW), 1024);
        // Idle: back to the floor.
        assert_eq!(depth.measure(start + 3 * WINDOW), 64);
    }

    #[test]
    fn waits_for_a_whole_window() {
        let start = Instant::now();
        let depth = ClaimDepth::new(64, 1024, start);
        send(&depth, 10_000);
        assert_eq!(depth.measure(start + WINDOW / 2), 64, "too soon to tell");
        // The count carries over into the window that completes.
        assert_eq!(depth.measure(start + WINDOW), 1024);
    }

    #[test]
    fn a_cap_below_the_floor_gives_way_to_the_floor() {
        let start = Instant::now();
        let depth = ClaimDepth::new(64, 16, start);
        send(&depth, 100_000);
        assert_eq!(depth.measure(start + WINDOW), 64);
    }
}
