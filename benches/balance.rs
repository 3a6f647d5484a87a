//! Cost of choosing an endpoint: a p2c pick over 2, 8 and 64 endpoints (all available, some
//! ejected), and the per-try bookkeeping (`start` + `end`) every try pays.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use rampart::clock::{Clock, ManualClock};
use rampart::config::file::Outlier;
use rampart::config::{Dur, Ratio};
use rampart::policy::outcome::Outcome;
use rampart::proxy::health::{p2c, EndpointHealth, OutlierDetector};

/// `n` endpoints with EWMAs from 1 to `n` ms.
fn fleet(n: usize, now: u64) -> Vec<Arc<EndpointHealth>> {
    (0..n)
        .map(|i| {
            let h = Arc::new(EndpointHealth::new());
            h.end(
                Outcome::Status(200),
                Duration::from_millis(i as u64 + 1),
                now,
            );
            h
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let clock = ManualClock::new();
    let now = clock.now_nanos();
    let mut g = c.benchmark_group("p2c_pick");
    for n in [2, 8, 64] {
        let all = fleet(n, now);
        let mut rng = fastrand::Rng::with_seed(1);
        g.bench_with_input(BenchmarkId::new("available", n), &all, |b, all| {
            b.iter(|| p2c(black_box(all), |h| h, |_| false, now, &mut rng).map(Arc::as_ptr))
        });
        // Half the endpoints ejected: some draws miss and retry.
        let detector = OutlierDetector::new(&Outlier {
            consecutive_failures: 1,
            eject_for: Dur::from_secs(3600),
            max_ejected: Ratio(0.5),
        });
        for h in all.iter().step_by(2) {
            detector.on_try_end(h, &all, Outcome::Reset, Duration::from_millis(1), now);
        }
        g.bench_with_input(BenchmarkId::new("half_ejected", n), &all, |b, all| {
            b.iter(|| p2c(black_box(all), |h| h, |_| false, now, &mut rng).map(Arc::as_ptr))
        });
    }
    g.finish();
}

fn try_hooks(c: &mut Criterion) {
    let clock = ManualClock::new();
    let all = fleet(8, clock.now_nanos());
    let detector = OutlierDetector::new(&Outlier {
        consecutive_failures: 5,
        eject_for: Dur::from_secs(30),
        max_ejected: Ratio(0.5),
    });
    let mut g = c.benchmark_group("endpoint_health");
    g.bench_function("start_end", |b| {
        b.iter(|| {
            clock.advance(Duration::from_micros(100));
            let guard = all[3].start();
            let streak = all[3].end(
                Outcome::Status(200),
                Duration::from_millis(2),
                clock.now_nanos(),
            );
            drop(guard);
            streak
        })
    });
    g.bench_function("start_on_try_end", |b| {
        b.iter(|| {
            clock.advance(Duration::from_micros(100));
            let guard = all[3].start();
            let outcome = Outcome::Status(200);
            let d = Duration::from_millis(2);
            let ejected = detector.on_try_end(&all[3], &all, outcome, d, clock.now_nanos());
            drop(guard);
            ejected
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    pick(&mut c);
    try_hooks(&mut c);
    c.final_summary();
}
