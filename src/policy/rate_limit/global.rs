//! `scope: global` (SPEC §9): a tenant's limits hold for the whole fleet of ramparts that share
//! one store, through leases.
//!
//! A rampart takes a small batch of tokens (the *lease*) for a tenant from the store in one
//! atomic script call (`store/lease.rs`) and spends them locally; only when they run out does a
//! request of that tenant talk to the store again. The common case is thus a CAS on a local
//! counter with no await. A refill is single-flight: the first request that finds the lease
//! empty starts it in a task, and every request of that tenant arriving meanwhile waits for the
//! same answer (with a deadline of `global_store.redis.timeout`), so a burst makes one store
//! call, not one per request. A store that says "no token" also says how long until the next;
//! requests in that time are refused locally, without a call.
//!
//! Accuracy, the trade-off `lease` buys (documented in the README):
//! - Overshoot: tokens are taken from the shared bucket before they are spent, so the fleet
//!   never admits more than the shared bucket gives out. Spending may lag the taking by up to
//!   `lease_ttl`, so over any window the fleet admits at most what the limit admits over that
//!   window plus `lease_ttl` (rate × lease_ttl tokens at the very most, and never more than
//!   replicas × lease).
//! - Undershoot: tokens leased by one replica and not spent are lost to the others until they
//!   expire (`lease_ttl`): at most `replicas × (lease − 1)` tokens per `lease_ttl`. A lease of 1
//!   is exact and costs a store round trip per admitted request.
//!
//! When the store is down (breaker open) or does not answer within the timeout, the decision
//! follows `on_store_error`: `local` asks the route's per-process limiter, `allow` admits,
//! `deny` refuses with a 429.
//!
//! With `local`, that per-process limiter also bounds what the process admits while the store
//! is up: a request it would refuse is refused before the store is asked (it costs the shared
//! bucket nothing), and a request the store admits is taken from it too. So it always holds
//! what this process has admitted, whoever decided, and a store that stops answering for a
//! moment hands no tenant a second burst; one process never admits more than the limit.
//!
//! Leases are per-tenant state, so they live in a [`TenantMap`] counted against
//! `tenants.max_tracked` with every other per-tenant table and swept as those are (idle leases
//! first, then those holding the fewest live tokens). An evicted lease's live tokens are given
//! back to the store in the background (`store/lease.rs`: to every limit no other take touched
//! since), so a tenant whose lease makes room for others, a steady one among a churn of tenants
//! seen once, is not charged for tokens it never spent; what cannot be given back (another
//! replica's or tenant's take came between, the store does not answer, too many returns are
//! already on their way) is lost as before, at most the lease's unspent tokens (the strict
//! side): the tenant's bucket is in the store. A tenant that finds no room at all (every
//! tracked entry in use this very moment) leases one token for its request alone, so it is
//! charged exactly what it spends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::Notify;

use super::decision::{Decision, Item, Items, Spec};
use super::RateLimiter;
use crate::clock::SharedClock;
use crate::config::file::{Limit, OnStoreError, RateLimit};
use crate::store::lease::{Ask, Grant, Return, StoreLimit};
use crate::store::GlobalStore;
use crate::tenant::tracked::{TenantMap, TenantState, TrackedTenants};

/// Leased tokens stay good this long unless `lease_ttl` says otherwise.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(1);
/// With `on_store_error: deny`, the `retry-after` of a refusal.
const DENY_RETRY: Duration = Duration::from_secs(1);
/// Evicted leases on their way back to the store at once, per limiter, at the least (else an
/// eighth of `tenants.max_tracked`, a sweep's batch): what memory they hold beyond the cap.
const RETURNING_MIN: usize = 64;

/// The global limiter of one route: cheap to clone.
#[derive(Clone, Debug)]
pub struct GlobalLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<GlobalStore>,
    route: Arc<str>,
    /// `per_tenant` (index 0), then each override's set, then each plan's.
    sets: Vec<Set>,
    overrides: HashMap<Box<str>, u32>,
    plans: HashMap<Box<str>, u32>,
    total: Vec<StoreLimit>,
    total_key: Option<String>,
    lease_ttl: u64,
    on_error: OnStoreError,
    leases: Arc<TenantMap<Lease>>,
    tracked: Arc<TrackedTenants>,
    /// Evicted leases whose tokens are being given back now (bounded: [`RETURNING_MIN`]).
    returning: AtomicUsize,
    clock: SharedClock,
    headers: bool,
    fallbacks: IntCounter,
}

#[derive(Debug)]
struct Set {
    limits: Vec<StoreLimit>,
    spec: Arc<Spec>,
    /// Tokens asked for at once.
    lease: u64,
}

/// One tenant's leased tokens on this rampart.
#[derive(Debug, Default)]
struct Lease {
    /// The set the tokens were leased for (a tenant that changes plan drops them).
    set: AtomicU32,
    tokens: AtomicU64,
    /// Clock nanoseconds after which the tokens are void.
    expires: AtomicU64,
    /// The store said no token until then (clock nanoseconds).
    refused_until: AtomicU64,
    refilling: AtomicBool,
    /// The last refill got no answer.
    failed: AtomicBool,
    notify: Notify,
    /// `(remaining in the store, wait in µs, mark)` per limit as of the last answer, and when:
    /// headers, and the marks a give-back must find (`store/lease.rs`).
    seen: parking_lot::Mutex<Seen>,
}

/// Per limit `(remaining in the store, wait in µs, mark)`, and the clock nanoseconds of the
/// answer.
type Seen = (Vec<(u64, u64, u64)>, u64);

// === impl GlobalLimiter ===

impl GlobalLimiter {
    /// The limiter of `cfg` on the route labelled `route`, sharing buckets through `store`;
    /// its leases count against `tracked`.
    pub fn new(
        cfg: &RateLimit,
        route: &Arc<str>,
        store: Arc<GlobalStore>,
        tracked: &Arc<TrackedTenants>,
        clock: SharedClock,
        fallbacks: IntCounter,
    ) -> Self {
        let total_cfg = cfg.total.as_ref().map_or(&[][..], |l| &l.0[..]);
        let total: Vec<StoreLimit> = total_cfg.iter().map(StoreLimit::new).collect();
        let with_spec = |limits: &[Limit]| {
            let limits_s: Vec<StoreLimit> = limits.iter().map(StoreLimit::new).collect();
            let smallest = limits_s
                .iter()
                .chain(&total)
                .map(|l| l.capacity)
                .min()
                .unwrap_or(1);
            Set {
                spec: Arc::new(Spec::new(limits, total_cfg)),
                lease: cfg.lease.unwrap_or((smallest / 10).clamp(1, 10)),
                limits: limits_s,
            }
        };
        let per_tenant = cfg.per_tenant.as_ref().map_or(&[][..], |l| &l.0[..]);
        let mut sets = vec![with_spec(per_tenant)];
        let mut overrides = HashMap::new();
        for (tenant, l) in &cfg.overrides {
            sets.push(with_spec(&l.0));
            overrides.insert(Box::from(tenant.as_str()), (sets.len() - 1) as u32);
        }
        let mut plans = HashMap::new();
        for (plan, l) in &cfg.plans {
            sets.push(with_spec(&l.0));
            plans.insert(Box::from(plan.as_str()), (sets.len() - 1) as u32);
        }
        let total_key = (!total.is_empty()).then(|| store.total_key(route));
        let ttl = cfg.lease_ttl.map_or(DEFAULT_LEASE_TTL, |d| d.0);
        GlobalLimiter {
            inner: Arc::new_cyclic(|me: &Weak<Inner>| Inner {
                store,
                route: route.clone(),
                sets,
                overrides,
                plans,
                total,
                total_key,
                lease_ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
                on_error: cfg.on_store_error.unwrap_or_default(),
                leases: {
                    let me = me.clone();
                    TenantMap::with_evicted(tracked, clock.clone(), move |gone| {
                        if let Some(inner) = me.upgrade() {
                            inner.give_back(gone);
                        }
                    })
                },
                tracked: tracked.clone(),
                returning: AtomicUsize::new(0),
                clock,
                headers: cfg.headers,
                fallbacks,
            }),
        }
    }

    /// Whether this limiter talks to `store` as configured now (same connection, prefix and
    /// timeout); a reload keeps it only then.
    pub fn uses(&self, store: &Arc<GlobalStore>) -> bool {
        Arc::ptr_eq(&self.inner.store, store)
    }

    /// Decides for one request of `tenant` on `plan`; `local` is the route's per-process
    /// limiter, which decides while the store is down when `on_store_error: local`.
    ///
    /// Never waits longer than the store's timeout; does not wait at all while this rampart
    /// holds leased tokens for the tenant, or the store said there are none for now.
    pub async fn check(&self, tenant: &str, plan: Option<&str>, local: &RateLimiter) -> Decision {
        let inner = &self.inner;
        let index = inner.set_index(tenant, plan);
        let set = inner.set(index);
        if set.limits.is_empty() && inner.total.is_empty() {
            return admitted_plain();
        }
        // `local`: the process's own buckets bound what it admits, store or not; a request they
        // refuse costs the shared bucket nothing.
        if inner.on_error == OnStoreError::Local {
            if let Some(refused) = local.refusal(tenant, plan) {
                return refused;
            }
        }
        let (lease, want) = match inner.lease_of(tenant) {
            Some(lease) => (lease, set.lease),
            // No room (every tracked entry is in use right now): a lease for this request
            // alone, of one token, so that none is leased to be lost.
            None => (Arc::new(Lease::default()), 1),
        };
        let mut deadline = None;
        loop {
            let now = inner.clock.now_nanos();
            if let Some(left) = lease.take(index, now) {
                if let Some(refused) = inner.take_own(tenant, plan, local) {
                    return refused;
                }
                return inner.admitted(set, &lease, left, now);
            }
            let until = lease.refused_until.load(Ordering::Acquire);
            if now < until && lease.set.load(Ordering::Acquire) == index {
                return inner.refused(set, &lease, until - now, now);
            }
            if !inner.store.may_answer() {
                return inner.fallback(tenant, plan, local);
            }
            let notified = lease.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A refill may have landed between the look above and `enable`.
            if let Some(left) = lease.take(index, now) {
                if let Some(refused) = inner.take_own(tenant, plan, local) {
                    return refused;
                }
                return inner.admitted(set, &lease, left, now);
            }
            if !lease.refilling.swap(true, Ordering::AcqRel) {
                lease.failed.store(false, Ordering::Release);
                let (inner, lease, tenant) = (inner.clone(), lease.clone(), Box::from(tenant));
                tokio::spawn(async move { inner.refill(&lease, &tenant, index, want).await });
            }
            let at = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + inner.store.timeout());
            if tokio::time::timeout_at(at, notified).await.is_err()
                || lease.failed.load(Ordering::Acquire)
            {
                return inner.fallback(tenant, plan, local);
            }
        }
    }

    /// Tenants with a lease on this rampart.
    pub fn leases(&self) -> usize {
        self.inner.leases.len()
    }
}

fn admitted_plain() -> Decision {
    Decision {
        admitted: true,
        retry_nanos: 0,
        items: Items::default(),
        spec: None,
        store_down: false,
    }
}

// === impl Inner ===

impl Inner {
    fn set(&self, index: u32) -> &Set {
        self.sets.get(index as usize).unwrap_or(&self.sets[0])
    }

    fn set_index(&self, tenant: &str, plan: Option<&str>) -> u32 {
        match self.overrides.get(tenant) {
            Some(&o) => o,
            None => plan.and_then(|p| self.plans.get(p).copied()).unwrap_or(0),
        }
    }

    /// The tenant's lease, tracked; `None` when `tenants.max_tracked` is reached and no table
    /// could free an entry. No allocation for a tenant already tracked.
    fn lease_of(&self, tenant: &str) -> Option<Arc<Lease>> {
        self.leases.get_or_insert_with(tenant, Lease::default)
    }

    /// Asks the store for `want` tokens of set `index` for `lease`.
    async fn refill(&self, lease: &Lease, tenant: &str, index: u32, want: u64) {
        let set = self.set(index);
        let key = self.store.tenant_key(&self.route, tenant);
        let ask = Ask {
            tenant_key: &key,
            total_key: self.total_key.as_deref(),
            tenant: &set.limits,
            total: &self.total,
            want,
        };
        let answer = self.store.lease(&ask).await;
        let now = self.clock.now_nanos();
        match answer {
            Ok(Grant { granted, items }) => {
                lease.set.store(index, Ordering::Release);
                let wait = items.iter().map(|&(_, w, _)| w).max().unwrap_or(0);
                *lease.seen.lock() = (items, now);
                if granted > 0 {
                    lease
                        .expires
                        .store(now.saturating_add(self.lease_ttl), Ordering::Release);
                    lease.tokens.store(granted, Ordering::Release);
                    lease.refused_until.store(0, Ordering::Release);
                } else {
                    let until = now.saturating_add(wait.saturating_mul(1000).max(1_000_000));
                    lease.refused_until.store(until, Ordering::Release);
                    // Tokens still held are another set's (a plan changed), spendable no more:
                    // none may be given back against this answer's marks.
                    lease.tokens.store(0, Ordering::Release);
                }
            }
            Err(error) => {
                tracing::debug!(%error, route = %self.route, "lease refill failed");
                lease.failed.store(true, Ordering::Release);
            }
        }
        lease.refilling.store(false, Ordering::Release);
        lease.notify.notify_waiters();
    }

    /// The store admitted (a leased token was spent): with `on_store_error: local` the request
    /// is also taken from the process's own buckets, so that they count what this process
    /// admitted whoever decided. Their refusal, should a concurrent request have emptied them
    /// since the look at the start of `check`, stands (the spent token is lost: the strict
    /// side).
    fn take_own(&self, tenant: &str, plan: Option<&str>, local: &RateLimiter) -> Option<Decision> {
        if self.on_error != OnStoreError::Local {
            return None;
        }
        let own = local.check_plan(tenant, plan);
        (!own.is_admitted()).then_some(own)
    }

    fn admitted(&self, set: &Set, lease: &Lease, left: u64, now: u64) -> Decision {
        if !self.headers {
            return admitted_plain();
        }
        Decision {
            admitted: true,
            retry_nanos: 0,
            items: self.items(set, lease, left, now),
            spec: Some(set.spec.clone()),
            store_down: false,
        }
    }

    fn refused(&self, set: &Set, lease: &Lease, wait: u64, now: u64) -> Decision {
        Decision {
            admitted: false,
            retry_nanos: wait.max(1),
            items: self.items(set, lease, 0, now),
            spec: Some(set.spec.clone()),
            store_down: false,
        }
    }

    /// Header items from the store's last answer, aged to `now`, plus what is leased here.
    fn items(&self, set: &Set, lease: &Lease, left: u64, now: u64) -> Items {
        let seen = lease.seen.lock();
        let (store, at) = (&seen.0, seen.1);
        let elapsed = now.saturating_sub(at);
        let mut items = Items::default();
        let count = set.limits.len() + self.total.len();
        for i in 0..count {
            let (remaining, wait_us, _) = store.get(i).copied().unwrap_or_default();
            let remaining = remaining.saturating_add(left);
            let reset_nanos = if remaining > 0 {
                0
            } else {
                wait_us.saturating_mul(1000).saturating_sub(elapsed).max(1)
            };
            items.push(Item {
                remaining,
                reset_nanos,
            });
        }
        items
    }

    /// Leases a sweep evicted (`gone`, none in use): the live tokens of each go back to the
    /// store in a task, so that making room for other tenants costs their tenant nothing. Not
    /// while the store is down, nor past [`RETURNING_MIN`] (or an eighth of `max_tracked`)
    /// leases already on their way: those tokens are lost, as before.
    fn give_back(self: &Arc<Self>, gone: Vec<(Box<str>, Arc<Lease>)>) {
        let now = self.clock.now_nanos();
        let back: Vec<(Box<str>, Arc<Lease>, u64)> = gone
            .into_iter()
            .filter_map(|(tenant, lease)| {
                let tokens = lease.live(now);
                (tokens > 0).then_some((tenant, lease, tokens))
            })
            .collect();
        if back.is_empty() || !self.store.may_answer() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let n = back.len();
        let most = usize::try_from(self.tracked.max_tracked() / 8)
            .unwrap_or(usize::MAX)
            .max(RETURNING_MIN);
        if self.returning.fetch_add(n, Ordering::AcqRel) + n > most {
            self.returning.fetch_sub(n, Ordering::AcqRel);
            return;
        }
        let inner = self.clone();
        runtime.spawn(async move {
            inner.send_back(&back).await;
            inner.returning.fetch_sub(n, Ordering::AcqRel);
        });
    }

    /// Gives back `tokens` of each evicted lease, against the marks of the grant they came from.
    async fn send_back(&self, back: &[(Box<str>, Arc<Lease>, u64)]) {
        let keys: Vec<String> = back
            .iter()
            .map(|(tenant, _, _)| self.store.tenant_key(&self.route, tenant))
            .collect();
        let marks: Vec<Vec<u64>> = back
            .iter()
            .map(|(_, lease, _)| lease.seen.lock().0.iter().map(|i| i.2).collect())
            .collect();
        let returns: Vec<Return<'_>> = back
            .iter()
            .zip(&keys)
            .zip(&marks)
            .filter_map(|(((_, lease, tokens), key), marks)| {
                let set = self.set(lease.set.load(Ordering::Acquire));
                (marks.len() == set.limits.len() + self.total.len()).then_some(Return {
                    tenant_key: key,
                    total_key: self.total_key.as_deref(),
                    tenant: &set.limits,
                    total: &self.total,
                    marks,
                    tokens: *tokens,
                })
            })
            .collect();
        if let Err(error) = self.store.give_back(&returns).await {
            tracing::debug!(%error, route = %self.route, "giving back evicted leases failed");
        }
    }

    fn fallback(&self, tenant: &str, plan: Option<&str>, local: &RateLimiter) -> Decision {
        self.fallbacks.inc();
        match self.on_error {
            OnStoreError::Local => local.check_plan(tenant, plan),
            OnStoreError::Allow => admitted_plain(),
            OnStoreError::Deny => {
                // Nothing is known of the buckets, so no `ratelimit` item is claimed: the
                // refusal is the store's (`store_down`), not a limit's, and says so.
                let set = self.set(self.set_index(tenant, plan));
                Decision {
                    admitted: false,
                    retry_nanos: u64::try_from(DENY_RETRY.as_nanos()).unwrap_or(u64::MAX),
                    items: Items::default(),
                    spec: Some(set.spec.clone()),
                    store_down: true,
                }
            }
        }
    }
}

// === impl Lease ===

impl Lease {
    /// Takes one leased token for set `index` at `now`; the tokens left after it.
    fn take(&self, index: u32, now: u64) -> Option<u64> {
        let mut tokens = self.tokens.load(Ordering::Acquire);
        loop {
            if tokens == 0
                || now >= self.expires.load(Ordering::Acquire)
                || self.set.load(Ordering::Acquire) != index
            {
                return None;
            }
            match self.tokens.compare_exchange_weak(
                tokens,
                tokens - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(tokens - 1),
                Err(seen) => tokens = seen,
            }
        }
    }

    /// Live tokens held at `now`.
    fn live(&self, now: u64) -> u64 {
        if now < self.expires.load(Ordering::Acquire) {
            self.tokens.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Holds nothing worth keeping: no live tokens, no refusal in force, no refill running.
    fn is_idle(&self, now: u64) -> bool {
        self.live(now) == 0
            && now >= self.refused_until.load(Ordering::Acquire)
            && !self.refilling.load(Ordering::Acquire)
    }
}

impl TenantState for Lease {
    fn is_idle(&self, now_nanos: u64) -> bool {
        Lease::is_idle(self, now_nanos)
    }

    /// Evicting a lease that is not idle costs a store call (its live tokens go back, and a
    /// refusal in force is learnt again), and strands the tokens when they cannot go back:
    /// those with the fewest go first.
    fn keep_score(&self, now_nanos: u64) -> u64 {
        self.live(now_nanos)
    }
}

#[cfg(test)]
mod tests;
