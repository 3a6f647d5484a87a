//! Cost of one rate-limit decision, against a naive `Mutex<HashMap>` token bucket.
//!
//! Before the criterion groups run, `main` measures the heap bytes one tracked tenant costs
//! (a counting allocator around 1M inserts) and prints them as `memory/entry`.

// The baseline is a mutex on purpose, and a benchmark measures wall time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use rampart::clock::{Clock, ManualClock, MonotonicClock, SharedClock};
use rampart::config::file::{Limit, Limits, RateLimit};
use rampart::config::units::Rate;
use rampart::policy::rate_limit::{RateLimiter, TrackedTenants};

/// Counts live heap bytes, for the per-entry memory figure.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Never refuses during a bench: 1e9/s with a 1000 s burst.
fn generous() -> Limit {
    Limit {
        rate: Rate {
            count: 1_000_000_000,
            per: Duration::from_secs(1),
        },
        burst: Some(1 << 40),
        name: None,
        window: Default::default(),
    }
}

fn config(limits: usize, total: bool) -> RateLimit {
    RateLimit {
        per_tenant: Some(Limits(vec![generous(); limits])),
        total: total.then(|| Limits(vec![generous()])),
        ..RateLimit::default()
    }
}

fn limiter(cfg: &RateLimit, tenants: &[String]) -> RateLimiter {
    let clock: SharedClock = Arc::new(MonotonicClock::new());
    let l = RateLimiter::new(cfg, TrackedTenants::new(tenants.len() as u64 + 1024), clock);
    for t in tenants {
        l.check(t);
    }
    l
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant-{i:07}")).collect()
}

/// The naive design: one lock around a map of (tokens, last refill).
struct Naive {
    map: Mutex<HashMap<String, (f64, u64)>>,
    clock: MonotonicClock,
}

impl Naive {
    fn new(tenants: &[String]) -> Self {
        let n = Naive {
            map: Mutex::new(HashMap::new()),
            clock: MonotonicClock::new(),
        };
        for t in tenants {
            n.check(t);
        }
        n
    }

    fn check(&self, tenant: &str) -> bool {
        let (rate, cap) = (1e9_f64, (1u64 << 40) as f64);
        let now = self.clock.now_nanos();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = match map.get_mut(tenant) {
            Some(state) => state,
            None => map.entry(tenant.to_owned()).or_insert((cap, now)),
        };
        *tokens = (*tokens + (now.saturating_sub(*last)) as f64 * rate / 1e9).min(cap);
        *last = now;
        let ok = *tokens >= 1.0;
        if ok {
            *tokens -= 1.0;
        }
        ok
    }
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    for (label, n) in [("1", 1), ("10k", 10_000), ("1M", 1_000_000)] {
        let tenants = names(n);
        let l = limiter(&config(1, false), &tenants);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("gcra", label), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(l.check(&tenants[i]).is_admitted())
            })
        });
        drop(l);
        let naive = Naive::new(&tenants);
        g.bench_function(BenchmarkId::new("naive_mutex_map", label), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(naive.check(&tenants[i]))
            })
        });
    }
    let one = names(1);
    let manual: SharedClock = Arc::new(ManualClock::new());
    let l = RateLimiter::new(&config(1, false), TrackedTenants::new(16), manual);
    g.bench_function("gcra_manual_clock/1", |b| {
        b.iter(|| black_box(l.check(&one[0]).is_admitted()))
    });
    let l = limiter(&config(2, true), &one);
    g.bench_function("gcra/1_burst+quota+total", |b| {
        b.iter(|| black_box(l.check(&one[0]).is_admitted()))
    });
    g.finish();
}

/// Wall time for each of two threads to make `iters` decisions at once.
fn two_threads(iters: u64, check: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..2 {
            s.spawn(move || (0..iters).for_each(|i| check(w, i)));
        }
    });
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    let tenants = names(2);
    let l = limiter(&config(1, false), &tenants);
    let naive = Naive::new(&tenants);
    g.bench_function("gcra/same_tenant", |b| {
        b.iter_custom(|n| {
            two_threads(n, &|_, _| {
                black_box(l.check(&tenants[0]));
            })
        })
    });
    g.bench_function("gcra/distinct_tenants", |b| {
        b.iter_custom(|n| {
            two_threads(n, &|w, _| {
                black_box(l.check(&tenants[w]));
            })
        })
    });
    g.bench_function("naive_mutex_map/same_tenant", |b| {
        b.iter_custom(|n| {
            two_threads(n, &|_, _| {
                black_box(naive.check(&tenants[0]));
            })
        })
    });
    g.bench_function("naive_mutex_map/distinct_tenants", |b| {
        b.iter_custom(|n| {
            two_threads(n, &|w, _| {
                black_box(naive.check(&tenants[w]));
            })
        })
    });
    g.finish();
}

fn memory() {
    for (limits, label) in [(1, "1 limit"), (2, "2 limits")] {
        let tenants = names(1_000_000);
        let key_bytes: usize = tenants.iter().map(String::len).sum();
        let before = LIVE.load(Ordering::Relaxed);
        let l = limiter(&config(limits, false), &tenants);
        let after = LIVE.load(Ordering::Relaxed);
        let (entries, sketch) = (l.tracked(), l.sketch_bytes());
        let calls = CALLS.load(Ordering::Relaxed);
        let admitted = tenants
            .iter()
            .take(10_000)
            .filter(|t| l.check(t).is_admitted())
            .count();
        let calls = CALLS.load(Ordering::Relaxed) - calls;
        println!(
            "memory/hit_path ({label}): {calls} allocations in {admitted} decisions of known tenants"
        );
        let per = (after - before - sketch) as f64 / entries as f64;
        let keys = key_bytes as f64 / entries as f64;
        println!(
            "memory/entry ({label}): {per:.1} B per tenant incl. a {keys:.1} B key \
             ({:.1} B without it; table at 1M tenants), sketch {} KiB fixed",
            per - keys,
            sketch / 1024
        );
    }
}

fn main() {
    memory();
    let mut c = Criterion::default().configure_from_args();
    single_thread(&mut c);
    contended(&mut c);
    c.final_summary();
}
