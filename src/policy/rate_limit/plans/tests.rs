//! Plans on a manual clock: precedence, moving between plans, and reloads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::super::{RateLimiter, TrackedTenants};
use crate::clock::{ManualClock, SharedClock};
use crate::config::file::{Limit, Limits, RateLimit};
use crate::config::units::Rate;

fn per_sec(count: u64) -> Limits {
    Limits(vec![Limit {
        rate: Rate {
            count,
            per: Duration::from_secs(1),
        },
        burst: None,
        name: None,
        window: Default::default(),
    }])
}

fn cfg(pro: u64) -> RateLimit {
    RateLimit {
        per_tenant: Some(per_sec(2)),
        plans: BTreeMap::from([("pro".to_owned(), per_sec(pro))]),
        overrides: BTreeMap::from([("acme".to_owned(), per_sec(7))]),
        ..RateLimit::default()
    }
}

fn limiter(c: &RateLimit) -> (RateLimiter, ManualClock) {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    (
        RateLimiter::new(c, TrackedTenants::new(1000), shared),
        clock,
    )
}

fn admitted(l: &RateLimiter, tenant: &str, plan: Option<&str>, n: usize) -> usize {
    (0..n)
        .filter(|_| l.check_plan(tenant, plan).is_admitted())
        .count()
}

#[test]
fn override_then_plan_then_per_tenant() {
    let (l, _) = limiter(&cfg(5));
    assert_eq!(
        admitted(&l, "acme", Some("pro"), 20),
        7,
        "override beats plan"
    );
    assert_eq!(admitted(&l, "globex", Some("pro"), 20), 5, "plan");
    assert_eq!(admitted(&l, "initech", None, 20), 2, "per_tenant");
    assert_eq!(admitted(&l, "hooli", Some("gold"), 20), 2, "unknown plan");
}

#[test]
fn moving_plan_keeps_the_share_used() {
    let (l, clock) = limiter(&cfg(10));
    // Half of per_tenant's 2 used, then the tenant shows up on pro (10): half of it is left.
    assert_eq!(admitted(&l, "globex", None, 1), 1);
    assert_eq!(admitted(&l, "globex", Some("pro"), 20), 5);
    assert_eq!(l.tracked(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&l, "globex", Some("pro"), 20), 10);
}

#[test]
fn reload_keeps_unchanged_plans_and_rescales_moved_ones() {
    let (l, _) = limiter(&cfg(4));
    assert_eq!(admitted(&l, "globex", Some("pro"), 4), 4);
    assert_eq!(admitted(&l, "initech", None, 1), 1);
    // Same plan limits: the spent bucket stays spent.
    let same = l.reconfigure(&cfg(4));
    assert_eq!(admitted(&same, "globex", Some("pro"), 4), 0);
    // Pro doubled: still fully used, so nothing fresh either.
    let doubled = same.reconfigure(&cfg(8));
    assert_eq!(admitted(&doubled, "globex", Some("pro"), 8), 0);
    assert_eq!(admitted(&doubled, "initech", None, 4), 1, "per_tenant kept");
}

#[test]
fn a_plan_name_the_policy_does_not_know_gets_per_tenant_and_hopping_gains_nothing() {
    let (l, _clock) = limiter(&cfg(50));
    // A trusted plan header still carries whatever the client wrote: unknown, huge, odd.
    let huge = "p".repeat(8 * 1024);
    assert_eq!(
        admitted(&l, "t1", Some(&huge), 10),
        2,
        "unknown plan: per_tenant"
    );
    assert_eq!(admitted(&l, "t2", Some("pro\u{0}x"), 10), 2);
    // Hopping between plans every request never refills: the share used moves with it.
    let (l, _clock) = limiter(&cfg(4));
    let mut got = 0;
    for i in 0..40 {
        let plan = if i % 2 == 0 { Some("pro") } else { None };
        got += usize::from(l.check_plan("hopper", plan).is_admitted());
    }
    assert!(got <= 4, "hopping plans must not add up bursts: {got}");
}
