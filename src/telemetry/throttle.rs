//! Log lines that a failure repeats at request rate, written at most once per interval with the
//! number left out: a database outage under thousands of requests a second is a line a second,
//! not thousands (the metrics still count every request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Throttle {
    every_ms: u64,
    next_ms: AtomicU64,
    left_out: AtomicU64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// Whether to write the line now: `Some(left_out)`, the lines left out since the last one.
    pub fn admit(&self) -> Option<u64> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.admit_at(now_ms)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms + self.every_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.admit_at(10_000), Some(0));
        assert_eq!(throttle.admit_at(10_001), None);
        assert_eq!(throttle.admit_at(10_999), None);
        assert_eq!(throttle.admit_at(11_000), Some(2));
        assert_eq!(throttle.admit_at(11_500), None);
        assert_eq!(throttle.admit_at(15_000), Some(1));
    }
}
