//! Keyed bucket state: one entry per tracked tenant, bounded process-wide.
//!
//! Entries live in a sharded `DashMap<Box<str>, Entry>`: a hit is a read lock on one shard and a
//! lookup by `&str` (no allocation); only a new tenant allocates its key. The number of entries
//! of all limiters together is capped by [`TrackedTenants`](crate::tenant::tracked::TrackedTenants). When a new tenant finds the cap
//! reached, the largest table is swept once for a whole batch (an eighth of the cap): first the
//! idle entries, whose buckets are full again and so carry no information; then, if that was not
//! enough, the entries that use the smallest fraction of their capacity, each folded into the
//! limiter's sketch before it goes. A sweep is O(entries) but frees O(cap) entries, so the cost
//! per new tenant is a small constant; there is no timer or background task.
//!
//! Memory, measured by `benches/policy.rs` (`memory/entry`, 1M tenants with 14-byte ids):
//! 117 bytes per tenant all told, 103 bytes without the key's own heap block, for one limit or
//! two (two TATs are stored inline). The state proper is 8 bytes per (tenant, limit) in a
//! 32-byte [`Entry`]; the rest is the 16-byte key pointer and hashbrown's bucket, control byte
//! and free slots (the figure is near the worst point, just after the table doubled). Beside the
//! table, each per-tenant limit has a fixed sketch of at most 768 KiB.

use std::sync::atomic::AtomicU64;

use dashmap::mapref::entry::Entry as Slot;
use dashmap::mapref::one::Ref;
use dashmap::DashMap;

/// The state of one tenant in one limiter: which set of limits applies and one TAT per limit.
#[derive(Debug)]
pub(crate) struct Entry {
    set: u32,
    cells: Cells,
}

/// Up to two TATs inline (the common `burst` + `quota`), more on the heap.
#[derive(Debug)]
enum Cells {
    Inline([AtomicU64; 2]),
    Heap(Box<[AtomicU64]>),
}

/// The keyed entries of one limiter.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// foldhash, seeded at random per table: several times cheaper than SipHash on short ids,
    /// and still keyed, so clients cannot aim their tenant ids at one shard or bucket.
    map: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
}

// === impl Entry ===

impl Entry {
    /// An entry for set `set` with `n` TATs taken from `tat(i)`.
    pub(crate) fn new(set: u32, n: usize, tat: impl Fn(usize) -> u64) -> Self {
        let cells = if n <= 2 {
            Cells::Inline([AtomicU64::new(tat(0)), AtomicU64::new(tat(1))])
        } else {
            Cells::Heap((0..n).map(|i| AtomicU64::new(tat(i))).collect())
        };
        Entry { set, cells }
    }

    /// Index of the limit set in force for this tenant.
    pub(crate) fn set(&self) -> usize {
        self.set as usize
    }

    /// The TATs; zip them with the set's limits (inline storage may hold an unused cell).
    pub(crate) fn cells(&self) -> &[AtomicU64] {
        match &self.cells {
            Cells::Inline(c) => c,
            Cells::Heap(c) => c,
        }
    }
}

// === impl Table ===

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The entry of `tenant`, without allocating.
    pub(crate) fn get(&self, tenant: &str) -> Option<Ref<'_, Box<str>, Entry>> {
        self.map.get(tenant)
    }

    /// Inserts `entry` for `tenant` unless another thread did first; either way returns the
    /// entry in the table and whether ours went in.
    pub(crate) fn insert(&self, tenant: &str, entry: Entry) -> (Ref<'_, Box<str>, Entry>, bool) {
        match self.map.entry(Box::from(tenant)) {
            Slot::Occupied(o) => (o.into_ref().downgrade(), false),
            Slot::Vacant(v) => (v.insert(entry).downgrade(), true),
        }
    }

    /// Takes `tenant`'s entry out.
    pub(crate) fn remove(&self, tenant: &str) -> Option<Entry> {
        self.map.remove(tenant).map(|(_, e)| e)
    }

    /// Inserts without checks; for carrying entries over on reload.
    pub(crate) fn put(&self, tenant: Box<str>, entry: Entry) -> bool {
        self.map.insert(tenant, entry).is_none()
    }

    /// Removes entries for which `evict(key, entry)` says so; returns how many.
    pub(crate) fn remove_where(&self, mut evict: impl FnMut(&str, &Entry) -> bool) -> usize {
        let mut removed = 0;
        self.map.retain(|k, e| {
            let gone = evict(k, e);
            removed += usize::from(gone);
            !gone
        });
        removed
    }

    /// Frees at least `want` entries if there are that many: every `idle` one (lossless), then
    /// the least `used`, each passed to `forget` (to be remembered) before it goes. Two or three
    /// passes over the table; returns how many entries went.
    pub(crate) fn sweep(
        &self,
        want: usize,
        idle: impl Fn(&Entry) -> bool,
        used: impl Fn(&Entry) -> u64,
        mut forget: impl FnMut(&str, &Entry),
    ) -> usize {
        let freed = self.remove_where(|_, e| idle(e));
        let Some(mut left) = want.checked_sub(freed).filter(|&n| n > 0) else {
            return freed;
        };
        let threshold = self.nth_score(left - 1, &used).unwrap_or(u64::MAX);
        freed
            + self.remove_where(|tenant, e| {
                if left == 0 || used(e) > threshold {
                    return false;
                }
                left -= 1;
                forget(tenant, e);
                true
            })
    }

    /// The `n`-th smallest `score` over all entries (0-based), or `None` if there are not more
    /// than `n` entries: the eviction threshold, found in one pass.
    fn nth_score(&self, n: usize, score: impl Fn(&Entry) -> u64) -> Option<u64> {
        let mut scores: Vec<u64> = self.map.iter().map(|r| score(r.value())).collect();
        if n >= scores.len() {
            return None;
        }
        let (_, nth, _) = scores.select_nth_unstable(n);
        Some(*nth)
    }
}
