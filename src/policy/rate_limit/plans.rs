//! Plans (SPEC §13): named limit sets between a tenant's own override and `per_tenant`.
//!
//! A plan's limits are one more [`Set`] after the overrides', so a tenant's entry says which
//! set it is counted in. The plan comes with each request (from a token, a trusted header or
//! `tenants.plans.assign`), so it can change between two requests of the same tenant: the
//! entry then moves to the new set with its state rescaled (the share of capacity used is
//! kept), exactly as a reload moves it, so changing plan neither resets a bucket nor grants a
//! fresh burst. An override always wins: a tenant with one never moves.

#[cfg(test)]
mod tests;

use super::decision::Decision;
use super::table::Entry;
use super::{carried_tats, Inner, RateLimiter, Set};

// === impl RateLimiter ===

impl RateLimiter {
    /// Decides for one request of `tenant` on `plan` (`None`, or a plan this policy does not
    /// list: `per_tenant`). A refused request consumes from no limit.
    pub fn check_plan(&self, tenant: &str, plan: Option<&str>) -> Decision {
        if self.inner.plans.is_empty() {
            return self.check(tenant);
        }
        self.with_buckets(tenant, plan, Inner::decide)
    }

    /// The refusal [`Self::check_plan`] would give `tenant` on `plan` now, without taking
    /// anything; `None` if it would admit. The same lookup as a check: no allocation for a
    /// tenant already tracked.
    pub fn refusal(&self, tenant: &str, plan: Option<&str>) -> Option<Decision> {
        self.with_buckets(tenant, plan, Inner::refusal)
    }

    /// Runs `act` on the buckets of `tenant` in the set of `plan` (tracking the tenant if it
    /// is new, moving it if its plan changed).
    fn with_buckets<R>(&self, tenant: &str, plan: Option<&str>, act: super::Act<R>) -> R {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let want = match inner.overrides.get(tenant) {
            Some(&o) => o,
            None => plan.and_then(|p| inner.plans.get(p).copied()).unwrap_or(0),
        };
        if let Some(entry) = inner.table.get(tenant) {
            if entry.set() == want as usize {
                return act(inner, inner.set(entry.set()), entry.cells(), now);
            }
            drop(entry);
            inner.move_to(tenant, want, now);
            if let Some(entry) = inner.table.get(tenant) {
                return act(inner, inner.set(entry.set()), entry.cells(), now);
            }
        }
        inner.new_entry_in(tenant, want, now, act)
    }
}

// === impl Inner ===

impl Inner {
    /// The plan whose set is `index`, if it is a plan's.
    pub(super) fn plan_of(&self, index: usize) -> Option<&str> {
        let index = u32::try_from(index).ok()?;
        self.plans
            .iter()
            .find_map(|(name, &i)| (i == index).then_some(&**name))
    }

    /// The set of `tenant` in this (new) limiter when it was on `plan` in the old one.
    pub(super) fn index_after_reload(&self, tenant: &str, plan: Option<&str>) -> u32 {
        match self.overrides.get(tenant) {
            Some(&o) => o,
            None => plan.and_then(|p| self.plans.get(p).copied()).unwrap_or(0),
        }
    }

    /// A plan kept across a reload keeps what its sketches remember.
    pub(super) fn carry_plan_sketches(&self, new: &Inner, now: u64) {
        for (plan, &index) in &new.plans {
            if let Some(&old) = self.plans.get(plan) {
                let old_set: &Set = self.set(old as usize);
                new.set(index as usize).carry_sketches(old_set, None, now);
            }
        }
    }

    /// Moves `tenant`'s entry to set `index`, rescaling each bucket that changed.
    fn move_to(&self, tenant: &str, index: u32, now: u64) {
        let Some(entry) = self.table.remove(tenant) else {
            return;
        };
        let old_set = self.set(entry.set());
        let new_set = self.set(index as usize);
        let tats = carried_tats(&entry, old_set, new_set, now);
        let moved = Entry::new(index, tats.len(), |i| tats.get(i).copied().unwrap_or(0));
        if !self.table.put(Box::from(tenant), moved) {
            // Another request re-created it meanwhile: one entry, counted once.
            self.tracked.release(1);
        }
    }
}
