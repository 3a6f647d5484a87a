//! The sliding window of the rate rules: the verdicts of the last `window` calls.
//!
//! Why a count-based ring: `failure_rate.window` is a number of calls (SPEC §2), so the
//! window is a ring of `size` two-bit slots (failed, slow) with running sums. A push is O(1);
//! it runs under the breaker's mutex, so the sums always match the slots.
//!
//! The ring grows as calls arrive, doubling up to `size`, rather than being taken whole up
//! front: with `scope: tenant` a breaker is made for each new tenant, and a window of 10,000
//! taken at once cost 10 kB for every tenant a client could name (times `max_tracked`) before
//! any of them made a second call. Growing costs at most about log2(`size`) allocations in a
//! breaker's life, none once full.

/// The last `size` verdicts, one byte each (failed, slow bits), with running sums.
pub(super) struct Window {
    /// The ring; shorter than `size` until that many calls have come.
    slots: Vec<u8>,
    size: usize,
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

/// The ring's first allocation, in slots.
const FIRST_SLOTS: usize = 16;

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
            slots: Vec::new(),
            size: size as usize,
            next: 0,
            len: 0,
            failures: 0,
            slow: 0,
        }
    }

    /// Adds one call, dropping the oldest once full.
    pub(super) fn push(&mut self, bits: u8) {
        let size = self.size;
        if size == 0 {
            return; // no rate rule: no window
        }
        if self.next == self.slots.len() {
            // Not yet `size` slots: `len == next` here (the ring wraps only once full).
            if self.slots.len() == self.slots.capacity() {
                let more = self
                    .slots
                    .len()
                    .max(FIRST_SLOTS)
                    .min(size - self.slots.len());
                self.slots.reserve_exact(more);
            }
            self.slots.push(0);
        }
        let Some(slot) = self.slots.get_mut(self.next) else {
            return; // `next` is below `slots.len()` here
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

#[cfg(test)]
mod tests {
    use super::*;

    impl Window {
        /// Bytes the slots hold now.
        fn footprint(&self) -> usize {
            self.slots.capacity()
        }
    }

    /// A breaker made for each new tenant (`scope: tenant`) must not cost its whole window
    /// before it has judged a call: a window of 10,000 is 10 kB per tenant, times max_tracked.
    #[test]
    fn a_window_takes_memory_as_calls_arrive_never_more_than_its_size() {
        let mut w = Window::new(10_000);
        assert!(
            w.footprint() <= 16,
            "{} bytes before any call",
            w.footprint()
        );
        for _ in 0..3 {
            w.push(FAILED);
        }
        assert!(w.footprint() <= 16, "{} bytes after 3 calls", w.footprint());
        for _ in 0..100 {
            w.push(0);
        }
        assert!(
            w.footprint() <= 256,
            "{} bytes after 103 calls",
            w.footprint()
        );
        for _ in 0..20_000 {
            w.push(SLOW);
        }
        assert_eq!(
            w.footprint(),
            10_000,
            "a full window holds its size, no more"
        );
    }

    /// The window counts exactly the last `size` verdicts, as a plain list of them does, while
    /// it grows, once full, and after being emptied part-grown.
    #[test]
    fn the_window_counts_the_last_size_verdicts_as_it_grows_wraps_and_clears() {
        for size in [1u32, 2, 3, 17, 100] {
            let mut w = Window::new(size);
            let mut all: Vec<u8> = Vec::new();
            let mut rng = fastrand::Rng::with_seed(u64::from(size));
            for step in 0..(size as usize * 5 + 40) {
                if step == size as usize / 2 + 3 || step == size as usize * 3 {
                    w.clear();
                    all.clear();
                }
                let bits = rng.u8(0..4);
                w.push(bits);
                all.push(bits);
                let last = &all[all.len().saturating_sub(size as usize)..];
                let c = w.counts();
                assert_eq!(c.calls as usize, last.len(), "size {size}, step {step}");
                let failed = last.iter().filter(|b| *b & FAILED != 0).count();
                let slow = last.iter().filter(|b| *b & SLOW != 0).count();
                assert_eq!(c.failures as usize, failed, "size {size}, step {step}");
                assert_eq!(c.slow as usize, slow, "size {size}, step {step}");
            }
        }
    }

    /// No rate rule: a window of 0 counts nothing.
    #[test]
    fn a_window_of_0_counts_nothing() {
        let mut w = Window::new(0);
        w.push(FAILED);
        assert_eq!(w.counts().calls, 0);
        assert_eq!(w.footprint(), 0);
    }
}
