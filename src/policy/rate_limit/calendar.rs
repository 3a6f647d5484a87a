//! `window: calendar`: a limit that admits its count per UTC minute, hour or day and resets at
//! the boundary, as quota users expect (SPEC §13), instead of refilling smoothly.
//!
//! It keeps the one-`AtomicU64`-per-cell shape of GCRA so tables, sketches and reloads need no
//! second kind of state: a cell holds `window start (Unix nanoseconds) + used`. Values only
//! grow with time and use (a later window starts past any count of an earlier one, since a
//! count never exceeds the window's nanoseconds), which is what the sketch's "smallest value
//! is the most lenient" rule needs; a value from an earlier window reads as an unused bucket.
//!
//! The clock is monotonic, so the limiter is given a wall-clock anchor once (the Unix time of
//! the monotonic origin, [`crate::clock::WallClock`]); boundaries are computed from the
//! monotonic reading plus that offset. A wall-clock step after start (NTP) moves nothing until
//! the process restarts.

#[cfg(test)]
mod tests;

/// The constants of one calendar limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Calendar {
    /// The window in nanoseconds (60 s, 3600 s or 86 400 s).
    pub(crate) window: u64,
    /// Admissions per window.
    pub(crate) count: u64,
    /// Unix nanoseconds at the monotonic clock's origin.
    pub(crate) offset: u64,
}

// === impl Calendar ===

impl Calendar {
    /// Start of the window holding `now` (monotonic), in Unix nanoseconds.
    fn start(&self, now: u64) -> u64 {
        let unix = now.saturating_add(self.offset);
        unix - unix % self.window
    }

    /// Admissions used in the current window by a cell holding `v`.
    fn used_count(&self, v: u64, now: u64) -> u64 {
        v.saturating_sub(self.start(now))
    }

    /// Nanoseconds from `now` to the next boundary.
    fn until_boundary(&self, now: u64) -> u64 {
        let unix = now.saturating_add(self.offset);
        self.window - unix % self.window
    }

    /// The new cell value after one admission, or the wait to the boundary.
    pub(crate) fn decide(&self, v: u64, now: u64) -> Result<u64, u64> {
        let used = self.used_count(v, now);
        if used < self.count {
            Ok(self.start(now) + used + 1)
        } else {
            Err(self.until_boundary(now))
        }
    }

    /// Admissions left in this window.
    pub(crate) fn remaining(&self, v: u64, now: u64) -> u64 {
        self.count.saturating_sub(self.used_count(v, now))
    }

    /// 0 while admissions are left, else the wait to the boundary.
    pub(crate) fn until_next(&self, v: u64, now: u64) -> u64 {
        if self.remaining(v, now) > 0 {
            0
        } else {
            self.until_boundary(now)
        }
    }

    /// Used fraction of the count, scaled to `u32::MAX`.
    pub(crate) fn used(&self, v: u64, now: u64) -> u64 {
        let used = u128::from(self.used_count(v, now).min(self.count));
        (used * u128::from(u32::MAX) / u128::from(self.count.max(1))) as u64
    }

    /// The cell value that uses `fraction` (of `u32::MAX`) of the count now, rounded up.
    pub(crate) fn state_using(&self, fraction: u64, now: u64) -> u64 {
        let used = (u128::from(fraction) * u128::from(self.count)).div_ceil(u128::from(u32::MAX));
        if used == 0 {
            return 0;
        }
        self.start(now) + (used as u64).min(self.count)
    }

    /// The value after giving back the admission made at `admitted_at`, if it is still in the
    /// same window (else nothing to give back: the count was reset anyway).
    pub(crate) fn give_back(&self, v: u64, admitted_at: u64) -> Option<u64> {
        let start = self.start(admitted_at);
        (v > start).then(|| v - 1)
    }
}
