//! Cost of one circuit-breaker decision: admit + record of a successful try, on a manual clock.
//!
//! The target (issue 16) is ≤ 50 ns uncontended for `scope: upstream`. The two-thread group
//! runs the same pair on two threads against one breaker, the worst case of a busy upstream:
//! its figure is the time per pair on each thread.

// A benchmark measures wall time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rampart::clock::{ManualClock, SharedClock};
use rampart::config::file::{BreakerScope, CircuitBreaker as Cfg, FailureRate, SlowCall};
use rampart::config::units::{Dur, Ratio};
use rampart::metrics::Metrics;
use rampart::policy::circuit_breaker::CircuitBreaker;
use rampart::policy::outcome::Outcome;
use rampart::tenant::tracked::TrackedTenants;
use rampart::tenant::Labels;

/// Every rule on (the SPEC's example), so `record` does all its work; never trips on 200s.
fn cfg(scope: BreakerScope) -> Cfg {
    Cfg {
        scope,
        consecutive_failures: Some(5),
        failure_rate: Some(FailureRate {
            threshold: Ratio(0.5),
            window: 20,
            min_calls: 10,
        }),
        slow_call: Some(SlowCall {
            duration: Dur::from_secs(2),
            threshold: Ratio(0.8),
        }),
        open_for: Dur::from_secs(10),
        open_for_max: None,
        half_open_probes: 3,
    }
}

fn breaker(scope: BreakerScope, metrics: &Metrics) -> Arc<CircuitBreaker> {
    let clock: SharedClock = Arc::new(ManualClock::new());
    let tracked = TrackedTenants::new(100_000);
    CircuitBreaker::new("app", &cfg(scope), &tracked, clock, metrics)
}

fn pair(cb: &CircuitBreaker, tenant: &str, labels: &Labels) {
    if let Ok(p) = cb.admit(black_box(tenant), labels) {
        p.record(black_box(Outcome::Status(200)), Duration::from_millis(3));
    }
}

fn single_thread(c: &mut Criterion) {
    let metrics = Metrics::register();
    let labels = Labels::new(10);
    let mut g = c.benchmark_group("breaker");
    for (name, scope) in [
        ("admit_record/scope_upstream", BreakerScope::Upstream),
        ("admit_record/scope_tenant", BreakerScope::Tenant),
    ] {
        let cb = breaker(scope, &metrics);
        g.bench_function(name, |b| b.iter(|| pair(&cb, "acme", &labels)));
    }
    g.finish();
}

fn two_threads(iters: u64, cb: &CircuitBreaker, labels: &Labels) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..iters).for_each(|_| pair(cb, "acme", labels)));
        }
    });
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let metrics = Metrics::register();
    let labels = Labels::new(10);
    let mut g = c.benchmark_group("breaker_two_threads");
    let cb = breaker(BreakerScope::Upstream, &metrics);
    g.bench_function("admit_record/scope_upstream", |b| {
        b.iter_custom(|n| two_threads(n, &cb, &labels))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    single_thread(&mut c);
    contended(&mut c);
    c.final_summary();
}
