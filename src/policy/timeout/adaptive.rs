//! `per_try: auto`: a per-try timeout derived from the upstream's recent latency.
//!
//! # The exact rule
//!
//! ```text
//! per_try = clamp(p95 × 1.5, min, max)     when the window holds at least MIN_SAMPLES tries
//! per_try = max                            otherwise
//! ```
//!
//! - The window is the last `window` of time (a ring of [`SLOTS`] slots of `window / SLOTS`;
//!   a sample counts until its slot is a whole window old, so for between 90% and 100% of
//!   `window`).
//! - Every try is a sample, success or failure, measured from sending to the answer's head
//!   (or the failure). Tries cut off by the per-try timeout itself should be recorded with the
//!   timeout as their latency, so a slowing upstream pushes the bound up rather than hiding.
//! - p95 is the nearest-rank percentile, `ceil(0.95 × n)`-th smallest sample, read from a
//!   log-linear histogram and reported as the upper edge of its bucket: at most 1/16 (6.25%)
//!   above the true value, never below it. Buckets are microseconds, exact below 16µs, 16 per
//!   power of two above, and the last bucket holds everything from about 130s up.
//! - If `min > max`, `max` wins.
//!
//! Why p95 × 1.5: the bound should cut off only tries that are clearly stuck. p95 is a stable
//! estimate of "slow but normal" with tens of samples; the 50% headroom keeps ordinary jitter
//! above it from being cut. Until enough samples exist there is nothing to estimate, so the
//! safe choice is the operator's upper bound.
//!
//! # Concurrency
//!
//! Recording is one relaxed `fetch_add` on a fixed array: no lock, no allocation. The first
//! recorder of a new slot period claims the slot by compare-and-swap on its epoch and clears
//! it; a sample that races that clear may be lost, which an estimator can afford.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::SharedClock;

/// Number of time slots the window is divided into.
pub const SLOTS: usize = 10;
/// Samples the window must hold before the rule trusts its p95.
pub const MIN_SAMPLES: u64 = 20;

/// Exact buckets below this many microseconds; also the sub-buckets per power of two.
const LINEAR: u64 = 16;
/// Values of `2^MAX_POW2` microseconds (about 134s) and above share the last bucket.
const MAX_POW2: u32 = 27;
const BUCKETS: usize = (LINEAR + (MAX_POW2 as u64 - 4) * LINEAR) as usize;

/// Recent try latencies of one upstream, and the per-try timeout they imply.
pub struct LatencyEstimator {
    slot_nanos: u64,
    clock: SharedClock,
    slots: Box<[Slot]>,
}

/// One period's histogram, tagged with the period (epoch) it counts.
struct Slot {
    epoch: AtomicU64,
    counts: [AtomicU64; BUCKETS],
}

// === impl LatencyEstimator ===

impl LatencyEstimator {
    /// An estimator remembering the tries of the last `window` (at least [`SLOTS`] ns).
    pub fn new(window: Duration, clock: SharedClock) -> Self {
        let slot_nanos = (window.as_nanos() / SLOTS as u128).max(1);
        let slots = (0..SLOTS)
            .map(|_| Slot {
                epoch: AtomicU64::new(0),
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        LatencyEstimator {
            slot_nanos: u64::try_from(slot_nanos).unwrap_or(u64::MAX),
            clock,
            slots,
        }
    }

    /// Records the latency of one try, whatever its outcome.
    pub fn record(&self, latency: Duration) {
        let epoch = self.epoch();
        let Some(slot) = self.slots.get(epoch as usize % SLOTS) else {
            return;
        };
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch {
            if seen > epoch {
                // Our clock read predates a rotation by another thread; the sample is stale.
                return;
            }
            let claimed = slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if claimed {
                slot.counts
                    .iter()
                    .for_each(|c| c.store(0, Ordering::Relaxed));
            }
        }
        if let Some(count) = slot.counts.get(bucket(latency)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Number of samples in the window.
    pub fn samples(&self) -> u64 {
        let live = self.live();
        live.iter()
            .flatten()
            .flat_map(|s| s.counts.iter())
            .map(load)
            .sum()
    }

    /// The window's p95 as defined in the module doc, or `None` below [`MIN_SAMPLES`].
    pub fn p95(&self) -> Option<Duration> {
        let live = self.live();
        let total: u64 = live
            .iter()
            .flatten()
            .flat_map(|s| s.counts.iter())
            .map(load)
            .sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += live
                .iter()
                .flatten()
                .filter_map(|s| s.counts.get(i))
                .map(load)
                .sum::<u64>();
            if seen >= rank {
                return Some(Duration::from_micros(upper_edge(i)));
            }
        }
        // Counts moved under us (a concurrent rotation); the top bucket is the safe answer.
        Some(Duration::from_micros(upper_edge(BUCKETS - 1)))
    }

    /// The per-try timeout: `clamp(p95 × 1.5, min, max)`, or `max` below [`MIN_SAMPLES`].
    pub fn per_try_timeout(&self, min: Duration, max: Duration) -> Duration {
        match self.p95() {
            Some(p95) => (p95 + p95 / 2).max(min).min(max),
            None => max,
        }
    }

    fn epoch(&self) -> u64 {
        self.clock.now_nanos() / self.slot_nanos
    }

    /// The slots whose period lies in the current window, decided once per read.
    fn live(&self) -> [Option<&Slot>; SLOTS] {
        let epoch = self.epoch();
        std::array::from_fn(|i| {
            let slot = self.slots.get(i)?;
            let e = slot.epoch.load(Ordering::Acquire);
            (e <= epoch && epoch - e < SLOTS as u64).then_some(slot)
        })
    }
}

impl std::fmt::Debug for LatencyEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyEstimator")
            .field("slot_nanos", &self.slot_nanos)
            .field("samples", &self.samples())
            .finish_non_exhaustive()
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The histogram bucket of a latency: exact below 16µs, then 16 buckets per power of two.
fn bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if micros < LINEAR {
        return micros as usize;
    }
    let pow2 = 63 - micros.leading_zeros();
    if pow2 >= MAX_POW2 {
        return BUCKETS - 1;
    }
    let sub = (micros >> (pow2 - 4)) & (LINEAR - 1);
    (LINEAR + u64::from(pow2 - 4) * LINEAR + sub) as usize
}

/// The exclusive upper edge, in microseconds, of bucket `i`.
fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i + 1;
    }
    let shift = (i - LINEAR) / LINEAR;
    let sub = (i - LINEAR) % LINEAR;
    (LINEAR + sub + 1) << shift
}

#[cfg(test)]
mod tests;
