//! The trip rules of a `circuit_breaker` section, resolved once into plain numbers.
//!
//! Why apart: the state machine asks "does this trip?" on every counted call, so the file's
//! optional sections become fixed fields here (a rule left out is off), and the arithmetic
//! of growth and thresholds can be read, and tested, in one place.

use std::time::Duration;

use super::window::Counts;
use crate::config::file;

/// Window size when only `slow_call` is set: the `failure_rate.window` default.
pub const DEFAULT_WINDOW: u32 = 20;
/// `min_calls` when only `slow_call` is set: the `failure_rate.min_calls` default.
pub const DEFAULT_MIN_CALLS: u32 = 10;

/// Slack for ratio comparisons, so `50%` of 10 calls trips at exactly 5.
const EPSILON: f64 = 1e-9;

/// One breaker configuration as the state machine reads it.
#[derive(Debug)]
pub(super) struct Rules {
    /// `consecutive_failures`, or `u32::MAX` when off.
    consecutive: u32,
    /// `failure_rate.threshold` as a fraction, when on.
    failure_rate: Option<f64>,
    /// `slow_call.threshold`, when on.
    slow_rate: Option<f64>,
    /// A call longer than this many nanos is slow (`u64::MAX` when off).
    pub(super) slow_nanos: u64,
    /// Calls in the sliding window (0 when no rate rule is on).
    pub(super) window: u32,
    min_calls: u32,
    /// Base `open_for`, in nanos.
    pub(super) open_for: u64,
    /// Ceiling of the grown `open_for` (equal to the base when `open_for_max` is absent).
    open_for_max: u64,
    /// `half_open_probes` (at least 1).
    pub(super) probes: u32,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl Rules ===

impl Rules {
    /// Resolves `cfg` (already validated: thresholds above 0, `window ≥ min_calls ≥ 1`).
    pub(super) fn new(cfg: &file::CircuitBreaker) -> Self {
        let rate_on = cfg.failure_rate.is_some() || cfg.slow_call.is_some();
        let (window, min_calls) = match &cfg.failure_rate {
            Some(fr) => (fr.window.max(1), fr.min_calls.max(1)),
            None => (DEFAULT_WINDOW, DEFAULT_MIN_CALLS),
        };
        let open_for = nanos(cfg.open_for.0).max(1);
        Rules {
            consecutive: cfg.consecutive_failures.unwrap_or(u32::MAX).max(1),
            failure_rate: cfg.failure_rate.as_ref().map(|fr| fr.threshold.0),
            slow_rate: cfg.slow_call.as_ref().map(|sc| sc.threshold.0),
            slow_nanos: cfg
                .slow_call
                .as_ref()
                .map_or(u64::MAX, |sc| nanos(sc.duration.0)),
            window: if rate_on { window } else { 0 },
            min_calls: min_calls.min(window),
            open_for,
            open_for_max: cfg
                .open_for_max
                .map_or(open_for, |m| nanos(m.0).max(open_for)),
            probes: cfg.half_open_probes.max(1),
        }
    }

    /// Whether the closed-state counts call for a trip.
    pub(super) fn trips(&self, consecutive: u32, w: &Counts) -> bool {
        if consecutive >= self.consecutive {
            return true;
        }
        if w.calls == 0 || w.calls < self.min_calls {
            return false;
        }
        let reached = |count: u32, threshold: f64| {
            f64::from(count) >= threshold * f64::from(w.calls) - EPSILON
        };
        self.failure_rate.is_some_and(|t| reached(w.failures, t))
            || self.slow_rate.is_some_and(|t| reached(w.slow, t))
    }

    /// Whether `slow` slow probes out of `probes` reach the slow-call threshold: the same
    /// rule as in the closed state, judged over the probe round.
    pub(super) fn probes_too_slow(&self, slow: u32) -> bool {
        self.slow_rate
            .is_some_and(|t| f64::from(slow) >= t * f64::from(self.probes) - EPSILON)
            && slow > 0
    }

    /// The `open_for` of the `trips`-th trip since the last close: the base, doubled for each
    /// trip after the first, capped by `open_for_max`.
    pub(super) fn open_for_after(&self, trips: u32) -> u64 {
        let factor = 1u64
            .checked_shl(trips.saturating_sub(1))
            .unwrap_or(u64::MAX);
        self.open_for.saturating_mul(factor).min(self.open_for_max)
    }
}
