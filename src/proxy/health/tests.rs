//! Unit tests on a manual clock: EWMA, outlier streak and ejection, p2c.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::file;
use crate::config::{Dur, Ratio};
use crate::policy::outcome::Outcome;

const OK: Outcome = Outcome::Status(200);
const FAIL: Outcome = Outcome::Status(503);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn detector(consecutive_failures: u32, eject_for_secs: u64, max_ejected: f64) -> OutlierDetector {
    OutlierDetector::new(&file::Outlier {
        consecutive_failures,
        eject_for: Dur::from_secs(eject_for_secs),
        max_ejected: Ratio(max_ejected),
    })
}

fn fleet(n: usize) -> Vec<Arc<EndpointHealth>> {
    (0..n).map(|_| Arc::new(EndpointHealth::new())).collect()
}

/// Feeds `n` failed tries to `all[i]`; returns how many of them ejected it.
fn fail(d: &OutlierDetector, all: &[Arc<EndpointHealth>], i: usize, n: u32, now: u64) -> u32 {
    (0..n)
        .filter(|_| d.on_try_end(&all[i], all, FAIL, ms(1), now))
        .count() as u32
}

#[test]
fn ewma_rises_at_once_on_a_slow_sample_and_decays_with_fast_ones() {
    let clock = ManualClock::new();
    let h = EndpointHealth::new();
    assert_eq!(h.ewma_nanos(clock.now_nanos()), 0.0, "unmeasured");
    h.end(OK, ms(1), clock.now_nanos());
    clock.advance(Duration::from_secs(1));
    h.end(OK, ms(100), clock.now_nanos());
    let now = clock.now_nanos();
    assert!(
        (h.ewma_nanos(now) - 100e6).abs() < 1.0,
        "a slow sample is taken at once"
    );
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        h.end(OK, ms(1), clock.now_nanos());
    }
    // 1 + 99·e^-1 ≈ 37.4 ms after one time constant of fast samples.
    let after_10s = h.ewma_nanos(clock.now_nanos()) / 1e6;
    assert!(
        (30.0..45.0).contains(&after_10s),
        "ewma after 10 s: {after_10s} ms"
    );
    for _ in 0..50 {
        clock.advance(Duration::from_secs(1));
        h.end(OK, ms(1), clock.now_nanos());
    }
    let after_60s = h.ewma_nanos(clock.now_nanos()) / 1e6;
    assert!(after_60s < 1.5, "ewma after 60 s: {after_60s} ms");
}

#[test]
fn ewma_ignores_non_verdicts_and_a_fast_failure_never_lowers_it() {
    let clock = ManualClock::new();
    let h = EndpointHealth::new();
    h.end(OK, ms(50), clock.now_nanos());
    clock.advance(Duration::from_secs(1));
    let before = h.ewma_nanos(clock.now_nanos());
    h.end(Outcome::Cancelled, ms(1), clock.now_nanos());
    h.end(Outcome::ClientFault, ms(1), clock.now_nanos());
    assert_eq!(
        h.ewma_nanos(clock.now_nanos()),
        before,
        "non-verdicts change nothing"
    );
    assert_eq!(h.end(Outcome::ConnectError, ms(1), clock.now_nanos()), 1);
    assert!(
        h.ewma_nanos(clock.now_nanos()) >= before,
        "a 1 ms failure must not lower it"
    );
    assert_eq!(
        h.end(Outcome::Cancelled, ms(1), clock.now_nanos()),
        1,
        "streak kept"
    );
}

#[test]
fn cost_weighs_in_flight_and_unmeasured_endpoints_get_one_try() {
    let clock = ManualClock::new();
    let now = clock.now_nanos();
    let h = Arc::new(EndpointHealth::new());
    assert_eq!(h.cost(now), 0.0, "a new endpoint is the cheapest");
    let first = h.start();
    assert!(h.cost(now) > 1e9, "but only one try until measured");
    drop(first);
    assert_eq!(h.in_flight(), 0, "the guard releases");
    h.end(OK, ms(2), now);
    let idle = h.cost(now);
    let (_a, _b) = (h.start(), h.start());
    assert!(
        (h.cost(now) - 3.0 * idle).abs() < 1.0,
        "cost × (in_flight + 1)"
    );
}

#[test]
fn snapshot_reports_state() {
    let clock = ManualClock::new();
    let all = fleet(2);
    all[0].end(OK, ms(3), clock.now_nanos());
    let d = detector(2, 30, 0.5);
    assert_eq!(fail(&d, &all, 0, 2, clock.now_nanos()), 1);
    let _guard = all[0].start();
    let snap = all[0].snapshot(clock.now_nanos());
    assert_eq!(snap["healthy"], false);
    assert_eq!(snap["ejected_until_secs"], 30.0);
    assert_eq!(snap["ejections"], 1);
    assert_eq!(snap["ewma_ms"], 3.0);
    assert_eq!(snap["in_flight"], 1);
}

#[test]
fn streak_ejects_at_the_threshold_and_a_success_resets_it() {
    let clock = ManualClock::new();
    let all = fleet(4);
    let d = detector(3, 30, 0.5);
    let now = clock.now_nanos();
    assert_eq!(fail(&d, &all, 0, 2, now), 0);
    assert!(!d.on_try_end(&all[0], &all, OK, ms(1), now), "success");
    assert_eq!(
        fail(&d, &all, 0, 2, now),
        0,
        "streak restarted after the success"
    );
    assert!(all[0].available(now));
    assert!(
        d.on_try_end(&all[0], &all, FAIL, ms(1), now),
        "third in a row ejects"
    );
    assert!(!all[0].available(now));
    assert_eq!(fail(&d, &all, 0, 5, now), 0, "no re-ejection while ejected");
}

#[test]
fn ejection_ends_by_time_and_grows_on_repeat() {
    let clock = ManualClock::new();
    let all = fleet(2);
    let d = detector(1, 10, 0.5);
    let mut lengths = Vec::new();
    for _ in 0..6 {
        let start = clock.now_nanos();
        assert_eq!(fail(&d, &all, 0, 1, start), 1, "ejects");
        let mut secs = 0;
        while !all[0].available(clock.now_nanos()) {
            clock.advance(Duration::from_secs(1));
            secs += 1;
        }
        lengths.push(secs);
    }
    assert_eq!(
        lengths,
        [10, 20, 40, 80, 100, 100],
        "doubling, capped at 10 × eject_for"
    );
    // Staying in for the cap's length starts the growth over.
    clock.advance(Duration::from_secs(101));
    let now = clock.now_nanos();
    assert_eq!(fail(&d, &all, 0, 1, now), 1);
    assert!(all[0].available(now + 10_000_000_000), "back to eject_for");
}

#[test]
fn cap_never_ejects_more_than_max_ejected() {
    let clock = ManualClock::new();
    let now = clock.now_nanos();
    for (n, ratio, allowed) in [
        (10, 0.3, 3),
        (4, 0.5, 2),
        (3, 0.5, 1),
        (2, 0.1, 0),
        (1, 1.0, 0),
    ] {
        let all = fleet(n);
        let d = detector(1, 30, ratio);
        let ejected: u32 = (0..n).map(|i| fail(&d, &all, i, 3, now)).sum();
        assert_eq!(ejected, allowed, "{n} endpoints at {ratio}");
        let out = all.iter().filter(|e| !e.available(now)).count();
        assert_eq!(out, allowed as usize, "{n} endpoints at {ratio}");
    }
}

#[test]
fn cap_never_ejects_the_last_available_endpoint() {
    let clock = ManualClock::new();
    let now = clock.now_nanos();
    let all = fleet(3);
    let d = detector(1, 30, 1.0);
    let cfg = file::HealthCheck {
        path: "/".into(),
        interval: Dur::from_secs(1),
        timeout: Dur::from_secs(1),
        unhealthy_after: 1,
        healthy_after: 1,
    };
    assert_eq!(
        all[2].record_check(false, &cfg),
        Some(false),
        "checks took one out"
    );
    assert_eq!(fail(&d, &all, 0, 1, now), 1);
    assert_eq!(fail(&d, &all, 1, 5, now), 0, "the last available one stays");
    assert!(all[1].available(now));
}

#[test]
fn checks_flip_after_exactly_n_results_in_a_row() {
    let h = EndpointHealth::new();
    let cfg = file::HealthCheck {
        path: "/".into(),
        interval: Dur::from_secs(1),
        timeout: Dur::from_secs(1),
        unhealthy_after: 3,
        healthy_after: 2,
    };
    let run = |oks: &[bool]| {
        oks.iter()
            .map(|&ok| h.record_check(ok, &cfg))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        run(&[false, false, true, false, false]),
        [None; 5],
        "a success resets"
    );
    assert_eq!(run(&[false]), [Some(false)]);
    assert_eq!(run(&[false, true, false, true]), [None; 4]);
    assert_eq!(run(&[true]), [Some(true)]);
    assert!(h.available(0));
    assert_eq!(run(&[false, false, false]), [None, None, Some(false)]);
    h.reset_checks();
    assert!(
        h.available(0),
        "a reload without health_check brings it back"
    );
    assert_eq!(run(&[false, false]), [None, None], "streaks start over");
}

fn measured(ewmas_ms: &[u64]) -> Vec<Arc<EndpointHealth>> {
    let all = fleet(ewmas_ms.len());
    for (h, &m) in all.iter().zip(ewmas_ms) {
        h.end(OK, ms(m), 1_000_000_000);
    }
    all
}

#[test]
fn p2c_takes_the_cheaper_of_two() {
    let all = measured(&[1, 10]);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..100 {
        let pick = p2c(&all, |h| h, |_| false, 1_000_000_000, &mut rng);
        assert!(Arc::ptr_eq(pick.expect("two available"), &all[0]));
    }
}

#[test]
fn p2c_sends_most_traffic_to_the_faster_endpoint() {
    let all = measured(&[1, 10]);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut held = Vec::new();
    let mut fast = 0;
    // Tries stay in flight for a while, so the fast endpoint's cost grows with its load.
    for i in 0..10_000 {
        let pick = p2c(&all, |h| h, |_| false, 1_000_000_000, &mut rng).expect("available");
        fast += usize::from(Arc::ptr_eq(pick, &all[0]));
        held.push(pick.start());
        if i % 16 == 15 {
            held.clear();
        }
    }
    println!(
        "p2c split over 10000 picks: fast(1ms) {fast}, slow(10ms) {}",
        10_000 - fast
    );
    assert!(fast > 8_000, "fast got {fast} of 10000");
}

#[test]
fn p2c_never_picks_unavailable_or_avoided_endpoints() {
    let clock = ManualClock::new();
    let now = clock.now_nanos();
    let all = measured(&[1, 1, 50, 50, 50, 50, 50, 50]);
    let d = detector(1, 30, 1.0);
    assert_eq!(fail(&d, &all, 0, 1, now), 1, "the fastest is ejected");
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..2_000 {
        let pick = p2c(&all, |h| h, |h| Arc::ptr_eq(h, &all[1]), now, &mut rng);
        let pick = pick.expect("six left");
        assert!(!Arc::ptr_eq(pick, &all[0]) && !Arc::ptr_eq(pick, &all[1]));
    }
    let one = [Arc::clone(&all[5])];
    let pick = p2c(&one, |h| h, |_| false, now, &mut rng);
    assert!(pick.is_some(), "a single candidate is picked");
    let pick = p2c(&all[..2], |h| h, |_| false, now, &mut rng).expect("one of two available");
    assert!(Arc::ptr_eq(pick, &all[1]), "the available one of two");
    assert!(
        p2c(&all[..1], |h| h, |_| false, now, &mut rng).is_none(),
        "none available"
    );
    let empty: [Arc<EndpointHealth>; 0] = [];
    assert!(p2c(&empty, |h| h, |_| false, now, &mut rng).is_none());
}

/// A pick's look at an endpoint (`available_by`) agrees with `available` at every time, and
/// reads the clock only once an ejection is on record: before the first, none is asked for.
#[test]
fn availability_reads_the_clock_only_with_an_ejection_on_record() {
    let clock = ManualClock::new();
    let all = fleet(2);
    let reads = std::cell::Cell::new(0);
    let now = || {
        reads.set(reads.get() + 1);
        clock.now_nanos()
    };
    assert!(all[0].available_by(now));
    assert_eq!(reads.get(), 0, "never ejected: no clock read");

    let d = detector(1, 10, 0.5);
    assert_eq!(fail(&d, &all, 0, 1, clock.now_nanos()), 1, "ejects");
    for _ in 0..12 {
        let at = clock.now_nanos();
        assert_eq!(all[0].available_by(|| at), all[0].available(at));
        clock.advance(Duration::from_secs(1));
    }
    assert!(all[0].available_by(now), "back after eject_for");
    assert_eq!(reads.get(), 1, "read once the ejection is on record");
}
