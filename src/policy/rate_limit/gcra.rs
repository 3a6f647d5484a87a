//! The maths of one limit: GCRA (generic cell rate algorithm) on a single `AtomicU64`.
//!
//! A token bucket needs two numbers (tokens, last refill). GCRA needs one: the *theoretical
//! arrival time* (TAT), the instant at which the bucket would be full again. "Debt" is
//! `TAT - now`; a request is admitted while its debt after admission stays within the burst
//! tolerance `tau = T × capacity`, where `T` is the time one token takes to refill. One number
//! means one compare-and-swap per decision, no lock, and 8 bytes of state per (tenant, limit).
//!
//! Everything here is a pure function of `(tat, now)` except the two methods that CAS a cell,
//! so the arithmetic is tested without threads or clocks.

use std::sync::atomic::{AtomicU64, Ordering};

use super::calendar::Calendar;
use crate::clock::Clock;
use crate::config::file::{Limit, LimitWindow};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One limit's constants, derived once from the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds one token takes to refill.
    t: u64,
    /// Capacity in tokens (the burst, else the rate's count; at least 1).
    cap: u64,
    /// Burst tolerance `t × cap`: the largest debt an admission may leave.
    tau: u64,
    /// Whole seconds for an empty bucket to refill (`w` of `ratelimit-policy`), at least 1.
    window_secs: u64,
    /// `window: calendar`: counted per UTC window instead (`calendar.rs`).
    cal: Option<Calendar>,
}

/// How a limit of a new configuration takes its state from the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Same rate and capacity: the TAT is kept exactly.
    Keep(usize),
    /// Changed limit in the same slot: the fraction of capacity used is carried over.
    Rescale(usize),
    /// A new limit: starts full.
    Fresh,
}

// === impl Gcra ===

impl Gcra {
    /// The constants of `limit` for header texts (a calendar window at Unix offset 0).
    pub(crate) fn new(limit: &Limit) -> Self {
        Self::new_at(limit, 0)
    }

    /// The constants of `limit`; `offset` is the Unix time (ns) of the monotonic clock's
    /// origin, for calendar windows. A zero count or burst is treated as 1 (validation refuses
    /// both).
    pub(crate) fn new_at(limit: &Limit, offset: u64) -> Self {
        let count = u128::from(limit.rate.count.max(1));
        let cap = limit.burst.unwrap_or(limit.rate.count).max(1);
        let per = limit.rate.per.as_nanos().max(1);
        // Rounded to the nearest nanosecond, so that `3/s` refills 3 tokens in exactly one
        // second; the refill is off by less than 0.5 ns per token (1e-9 at 1/s).
        let t = clamp((per + count / 2) / count).max(1);
        let window = (u128::from(cap) * per).div_ceil(count * NANOS_PER_SEC);
        let cal = (limit.window == LimitWindow::Calendar).then(|| Calendar {
            window: clamp(per),
            count: limit.rate.count.max(1),
            offset,
        });
        Gcra {
            t,
            cap: cal.map_or(cap, |c| c.count),
            tau: t.saturating_mul(cap),
            window_secs: cal.map_or(clamp(window).max(1), |c| c.window / 1_000_000_000),
            cal,
        }
    }

    /// Capacity in tokens (`q` of `ratelimit-policy`).
    pub(crate) fn capacity(&self) -> u64 {
        self.cap
    }

    /// Whole seconds to refill the full capacity (`w` of `ratelimit-policy`).
    pub(crate) fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// The TAT after admitting one request at `now`, or the nanoseconds to wait if refused.
    pub(crate) fn decide(&self, tat: u64, now: u64) -> Result<u64, u64> {
        if let Some(c) = &self.cal {
            return c.decide(tat, now);
        }
        let new_tat = tat.max(now).saturating_add(self.t);
        let debt = new_tat - now;
        if debt <= self.tau {
            Ok(new_tat)
        } else {
            Err(debt - self.tau)
        }
    }

    /// Whole tokens left in a bucket whose TAT is `tat`.
    pub(crate) fn remaining(&self, tat: u64, now: u64) -> u64 {
        if let Some(c) = &self.cal {
            return c.remaining(tat, now);
        }
        (self.tau.saturating_sub(tat.saturating_sub(now))) / self.t
    }

    /// Nanoseconds until the bucket holds at least one token; 0 if it holds one now.
    pub(crate) fn until_next(&self, tat: u64, now: u64) -> u64 {
        if let Some(c) = &self.cal {
            return c.until_next(tat, now);
        }
        tat.saturating_sub(now)
            .saturating_add(self.t)
            .saturating_sub(self.tau)
    }

    /// Whether the bucket is full (its state carries no information).
    pub(crate) fn is_full(&self, tat: u64, now: u64) -> bool {
        match &self.cal {
            Some(c) => c.remaining(tat, now) == c.count,
            None => tat <= now,
        }
    }

    /// Used fraction of the capacity, scaled to `u32::MAX`; 0 for a full (idle) bucket.
    pub(crate) fn used(&self, tat: u64, now: u64) -> u64 {
        if let Some(c) = &self.cal {
            return c.used(tat, now);
        }
        let debt = u128::from(tat.saturating_sub(now).min(self.tau));
        clamp(debt * u128::from(u32::MAX) / u128::from(self.tau))
    }

    /// The TAT in this bucket that uses the same fraction of capacity as `tat` did in `old`,
    /// rounded up (the strict side). A full bucket stays full.
    pub(crate) fn rescale_from(&self, old: &Gcra, tat: u64, now: u64) -> u64 {
        if old == self {
            return tat;
        }
        if self.cal.is_some() || old.cal.is_some() {
            return self.state_using(old.used(tat, now), now);
        }
        let debt = u128::from(tat.saturating_sub(now).min(old.tau));
        if debt == 0 {
            return 0;
        }
        let scaled = (debt * u128::from(self.tau)).div_ceil(u128::from(old.tau));
        now.saturating_add(clamp(scaled))
    }

    /// The state that uses `fraction` (of `u32::MAX`) of the capacity at `now`, rounded up.
    fn state_using(&self, fraction: u64, now: u64) -> u64 {
        if let Some(c) = &self.cal {
            return c.state_using(fraction, now);
        }
        let debt = (u128::from(fraction) * u128::from(self.tau)).div_ceil(u128::from(u32::MAX));
        if debt == 0 {
            0
        } else {
            now.saturating_add(clamp(debt))
        }
    }

    /// Takes one token from `cell` with a CAS loop; the new TAT, or the wait if refused.
    pub(crate) fn acquire(&self, cell: &AtomicU64, now: u64) -> Result<u64, u64> {
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let new_tat = self.decide(tat, now)?;
            match cell.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(new_tat),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back the token an `acquire` at `admitted_at` took, when a later limit refused.
    ///
    /// Subtracting `t` is exact as long as the bucket has not been clamped (found full and
    /// restarted from "now") since the admission; other admissions stacked on top stay intact.
    /// Our admission left the TAT at `admitted_at + t` or later, so a clamp needs a clock reading
    /// past that point. The clock is read after the TAT, so if it is not past that point no
    /// clamp can have happened. Otherwise the token is kept: a refusal may then cost one token
    /// (strict side), but a give-back can never grant more than the limit.
    pub(crate) fn release(&self, cell: &AtomicU64, admitted_at: u64, clock: &dyn Clock) {
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let back = match &self.cal {
                Some(c) => match c.give_back(tat, admitted_at) {
                    Some(v) => v,
                    None => return,
                },
                None if clock.now_nanos() > admitted_at.saturating_add(self.t) => return,
                None => tat.saturating_sub(self.t),
            };
            match cell.compare_exchange_weak(tat, back, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Plans how each limit of `new` takes its state from `old`: an identical limit anywhere keeps
/// its TAT; otherwise the limit in the same position, if no identical limit claimed it, is
/// rescaled; otherwise the new limit starts full.
pub(crate) fn plan(old: &[Gcra], new: &[Gcra]) -> Vec<Carry> {
    let mut taken = vec![false; old.len()];
    let mut carry: Vec<Carry> = new
        .iter()
        .map(|g| {
            match old
                .iter()
                .enumerate()
                .position(|(i, o)| o == g && !taken[i])
            {
                Some(i) => {
                    taken[i] = true;
                    Carry::Keep(i)
                }
                None => Carry::Fresh,
            }
        })
        .collect();
    for (i, c) in carry.iter_mut().enumerate() {
        if *c == Carry::Fresh && i < old.len() && !taken[i] {
            taken[i] = true;
            *c = Carry::Rescale(i);
        }
    }
    carry
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}
