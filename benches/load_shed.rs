//! Cost of load shedding: an uncontended admit + release (the hot path, target ≤ 100 ns), the
//! same with the per-tenant cap, one adaptive `record`, and a full-route enqueue + grant +
//! dequeue through the fair queue.
//!
//! The acquire future is polled by hand with a no-op waker: a free slot answers on the first
//! poll, so the figure is the shedder's own cost, not an executor's.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use criterion::Criterion;
use prometheus::IntGauge;
use rampart::clock::{ManualClock, SharedClock};
use rampart::config::file::{Adaptive, LoadShed, Queue};
use rampart::config::units::Dur;
use rampart::policy::load_shed::{LoadShedder, Priority, ShedSlot};
use rampart::policy::outcome::Outcome;
use rampart::tenant::tracked::TrackedTenants;

fn shedder(cfg: &LoadShed) -> Arc<LoadShedder> {
    let clock: SharedClock = Arc::new(ManualClock::new());
    let depth = IntGauge::new("queue_depth", "bench").expect("a valid gauge");
    let limit = IntGauge::new("concurrency_limit", "bench").expect("a valid gauge");
    LoadShedder::new(
        cfg,
        &TrackedTenants::new(100_000),
        clock,
        depth,
        Some(limit),
    )
}

fn config(per_tenant: Option<u32>, queue: u32, adaptive: bool) -> LoadShed {
    LoadShed {
        max_in_flight: Some(512),
        per_tenant_max_in_flight: per_tenant,
        queue: Some(Queue {
            size: queue,
            timeout: Dur(Duration::from_secs(3600)),
        }),
        priority: None,
        adaptive: adaptive.then_some(Adaptive { min: 8, max: 1024 }),
    }
}

/// A waker that does nothing: the benches poll by hand (`Waker::noop` needs Rust 1.85).
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn noop() -> Waker {
    Waker::from(Arc::new(Noop))
}

/// One poll of `fut`; `None` if it waits.
fn poll_once<F: Future>(waker: &Waker, fut: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(waker);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn admit_release(c: &mut Criterion) {
    let waker = noop();
    let mut g = c.benchmark_group("load_shed/admit_release");
    for (name, per_tenant) in [("route_limit", None), ("route_and_tenant_limit", Some(64))] {
        let s = shedder(&config(per_tenant, 1024, false));
        g.bench_function(name, |b| {
            b.iter(|| {
                let slot = poll_once(&waker, s.acquire(black_box("tenant-1"), Priority::Normal));
                drop(black_box(slot));
            })
        });
    }
    let s = shedder(&config(Some(64), 1024, true));
    let slot = poll_once(&waker, s.acquire("tenant-1", Priority::Normal))
        .and_then(Result::ok)
        .expect("a free slot");
    g.bench_function("adaptive_record", |b| {
        b.iter(|| slot.record(Outcome::Status(200), black_box(Duration::from_millis(5))))
    });
    g.finish();
}

/// The route is full: each iteration enqueues a waiter, frees the held slot (the grant goes
/// through the queue to the waiter) and takes the granted slot out.
fn enqueue_dequeue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for the queue timer");
    let _enter = rt.enter();
    let mut cfg = config(None, 1024, false);
    cfg.max_in_flight = Some(1);
    let s = shedder(&cfg);
    let waker = noop();
    let mut held: Option<ShedSlot> =
        poll_once(&waker, s.acquire("tenant-0", Priority::Normal)).and_then(Result::ok);
    let tenants: Vec<String> = (0..100).map(|i| format!("tenant-{i}")).collect();
    let mut i = 0;
    c.bench_function("load_shed/enqueue_dequeue", |b| {
        b.iter(|| {
            i = (i + 1) % tenants.len();
            let mut waiter = pin!(s.acquire(&tenants[i], Priority::Normal));
            let mut cx = Context::from_waker(&waker);
            assert!(
                waiter.as_mut().poll(&mut cx).is_pending(),
                "the route is full"
            );
            drop(held.take());
            match waiter.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(slot)) => held = Some(slot),
                _ => panic!("the freed slot must go to the waiter"),
            }
        })
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    admit_release(&mut c);
    enqueue_dequeue(&mut c);
    c.final_summary();
}
