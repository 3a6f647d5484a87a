//! Warnings about a fault that repeats (a log that cannot be written, a collector that is
//! down): said at most once per period, with how many times it happened since the last one.
//!
//! Why: a fault met on every round of a writer (every 25 ms) would write forty warnings a
//! second, burying the lines that matter, and when the fault is stdout itself, feeding it. The
//! count says what the silence held back; the metric that counts each occurrence says the rest.

use std::time::Duration;

use tokio::time::Instant;

/// How often a repeating fault is warned about, at most.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// The state of one throttled warning.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

// === impl Throttle ===

impl Throttle {
    /// A warning said at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            since: 0,
        }
    }

    /// Counts `n` more occurrences at `now`. When a warning is due (none was said yet, or the
    /// last one is `every` old), returns how many occurred since the last one said, these
    /// included, and counts anew; else `None`: say nothing.
    pub fn note(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.since = self.since.saturating_add(n);
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_with_the_count_since_the_last() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = Throttle::new(Duration::from_secs(30));
        assert_eq!(w.note(3, at(0)), Some(3), "the first is said at once");
        // Every 25 ms for 30 s: silent.
        for i in 1..1200 {
            assert_eq!(w.note(2, at(i * 25)), None, "round {i}");
        }
        assert_eq!(
            w.note(2, at(30_000)),
            Some(1200 * 2),
            "then the whole count"
        );
        assert_eq!(w.note(1, at(30_001)), None);
        assert_eq!(w.note(0, at(90_000)), Some(1));
    }
}
