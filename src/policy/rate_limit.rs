//! Per-tenant rate limiting: token buckets decided by GCRA, keyed by tenant, bounded in memory.
//!
//! Why this shape (governor's split, see STYLE): `gcra.rs` is the maths on one `AtomicU64` per
//! (tenant, limit), `table.rs` the keyed and bounded state, `sketch.rs` where evicted state goes,
//! and this file puts them together behind [`RateLimiter::check`], which knows nothing of HTTP
//! services; the request path calls it and turns a refusal into a 429.
//!
//! A request is admitted only if every limit that applies admits it: the tenant's override list
//! (or `per_tenant`), then the route's `total`. The check first reads every bucket; a request that
//! some limit refuses writes nothing. Otherwise each bucket is taken with a CAS; if a concurrent
//! request emptied a later bucket in between, the tokens already taken are given back (see
//! `Gcra::release` for why that never grants more than the limit).
//!
//! Hot path of a known tenant: one clock read, one shard read-lock and SipHash of the key, then
//! one load and one CAS per limit. No allocation unless headers are rendered.
//!
//! Memory (measured in `benches/policy.rs`): about 117 bytes per tracked tenant including a
//! 14-byte id, 8 of them the TAT of each limit; plus a fixed sketch per per-tenant limit (960 KiB
//! to 3.75 MiB, by `max_tracked`). Entries are capped process-wide by [`TrackedTenants`]; see `table.rs` for eviction
//! and `sketch.rs` for why an evicted tenant never comes back with a fresh bucket.

mod calendar;
mod decision;
mod gcra;
mod global;
mod plans;
mod sketch;
mod table;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use self::gcra::{Carry, Gcra};
use self::sketch::Sketch;
use self::table::{Entry, Table};
use crate::clock::{SharedClock, WallClock};
use crate::config::file::{Limit, LimitScope, RateLimit};
use crate::tenant::tracked::Sweep;

pub use self::decision::{Decision, STORE_UNAVAILABLE};
pub use self::global::GlobalLimiter;
pub use crate::tenant::tracked::TrackedTenants;

use self::decision::{Item, Items, Spec};

/// Every evicted bucket that is not full is remembered in the sketch: the point of the sketch
/// is that eviction never hands a tenant a fresher bucket than it had.
///
/// The price is on the strict side only. A newcomer whose sketch cells all hold the debts of
/// more than one evicted tenant each inherits the smallest of them; in a flood of distinct tenants far
/// larger than the sketch, those debts can ratchet up (a newcomer inherits a debt, adds its own,
/// is evicted again) until newcomers are refused while tenants already tracked are not. The
/// sketch is sized (see `sketch.rs`) so that, below that scale, a full collision is rare.
const RECORD_AT: u64 = 1;

/// What is done to a tenant's buckets (`Inner::decide`, `Inner::refusal`): the set, the tenant's
/// cells of it, and now.
type Act<R> = fn(&Inner, &Set, &[AtomicU64], u64) -> R;

/// The rate limiter of one route's policy: shared by every request of that route.
///
/// Cheap to clone (one `Arc`). Dropping the last clone gives its entries back to the
/// [`TrackedTenants`] count.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Limits of tenants without an override (`per_tenant`, possibly none).
    default: Set,
    /// One set per overridden tenant, then one per plan; `Entry::set` 1.. points here.
    override_sets: Vec<Set>,
    overrides: HashMap<Box<str>, u32>,
    /// Plan name to its set's index (after the overrides').
    plans: HashMap<Box<str>, u32>,
    total: Total,
    table: Table,
    tracked: Arc<TrackedTenants>,
    clock: SharedClock,
    /// Keys the sketches; kept across reloads so carried sketches stay addressable.
    hasher: RandomState,
    /// Unix nanoseconds at the clock's origin: where calendar windows start.
    unix_offset: u64,
    headers: bool,
}

/// The per-tenant limits that apply to a group of tenants, with their evicted state.
struct Set {
    limits: Vec<Gcra>,
    sketches: Vec<Sketch>,
    spec: Arc<Spec>,
}

/// The route-wide limits: one shared bucket each.
struct Total {
    limits: Vec<Gcra>,
    cells: Box<[AtomicU64]>,
}

/// A route's `rate_limit` section in force, with its state and its carry-over rule.
#[derive(Debug)]
pub struct RouteRateLimit {
    /// The section as written (to tell whether a reload changed it).
    pub cfg: RateLimit,
    /// Buckets of every tenant seen on the route (with `scope: global`, what decides while
    /// the store is down and `on_store_error` is `local`).
    pub limiter: RateLimiter,
    /// With `scope: global`: the buckets shared through the global store.
    pub global: Option<GlobalLimiter>,
}

/// What a route needs to build a global limiter.
pub struct GlobalCtx<'a> {
    /// The store in force (`None` without `global_store`).
    pub store: Option<&'a Arc<crate::store::GlobalStore>>,
    /// The route's label (part of every key).
    pub route: &'a Arc<str>,
    /// Where `rampart_ratelimit_store_fallbacks_total{route}` is made.
    pub metrics: &'a crate::metrics::Metrics,
}

// === impl RouteRateLimit ===

impl RouteRateLimit {
    /// The state for `cfg`, carried over from the route's `old` state: unchanged limits keep
    /// every tenant's bucket; changed ones rescale them by the share used, so a reload neither
    /// resets nor grants a fresh burst to everyone.
    pub fn build(
        cfg: &RateLimit,
        old: Option<&RouteRateLimit>,
        tracked: &Arc<TrackedTenants>,
        clock: &SharedClock,
        global: GlobalCtx<'_>,
    ) -> Self {
        let limiter = match old {
            Some(o) if o.cfg == *cfg => o.limiter.clone(),
            Some(o) => o.limiter.reconfigure(cfg),
            None => RateLimiter::new(cfg, tracked.clone(), clock.clone()),
        };
        // Leases carry over only when the limits and the store's connection are the same.
        let store = global.store.filter(|_| cfg.scope == LimitScope::Global);
        let global = store.map(|store| {
            let kept = old
                .filter(|o| o.cfg == *cfg)
                .and_then(|o| o.global.as_ref())
                .filter(|g| g.uses(store));
            match kept {
                Some(g) => g.clone(),
                None => GlobalLimiter::new(
                    cfg,
                    global.route,
                    store.clone(),
                    tracked,
                    clock.clone(),
                    global
                        .metrics
                        .store_fallbacks
                        .with_label_values(&[&**global.route]),
                ),
            }
        });
        RouteRateLimit {
            cfg: cfg.clone(),
            limiter,
            global,
        }
    }

    /// Decides for one request of `tenant` on `plan`: locally, or through the global store
    /// (never waiting on it longer than its timeout).
    pub async fn check(&self, tenant: &str, plan: Option<&str>) -> Decision {
        match &self.global {
            Some(g) => g.check(tenant, plan, &self.limiter).await,
            None => self.limiter.check_plan(tenant, plan),
        }
    }
}

// === impl RateLimiter ===

impl RateLimiter {
    /// Builds the limiter of one policy's `rate_limit` section; its entries count against
    /// `tracked`, and `clock` gives "now".
    pub fn new(cfg: &RateLimit, tracked: Arc<TrackedTenants>, clock: SharedClock) -> Self {
        let wall = WallClock::system(clock);
        Self::new_anchored(cfg, tracked, &wall)
    }

    /// As [`RateLimiter::new`], with calendar windows placed by `wall` (for tests).
    pub fn new_anchored(cfg: &RateLimit, tracked: Arc<TrackedTenants>, wall: &WallClock) -> Self {
        let at = (
            wall.clock().clone(),
            RandomState::new(),
            wall.origin_unix_nanos(),
        );
        Self::build(cfg, tracked, at)
    }

    fn build(
        cfg: &RateLimit,
        tracked: Arc<TrackedTenants>,
        (clock, hasher, unix_offset): (SharedClock, RandomState, u64),
    ) -> Self {
        let total_cfg = cfg.total.as_ref().map_or(&[][..], |l| &l.0[..]);
        let total = Total {
            limits: total_cfg
                .iter()
                .map(|l| Gcra::new_at(l, unix_offset))
                .collect(),
            cells: total_cfg.iter().map(|_| AtomicU64::new(0)).collect(),
        };
        let cap = tracked.max_tracked();
        let per_tenant = cfg.per_tenant.as_ref().map_or(&[][..], |l| &l.0[..]);
        let set = |limits: &[Limit], sketch: &dyn Fn() -> Sketch| {
            Set::new(limits, total_cfg, unix_offset, sketch)
        };
        let default = set(per_tenant, &|| Sketch::for_tracked(cap));
        let mut overrides = HashMap::new();
        let mut override_sets = Vec::new();
        for (tenant, limits) in &cfg.overrides {
            override_sets.push(set(&limits.0, &Sketch::exact));
            overrides.insert(Box::from(tenant.as_str()), override_sets.len() as u32);
        }
        let mut plans = HashMap::new();
        for (plan, limits) in &cfg.plans {
            override_sets.push(set(&limits.0, &|| Sketch::for_tracked(cap)));
            plans.insert(Box::from(plan.as_str()), override_sets.len() as u32);
        }
        let inner = Arc::new(Inner {
            default,
            override_sets,
            overrides,
            plans,
            total,
            table: Table::default(),
            tracked,
            clock,
            hasher,
            unix_offset,
            headers: cfg.headers,
        });
        let weak: Weak<dyn Sweep> = Arc::downgrade(&inner) as Weak<dyn Sweep>;
        inner.tracked.register(weak);
        RateLimiter { inner }
    }

    /// Decides for one request of `tenant`. A refused request consumes from no limit.
    pub fn check(&self, tenant: &str) -> Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        if let Some(entry) = inner.table.get(tenant) {
            return inner.decide(inner.set(entry.set()), entry.cells(), now);
        }
        inner.check_new(tenant, now)
    }

    /// Builds the limiter for `new_cfg`, carrying state over: unchanged limits keep their TAT,
    /// changed ones keep the fraction of capacity used, tenants without state stay absent.
    ///
    /// Entries move to the new limiter (the tracked count does not double); what moved is also
    /// folded into this limiter's sketches, so a request that still reaches the old limiter is
    /// judged strictly rather than with a fresh bucket.
    pub fn reconfigure(&self, new_cfg: &RateLimit) -> RateLimiter {
        let old = &*self.inner;
        let at = (old.clock.clone(), old.hasher.clone(), old.unix_offset);
        let new = Self::build(new_cfg, old.tracked.clone(), at);
        old.carry_into(&new.inner);
        new
    }

    /// Entries (tenants with state) held by this limiter.
    pub fn tracked(&self) -> usize {
        self.inner.table.len()
    }

    #[cfg(test)]
    fn holds(&self, tenant: &str) -> bool {
        self.inner.table.get(tenant).is_some()
    }

    /// Bytes of fixed-size sketch cells held by this limiter.
    pub fn sketch_bytes(&self) -> usize {
        let sets = std::iter::once(&self.inner.default).chain(&self.inner.override_sets);
        sets.flat_map(|s| s.sketches.iter())
            .map(Sketch::bytes)
            .sum()
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("tracked", &self.tracked())
            .finish()
    }
}

// === impl Inner ===

impl Inner {
    fn set(&self, index: usize) -> &Set {
        index
            .checked_sub(1)
            .and_then(|i| self.override_sets.get(i))
            .unwrap_or(&self.default)
    }

    fn set_index(&self, tenant: &str) -> u32 {
        self.overrides.get(tenant).copied().unwrap_or(0)
    }

    /// A tenant without an entry: start from what the sketch remembers of it, then track it.
    fn check_new(&self, tenant: &str, now: u64) -> Decision {
        self.check_new_in(tenant, self.set_index(tenant), now)
    }

    /// As `check_new`, in set `index`.
    fn check_new_in(&self, tenant: &str, index: u32, now: u64) -> Decision {
        self.new_entry_in(tenant, index, now, Inner::decide)
    }

    /// `act` on the buckets of a tenant without an entry, in set `index`: they start from what
    /// the sketch remembers of it, and the tenant is tracked.
    fn new_entry_in<R>(&self, tenant: &str, index: u32, now: u64, act: Act<R>) -> R {
        let set = self.set(index as usize);
        if set.limits.is_empty() {
            return act(self, set, &[], now);
        }
        let hash = self.hasher.hash_one(tenant);
        let remembered = |i: usize| set.sketches.get(i).map_or(0, |s| s.lookup(hash));
        let entry = Entry::new(index, set.limits.len(), remembered);
        if !self.tracked.reserve() {
            // Only when every entry of every table is being inserted at this very moment:
            // decide on the remembered state and remember the outcome, without an entry.
            let done = act(self, set, entry.cells(), now);
            set.record(&entry, hash, now, 0);
            return done;
        }
        let (entry, inserted) = self.table.insert(tenant, entry);
        if !inserted {
            self.tracked.release(1);
        }
        act(self, set, entry.cells(), now)
    }

    /// The refusal of these buckets (the tenant's, then the route's `total`) if one of them
    /// has no token now; nothing is taken.
    fn refusal(&self, set: &Set, cells: &[AtomicU64], now: u64) -> Option<Decision> {
        let tenant = set.limits.iter().zip(cells);
        let mut limits = tenant.chain(self.total.limits.iter().zip(self.total.cells.iter()));
        limits
            .any(|(g, c)| g.decide(c.load(Ordering::Acquire), now).is_err())
            .then(|| self.refused(set, cells, now, 0))
    }

    fn decide(&self, set: &Set, cells: &[AtomicU64], now: u64) -> Decision {
        let limits = || {
            let tenant = set.limits.iter().zip(cells);
            tenant.chain(self.total.limits.iter().zip(self.total.cells.iter()))
        };
        // Read first: a request that some limit refuses writes nothing. (With a single limit
        // the CAS below refuses without writing anyway.)
        let several = set.limits.len().min(cells.len()) + self.total.limits.len() > 1;
        if several && limits().any(|(g, c)| g.decide(c.load(Ordering::Acquire), now).is_err()) {
            return self.refused(set, cells, now, 0);
        }
        for (taken, (g, c)) in limits().enumerate() {
            if let Err(wait) = g.acquire(c, now) {
                // A concurrent request took the last token in between: give ours back.
                for (g, c) in limits().take(taken) {
                    g.release(c, now, &*self.clock);
                }
                return self.refused(set, cells, now, wait);
            }
        }
        if !self.headers {
            return Decision {
                admitted: true,
                retry_nanos: 0,
                items: Items::default(),
                spec: None,
                store_down: false,
            };
        }
        let mut items = Items::default();
        for (g, c) in limits() {
            let tat = c.load(Ordering::Acquire);
            items.push(Item {
                remaining: g.remaining(tat, now),
                reset_nanos: g.until_next(tat, now),
            });
        }
        Decision {
            admitted: true,
            retry_nanos: 0,
            items,
            spec: Some(set.spec.clone()),
            store_down: false,
        }
    }

    fn refused(&self, set: &Set, cells: &[AtomicU64], now: u64, wait: u64) -> Decision {
        let mut retry = wait.max(1);
        let mut items = Items::default();
        let tenant = set.limits.iter().zip(cells);
        for (g, c) in tenant.chain(self.total.limits.iter().zip(self.total.cells.iter())) {
            let tat = c.load(Ordering::Acquire);
            let reset_nanos = g.until_next(tat, now);
            retry = retry.max(reset_nanos);
            items.push(Item {
                remaining: g.remaining(tat, now),
                reset_nanos,
            });
        }
        Decision {
            admitted: false,
            retry_nanos: retry,
            items,
            spec: Some(set.spec.clone()),
            store_down: false,
        }
    }

    fn is_idle(&self, entry: &Entry, now: u64) -> bool {
        let set = self.set(entry.set());
        set.limits
            .iter()
            .zip(entry.cells())
            .all(|(g, c)| g.is_full(c.load(Ordering::Acquire), now))
    }

    fn used(&self, entry: &Entry, now: u64) -> u64 {
        let set = self.set(entry.set());
        let used = set.limits.iter().zip(entry.cells());
        used.map(|(g, c)| g.used(c.load(Ordering::Acquire), now))
            .max()
            .unwrap_or(0)
    }

    /// Moves every entry into `new`, converting its TATs, and carries the sketches and totals.
    fn carry_into(&self, new: &Inner) {
        let now = self.clock.now_nanos();
        let plan = gcra::plan(&self.total.limits, &new.total.limits);
        for ((carry, g), cell) in plan
            .iter()
            .zip(&new.total.limits)
            .zip(new.total.cells.iter())
        {
            let old = |i: usize| {
                self.total
                    .cells
                    .get(i)
                    .map_or(0, |c| c.load(Ordering::Acquire))
            };
            cell.store(
                carried(*carry, &self.total.limits, old, g, now),
                Ordering::Release,
            );
        }
        new.default.carry_sketches(&self.default, None, now);
        self.carry_plan_sketches(new, now);
        for (tenant, &index) in &new.overrides {
            let hash = self.hasher.hash_one(&**tenant);
            let old = self.set(self.set_index(tenant) as usize);
            new.set(index as usize).carry_sketches(old, Some(hash), now);
        }
        let mut kept = 0;
        let moved = self.table.remove_where(|tenant, entry| {
            let old_set = self.set(entry.set());
            old_set.record(entry, self.hasher.hash_one(tenant), now, 0);
            let index = new.index_after_reload(tenant, self.plan_of(entry.set()));
            let new_set = new.set(index as usize);
            let tats = carried_tats(entry, old_set, new_set, now);
            if tats.iter().any(|&tat| tat > now) {
                let moved = Entry::new(index, tats.len(), |i| tats.get(i).copied().unwrap_or(0));
                kept += usize::from(new.table.put(Box::from(tenant), moved));
            }
            true
        });
        self.tracked.release(moved.saturating_sub(kept));
    }
}

impl Sweep for Inner {
    fn entries(&self) -> usize {
        self.table.len()
    }

    fn sweep(&self, want: usize) -> usize {
        let now = self.clock.now_nanos();
        let freed = self.table.sweep(
            want,
            |e| self.is_idle(e, now),
            |e| self.used(e, now),
            |tenant, e| {
                self.set(e.set())
                    .record(e, self.hasher.hash_one(tenant), now, RECORD_AT)
            },
        );
        self.tracked.release(freed);
        freed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tracked.release(self.table.len());
    }
}

/// The TATs of `entry` (in `old_set`) carried into `new_set`: each bucket keeps the share it
/// had used; a reload and a tenant moving plan share this rule.
fn carried_tats(entry: &Entry, old_set: &Set, new_set: &Set, now: u64) -> Vec<u64> {
    let old = |i: usize| {
        entry
            .cells()
            .get(i)
            .map_or(0, |c| c.load(Ordering::Acquire))
    };
    gcra::plan(&old_set.limits, &new_set.limits)
        .iter()
        .zip(&new_set.limits)
        .map(|(carry, g)| carried(*carry, &old_set.limits, old, g, now))
        .collect()
}

fn carried(carry: Carry, old: &[Gcra], tat: impl Fn(usize) -> u64, new: &Gcra, now: u64) -> u64 {
    match carry {
        Carry::Keep(i) => tat(i),
        Carry::Rescale(i) => old.get(i).map_or(0, |o| new.rescale_from(o, tat(i), now)),
        Carry::Fresh => 0,
    }
}

// === impl Set ===

impl Set {
    fn new(limits: &[Limit], total: &[Limit], offset: u64, sketch: &dyn Fn() -> Sketch) -> Self {
        Set {
            limits: limits.iter().map(|l| Gcra::new_at(l, offset)).collect(),
            sketches: limits.iter().map(|_| sketch()).collect(),
            spec: Arc::new(Spec::new(limits, total)),
        }
    }

    /// Folds `entry`'s TATs into the sketches before it is dropped, those of buckets that use
    /// at least `min_used` (of `u32::MAX`) of their capacity.
    fn record(&self, entry: &Entry, hash: u64, now: u64, min_used: u64) {
        let cells = self.limits.iter().zip(&self.sketches).zip(entry.cells());
        for ((g, sketch), cell) in cells {
            let tat = cell.load(Ordering::Acquire);
            if g.used(tat, now) >= min_used.max(1) {
                sketch.record(hash, tat, |v| g.used(v, now) == 0);
            }
        }
    }

    /// Fills the sketches from `old`'s: cell by cell, or for an override's exact cell from what
    /// `old` remembers of that tenant (`hash`).
    fn carry_sketches(&self, old: &Set, hash: Option<u64>, now: u64) {
        let plan = gcra::plan(&old.limits, &self.limits);
        for ((carry, g), sketch) in plan.iter().zip(&self.limits).zip(&self.sketches) {
            let (Carry::Keep(i) | Carry::Rescale(i)) = *carry else {
                continue;
            };
            let (Some(from), Some(old_g)) = (old.sketches.get(i), old.limits.get(i)) else {
                continue;
            };
            let f = |tat: u64| g.rescale_from(old_g, tat, now);
            match hash {
                Some(h) => sketch.record(h, f(from.lookup(h)), |v| g.used(v, now) == 0),
                None => sketch.carry_from(from, f),
            }
        }
    }
}
