//! The queue's drain rate, for `retry-after`: route slots freed per second, smoothed.
//!
//! The release path only bumps a counter; the rate is computed when a request is shed (the
//! cold path), as an exponentially weighted average of `freed / elapsed` over the time since
//! the last computation, weighted by `1 - exp(-elapsed / TAU)` so irregular sampling weighs
//! each stretch of time by its length. A refused request would be served after the `waiting`
//! requests ahead of it and itself: `retry_after = (waiting + 1) / rate`, at most
//! [`MAX_RETRY_AFTER`].
//!
//! A count over a stretch tells how fast slots were freed, not how fast they are freed when
//! the route is full: a route idle for 20 s that then fills freed one slot in those 20 s, and
//! a request refused then would be told to wait 20 s where the one request in flight ends
//! within a second. So the rate is also found from what is held (Little's law): `held` slots,
//! each held for the upstream's latency (smoothed over the latencies recorded between
//! refusals), free `held / latency` a second; the greater of the two rates is used.
//!
//! While nothing is being freed (no latency recorded yet and no slot freed: just after a start
//! or a reload, or with every slot held by slow requests) the wait is as long as the stall has
//! lasted so far (at most that maximum), counted from the first refusal with nothing freed
//! since (an idle route is not stalled): a route full for 200 ms tells clients to come back
//! soon (the answer's `retry-after` is whole seconds, at least 1), one stuck for 20 s to wait
//! about as long again, whatever the rate said before it stuck.

use std::time::Duration;

/// Time constant of the smoothing.
const TAU_SECS: f64 = 1.0;
/// Shorter stretches reuse the last rate (too few releases to measure).
const MIN_STRETCH_NANOS: u64 = 50_000_000;
/// Upper bound of a `retry_after`.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Latencies it takes to move the smoothed latency about two thirds of the way to theirs.
const LATENCY_SAMPLES: f64 = 8.0;

/// What the route holds when a request is refused: its slots in use, and the upstream
/// latencies recorded since the last refusal (nanoseconds summed, how many).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Held {
    pub held: u32,
    pub latencies: (u64, u64),
}

/// Smoothed release rate; see the module doc.
#[derive(Debug)]
pub(super) struct DrainRate {
    last_nanos: u64,
    last_released: u64,
    per_sec: f64,
    measured: bool,
    /// The upstream's latency, smoothed, in seconds (0: none recorded yet).
    latency: f64,
    /// The stall under way: the releases counted when it began (at a refusal), and when.
    stall: Option<(u64, u64)>,
}

// === impl DrainRate ===

impl DrainRate {
    /// No measurement yet; counting starts at `now`.
    pub(super) fn new(now: u64) -> Self {
        DrainRate {
            last_nanos: now,
            last_released: 0,
            per_sec: 0.0,
            measured: false,
            latency: 0.0,
            stall: None,
        }
    }

    /// Updates the rate with the count of releases `released` at `now` and what is `held`, and
    /// returns the wait of a request with `ahead` waiters before it.
    pub(super) fn retry_after(
        &mut self,
        now: u64,
        released: u64,
        ahead: u32,
        held: Held,
    ) -> Duration {
        let stretch = now.saturating_sub(self.last_nanos);
        if stretch >= MIN_STRETCH_NANOS {
            let secs = stretch as f64 / 1e9;
            let sample = released.saturating_sub(self.last_released) as f64 / secs;
            let weight = if self.measured {
                1.0 - (-secs / TAU_SECS).exp()
            } else {
                1.0
            };
            self.per_sec += weight * (sample - self.per_sec);
            self.measured = true;
            self.last_nanos = now;
            self.last_released = released;
        }
        let (sum, n) = held.latencies;
        if n > 0 {
            let sample = sum as f64 / n as f64 / 1e9;
            self.latency = if self.latency > 0.0 {
                let weight = 1.0 - (-(n as f64) / LATENCY_SAMPLES).exp();
                self.latency + weight * (sample - self.latency)
            } else {
                sample
            };
        }
        // A slot freed since the stall began ends it; this refusal begins the next one.
        let since = match self.stall {
            Some((at, since)) if at == released => since,
            _ => {
                self.stall = Some((released, now));
                now
            }
        };
        self.wait(ahead, now.saturating_sub(since), held.held)
    }

    /// Slots freed per second, as last measured.
    #[cfg(test)]
    pub(super) fn per_sec(&self) -> f64 {
        self.per_sec
    }

    /// The wait for `ahead` waiters and this request, the stall having lasted `stalled` ns,
    /// with `held` slots in use.
    fn wait(&self, ahead: u32, stalled: u64, held: u32) -> Duration {
        let stalled = Duration::from_nanos(stalled);
        let by_latency = if self.latency > 0.0 {
            f64::from(held) / self.latency
        } else {
            0.0
        };
        let rate = self.per_sec.max(by_latency);
        if rate <= 0.0 {
            return stalled.min(MAX_RETRY_AFTER);
        }
        let secs = (f64::from(ahead) + 1.0) / rate;
        Duration::try_from_secs_f64(secs)
            .map_or(MAX_RETRY_AFTER, |d| d.max(stalled).min(MAX_RETRY_AFTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const NONE: Held = Held {
        held: 0,
        latencies: (0, 0),
    };

    /// `held` slots, and `n` latencies of `ms` each since the last refusal.
    fn held(held: u32, n: u64, ms: u64) -> Held {
        Held {
            held,
            latencies: (n * ms * 1_000_000, n),
        }
    }

    /// A route idle for 20 s, with one request answered in 500 ms before: the one request in
    /// flight now frees its slot within half a second, and that is the wait, not the 20 s
    /// the freed-slot count alone (one in 20 s) would say.
    #[test]
    fn a_route_idle_before_it_filled_is_told_its_real_wait() {
        let mut d = DrainRate::new(0);
        let w = d.retry_after(20 * SEC, 1, 0, held(1, 1, 500));
        assert_eq!(w, Duration::from_millis(500), "one slot, held 500 ms");
        // Two held, three waiting ahead: four slots to free at two per 500 ms.
        let w = d.retry_after(20 * SEC + SEC / 10, 1, 3, held(2, 0, 0));
        assert_eq!(w, Duration::from_secs(1));
        // When the count says more (slots freed faster than latency says), the count decides.
        let mut d = DrainRate::new(0);
        let w = d.retry_after(SEC, 1000, 99, held(1, 10, 500));
        assert_eq!(w, Duration::from_millis(100), "100 at 1,000 a second");
    }

    /// A stall counts even when latencies known from before it say slots free fast.
    #[test]
    fn a_stall_outlasts_the_rate_it_began_with() {
        let mut d = DrainRate::new(0);
        d.retry_after(SEC, 10, 0, held(1, 10, 100));
        let w = d.retry_after(SEC + SEC / 20, 10, 0, held(1, 0, 0));
        assert_eq!(w, Duration::from_millis(100), "one slot at 10 a second");
        let w = d.retry_after(11 * SEC, 10, 0, held(1, 0, 0));
        assert_eq!(w, Duration::from_secs(10), "nothing freed for 10 s");
    }

    #[test]
    fn the_wait_follows_the_measured_rate() {
        let mut d = DrainRate::new(SEC);
        assert_eq!(
            d.retry_after(SEC, 0, 0, NONE),
            Duration::ZERO,
            "nothing freed yet, and nothing stuck: come back soon"
        );
        // 100 releases in one second: 100/s.
        let w = d.retry_after(2 * SEC, 100, 9, NONE);
        assert!((d.per_sec() - 100.0).abs() < 1e-6, "rate {}", d.per_sec());
        assert_eq!(w, Duration::from_millis(100), "10 requests at 100/s");
        // The rate halves for ten seconds: the average follows.
        for s in 3..13 {
            d.retry_after(s * SEC, 100 + (s - 2) * 50, 0, NONE);
        }
        assert!((d.per_sec() - 50.0).abs() < 1.0, "rate {}", d.per_sec());
    }

    /// While nothing is freed, the wait grows with the stall, from its first refusal (an idle
    /// hour before it is no stall), up to the most.
    #[test]
    fn with_nothing_freed_the_wait_is_as_long_as_the_stall() {
        let mut d = DrainRate::new(0);
        let start = 3600 * SEC;
        assert_eq!(
            d.retry_after(start, 0, 3, NONE),
            Duration::ZERO,
            "idle until now"
        );
        let at = |s: u64| start + s;
        assert_eq!(
            d.retry_after(at(SEC / 5), 0, 3, NONE),
            Duration::from_millis(200)
        );
        assert_eq!(
            d.retry_after(at(20 * SEC), 0, 0, NONE),
            Duration::from_secs(20)
        );
        assert_eq!(d.retry_after(at(100 * SEC), 0, 0, NONE), MAX_RETRY_AFTER);
        // Slots freed again: the measured rate decides, and a new stall counts from its start.
        let w = d.retry_after(at(101 * SEC), 50, 0, NONE);
        assert!(w < Duration::from_secs(1), "{w:?}");
    }
}
