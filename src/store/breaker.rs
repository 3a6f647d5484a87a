//! The breaker on the store connection: a pure state machine on an injected time.
//!
//! Closed, every call goes to the store. A broken connection (closed, reset; seen by a call or
//! by the connection's own reader the moment it ends) opens it at once and the first reconnect
//! is due at once: a store that merely dropped the link (a restart, an idle timeout, a proxy in
//! between) is back within a connect. Slow or failed answers open it after [`THRESHOLD`] in a
//! row, with the first probe after [`BASE_BACKOFF`]. Open, no request calls the store: each
//! decides by `on_store_error` at once, without waiting. One background task probes (it
//! reconnects if needed, then sends `PING`) when the backoff ends; a good answer closes the
//! breaker, a bad one doubles the backoff up to [`MAX_BACKOFF`]. Each wait is jittered (a random
//! point in its upper half) so a fleet of ramparts does not reconnect in step after an outage.

use std::time::Duration;

/// Failed calls in a row (timeouts, errors) that open the breaker.
pub(crate) const THRESHOLD: u32 = 3;
/// First wait before a probe.
pub(crate) const BASE_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between probes: how late enforcement may resume after the store is back.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a failure was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection is gone (refused, reset, closed): reconnect before the next call.
    Broken,
    /// An answer came too late, or was an error: the connection may still be good.
    Soft,
}

/// The breaker's state; times are nanoseconds of the rampart clock.
#[derive(Debug)]
pub(crate) struct Breaker {
    open: bool,
    failures: u32,
    backoff: u64,
    retry_at: u64,
}

// === impl Breaker ===

impl Breaker {
    /// A breaker that starts open with its first probe due at once (no connection yet).
    pub(crate) fn new() -> Self {
        Breaker {
            open: true,
            failures: 0,
            backoff: nanos(BASE_BACKOFF),
            retry_at: 0,
        }
    }

    /// Whether calls may go to the store.
    pub(crate) fn is_closed(&self) -> bool {
        !self.open
    }

    /// When the next probe is due.
    pub(crate) fn retry_at(&self) -> u64 {
        self.retry_at
    }

    /// A call answered in time.
    pub(crate) fn success(&mut self) {
        self.failures = 0;
    }

    /// A call failed at `now`; `jitter` is a random number in [0, 1). True if this opened it.
    pub(crate) fn failure(&mut self, kind: Failure, now: u64, jitter: f64) -> bool {
        if self.open {
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        if kind == Failure::Broken {
            self.open = true;
            self.backoff = nanos(BASE_BACKOFF);
            self.retry_at = now;
            return true;
        }
        if self.failures >= THRESHOLD {
            self.open = true;
            self.backoff = nanos(BASE_BACKOFF);
            self.retry_at = now.saturating_add(jittered(self.backoff, jitter));
            return true;
        }
        false
    }

    /// A probe failed at `now`: wait twice as long (up to the maximum) before the next.
    pub(crate) fn probe_failed(&mut self, now: u64, jitter: f64) {
        self.open = true;
        self.backoff = self.backoff.saturating_mul(2).min(nanos(MAX_BACKOFF));
        self.retry_at = now.saturating_add(jittered(self.backoff, jitter));
    }

    /// A probe succeeded: calls go to the store again.
    pub(crate) fn close(&mut self) {
        self.open = false;
        self.failures = 0;
        self.backoff = nanos(BASE_BACKOFF);
    }
}

/// A point in the upper half of `backoff`.
fn jittered(backoff: u64, jitter: f64) -> u64 {
    let half = backoff / 2;
    half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64
}

/// `d` in nanoseconds, the clock's unit (saturating).
pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_broken_connection_opens_at_once_and_soft_failures_after_the_threshold() {
        let mut b = Breaker::new();
        b.close();
        assert!(!b.failure(Failure::Soft, 0, 0.0) && b.is_closed());
        assert!(!b.failure(Failure::Soft, 0, 0.0) && b.is_closed());
        b.success();
        assert!(!b.failure(Failure::Soft, 0, 0.0));
        assert!(!b.failure(Failure::Soft, 0, 0.0));
        assert!(
            b.failure(Failure::Soft, 0, 0.0),
            "the third soft failure in a row must open"
        );
        assert!(!b.is_closed());
        b.close();
        assert!(
            b.failure(Failure::Broken, 10 * MS, 0.0),
            "a broken link must open at once"
        );
        assert_eq!(b.retry_at(), 10 * MS, "and reconnect at once");
        assert!(!b.failure(Failure::Broken, 11 * MS, 0.0), "already open");
        assert_eq!(b.retry_at(), 10 * MS);
        b.close();
        for _ in 0..THRESHOLD {
            b.failure(Failure::Soft, 20 * MS, 0.0);
        }
        assert_eq!(
            b.retry_at(),
            20 * MS + 25 * MS,
            "slow answers: first wait half of 50ms with no jitter"
        );
    }

    #[test]
    fn probes_back_off_with_jitter_up_to_the_maximum_and_a_success_resets() {
        let mut b = Breaker::new();
        assert!(!b.is_closed(), "a new breaker waits for its first probe");
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.probe_failed(0, 1.0);
            waits.push(b.retry_at() / MS);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.probe_failed(0, 0.0);
        assert_eq!(
            b.retry_at() / MS,
            1000,
            "jitter picks within the upper half"
        );
        b.close();
        assert!(b.is_closed());
        b.failure(Failure::Broken, 0, 1.0);
        assert_eq!(b.retry_at(), 0, "a lost link reconnects at once");
        b.probe_failed(0, 1.0);
        assert_eq!(
            b.retry_at() / MS,
            100,
            "after a recovery the backoff starts over"
        );
    }
}
