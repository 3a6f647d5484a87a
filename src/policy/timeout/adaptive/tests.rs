use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn estimator(window: Duration) -> (LatencyEstimator, ManualClock) {
    let clock = ManualClock::new();
    (
        LatencyEstimator::new(window, Arc::new(clock.clone())),
        clock,
    )
}

fn record_n(e: &LatencyEstimator, n: usize, latency: Duration) {
    (0..n).for_each(|_| e.record(latency));
}

#[test]
fn buckets_cover_values_and_edges_bound_them() {
    for micros in [
        0u64, 1, 15, 16, 17, 31, 32, 100, 1_000, 9_999, 10_000, 123_456, 99_000_000,
    ] {
        let i = bucket(Duration::from_micros(micros));
        let upper = upper_edge(i);
        assert!(
            micros < upper,
            "{micros}µs must lie below its bucket's upper edge {upper}"
        );
        let lower = if i == 0 { 0 } else { upper_edge(i - 1) };
        assert!(
            micros >= lower,
            "{micros}µs must lie at or above the lower edge {lower}"
        );
        assert!(
            upper - micros <= micros / 16 + 1,
            "{micros}µs: edge within 1/16"
        );
    }
    assert_eq!(
        bucket(Duration::from_secs(3600)),
        BUCKETS - 1,
        "huge values share the top"
    );
    assert_eq!(upper_edge(BUCKETS - 1), 1 << MAX_POW2);
    for i in 1..BUCKETS {
        assert!(
            upper_edge(i) > upper_edge(i - 1),
            "edges must increase at bucket {i}"
        );
        assert_eq!(
            bucket(Duration::from_micros(upper_edge(i - 1))),
            i,
            "edges line up at {i}"
        );
    }
}

#[test]
fn fewer_than_min_samples_gives_max() {
    let (e, _clock) = estimator(10 * SEC);
    assert_eq!(
        e.per_try_timeout(MS, 2 * SEC),
        2 * SEC,
        "no samples must give max"
    );
    record_n(&e, MIN_SAMPLES as usize - 1, 10 * MS);
    assert_eq!(e.samples(), MIN_SAMPLES - 1);
    assert_eq!(e.p95(), None);
    assert_eq!(
        e.per_try_timeout(MS, 2 * SEC),
        2 * SEC,
        "19 samples must still give max"
    );
    e.record(10 * MS);
    assert!(
        e.per_try_timeout(MS, 2 * SEC) < 2 * SEC,
        "20 samples must be trusted"
    );
}

#[test]
fn steady_ten_ms_gives_about_fifteen_ms() {
    let (e, _clock) = estimator(10 * SEC);
    record_n(&e, 100, 10 * MS);
    let t = e.per_try_timeout(MS, 2 * SEC);
    assert!(
        t >= 15 * MS && t <= 16 * MS,
        "10ms × 1.5 must give ≈15ms, got {t:?}"
    );
    assert_eq!(
        e.per_try_timeout(50 * MS, 2 * SEC),
        50 * MS,
        "min must clamp it up"
    );
    assert_eq!(
        e.per_try_timeout(MS, 12 * MS),
        12 * MS,
        "max must clamp it down"
    );
    assert_eq!(
        e.per_try_timeout(3 * SEC, 2 * SEC),
        2 * SEC,
        "min above max: max wins"
    );
}

#[test]
fn a_slow_tail_raises_the_bound() {
    let (e, _clock) = estimator(10 * SEC);
    record_n(&e, 94, 10 * MS);
    record_n(&e, 6, 200 * MS);
    let t = e.per_try_timeout(MS, 2 * SEC);
    assert!(
        t >= 300 * MS && t <= 320 * MS,
        "6% at 200ms must put p95 there: {t:?}"
    );

    let (e, _clock) = estimator(10 * SEC);
    record_n(&e, 96, 10 * MS);
    record_n(&e, 4, 200 * MS);
    let t = e.per_try_timeout(MS, 2 * SEC);
    assert!(t <= 16 * MS, "a tail under 5% must not move p95: {t:?}");
}

#[test]
fn old_samples_age_out() {
    let (e, clock) = estimator(10 * SEC);
    record_n(&e, 100, 500 * MS);
    clock.advance(5 * SEC);
    record_n(&e, 100, 10 * MS);
    let t = e.per_try_timeout(MS, 2 * SEC);
    assert!(
        t >= 750 * MS,
        "half the window slow must keep p95 slow: {t:?}"
    );
    clock.advance(6 * SEC);
    assert_eq!(
        e.samples(),
        100,
        "the slow samples must have left the window"
    );
    let t = e.per_try_timeout(MS, 2 * SEC);
    assert!(
        t <= 16 * MS,
        "with the slow samples gone it must drop back: {t:?}"
    );
    clock.advance(10 * SEC);
    assert_eq!(e.samples(), 0);
    assert_eq!(
        e.per_try_timeout(MS, 2 * SEC),
        2 * SEC,
        "an empty window must give max"
    );
}

#[test]
fn slots_are_cleared_when_reused() {
    let (e, clock) = estimator(10 * SEC);
    for round in 0..25 {
        record_n(&e, 30, 10 * MS);
        assert_eq!(
            e.samples(),
            30,
            "round {round}: only this period's samples must count"
        );
        clock.advance(10 * SEC);
    }
}

#[test]
fn timeout_module_resolves_fixed_and_auto() {
    use crate::config::{file::PerTry, Dur};
    let (e, _clock) = estimator(10 * SEC);
    record_n(&e, 50, 10 * MS);
    let fixed = PerTry::Fixed(Dur(5 * SEC));
    assert_eq!(crate::policy::timeout::per_try_timeout(&fixed, &e), 5 * SEC);
    let auto = PerTry::Auto {
        min: Dur(20 * MS),
        max: Dur(SEC),
    };
    assert_eq!(crate::policy::timeout::per_try_timeout(&auto, &e), 20 * MS);
}
