//! The sliding window of the rate rules: the verdicts of the last `window` calls.
//!
//! Why a count-based ring: `failure_rate.window` is a number of calls (SPEC §2), so the
//! window is a fixed ring of two-bit slots (failed, slow) with running sums. A push is O(1)
//! and never allocates; it runs under the breaker's mutex, so the sums always match the slots.

/// The last `slots.len()` verdicts, two bits each (failed, slow), with running sums.
pub(super) struct Window {
    slots: Box<[u8]>,
    next: usize,
    /// Calls in the window (at most `slots.len()`).
    pub(super) len: u32,
    /// Failed calls in the window.
    pub(super) failures: u32,
    /// Slow calls in the window.
    pub(super) slow: u32,
}

/// Slot bit of a failed call.
pub(super) const FAILED: u8 = 1;
/// Slot bit of a slow call.
pub(super) const SLOW: u8 = 2;

/// What the rate rules read from the window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Counts {
    pub(super) calls: u32,
    pub(super) failures: u32,
    pub(super) slow: u32,
}

// === impl Window ===

impl Window {
    pub(super) fn new(size: u32) -> Self {
        Window {
            slots: vec![0; size as usize].into_boxed_slice(),
            next: 0,
            len: 0,
            failures: 0,
            slow: 0,
        }
    }

    /// Adds one call, dropping the oldest once full.
    pub(super) fn push(&mut self, bits: u8) {
        let size = self.slots.len();
        let Some(slot) = self.slots.get_mut(self.next) else {
            return; // no rate rule: no window
        };
        let old = if self.len as usize == size {
            *slot
        } else {
            self.len += 1;
            0
        };
        *slot = bits;
        self.failures = self.failures + u32::from(bits & FAILED) - u32::from(old & FAILED);
        self.slow = self.slow + u32::from(bits & SLOW != 0) - u32::from(old & SLOW != 0);
        self.next += 1;
        if self.next == size {
            self.next = 0;
        }
    }

    /// Empties the window; slots past `len` are never read, so this is O(1).
    pub(super) fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.failures = 0;
        self.slow = 0;
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            calls: self.len,
            failures: self.failures,
            slow: self.slow,
        }
    }
}
