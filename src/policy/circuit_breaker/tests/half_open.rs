//! Open and half-open: open_for and its growth, exact probe counts, abandoned and stale tries.

use std::sync::Barrier;

use super::*;

#[test]
fn half_open_admits_probes_after_open_for_and_all_successes_close() {
    let w = world(&file::CircuitBreaker {
        half_open_probes: 2,
        ..consecutive(1)
    });
    assert!(w.call(FAIL));
    w.clock.advance(10 * SEC - MS);
    assert_eq!(w.refused_for(), MS, "not yet");
    w.clock.advance(MS);
    let p1 = w.admit("t").expect("open_for passed: the first probe");
    assert_eq!(w.state(), State::HalfOpen);
    let p2 = w.admit("t").expect("the second probe");
    let refused = w
        .admit("t")
        .expect_err("a third would exceed half_open_probes");
    assert_eq!(
        refused.retry_after,
        Duration::ZERO,
        "waiting on probes, not the clock"
    );
    p1.record(OK, MS);
    assert_eq!(
        w.state(),
        State::HalfOpen,
        "one success of two does not close"
    );
    p2.record(Outcome::Status(404), MS);
    assert_eq!(w.state(), State::Closed, "every probe succeeded");
    assert!(w.call(OK), "closed admits again");
}

#[test]
fn open_for_doubles_on_each_failed_round_up_to_the_cap_and_resets_after_a_close() {
    let w = world(&file::CircuitBreaker {
        open_for: Dur::from_secs(1),
        open_for_max: Some(Dur::from_secs(5)),
        ..consecutive(1)
    });
    assert!(w.call(FAIL));
    let mut open_for = SEC;
    for expected in [2, 4, 5, 5] {
        assert_eq!(w.refused_for(), open_for);
        w.clock.advance(open_for);
        assert!(w.call(FAIL), "the probe goes through, and fails");
        open_for = expected * SEC;
        assert_eq!(
            w.refused_for(),
            open_for,
            "the next open_for is {expected}s"
        );
    }
    // A successful probe closes; the next trip starts from the base again.
    w.clock.advance(open_for);
    assert!(w.call(OK));
    assert_eq!(w.state(), State::Closed);
    assert!(w.call(FAIL));
    assert_eq!(w.refused_for(), SEC, "a close resets open_for");
}

#[test]
fn without_open_for_max_open_for_never_grows() {
    let w = world(&consecutive(1));
    assert!(w.call(FAIL));
    for _ in 0..3 {
        w.clock.advance(10 * SEC);
        assert!(w.call(FAIL));
        assert_eq!(w.refused_for(), 10 * SEC);
    }
}

#[test]
fn exactly_n_probes_are_granted_under_concurrent_admits() {
    let w = world(&file::CircuitBreaker {
        half_open_probes: 3,
        ..consecutive(1)
    });
    assert!(w.call(FAIL));
    w.clock.advance(10 * SEC);
    // 8 threads × 8 admits race for the probes, released together by a barrier.
    let start = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (cb, start) = (w.cb.clone(), start.clone());
            let labels = Labels::new(0);
            std::thread::spawn(move || {
                start.wait();
                (0..8)
                    .filter_map(|_| cb.admit("t", &labels).ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let permits: Vec<BreakerPermit> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("no admitting thread may panic"))
        .collect();
    assert_eq!(
        permits.len(),
        3,
        "3 probes out of 64 attempts, no more, no fewer"
    );
    for p in permits {
        p.record(OK, MS);
    }
    assert_eq!(w.state(), State::Closed, "all three probes succeeded");
}

/// SPEC §14: a client that goes away never trips a breaker. A probe whose client left (its
/// permit dropped unrecorded, or recorded as cancelled) is no verdict: the breaker stays half
/// open, its `open_for` does not grow, and the permit goes back for another request to probe.
#[test]
fn a_probe_whose_client_left_gives_its_permit_back_and_reopens_nothing() {
    let w = world(&file::CircuitBreaker {
        half_open_probes: 2,
        open_for_max: Some(Dur::from_secs(60)),
        ..consecutive(1)
    });
    let mut probes = w.half_open(10 * SEC);
    assert_eq!(probes.len(), 2);
    // The client went away: the permit is dropped unrecorded.
    drop(probes.pop());
    assert_eq!(
        w.state(),
        State::HalfOpen,
        "an abandoned probe is no verdict"
    );
    assert_eq!(w.transitions("half_open", "open"), 0);
    // Its place went back: one more probe is admitted, and no more than two at once.
    let mut again = w.admit("t").expect("the freed probe slot");
    assert!(w.admit("t").is_err(), "still two probes at most");
    // A probe recorded as Cancelled gives its place back too.
    again.record(Outcome::Cancelled, MS);
    assert_eq!(w.state(), State::HalfOpen);
    again = w.admit("t").expect("the slot again");
    // Both probes that stayed succeed: the breaker closes.
    probes.pop().expect("second probe").record(OK, MS);
    again.record(OK, MS);
    assert_eq!(w.state(), State::Closed);
    assert_eq!(w.transitions("half_open", "open"), 0);
}

#[test]
fn a_client_fault_or_unsent_probe_gives_its_permit_back() {
    for fault in [Outcome::ClientFault, Outcome::Unsent] {
        a_probe_without_verdict_gives_its_permit_back(fault);
    }
}

/// A probe that ends with `outcome`, no verdict (the client's fault, or never sent), leaves
/// the breaker probing, and its permit goes to the next request.
fn a_probe_without_verdict_gives_its_permit_back(outcome: Outcome) {
    let w = world(&consecutive(1));
    let mut probes = w.half_open(10 * SEC);
    assert_eq!(probes.len(), 1);
    probes.pop().expect("probe").record(outcome, MS);
    assert_eq!(w.state(), State::HalfOpen, "no verdict: still probing");
    assert!(
        w.call(OK),
        "the permit went back, so another request probes"
    );
    assert_eq!(w.state(), State::Closed);
}

#[test]
fn a_slow_probe_round_reopens_under_the_slow_call_rule() {
    let w = world(&file::CircuitBreaker {
        slow_call: Some(SlowCall {
            duration: Dur::from_millis(100),
            threshold: Ratio(0.5),
        }),
        ..consecutive(1)
    });
    assert!(w.call(FAIL));
    w.clock.advance(10 * SEC);
    assert!(w.call_as("t", OK, SEC), "the probe succeeds, slowly");
    assert_eq!(w.state(), State::Open, "1 slow of 1 probe reaches 50%");
}

#[test]
fn a_try_admitted_before_the_trip_counts_for_nothing_after_it() {
    let w = world(&file::CircuitBreaker {
        half_open_probes: 1,
        ..consecutive(2)
    });
    let late = w.admit("t").expect("closed admits");
    assert!(w.call(FAIL) && w.call(FAIL));
    assert_eq!(w.state(), State::Open);
    w.clock.advance(10 * SEC);
    let probe = w.admit("t").expect("half-open probe");
    late.record(FAIL, MS);
    assert_eq!(
        w.state(),
        State::HalfOpen,
        "the late failure is from the closed round"
    );
    probe.record(OK, MS);
    assert_eq!(w.state(), State::Closed);
}
