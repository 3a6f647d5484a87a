//! Bounded per-tenant state: one process-wide cap (`tenants.max_tracked`) over every table that
//! keeps something per tenant.
//!
//! Why one facility: a client can mint tenant ids at will, so every per-tenant table (token
//! buckets, global limits' leases, breakers with `scope: tenant`, in-flight counts, queues) is a way to grow memory
//! without bound. [`TrackedTenants`] counts the entries of all of them together against one cap;
//! a table that finds the cap reached sweeps the largest table (its own or another's; the next
//! one if that has nothing it may give) for a batch of entries, idle ones first, so the cost per new tenant stays a small constant and there is no
//! timer or background task.
//!
//! Rate limiters keep their own compact table (`policy/rate_limit/table.rs`, with a sketch of what
//! they evict). Every other policy uses [`TenantMap`]: a sharded map of `Arc<V>` whose values say
//! through [`TenantState`] whether they are idle (lossless to drop) and how much they are worth
//! keeping. An entry still referenced elsewhere (a request holds its `Arc`) is never evicted, so
//! a count of requests in flight cannot be lost by a sweep.

use std::sync::atomic::{AtomicU64, Ordering};
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::sync::{Arc, PoisonError, Weak};

use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;

use crate::clock::SharedClock;

/// The process-wide count of tracked (policy, tenant) entries and its cap, `tenants.max_tracked`.
///
/// Shared by every table of per-tenant state (rate limiters, [`TenantMap`]s of breakers and
/// in-flight counts) so that all policies together stay within the bound; a table that needs room
/// may sweep another table.
pub struct TrackedTenants {
    count: AtomicU64,
    cap: AtomicU64,
    // A mutex, not an atomic: only registration and the rare sweep path take it, never across
    // an await, and a sweep must run alone.
    #[allow(clippy::disallowed_types)]
    tables: Mutex<Vec<Weak<dyn Sweep>>>,
}

/// A table that can give entries back; implemented by each rate limiter and [`TenantMap`].
pub trait Sweep: Send + Sync {
    /// Entries held now.
    fn entries(&self) -> usize;
    /// Frees at least `want` entries if it has them (idle first); returns how many it freed and
    /// has already given back to the [`TrackedTenants`] count.
    fn sweep(&self, want: usize) -> usize;
}

// === impl TrackedTenants ===

impl TrackedTenants {
    /// A counter with cap `max_tracked` (at least 1).
    #[allow(clippy::disallowed_types)] // see the `tables` field
    pub fn new(max_tracked: u64) -> Arc<Self> {
        Arc::new(TrackedTenants {
            count: AtomicU64::new(0),
            cap: AtomicU64::new(max_tracked.max(1)),
            tables: Mutex::new(Vec::new()),
        })
    }

    /// Entries tracked by all limiters together; never above [`max_tracked`](Self::max_tracked)
    /// except for entries carried by a reload that is still in progress.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap.
    pub fn max_tracked(&self) -> u64 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Changes the cap (a reload of `tenants.max_tracked`). Entries over a lowered cap are
    /// swept as new tenants arrive, never all at once.
    pub fn set_max_tracked(&self, max_tracked: u64) {
        self.cap.store(max_tracked.max(1), Ordering::Relaxed);
    }

    /// Adds `table` to those a sweep may take entries from (dropped tables fall out).
    pub fn register(&self, table: Weak<dyn Sweep>) {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        tables.retain(|t| t.strong_count() > 0);
        tables.push(table);
    }

    /// Counts one more entry, making room by a sweep if the cap is reached. False only if no
    /// table could free anything (every entry is being inserted right now).
    pub fn reserve(&self) -> bool {
        if self.try_reserve() {
            return true;
        }
        // Rare path: one sweeper at a time; the others wait and then find room.
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if self.try_reserve() {
            return true;
        }
        // The largest table first; one whose entries are all in use frees nothing, and then
        // the next is tried, so a reservation fails only when no table has anything to give.
        let mut live: Vec<Arc<dyn Sweep>> = tables
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| t.entries() > 0)
            .collect();
        live.sort_unstable_by_key(|t| std::cmp::Reverse(t.entries()));
        let batch = usize::try_from(self.max_tracked() / 8)
            .unwrap_or(usize::MAX)
            .max(1);
        for table in live {
            if table.sweep(batch) > 0 && self.try_reserve() {
                return true;
            }
        }
        drop(tables);
        self.try_reserve()
    }

    /// Gives `n` entries back (they were removed from their table).
    pub fn release(&self, n: usize) {
        self.count.fetch_sub(n as u64, Ordering::AcqRel);
    }

    fn try_reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_tracked()).then_some(n + 1)
            })
            .is_ok()
    }
}

impl std::fmt::Debug for TrackedTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedTenants")
            .field("len", &self.len())
            .field("cap", &self.cap)
            .finish()
    }
}

/// What a [`TenantMap`] value tells the sweeper.
pub trait TenantState: Send + Sync + 'static {
    /// True when dropping the state loses nothing: a fresh value would behave the same (e.g. a
    /// closed breaker with no recent calls, zero requests in flight and none waiting).
    fn is_idle(&self, now_nanos: u64) -> bool;
    /// Worth of keeping the state when no idle entry is left: the lowest go first.
    fn keep_score(&self, now_nanos: u64) -> u64;
}

/// Per-tenant values of one policy instance, counted against `tenants.max_tracked`.
pub struct TenantMap<V> {
    map: DashMap<Box<str>, Arc<V>, foldhash::fast::RandomState>,
    tracked: Arc<TrackedTenants>,
    clock: SharedClock,
    evicted: Option<Evicted<V>>,
}

/// Told of the entries a sweep evicted that were not idle (see [`TenantMap::with_evicted`]).
type Evicted<V> = Box<dyn Fn(Vec<(Box<str>, Arc<V>)>) + Send + Sync>;

// === impl TenantMap ===

impl<V: TenantState> TenantMap<V> {
    /// An empty map whose entries count against `tracked`.
    pub fn new(tracked: &Arc<TrackedTenants>, clock: SharedClock) -> Arc<Self> {
        Self::build(tracked, clock, None)
    }

    /// As [`TenantMap::new`]; `evicted` is given the entries a sweep evicts though not idle
    /// (their tenant and value, used by no one else), once per sweep, to save what they held
    /// (a global limit's lease gives its live tokens back to the store). It runs inside the
    /// sweep: it must not block, nor touch a [`TenantMap`] or [`TrackedTenants`].
    pub fn with_evicted(
        tracked: &Arc<TrackedTenants>,
        clock: SharedClock,
        evicted: impl Fn(Vec<(Box<str>, Arc<V>)>) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(tracked, clock, Some(Box::new(evicted)))
    }

    fn build(
        tracked: &Arc<TrackedTenants>,
        clock: SharedClock,
        evicted: Option<Evicted<V>>,
    ) -> Arc<Self> {
        let map = Arc::new(TenantMap {
            map: DashMap::default(),
            tracked: tracked.clone(),
            clock,
            evicted,
        });
        let weak: Weak<dyn Sweep> = Arc::downgrade(&map) as Weak<dyn Sweep>;
        tracked.register(weak);
        map
    }

    /// The value of `tenant`, if tracked. No allocation.
    pub fn get(&self, tenant: &str) -> Option<Arc<V>> {
        self.map.get(tenant).map(|r| r.value().clone())
    }

    /// The value of `tenant`, made by `make` if new. `None` when the cap is reached and no
    /// table could free an entry (every tracked value is in use right now): the caller decides
    /// whether that refuses the request or serves it without per-tenant state.
    pub fn get_or_insert_with(&self, tenant: &str, make: impl FnOnce() -> V) -> Option<Arc<V>> {
        if let Some(v) = self.get(tenant) {
            return Some(v);
        }
        if !self.tracked.reserve() {
            return None;
        }
        match self.map.entry(Box::from(tenant)) {
            Slot::Occupied(o) => {
                // Another request made it first: give our reservation back.
                self.tracked.release(1);
                Some(o.get().clone())
            }
            Slot::Vacant(v) => Some(v.insert(Arc::new(make())).value().clone()),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no tenant is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Calls `f` on every entry (for `/state` and reload carry-over); holds one shard's read lock
    /// at a time, so `f` must not touch this map.
    pub fn for_each(&self, mut f: impl FnMut(&str, &Arc<V>)) {
        for r in self.map.iter() {
            f(r.key(), r.value());
        }
    }

    /// Inserts `value` for `tenant` if absent and the cap allows; for carrying state over on
    /// reload. Returns whether it went in.
    pub fn carry(&self, tenant: &str, value: Arc<V>) -> bool {
        if self.map.contains_key(tenant) || !self.tracked.reserve() {
            return false;
        }
        if self.map.insert(Box::from(tenant), value).is_some() {
            self.tracked.release(1);
        }
        true
    }

    fn remove_where(&self, mut evict: impl FnMut(&str, &Arc<V>) -> bool) -> usize {
        let mut removed = 0;
        self.map.retain(|k, v| {
            // A value a request still holds is in use: dropping it would lose its counts.
            let gone = Arc::strong_count(v) == 1 && evict(k, v);
            removed += usize::from(gone);
            !gone
        });
        removed
    }
}

impl<V: TenantState> Sweep for TenantMap<V> {
    fn entries(&self) -> usize {
        self.map.len()
    }

    fn sweep(&self, want: usize) -> usize {
        let now = self.clock.now_nanos();
        let mut freed = self.remove_where(|_, v| v.is_idle(now));
        if freed < want {
            let mut scores: Vec<u64> = self.map.iter().map(|r| r.value().keep_score(now)).collect();
            let n = (want - freed).min(scores.len());
            if n > 0 {
                let (_, nth, _) = scores.select_nth_unstable(n - 1);
                let threshold = *nth;
                let mut left = n;
                let mut gone = Vec::new();
                freed += self.remove_where(|k, v| {
                    if left == 0 || v.keep_score(now) > threshold {
                        return false;
                    }
                    left -= 1;
                    if self.evicted.is_some() {
                        gone.push((Box::from(k), v.clone()));
                    }
                    true
                });
                if let Some(evicted) = self.evicted.as_ref().filter(|_| !gone.is_empty()) {
                    evicted(gone);
                }
            }
        }
        self.tracked.release(freed);
        freed
    }
}

impl<V> Drop for TenantMap<V> {
    fn drop(&mut self) {
        self.tracked.release(self.map.len());
    }
}

impl<V> std::fmt::Debug for TenantMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantMap")
            .field("len", &self.map.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::clock::ManualClock;

    #[derive(Default)]
    struct Count(AtomicU32);

    impl TenantState for Count {
        fn is_idle(&self, _now: u64) -> bool {
            self.0.load(Ordering::Relaxed) == 0
        }
        fn keep_score(&self, _now: u64) -> u64 {
            u64::from(self.0.load(Ordering::Relaxed))
        }
    }

    #[test]
    fn the_cap_holds_across_maps_and_idle_entries_go_first() {
        let tracked = TrackedTenants::new(4);
        let clock: SharedClock = Arc::new(ManualClock::new());
        let a = TenantMap::<Count>::new(&tracked, clock.clone());
        let b = TenantMap::<Count>::new(&tracked, clock);
        for t in ["t1", "t2", "t3"] {
            let v = a
                .get_or_insert_with(t, Count::default)
                .expect("under the cap there is room");
            v.0.store(5, Ordering::Relaxed);
        }
        a.get_or_insert_with("idle", Count::default)
            .expect("room for the fourth");
        assert_eq!(tracked.len(), 4);
        // The cap is reached: a new tenant in another map sweeps the idle entry, not a busy one.
        b.get_or_insert_with("new", Count::default)
            .expect("a sweep must make room");
        assert_eq!(tracked.len(), 4, "the cap must hold");
        assert!(
            a.get("idle").is_none(),
            "the idle entry must be the one evicted"
        );
        assert!(a.get("t1").is_some() && a.get("t2").is_some() && a.get("t3").is_some());
    }

    /// When the largest table has nothing it may give (every value in use), a new tenant takes
    /// its room from the next table that has: `reserve` fails only when no table can free.
    #[test]
    fn a_full_table_in_use_does_not_stop_the_sweep() {
        let tracked = TrackedTenants::new(4);
        let clock: SharedClock = Arc::new(ManualClock::new());
        let busy = TenantMap::<Count>::new(&tracked, clock.clone());
        let other = TenantMap::<Count>::new(&tracked, clock);
        let held: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|t| busy.get_or_insert_with(t, Count::default).expect("room"))
            .collect();
        other
            .get_or_insert_with("idle", Count::default)
            .expect("room for the fourth");
        assert!(
            other.get_or_insert_with("new", Count::default).is_some(),
            "the idle entry of the smaller table must make room"
        );
        assert!(other.get("idle").is_none());
        assert_eq!((busy.len(), tracked.len()), (3, 4));
        drop(held);
    }

    /// A map made `with_evicted` is handed what a sweep evicts though not idle (to save what it
    /// held: a lease's live tokens), and not the idle entries, which hold nothing.
    #[test]
    fn entries_evicted_though_not_idle_are_handed_over() {
        let tracked = TrackedTenants::new(3);
        let clock: SharedClock = Arc::new(ManualClock::new());
        let told = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let m = {
            let told = told.clone();
            TenantMap::<Count>::with_evicted(&tracked, clock, move |gone| {
                let mut told = told.lock();
                for (tenant, v) in gone {
                    told.push((tenant, v.0.load(Ordering::Relaxed)));
                }
            })
        };
        let put = |tenant: &str, n: u32| {
            let v = m.get_or_insert_with(tenant, Count::default).expect("room");
            v.0.store(n, Ordering::Relaxed);
        };
        put("idle", 0);
        put("few", 1);
        put("many", 9);
        put("new1", 5);
        assert!(
            m.get("idle").is_none() && told.lock().is_empty(),
            "idle: nothing to save"
        );
        put("new2", 5);
        assert!(m.get("few").is_none());
        assert_eq!(
            *told.lock(),
            vec![(Box::<str>::from("few"), 1u32)],
            "the fewest, handed over"
        );
        assert_eq!(tracked.len(), 3);
    }

    #[test]
    fn values_in_use_are_never_evicted() {
        let tracked = TrackedTenants::new(2);
        let clock: SharedClock = Arc::new(ManualClock::new());
        let m = TenantMap::<Count>::new(&tracked, clock);
        let held1 = m.get_or_insert_with("a", Count::default).expect("room");
        let held2 = m.get_or_insert_with("b", Count::default).expect("room");
        assert!(
            m.get_or_insert_with("c", Count::default).is_none(),
            "both entries are in use"
        );
        assert_eq!(tracked.len(), 2);
        drop((held1, held2));
        assert!(
            m.get_or_insert_with("c", Count::default).is_some(),
            "now idle ones may go"
        );
        assert!(tracked.len() <= 2);
        drop(m);
        assert_eq!(tracked.len(), 0, "dropping a map gives its entries back");
    }
}
