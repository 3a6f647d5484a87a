//! Where evicted buckets go: a fixed-size count-min-style sketch of TATs.
//!
//! Evicting a tenant whose bucket is not full loses information: if it came back with a fresh
//! bucket, a client could reset its limit by flooding the table with other tenant ids (the
//! weakness of limiters that forget on eviction). Before such an entry is dropped, its TAT is
//! folded into this sketch: each of `rows` rows holds the maximum TAT of the keys hashed to a
//! cell, and a lookup takes the minimum over the rows. Collisions can only raise a value, so a
//! returning tenant is judged at least as strictly as it was when evicted, never more leniently.
//! TATs fall into the past as time passes, so stale cells stop mattering without any sweep.

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows of a shared sketch; each row is one independent hash of the key.
const ROWS: usize = 3;

/// A `ROWS × width` grid of TATs (nanoseconds), or a single exact cell for a one-tenant set.
#[derive(Debug)]
pub(crate) struct Sketch {
    rows: usize,
    mask: u64,
    cells: Box<[AtomicU64]>,
}

// === impl Sketch ===

impl Sketch {
    /// A sketch sized for `max_tracked` live entries: width is the next power of two of twice
    /// that, between 32768 and 131072 cells, so 768 KiB to 3 MiB per limit. Wide on purpose:
    /// a newcomer is misjudged only when all three of its cells hold an unexpired debt.
    pub(crate) fn for_tracked(max_tracked: u64) -> Self {
        let width = max_tracked
            .saturating_mul(2)
            .clamp(32_768, 131_072)
            .next_power_of_two();
        Self::with_shape(ROWS, width)
    }

    /// One exact cell: for a set of limits that only one tenant (an override) can use.
    pub(crate) fn exact() -> Self {
        Self::with_shape(1, 1)
    }

    fn with_shape(rows: usize, width: u64) -> Self {
        let len = rows * usize::try_from(width).unwrap_or(1);
        Sketch {
            rows,
            mask: width - 1,
            cells: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Raises the cells of `hash` to at least `tat`.
    pub(crate) fn record(&self, hash: u64, tat: u64) {
        for row in 0..self.rows {
            if let Some(cell) = self.cells.get(self.index(row, hash)) {
                cell.fetch_max(tat, Ordering::AcqRel);
            }
        }
    }

    /// The TAT a key with `hash` had at most when evicted; 0 ("full") if never recorded.
    pub(crate) fn lookup(&self, hash: u64) -> u64 {
        (0..self.rows)
            .filter_map(|row| self.cells.get(self.index(row, hash)))
            .map(|cell| cell.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Fills this sketch from `old`, cell by cell through `f`; nothing if the shapes differ.
    pub(crate) fn carry_from(&self, old: &Sketch, f: impl Fn(u64) -> u64) {
        if old.rows != self.rows || old.mask != self.mask {
            return;
        }
        for (new, old) in self.cells.iter().zip(old.cells.iter()) {
            let tat = old.load(Ordering::Acquire);
            if tat != 0 {
                new.fetch_max(f(tat), Ordering::AcqRel);
            }
        }
    }

    /// Bytes of cells, for the memory figures.
    pub(crate) fn bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU64>()
    }

    /// Double hashing: row `i` uses `h1 + i × h2` (h2 odd), so rows are independent enough
    /// from one 64-bit SipHash of the key.
    fn index(&self, row: usize, hash: u64) -> usize {
        let h2 = hash.rotate_left(32) | 1;
        let col = hash.wrapping_add((row as u64).wrapping_mul(h2)) & self.mask;
        row * (self.mask as usize + 1) + col as usize
    }
}
