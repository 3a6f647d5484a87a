use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;

const SEC: Duration = Duration::from_secs(1);

fn budget(ratio: f64, min: u32, window: Duration) -> (RetryBudget, ManualClock) {
    let clock = ManualClock::new();
    let b = RetryBudget::new(ratio, min, window, Arc::new(clock.clone()));
    (b, clock)
}

fn grants(b: &RetryBudget, asks: usize) -> usize {
    (0..asks).filter(|_| b.try_withdraw()).count()
}

#[test]
fn twenty_percent_of_a_hundred_is_exactly_twenty() {
    let (b, _clock) = budget(0.2, 0, 10 * SEC);
    for _ in 0..100 {
        b.deposit();
    }
    assert_eq!(b.remaining(), 20);
    assert_eq!(
        grants(&b, 50),
        20,
        "100 requests at 20% must allow exactly 20 retries"
    );
    assert_eq!(b.remaining(), 0);
    b.deposit();
    b.deposit();
    b.deposit();
    b.deposit();
    b.deposit();
    assert_eq!(
        grants(&b, 5),
        1,
        "5 more requests at 20% must allow one more retry"
    );
}

#[test]
fn awkward_ratios_do_not_round_down() {
    // 0.29 × 100 is 28.999… in f64; the fixed-point rule must still give 29.
    let (b, _clock) = budget(0.29, 0, 10 * SEC);
    (0..100).for_each(|_| b.deposit());
    assert_eq!(grants(&b, 100), 29);
}

#[test]
fn min_per_second_alone_gives_min_times_window() {
    let (b, _clock) = budget(0.0, 10, 10 * SEC);
    assert_eq!(
        grants(&b, 1000),
        100,
        "10/s over a 10s window must allow exactly 100"
    );
    let (b, _clock) = budget(0.0, 3, Duration::from_millis(500));
    assert_eq!(
        grants(&b, 10),
        1,
        "3/s over half a second must allow floor(1.5) = 1"
    );
}

#[test]
fn floor_and_ratio_add_up() {
    let (b, _clock) = budget(0.1, 1, 10 * SEC);
    (0..50).for_each(|_| b.deposit());
    assert_eq!(
        grants(&b, 100),
        15,
        "10% of 50 plus 1/s × 10s must allow 15"
    );
}

#[test]
fn zero_ratio_and_zero_floor_allow_nothing() {
    let (b, clock) = budget(0.0, 0, 10 * SEC);
    for _ in 0..1000 {
        b.deposit();
    }
    assert_eq!(grants(&b, 10), 0);
    clock.advance(3 * SEC);
    assert!(!b.try_withdraw(), "0%/0 must never allow a retry");
    assert_eq!(b.remaining(), 0);
}

#[test]
fn old_deposits_stop_counting_once_the_window_passes() {
    let (b, clock) = budget(0.2, 0, 10 * SEC);
    (0..100).for_each(|_| b.deposit());
    clock.advance(5 * SEC);
    assert_eq!(
        b.remaining(),
        20,
        "deposits half a window old must still count"
    );
    assert_eq!(grants(&b, 5), 5);
    clock.advance(10 * SEC);
    assert_eq!(
        b.remaining(),
        0,
        "deposits a whole window old must stop counting"
    );
    assert!(!b.try_withdraw());
}

#[test]
fn old_withdrawals_stop_counting_too() {
    let (b, clock) = budget(0.2, 0, 10 * SEC);
    (0..50).for_each(|_| b.deposit());
    assert_eq!(grants(&b, 10), 10, "50 at 20% must allow 10");
    clock.advance(5 * SEC);
    (0..50).for_each(|_| b.deposit());
    assert_eq!(
        grants(&b, 100),
        10,
        "100 in the window at 20% minus 10 spent leaves 10"
    );
    clock.advance(Duration::from_secs(6));
    // The first 50 deposits and first 10 withdrawals have left the window.
    assert_eq!(b.remaining(), 0, "50 at 20% is 10, all spent after 5s");
    clock.advance(Duration::from_secs(5));
    assert_eq!(b.remaining(), 0, "everything has aged out");
    (0..10).for_each(|_| b.deposit());
    assert_eq!(grants(&b, 5), 2);
}

#[test]
fn slots_are_reused_after_wrapping_the_ring() {
    let (b, clock) = budget(1.0, 0, 10 * SEC);
    for round in 0..30 {
        b.deposit();
        assert!(
            b.try_withdraw(),
            "round {round}: one request must allow one retry at 100%"
        );
        assert!(!b.try_withdraw(), "round {round}: but only one");
        clock.advance(10 * SEC);
    }
}

#[test]
fn refused_withdrawals_are_not_counted() {
    let (b, _clock) = budget(0.5, 0, 10 * SEC);
    (0..4).for_each(|_| b.deposit());
    assert_eq!(grants(&b, 10), 2);
    (0..2).for_each(|_| b.deposit());
    assert_eq!(grants(&b, 10), 1, "refusals must not eat into later budget");
}

#[test]
fn from_config_uses_the_file_values() {
    let clock = ManualClock::new();
    let file = crate::config::file::Budget {
        ratio: crate::config::Ratio(0.0),
        min_per_second: 2,
        window: crate::config::Dur(5 * SEC),
    };
    let b = RetryBudget::from_config(&file, Arc::new(clock));
    assert_eq!(grants(&b, 100), 10);
}

#[test]
fn concurrent_callers_never_exceed_the_rule() {
    let (b, _clock) = budget(0.2, 0, 10 * SEC);
    (0..1000).for_each(|_| b.deposit());
    let b = Arc::new(b);
    let granted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| grants(&b, 200))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread must not panic"))
            .sum()
    });
    assert!(
        granted <= 200,
        "granted {granted} must not exceed 20% of 1000"
    );
    assert!(
        granted >= 190,
        "granted {granted}: contention may refuse only a few"
    );
}
