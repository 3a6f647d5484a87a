//! The breaker told as stories on a manual clock: nothing sleeps, every count is exact.

use std::sync::Arc;
use std::time::Duration;

use super::{BreakerPermit, CircuitBreaker, CircuitOpen, State};
use crate::clock::{ManualClock, SharedClock};
use crate::config::file::{self, BreakerScope, FailureRate, SlowCall};
use crate::config::units::{Dur, Ratio};
use crate::metrics::Metrics;
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::TrackedTenants;
use crate::tenant::Labels;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const OK: Outcome = Outcome::Status(200);
const FAIL: Outcome = Outcome::Status(503);

/// A config with every rule off, 10s open, one probe.
fn base() -> file::CircuitBreaker {
    file::CircuitBreaker {
        scope: BreakerScope::Upstream,
        consecutive_failures: None,
        failure_rate: None,
        slow_call: None,
        open_for: Dur::from_secs(10),
        open_for_max: None,
        half_open_probes: 1,
    }
}

fn consecutive(n: u32) -> file::CircuitBreaker {
    file::CircuitBreaker {
        consecutive_failures: Some(n),
        ..base()
    }
}

struct World {
    cb: Arc<CircuitBreaker>,
    clock: ManualClock,
    metrics: Metrics,
    labels: Labels,
    tracked: Arc<TrackedTenants>,
}

fn world_with(cfg: &file::CircuitBreaker, max_tracked: u64, label_cap: usize) -> World {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let metrics = Metrics::register();
    let tracked = TrackedTenants::new(max_tracked);
    let cb = CircuitBreaker::new("app", cfg, &tracked, shared, &metrics);
    World {
        cb,
        clock,
        metrics,
        labels: Labels::new(label_cap),
        tracked,
    }
}

fn world(cfg: &file::CircuitBreaker) -> World {
    world_with(cfg, 1000, 10)
}

impl World {
    fn admit(&self, tenant: &str) -> Result<BreakerPermit, CircuitOpen> {
        self.cb.admit(tenant, &self.labels)
    }

    /// One try of `tenant` that ends in `outcome` after `elapsed`; false if refused.
    fn call_as(&self, tenant: &str, outcome: Outcome, elapsed: Duration) -> bool {
        match self.admit(tenant) {
            Ok(p) => {
                p.record(outcome, elapsed);
                true
            }
            Err(_) => false,
        }
    }

    fn call(&self, outcome: Outcome) -> bool {
        self.call_as("t", outcome, MS)
    }

    fn state(&self) -> State {
        self.cb
            .state("t")
            .expect("scope upstream always has a state")
    }

    fn refused_for(&self) -> Duration {
        self.admit("t")
            .expect_err("the breaker must refuse while open")
            .retry_after
    }

    fn gauge(&self, tenant: &str, state: &str) -> i64 {
        self.metrics
            .breaker_state
            .with_label_values(&["app", tenant, state])
            .get()
    }

    fn transitions(&self, from: &str, to: &str) -> u64 {
        self.metrics
            .breaker_transitions
            .with_label_values(&["app", from, to])
            .get()
    }

    /// Trips a `consecutive(1)` breaker, waits out `open_for`, and holds the probes.
    fn half_open(&self, open_for: Duration) -> Vec<BreakerPermit> {
        assert!(self.call(FAIL));
        self.clock.advance(open_for);
        let mut probes = Vec::new();
        while let Ok(p) = self.admit("t") {
            probes.push(p);
        }
        probes
    }
}

#[test]
fn consecutive_failures_open_and_a_success_in_between_resets_the_count() {
    let w = world(&consecutive(3));
    // Two failures, then a success: the streak is broken.
    assert!(w.call(FAIL) && w.call(FAIL) && w.call(OK));
    assert!(w.call(FAIL) && w.call(FAIL));
    assert_eq!(
        w.state(),
        State::Closed,
        "two in a row must not trip a rule of 3"
    );
    // The third in a row trips it.
    assert!(w.call(FAIL));
    assert_eq!(w.state(), State::Open);
    assert_eq!(
        w.refused_for(),
        10 * SEC,
        "retry-after is the whole open_for"
    );
    w.clock.advance(4 * SEC);
    assert_eq!(w.refused_for(), 6 * SEC, "and counts down on the clock");
}

#[test]
fn four_xx_answers_are_successes() {
    let w = world(&consecutive(1));
    for code in [400, 404, 408, 429, 499] {
        assert!(w.call(Outcome::Status(code)));
    }
    assert_eq!(w.state(), State::Closed, "4xx must never trip a breaker");
    for failure in [Outcome::ConnectError, Outcome::Reset, Outcome::Timeout] {
        let w = world(&consecutive(1));
        assert!(w.call(failure));
        assert_eq!(w.state(), State::Open, "{failure:?} is a failure");
    }
}

#[test]
fn cancelled_client_faults_and_unsent_count_for_nothing_while_closed() {
    let w = world(&file::CircuitBreaker {
        failure_rate: Some(FailureRate {
            threshold: Ratio(0.5),
            window: 4,
            min_calls: 1,
        }),
        ..consecutive(1)
    });
    assert!(w.call(Outcome::Cancelled) && w.call(Outcome::ClientFault));
    assert!(w.call(Outcome::Unsent));
    drop(w.admit("t").expect("closed admits"));
    assert_eq!(w.state(), State::Closed);
    let snap = w.cb.snapshot();
    assert_eq!(
        snap["window"]["calls"], 0,
        "no verdict may enter the window"
    );
}

#[test]
fn the_failure_rate_waits_for_min_calls_then_judges_a_sliding_window() {
    let w = world(&file::CircuitBreaker {
        failure_rate: Some(FailureRate {
            threshold: Ratio(0.5),
            window: 10,
            min_calls: 6,
        }),
        ..base()
    });
    // 5 failures out of 5: 100%, but fewer than min_calls calls.
    for _ in 0..5 {
        assert!(w.call(FAIL));
    }
    assert_eq!(
        w.state(),
        State::Closed,
        "the rate is not judged below min_calls"
    );
    // The 6th call, a success, brings the window to min_calls: 5 of 6 failed.
    assert!(w.call(OK));
    assert_eq!(w.state(), State::Open, "judged at min_calls: 83% ≥ 50%");
    // Probe back to closed: the window starts empty.
    w.clock.advance(10 * SEC);
    assert!(w.call(OK));
    assert_eq!(w.state(), State::Closed);
    // 6 successes then 4 failures: 40%, closed.
    for outcome in [OK; 6].into_iter().chain([FAIL; 4]) {
        assert!(w.call(outcome));
    }
    assert_eq!(w.state(), State::Closed, "4 of 10 is under 50%");
    // 10 more successes push those failures out of the 10-call window.
    for _ in 0..10 {
        assert!(w.call(OK));
    }
    assert_eq!(
        w.cb.snapshot()["window"]["failures"],
        0,
        "old failures slid out"
    );
    // 5 new failures in the last 10 calls: exactly 50% trips, not before.
    for i in 0..5 {
        assert_eq!(w.state(), State::Closed, "only {i} failures in the window");
        assert!(w.call(FAIL));
    }
    assert_eq!(w.state(), State::Open, "5 of the last 10 is 50%");
}

#[test]
fn slow_calls_trip_over_the_default_window() {
    let w = world(&file::CircuitBreaker {
        slow_call: Some(SlowCall {
            duration: Dur::from_millis(100),
            threshold: Ratio(0.5),
        }),
        ..base()
    });
    // Default window 20, min_calls 10: 5 slow successes and 4 fast ones are 9 calls.
    for _ in 0..5 {
        assert!(w.call_as("t", OK, 150 * MS));
    }
    for _ in 0..4 {
        assert!(
            w.call_as("t", OK, 100 * MS),
            "exactly the duration is not slow"
        );
    }
    assert_eq!(w.state(), State::Closed, "9 calls are below min_calls");
    assert!(w.call_as("t", OK, 10 * MS));
    assert_eq!(w.state(), State::Open, "5 slow of 10 reaches 50%");
}

#[test]
fn metrics_exist_at_build_and_follow_every_transition() {
    let w = world(&consecutive(1));
    // Before any traffic: closed=1, and the transition counters at 0.
    assert_eq!(
        (
            w.gauge("", "closed"),
            w.gauge("", "open"),
            w.gauge("", "half_open")
        ),
        (1, 0, 0)
    );
    let text = w.metrics.render();
    assert!(text
        .contains(r#"rampart_circuit_breaker_state{state="closed",tenant="",upstream="app"} 1"#));
    assert!(text.contains("rampart_circuit_breaker_transitions_total"));
    let mut probes = w.half_open(10 * SEC);
    assert_eq!((w.gauge("", "closed"), w.gauge("", "half_open")), (0, 1));
    probes.pop().expect("probe").record(FAIL, MS);
    assert_eq!((w.gauge("", "open"), w.gauge("", "half_open")), (1, 0));
    w.clock.advance(10 * SEC);
    assert!(w.call(OK));
    assert_eq!(
        (
            w.gauge("", "closed"),
            w.gauge("", "open"),
            w.gauge("", "half_open")
        ),
        (1, 0, 0)
    );
    assert_eq!(w.transitions("closed", "open"), 1);
    assert_eq!(w.transitions("open", "half_open"), 2);
    assert_eq!(w.transitions("half_open", "open"), 1);
    assert_eq!(w.transitions("half_open", "closed"), 1);
}

#[test]
fn a_reload_reset_is_counted_and_the_retired_breaker_reports_nothing_after() {
    let w = world(&consecutive(1));
    assert!(w.call(FAIL));
    assert_eq!(w.state(), State::Open);
    w.cb.retire();
    assert_eq!(w.state(), State::Closed, "reset by the reload");
    assert_eq!(w.transitions("open", "closed"), 1, "the reset is counted");
    assert_eq!((w.gauge("", "closed"), w.gauge("", "open")), (1, 0));
    w.cb.retire();
    assert_eq!(w.transitions("open", "closed"), 1, "once");
    // Requests of the old generation still in flight may trip it again: the series belong to
    // the breaker that replaced it now.
    assert!(w.call(FAIL));
    assert_eq!(w.state(), State::Open);
    assert_eq!(w.transitions("closed", "open"), 1, "only the first trip");
    assert_eq!((w.gauge("", "closed"), w.gauge("", "open")), (1, 0));
}

#[test]
fn a_reload_reset_of_tenant_breakers_moves_their_series_and_leaves_them_to_the_successor() {
    let w = world_with(
        &file::CircuitBreaker {
            scope: BreakerScope::Tenant,
            ..consecutive(1)
        },
        100,
        1,
    );
    // "a" has its own label and is half-open; "b" and "c" fold into `_other`, b open.
    assert!(w.call_as("a", FAIL, MS));
    w.clock.advance(10 * SEC);
    let probe = w.admit("a").expect("a half-opens");
    assert!(w.call_as("b", FAIL, MS) && w.call_as("c", OK, MS));
    assert_eq!(
        (w.gauge("_other", "closed"), w.gauge("_other", "open")),
        (1, 1)
    );
    w.cb.retire();
    assert_eq!(w.transitions("half_open", "closed"), 1);
    assert_eq!(w.transitions("open", "closed"), 1);
    let a = (w.gauge("a", "closed"), w.gauge("a", "half_open"));
    assert_eq!(a, (1, 0), "a's next breaker is a fresh closed one");
    let other = (w.gauge("_other", "closed"), w.gauge("_other", "open"));
    assert_eq!(other, (0, 0), "the retired breakers are no longer counted");
    // The probe's verdict and a breaker made by a late request reach no series.
    probe.record(FAIL, MS);
    assert!(w.call_as("d", FAIL, MS));
    assert_eq!(w.gauge("a", "open"), 0);
    assert_eq!(
        (w.gauge("_other", "closed"), w.gauge("_other", "open")),
        (0, 0)
    );
    assert_eq!(
        w.transitions("closed", "open"),
        2,
        "a and b, before the reload"
    );
    // Dropped with the old generation, the retired breakers give back nothing they no longer
    // hold.
    let World { cb, metrics, .. } = w;
    drop(cb);
    let other = |s: &str| {
        metrics
            .breaker_state
            .with_label_values(&["app", "_other", s])
            .get()
    };
    assert_eq!((other("closed"), other("open")), (0, 0));
}

#[test]
fn circuit_open_says_when_it_half_opens() {
    let e = CircuitOpen {
        retry_after: Duration::from_millis(2500),
    };
    assert_eq!(e.to_string(), "circuit open: half-open in 2.500s");
}

#[test]
fn a_half_open_refusal_says_the_probes_are_out() {
    let e = CircuitOpen {
        retry_after: Duration::ZERO,
    };
    assert_eq!(
        e.to_string(),
        "circuit half-open: every probe is out, waiting for their outcome"
    );
}

mod half_open;
mod tenant;
