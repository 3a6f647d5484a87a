//! Where evicted buckets go: a fixed-size count-min-style sketch of TATs, each cell marked with
//! whose it is.
//!
//! Evicting a tenant whose bucket is not full loses information: if it came back with a fresh
//! bucket, a client could reset its limit by flooding the table with other tenant ids (the
//! weakness of limiters that forget on eviction). Before such an entry is dropped, its TAT is
//! folded into this sketch: each of `rows` rows holds the maximum TAT of the keys hashed to a
//! cell, and a lookup takes the minimum over the rows. Collisions can only raise a value, so a
//! returning tenant is judged at least as strictly as it was when evicted, never more leniently.
//! TATs fall into the past as time passes, so stale cells stop mattering without any sweep.
//!
//! Each cell also holds a 16-bit mark of the one key whose debt it holds, or "mixed" when
//! more than one unexpired debt went into it. A lookup counts a row's cell only when the cell
//! is its own or mixed: a cell that holds one *other* tenant's debt says nothing about this
//! one. Without the marks, a newcomer whose three cells each held some other evicted tenant's
//! debt inherited the smallest of them and could be refused on its first request ever (with
//! three rows and `n` debts over `w` cells a row, a share `(1 − e^(−n/w))³` of newcomers); with
//! them, only a newcomer whose three cells are all mixed is, a share
//! `(1 − e^(−n/w)(1 + n/w))³`: 0.03 % against 4 % at `n/w = 0.43`, 13 % against 55 % at 1.7.
//! A cell whose debts have all run out is taken over by the next key recorded there.
//!
//! How a record keeps that true with other records at once, with no lock: it reads the cell's
//! mark word, raises the value, and judges the debts already there by what the raise replaced;
//! then it sets the mark by a compare-and-swap against the word it read, whose upper half
//! counts every change. If any record changed the word meanwhile, the cell is marked mixed,
//! which is never wrong (only strict). A record that raises the cell after another's raise sees
//! that debt in what it replaced, so it cannot mark the cell its own while the debt lasts. A
//! lookup reads the mark, then the value.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Rows of a shared sketch; each row is one independent hash of the key.
const ROWS: usize = 3;
/// The mark of a cell no key was recorded in.
const EMPTY: u16 = 0;
/// The mark of a cell holding the debts of more than one key.
const MIXED: u16 = u16::MAX;
/// The lower half of a mark word is the mark; the upper half counts its changes.
const MARK_BITS: u32 = 16;

/// A `ROWS × width` grid of TATs (nanoseconds) and their marks, or a single exact cell for a
/// one-tenant set.
#[derive(Debug)]
pub(crate) struct Sketch {
    rows: usize,
    mask: u64,
    cells: Box<[AtomicU64]>,
    /// Per cell: the change count (upper 16 bits) and the mark (lower 16).
    marks: Box<[AtomicU32]>,
}

// === impl Sketch ===

impl Sketch {
    /// A sketch sized for `max_tracked` live entries: width is the next power of two of twice
    /// that, between 32768 and 131072 cells, so 1.1 to 4.5 MiB per limit. Wide on purpose:
    /// a newcomer is misjudged only when all three of its cells hold unexpired debts of more
    /// than one key.
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
            marks: (0..len).map(|_| AtomicU32::new(u32::from(EMPTY))).collect(),
        }
    }

    /// Raises the cells of `hash` to at least `tat` and marks them as its own, or mixed where
    /// they already held a debt that `spent` does not call run out. A `tat` that is itself
    /// `spent` is no debt and is not recorded.
    pub(crate) fn record(&self, hash: u64, tat: u64, spent: impl Fn(u64) -> bool) {
        if spent(tat) {
            return;
        }
        let mine = mark(hash);
        for row in 0..self.rows {
            let i = self.index(row, hash);
            let seen = self.look(i);
            let to = self.raise(i, seen, mine, tat, &spent);
            self.settle(i, seen, to);
        }
    }

    /// A record's first step in cell `i`: the mark word as it is before the raise.
    fn look(&self, i: usize) -> u32 {
        self.marks.get(i).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// A record's second step: raises cell `i` to `tat` and says the mark it should get, given
    /// the word `seen` before: its own if what it replaced has run out (or was its own), else
    /// mixed.
    fn raise(&self, i: usize, seen: u32, mine: u16, tat: u64, spent: impl Fn(u64) -> bool) -> u16 {
        let before = self
            .cells
            .get(i)
            .map_or(0, |c| c.fetch_max(tat, Ordering::AcqRel));
        match before == 0 || spent(before) || mark_of(seen) == mine {
            true => mine,
            false => MIXED,
        }
    }

    /// A record's last step: the mark of cell `i` becomes `to` if its word is still `seen`.
    fn settle(&self, i: usize, seen: u32, to: u16) {
        if let Some(word) = self.marks.get(i) {
            set_mark(word, seen, to);
        }
    }

    /// The TAT a key with `hash` had at most when evicted; 0 ("full") if never recorded.
    pub(crate) fn lookup(&self, hash: u64) -> u64 {
        let mine = mark(hash);
        (0..self.rows)
            .map(|row| self.index(row, hash))
            .map(|i| {
                match self
                    .marks
                    .get(i)
                    .map(|w| mark_of(w.load(Ordering::Acquire)))
                {
                    Some(m) if m == mine || m == MIXED => {
                        self.cells.get(i).map_or(0, |c| c.load(Ordering::Acquire))
                    }
                    // Another key's debt, or none: nothing of this key's is here.
                    _ => 0,
                }
            })
            .min()
            .unwrap_or(0)
    }

    /// Fills this sketch from `old`, cell by cell through `f`; nothing if the shapes differ.
    pub(crate) fn carry_from(&self, old: &Sketch, f: impl Fn(u64) -> u64) {
        if old.rows != self.rows || old.mask != self.mask {
            return;
        }
        let cells = self.cells.iter().zip(old.cells.iter());
        for ((new, old), (new_word, old_word)) in cells.zip(self.marks.iter().zip(old.marks.iter()))
        {
            let tat = old.load(Ordering::Acquire);
            let theirs = mark_of(old_word.load(Ordering::Acquire));
            if tat != 0 && theirs != EMPTY {
                // As `record`, with no clock: the cell is `theirs` only if it held nothing.
                let seen = new_word.load(Ordering::Acquire);
                let before = new.fetch_max(f(tat), Ordering::AcqRel);
                let to = match before == 0 || mark_of(seen) == theirs {
                    true => theirs,
                    false => MIXED,
                };
                set_mark(new_word, seen, to);
            }
        }
    }

    /// Bytes of cells and marks, for the memory figures.
    pub(crate) fn bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU64>()
            + self.marks.len() * std::mem::size_of::<AtomicU32>()
    }

    /// Double hashing: row `i` uses `h1 + i × h2` (h2 odd), so rows are independent enough
    /// from one 64-bit SipHash of the key.
    fn index(&self, row: usize, hash: u64) -> usize {
        let h2 = hash.rotate_left(32) | 1;
        let col = hash.wrapping_add((row as u64).wrapping_mul(h2)) & self.mask;
        row * (self.mask as usize + 1) + col as usize
    }
}

/// The mark in a mark word.
fn mark_of(word: u32) -> u16 {
    (word & 0xffff) as u16
}

/// Sets the mark of `word` to `to` if the word is still `seen`, else to mixed: another record
/// changed the cell meanwhile, and mixed is never lenient. Every record counts a change, even
/// one that leaves the mark as it was: a record that raised the cell since `seen` then finds
/// the word changed and marks it mixed, rather than putting its own mark over a debt it did
/// not see.
fn set_mark(word: &AtomicU32, seen: u32, to: u16) {
    let next = |w: u32, m: u16| (((w >> MARK_BITS).wrapping_add(1)) << MARK_BITS) | u32::from(m);
    if word
        .compare_exchange(seen, next(seen, to), Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return;
    }
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
        (mark_of(w) != MIXED).then(|| next(w, MIXED))
    });
}

/// The mark of the key with `hash`: its top 16 bits, never [`EMPTY`] or [`MIXED`]. Two keys with
/// one mark in one cell read each other's debt, which errs on the strict side only.
fn mark(hash: u64) -> u16 {
    ((hash >> 48) as u16).clamp(EMPTY + 1, MIXED - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debts run out at `now`: a value at or before it is spent.
    fn spent_at(now: u64) -> impl Fn(u64) -> bool {
        move |v| v <= now
    }

    /// Deterministic, well-spread 64-bit keys (SplitMix64).
    fn keys(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    /// Every recorded key reads back at least its own debt while it lasts, however crowded the
    /// sketch: collisions only ever raise what a returning key is judged by.
    #[test]
    fn a_recorded_debt_is_never_read_back_lower() {
        let s = Sketch::with_shape(ROWS, 64);
        let recorded: Vec<(u64, u64)> = keys(1).take(1_000).zip(1_000..).collect();
        for &(k, tat) in &recorded {
            s.record(k, tat, spent_at(10));
        }
        for &(k, tat) in &recorded {
            assert!(s.lookup(k) >= tat, "{k:x}: {} < {tat}", s.lookup(k));
        }
    }

    /// Two records in one cell, their three steps (look, raise, settle) in every one of the 20
    /// orders, from each state the cell can be in: empty, holding a debt that has run out
    /// (another key's, or one of the two's own), holding another key's lasting debt, mixed. Whatever the order, each lasting debt reads
    /// back whole. (A mark set without the change count, or a record that leaves its own mark
    /// unchanged without counting, fails some of these orders.)
    #[test]
    fn two_records_in_any_order_hide_no_lasting_debt() {
        let now = 100;
        let [a, b, c] = [1u64 << 48, 2 << 48, 3 << 48];
        // Which step of record 0 or 1 goes next: every interleaving of 3 and 3.
        let orders = (0u32..64)
            .filter(|bits| bits.count_ones() == 3)
            .map(|bits| (0..6).map(|n| (bits >> n) & 1).collect::<Vec<_>>());
        for order in orders {
            for start in 0..5 {
                for (tat_a, tat_b) in [(500, 300), (300, 500), (400, 400)] {
                    let s = Sketch::with_shape(1, 1);
                    let mut lasting: Vec<(u64, u64)> = Vec::new();
                    match start {
                        0 => {}
                        1 => s.record(c, 50, spent_at(0)),
                        // One of the two's own earlier debt, run out.
                        2 => s.record(b, 50, spent_at(0)),
                        3 => {
                            s.record(c, 250, spent_at(now));
                            lasting.push((c, 250));
                        }
                        _ => {
                            s.record(c, 250, spent_at(now));
                            s.record(c ^ 1 << 52, 200, spent_at(now));
                            lasting.push((c, 250));
                        }
                    }
                    let recs = [(a, tat_a), (b, tat_b)];
                    let (mut step, mut seen, mut to) = ([0; 2], [0u32; 2], [0u16; 2]);
                    for &who in &order {
                        let w = who as usize;
                        let (k, tat) = recs[w];
                        match step[w] {
                            0 => seen[w] = s.look(0),
                            1 => to[w] = s.raise(0, seen[w], mark(k), tat, spent_at(now)),
                            _ => s.settle(0, seen[w], to[w]),
                        }
                        step[w] += 1;
                    }
                    lasting.push((a, tat_a));
                    lasting.push((b, tat_b));
                    for (k, tat) in lasting {
                        let got = s.lookup(k);
                        assert!(
                            got >= tat,
                            "order {order:?}, start {start}: {k:x} {got} < {tat}"
                        );
                    }
                }
            }
        }
    }

    /// A newcomer whose cells each hold one other key's debt is not charged with it: the
    /// cells are marked as that key's. Before the marks, it read the smallest of those debts.
    #[test]
    fn a_newcomer_is_not_charged_with_another_keys_debt() {
        let s = Sketch::with_shape(ROWS, 1 << 12);
        let mut ks = keys(7);
        let old = ks.next().expect("a key");
        s.record(old, 5_000, spent_at(10));
        // Keys that share every cell with `old` but are other keys: same low bits (the columns
        // of all rows come from those and the rotated high ones), another mark.
        let twin = old ^ (1 << 50);
        assert_eq!(
            (0..ROWS).map(|r| s.index(r, twin)).collect::<Vec<_>>(),
            (0..ROWS).map(|r| s.index(r, old)).collect::<Vec<_>>(),
            "the twin shares the cells"
        );
        assert_ne!(mark(twin), mark(old));
        assert_eq!(s.lookup(twin), 0, "a fresh bucket");
        assert_eq!(s.lookup(old), 5_000);
        // Once the twin's own debt goes in, both are judged by the larger: mixed cells.
        s.record(twin, 3_000, spent_at(10));
        assert_eq!(s.lookup(twin), 5_000);
        assert_eq!(s.lookup(old), 5_000);
        // A third key with yet another mark reads the mixed cells: the strict side.
        assert_eq!(s.lookup(old ^ (2 << 50)), 5_000);
    }

    /// A cell whose debts have run out is taken over by the next key recorded there, so a
    /// mixed cell does not stay mixed for ever.
    #[test]
    fn a_cell_whose_debt_ran_out_is_taken_over() {
        let s = Sketch::with_shape(ROWS, 1 << 12);
        let a = keys(3).next().expect("a key");
        let (b, c) = (a ^ (1 << 50), a ^ (2 << 50));
        s.record(a, 100, spent_at(10));
        s.record(b, 200, spent_at(10));
        assert_eq!(s.lookup(c), 200, "mixed");
        // Later, both debts are past: `c`'s own takes the cells.
        s.record(c, 900, spent_at(500));
        assert_eq!(s.lookup(c), 900);
        assert_eq!(s.lookup(a), 0, "a's debt ran out; the cells are c's");
        assert_eq!(s.lookup(b), 0);
    }

    /// A value that is itself spent is no debt: it neither raises nor marks a cell.
    #[test]
    fn a_spent_value_is_not_recorded() {
        let s = Sketch::with_shape(ROWS, 64);
        let a = keys(5).next().expect("a key");
        s.record(a, 10, spent_at(10));
        assert_eq!(s.lookup(a), 0);
        assert!(s.marks.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    /// The share of newcomers charged with others' debts, at 1.7 debts a cell (three rows of
    /// 4,096, 6,963 keys recorded): about `(1 − e^(−1.7)(2.7))³` = 13 %, where unmarked cells
    /// charged `(1 − e^(−1.7))³` = 55 %; and at 0.43 a cell about 0.03 % against 4 %.
    #[test]
    fn few_newcomers_are_charged_with_others_debts() {
        for (per_cell, at_most) in [(1.7, 0.16), (0.43, 0.003)] {
            let width = 1u64 << 12;
            let s = Sketch::with_shape(ROWS, width);
            let n = (per_cell * width as f64) as usize;
            for k in keys(11).take(n) {
                s.record(k, 1_000, spent_at(10));
            }
            let trials = 20_000;
            let charged = keys(99).take(trials).filter(|&k| s.lookup(k) > 0).count();
            let share = charged as f64 / trials as f64;
            assert!(share <= at_most, "{per_cell} a cell: {share}");
        }
    }

    /// A reload's carry keeps each cell's mark, so what held for the old sketch holds for the
    /// new one.
    #[test]
    fn a_carried_sketch_keeps_its_marks() {
        let old = Sketch::with_shape(ROWS, 1 << 12);
        let a = keys(13).next().expect("a key");
        old.record(a, 4_000, spent_at(10));
        let new = Sketch::with_shape(ROWS, 1 << 12);
        new.carry_from(&old, |t| t * 2);
        assert_eq!(new.lookup(a), 8_000);
        assert_eq!(new.lookup(a ^ (1 << 50)), 0);
    }
}
