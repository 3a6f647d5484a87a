//! How much retrying an upstream may receive: a retry budget over a sliding window.
//!
//! # Why a budget and not only a retry count
//!
//! `attempts: 3` looks harmless, but it is a multiplier: when the upstream fails every request,
//! each request becomes three, and the upstream that was already failing now gets three times
//! its normal load, from every client at once. Fixed counts are safest exactly when retries are
//! not needed (rare, independent failures) and most harmful when they are needed most (a broad
//! outage). A budget ties the retries to the traffic that is really there: retries may add at
//! most a fixed share of load (say 20%), whatever the error rate. Isolated failures are still
//! retried, because they use little of the budget; a broad outage drains it, and from then on
//! failures go straight back to the caller instead of amplifying the outage. A small floor
//! (`min_per_second`) lets low-traffic routes retry too, where a share of a few requests would
//! round down to nothing.
//!
//! # The exact rule
//!
//! Over the last `window`, a retry is allowed while
//!
//! ```text
//! retries < floor(ratio × requests + min_per_second × window_seconds)
//! ```
//!
//! where `requests` counts [`RetryBudget::deposit`] calls (one per original request, retries
//! excluded), `retries` counts granted [`RetryBudget::try_withdraw`] calls (refused ones are
//! not counted), and `window_seconds` may be fractional. The sum is computed in fixed point
//! (ratio in millionths, time in microseconds), so `20%` of 100 requests is exactly 20. With
//! `ratio: 0%` and `min_per_second: 0` no retry is ever allowed.
//!
//! The window is a ring of [`SLOTS`] time slots of `window / SLOTS` each; a count lands in the
//! slot of the moment it happens and stops counting once its slot is a whole window old. So an
//! event is remembered for between `window × (SLOTS-1)/SLOTS` and `window`.
//!
//! # Concurrency
//!
//! The budget sits on the request path, so it uses atomics only. Each slot counter is one
//! `AtomicU64` holding the slot's epoch (high 32 bits) and its count (low 32 bits), updated by
//! compare-and-swap, so moving a slot to a new epoch and counting in it are one step. A
//! withdrawal is reserved first and then checked, and handed back if it went over; under
//! contention two callers may both be refused where one could have passed, but the rule above
//! is never exceeded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::file;

/// Number of time slots the window is divided into.
pub const SLOTS: usize = 10;

const PPM: u128 = 1_000_000;

/// A sliding-window retry budget shared by all requests to one (route, upstream).
pub struct RetryBudget {
    /// The ratio in millionths.
    ratio_ppm: u128,
    /// `min_per_second × window` in millionths of a retry.
    floor_ppm: u128,
    slot_nanos: u64,
    clock: SharedClock,
    deposits: [AtomicU64; SLOTS],
    withdrawals: [AtomicU64; SLOTS],
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget allowing `ratio × requests + min_per_second × window` retries per `window`.
    ///
    /// `ratio` is a fraction (`0.2` for 20%); negative or NaN counts as 0. A `window` shorter
    /// than [`SLOTS`] nanoseconds is stretched to that.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration, clock: SharedClock) -> Self {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.max(0.0) };
        let slot_nanos = (window.as_nanos() / SLOTS as u128).max(1);
        let window_micros = slot_nanos * SLOTS as u128 / 1_000;
        RetryBudget {
            ratio_ppm: (ratio * PPM as f64).round() as u128,
            floor_ppm: u128::from(min_per_second) * window_micros,
            slot_nanos: u64::try_from(slot_nanos).unwrap_or(u64::MAX),
            clock,
            deposits: Default::default(),
            withdrawals: Default::default(),
        }
    }

    /// The budget a policy's `retry.budget` section describes.
    pub fn from_config(budget: &file::Budget, clock: SharedClock) -> Self {
        RetryBudget::new(
            budget.ratio.0,
            budget.min_per_second,
            budget.window.0,
            clock,
        )
    }

    /// Counts one original request (not a retry). Call it once per request, before its retries.
    pub fn deposit(&self) {
        let epoch = self.epoch();
        add(&self.deposits[slot(epoch)], epoch);
    }

    /// Asks for one retry. Returns `true` and counts the retry if the budget allows it; returns
    /// `false` and counts nothing otherwise.
    pub fn try_withdraw(&self) -> bool {
        let epoch = self.epoch();
        let cell = &self.withdrawals[slot(epoch)];
        add(cell, epoch);
        if self.withdrawn(epoch) <= self.allowed(epoch) {
            return true;
        }
        sub(cell, epoch);
        false
    }

    /// How many retries the budget would still grant now.
    pub fn remaining(&self) -> u64 {
        let epoch = self.epoch();
        self.allowed(epoch).saturating_sub(self.withdrawn(epoch))
    }

    fn allowed(&self, epoch: u32) -> u64 {
        let requests = u128::from(sum(&self.deposits, epoch));
        let allowed = (self.ratio_ppm * requests + self.floor_ppm) / PPM;
        u64::try_from(allowed).unwrap_or(u64::MAX)
    }

    fn withdrawn(&self, epoch: u32) -> u64 {
        sum(&self.withdrawals, epoch)
    }

    /// The current slot epoch; wraps after 2^32 slots, which only matters for slots that old.
    fn epoch(&self) -> u32 {
        (self.clock.now_nanos() / self.slot_nanos) as u32
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio_ppm", &self.ratio_ppm)
            .field("floor_ppm", &self.floor_ppm)
            .field("slot_nanos", &self.slot_nanos)
            .finish_non_exhaustive()
    }
}

// === packed slot counters: epoch << 32 | count ===

fn slot(epoch: u32) -> usize {
    epoch as usize % SLOTS
}

fn pack(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// Adds one to `cell` for `epoch`, restarting the count if the cell still holds an older epoch.
fn add(cell: &AtomicU64, epoch: u32) {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        let (e, n) = unpack(v);
        let n = if e == epoch { n.saturating_add(1) } else { 1 };
        Some(pack(epoch, n))
    });
}

/// Takes back one count added by [`add`] for `epoch`; a no-op if the cell has moved on.
fn sub(cell: &AtomicU64, epoch: u32) {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        let (e, n) = unpack(v);
        (e == epoch && n > 0).then(|| pack(epoch, n - 1))
    });
}

/// Sum of the counts whose epoch lies in the window ending at `epoch`.
fn sum(cells: &[AtomicU64; SLOTS], epoch: u32) -> u64 {
    cells
        .iter()
        .map(|c| unpack(c.load(Ordering::Acquire)))
        .filter(|&(e, _)| epoch.wrapping_sub(e) < SLOTS as u32)
        .map(|(_, n)| u64::from(n))
        .sum()
}

#[cfg(test)]
mod tests;
