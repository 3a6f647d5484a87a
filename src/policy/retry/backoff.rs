//! When the next try goes out: exponential backoff with full jitter.
//!
//! The ceiling of retry `n` (1 for the first retry) is `min(max, base × 2^(n-1))`, and the delay
//! is a uniform random point in `[0, ceiling)`. Growing the ceiling spreads a burst of failures
//! out over time; drawing the whole delay at random ("full jitter") keeps the clients that
//! failed together from coming back together, which a fixed or lightly jittered delay does not.
//!
//! The random draw is a parameter of [`Backoff::delay`], so tests pass exact values and the
//! bounds can be checked without statistics. [`Backoff::random_delay`] draws it with `fastrand`.
//!
//! [`wait_before_retry`] then fits that delay, and the upstream's `Retry-After` if it sent one,
//! into the time the request has left (SPEC: never past the request timeout; a `Retry-After` is
//! honoured when it fits in the remaining time).

use std::time::Duration;

use crate::config::file;

/// Exponential backoff with full jitter: `delay = min(max, base × 2^(retry-1)) × unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

// === impl Backoff ===

impl Backoff {
    /// A backoff whose first retry waits up to `base`, doubling per retry, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The largest delay of retry `retry` (1 for the first retry; 0 is treated as 1):
    /// `min(max, base × 2^(retry-1))`, computed without overflow.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        let grown = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor));
        match grown {
            Some(ceiling) => ceiling.min(self.max),
            None => self.max,
        }
    }

    /// The delay before retry `retry` (1 for the first retry), given `unit`, a uniform random
    /// number in `[0, 1)` supplied by the caller: `ceiling(retry) × unit`.
    ///
    /// `unit` outside `[0, 1]` is clamped into it, and a NaN counts as 0, so the result is
    /// always within `[0, ceiling(retry)]` and never above `max`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        // In whole nanoseconds: float rounding must never push the delay above the ceiling.
        let nanos = (ceiling.as_nanos() as f64 * unit) as u128;
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos).min(ceiling)
    }

    /// [`Backoff::delay`] with `unit` drawn from `fastrand`.
    pub fn random_delay(&self, retry: u32) -> Duration {
        self.delay(retry, fastrand::f64())
    }
}

impl From<&file::Backoff> for Backoff {
    fn from(b: &file::Backoff) -> Self {
        Backoff::new(b.base.0, b.max.0)
    }
}

/// The wait before the next try, or `None` if the retry must not happen.
///
/// `delay` is the backoff delay ([`Backoff::delay`]); `retry_after` is the upstream's ask
/// ([`super::classify::parse_retry_after`]); `remaining` is the time left before the request
/// deadline. The wait is `max(delay, retry_after)`: the upstream's ask is a floor, and the
/// jitter still spreads clients out above it. The retry is dropped (`None`) when that wait
/// would use up all of `remaining`, since the try would then have no time to run; in
/// particular a `Retry-After` that does not fit means no retry rather than an early one.
pub fn wait_before_retry(
    delay: Duration,
    retry_after: Option<Duration>,
    remaining: Duration,
) -> Option<Duration> {
    let wait = retry_after.map_or(delay, |asked| asked.max(delay));
    (wait < remaining).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_until_max() {
        let b = Backoff::new(25 * MS, 250 * MS);
        let ceilings: Vec<_> = (1..=10).map(|n| b.ceiling(n)).collect();
        let want = [25, 50, 100, 200, 250, 250, 250, 250, 250, 250].map(|m| m * MS);
        assert_eq!(
            ceilings, want,
            "ceiling must double from base and stop at max"
        );
        assert_eq!(
            b.ceiling(0),
            25 * MS,
            "retry 0 must be treated as the first retry"
        );
    }

    #[test]
    fn delays_stay_within_full_jitter_bounds() {
        let b = Backoff::new(25 * MS, 250 * MS);
        for retry in 1..=10 {
            let ceiling = b.ceiling(retry);
            assert_eq!(
                b.delay(retry, 0.0),
                Duration::ZERO,
                "unit 0 must wait nothing"
            );
            let half = b.delay(retry, 0.5);
            assert_eq!(half, ceiling / 2, "unit 0.5 must wait half the ceiling");
            let top = b.delay(retry, 0.999_999_999);
            assert!(
                top <= ceiling,
                "retry {retry}: {top:?} must not pass {ceiling:?}"
            );
            assert!(top <= 250 * MS, "no delay may pass max");
            assert!(
                top >= ceiling.mul_f64(0.999),
                "unit near 1 must wait near the ceiling"
            );
        }
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::from_secs(3));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(3));
        assert_eq!(b.ceiling(64), Duration::from_secs(3));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(3));
    }

    #[test]
    fn out_of_range_units_are_clamped() {
        let b = Backoff::new(10 * MS, 100 * MS);
        assert_eq!(b.delay(1, -3.0), Duration::ZERO);
        assert_eq!(b.delay(1, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(1, 7.0), 10 * MS);
    }

    #[test]
    fn waits_fit_in_the_remaining_time() {
        let s = Duration::from_secs(1);
        assert_eq!(wait_before_retry(20 * MS, None, s), Some(20 * MS));
        assert_eq!(
            wait_before_retry(20 * MS, None, 20 * MS),
            None,
            "no time left to try"
        );
        assert_eq!(
            wait_before_retry(20 * MS, Some(300 * MS), s),
            Some(300 * MS)
        );
        assert_eq!(
            wait_before_retry(20 * MS, Some(MS), s),
            Some(20 * MS),
            "ask is a floor"
        );
        assert_eq!(
            wait_before_retry(20 * MS, Some(2 * s), s),
            None,
            "ask must fit"
        );
        assert_eq!(
            wait_before_retry(Duration::ZERO, None, Duration::ZERO),
            None
        );
    }

    #[test]
    fn random_delay_is_within_bounds() {
        let b = Backoff::new(25 * MS, 250 * MS);
        for retry in 1..=10 {
            assert!(b.random_delay(retry) <= b.ceiling(retry));
        }
    }
}
