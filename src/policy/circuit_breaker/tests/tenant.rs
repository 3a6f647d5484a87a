//! `scope: tenant`: isolation, the `max_tracked` bound, bounded labels and `/state`.

use super::*;

fn per_tenant(cfg: file::CircuitBreaker) -> file::CircuitBreaker {
    file::CircuitBreaker {
        scope: BreakerScope::Tenant,
        ..cfg
    }
}

#[test]
fn one_tenant_failing_never_opens_the_breaker_of_another() {
    let w = world(&per_tenant(consecutive(2)));
    assert!(w.call_as("noisy", FAIL, MS) && w.call_as("noisy", FAIL, MS));
    assert_eq!(w.cb.state("noisy"), Some(State::Open));
    assert!(w.admit("noisy").is_err(), "the failing tenant is refused");
    assert!(
        w.call_as("quiet", OK, MS),
        "another tenant still goes through"
    );
    assert_eq!(w.cb.state("quiet"), Some(State::Closed));
}

#[test]
fn tenant_breakers_obey_max_tracked_and_open_ones_are_kept() {
    let w = world_with(&per_tenant(consecutive(1)), 2, 10);
    assert!(w.call_as("bad", FAIL, MS), "trips bad's breaker");
    assert!(w.call_as("idle", OK, MS));
    assert_eq!(w.tracked.len(), 2);
    // The cap is reached: a newcomer evicts the idle closed breaker, never the open one.
    assert!(w.call_as("new", OK, MS));
    assert_eq!(w.tracked.len(), 2, "the cap must hold");
    assert_eq!(
        w.cb.state("bad"),
        Some(State::Open),
        "an open breaker is kept"
    );
    assert_eq!(w.cb.state("idle"), None, "the idle one made room");
}

#[test]
fn with_every_entry_in_use_a_newcomer_passes_through_unguarded() {
    let w = world_with(&per_tenant(consecutive(1)), 2, 10);
    let held: Vec<_> = ["a", "b"]
        .iter()
        .map(|t| w.admit(t).expect("room for two"))
        .collect();
    let p = w
        .admit("c")
        .expect("no room: a pass-through permit, not a refusal");
    p.record(FAIL, MS);
    assert_eq!(w.cb.state("c"), None, "nothing was tracked for c");
    assert!(w.tracked.len() <= 2);
    drop(held);
}

#[test]
fn tenant_series_are_bounded_and_other_reads_1_for_each_state_a_folded_breaker_is_in() {
    // One own label: "a"; every later tenant folds into `_other`.
    let w = world_with(&per_tenant(consecutive(1)), 100, 1);
    assert!(w.call_as("a", OK, MS));
    assert_eq!((w.gauge("a", "closed"), w.gauge("a", "open")), (1, 0));
    for t in ["b", "c", "d"] {
        assert!(w.call_as(t, OK, MS));
    }
    assert_eq!(
        w.gauge("_other", "closed"),
        1,
        "three folded breakers are closed: 1, not a count"
    );
    assert!(w.call_as("b", FAIL, MS) && w.call_as("c", FAIL, MS));
    assert_eq!(
        (w.gauge("_other", "closed"), w.gauge("_other", "open")),
        (1, 1),
        "two of them opened, d is still closed"
    );
    assert_eq!(w.transitions("closed", "open"), 2);
    assert_eq!(
        w.gauge("", "closed"),
        0,
        "no upstream-scope series for scope tenant"
    );
}

/// `_other` drops a state to 0 only when the last folded breaker leaves it: b and c open,
/// b closes (c still open), then c closes.
#[test]
fn other_leaves_a_state_when_its_last_folded_breaker_does() {
    let w = world_with(&per_tenant(consecutive(1)), 100, 1);
    let other = || {
        (
            w.gauge("_other", "closed"),
            w.gauge("_other", "open"),
            w.gauge("_other", "half_open"),
        )
    };
    assert!(w.call_as("a", OK, MS), "a takes the only own label");
    assert!(w.call_as("b", FAIL, MS) && w.call_as("c", FAIL, MS));
    assert_eq!(other(), (0, 1, 0), "both folded breakers are open");
    w.clock.advance(10 * SEC);
    let probe = w.admit("b").expect("b half-opens");
    assert_eq!(other(), (0, 1, 1), "b half-open, c still open");
    probe.record(OK, MS);
    assert_eq!(other(), (1, 1, 0), "b closed, c still open");
    let probe = w.admit("c").expect("c half-opens");
    assert_eq!(other(), (1, 0, 1), "no folded breaker is open now");
    probe.record(OK, MS);
    assert_eq!(other(), (1, 0, 0), "both closed");
    assert_eq!(w.transitions("half_open", "closed"), 2);
}

#[test]
fn an_evicted_tenant_breaker_leaves_its_own_series_at_closed() {
    // Room for one tenant breaker; "a" and "b" have their own labels, "c" is folded.
    let w = world_with(&per_tenant(consecutive(1)), 1, 2);
    let own = |t: &str| {
        (
            w.gauge(t, "closed"),
            w.gauge(t, "open"),
            w.gauge(t, "half_open"),
        )
    };
    assert!(w.call_as("a", OK, MS));
    assert_eq!(own("a"), (1, 0, 0));
    // "b" evicts "a" (closed, idle): a comes back with a fresh closed breaker, so closed is
    // the state in force for it, not nothing.
    assert!(w.call_as("b", FAIL, MS), "trips b");
    assert_eq!(w.cb.state("a"), None, "a was evicted");
    assert_eq!(own("a"), (1, 0, 0), "an evicted tenant reads closed");
    assert_eq!(own("b"), (0, 1, 0));
    // Every entry open: the sweep takes b anyway; its series reads closed, as b's next
    // breaker will be.
    assert!(w.call_as("a", OK, MS));
    assert_eq!(w.cb.state("b"), None, "b was evicted");
    assert_eq!(own("b"), (1, 0, 0), "an evicted open breaker reads closed");
    assert_eq!(own("a"), (1, 0, 0), "a's new breaker is one closed breaker");
    // `_other` still counts breakers: one folded breaker, then none once it is evicted.
    assert!(w.call_as("c", OK, MS));
    assert_eq!(w.gauge("_other", "closed"), 1);
    assert!(w.call_as("a", OK, MS));
    assert_eq!(w.gauge("_other", "closed"), 0, "no folded breaker is left");
    assert_eq!(own("a"), (1, 0, 0));
}

#[test]
fn the_snapshot_lists_open_tenants_first_and_stays_bounded() {
    let w = world_with(&per_tenant(consecutive(1)), 1000, 10);
    for i in 0..150 {
        assert!(w.call_as(&format!("t{i:03}"), OK, MS));
    }
    assert!(w.call_as("t149", FAIL, MS));
    let snap = w.cb.snapshot();
    assert_eq!(snap["scope"], "tenant");
    assert_eq!(snap["tenants_tracked"], 150);
    assert_eq!(snap["tenants_shown"], 100);
    assert_eq!(snap["states"]["open"], 1);
    assert_eq!(
        snap["tenants"]["t149"]["state"], "open",
        "open tenants are always shown"
    );
    assert_eq!(snap["tenants"]["t149"]["half_open_in_seconds"], 10.0);
}

#[test]
fn the_upstream_snapshot_shows_state_counters_and_time_to_half_open() {
    let w = world(&consecutive(2));
    assert!(w.call(OK) && w.call(FAIL) && w.call(FAIL));
    w.clock.advance(3 * SEC);
    assert!(w.admit("t").is_err());
    let snap = w.cb.snapshot();
    assert_eq!(snap["upstream"], "app");
    assert_eq!(snap["state"], "open");
    assert_eq!(snap["successes"], 1);
    assert_eq!(snap["failures"], 2);
    assert_eq!(snap["rejected"], 1);
    assert_eq!(snap["half_open_in_seconds"], 7.0);
}
