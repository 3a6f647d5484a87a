//! Queue discipline on paused tokio time and a manual clock: fairness, priorities, timeouts,
//! cancellation, reload in place, the per-tenant cap, no lost wake-ups, the adaptive curve.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::clock::{ManualClock, MonotonicClock};
use crate::config::file::{Adaptive, Queue};
use crate::config::units::Dur;
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::TenantState;

type Log = mpsc::UnboundedSender<(String, Result<ShedSlot, Shed>)>;

fn limits(max: Option<u32>, tenant: Option<u32>, queue: Option<(u32, u64)>) -> file::LoadShed {
    file::LoadShed {
        max_in_flight: max,
        per_tenant_max_in_flight: tenant,
        queue: queue.map(|(size, ms)| Queue {
            size,
            timeout: Dur(Duration::from_millis(ms)),
        }),
        priority: None,
        adaptive: None,
    }
}

fn shedder_with(
    cfg: &file::LoadShed,
    tracked: &Arc<TrackedTenants>,
) -> (Arc<LoadShedder>, ManualClock) {
    let clock = ManualClock::new();
    let depth = IntGauge::new("queue_depth", "test").expect("a valid gauge");
    let limit = IntGauge::new("concurrency_limit", "test").expect("a valid gauge");
    let s = LoadShedder::new(cfg, tracked, Arc::new(clock.clone()), depth, Some(limit));
    (s, clock)
}

fn shedder(cfg: &file::LoadShed) -> Arc<LoadShedder> {
    shedder_with(cfg, &TrackedTenants::new(10_000)).0
}

/// Lets every spawned task run until it waits.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn spawn(
    s: &Arc<LoadShedder>,
    tenant: &str,
    p: Priority,
    label: &str,
    log: &Log,
) -> JoinHandle<()> {
    let (s, tenant, label, log) = (s.clone(), tenant.to_owned(), label.to_owned(), log.clone());
    tokio::spawn(async move {
        let r = s.acquire(&tenant, p).await;
        let _ = log.send((label, r));
    })
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(String, Result<ShedSlot, Shed>)>,
) -> (String, Result<ShedSlot, Shed>) {
    rx.recv().await.expect("a waiter must answer")
}

fn reason(r: &Result<ShedSlot, Shed>) -> Option<ShedReason> {
    r.as_ref().err().map(|s| s.reason)
}

#[tokio::test(start_paused = true)]
async fn a_tenant_with_one_waiter_is_served_within_two_releases_of_a_flood() {
    let s = shedder(&limits(Some(1), None, Some((200, 60_000))));
    let first = s.acquire("a", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    for i in 0..100 {
        spawn(&s, "a", Priority::Normal, &format!("a{i}"), &log);
    }
    settle().await;
    spawn(&s, "b", Priority::Normal, "b0", &log);
    settle().await;
    assert_eq!(s.queue_len(), 101, "all wait: the slot is taken");
    drop(first);
    let mut order = Vec::new();
    for _ in 0..4 {
        let (label, r) = next(&mut rx).await;
        order.push(label);
        drop(r.expect("a queued request must be granted"));
    }
    println!("grant order: {order:?}");
    assert_eq!(
        order,
        ["a0", "b0", "a1", "a2"],
        "b's lone waiter must not wait behind a's 100"
    );
}

#[tokio::test(start_paused = true)]
async fn higher_priority_displaces_the_lowest_and_critical_goes_first() {
    let s = shedder(&limits(Some(1), None, Some((2, 60_000))));
    let first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    spawn(&s, "t", Priority::Sheddable, "s1", &log);
    spawn(&s, "t", Priority::Normal, "n1", &log);
    settle().await;
    spawn(&s, "t", Priority::Critical, "c1", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("s1", Some(ShedReason::Priority)),
        "sheddable goes first"
    );
    spawn(&s, "t", Priority::Critical, "c2", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("n1", Some(ShedReason::Priority))
    );
    spawn(&s, "t", Priority::Critical, "c3", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("c3", Some(ShedReason::QueueFull)),
        "only critical left"
    );
    spawn(&s, "t", Priority::Normal, "n2", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("n2", Some(ShedReason::QueueFull)),
        "lower never displaces"
    );
    drop(first);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "c1");
    drop(slot);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "c2");
    assert!(slot.is_ok());
}

/// The priority header is the client's to set, so `critical` orders only its own tenant's
/// waiters: a tenant that marks everything critical is served round robin with a quiet tenant's
/// normal requests, cannot displace the quiet tenant's waiter from a full queue, and gives up
/// its own newest waiter when the quiet one arrives to a full queue.
#[tokio::test(start_paused = true)]
async fn a_critical_flood_gets_its_turn_and_no_more() {
    let s = shedder(&limits(Some(1), None, Some((4, 60_000))));
    let first = s
        .acquire("noisy", Priority::Critical)
        .await
        .expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    spawn(&s, "quiet", Priority::Normal, "q0", &log);
    for i in 0..3 {
        spawn(&s, "noisy", Priority::Critical, &format!("n{i}"), &log);
    }
    settle().await;
    // Full: a critical arrival of the noisy tenant finds no sheddable waiter, none of its own
    // normal ones, and holds more of the room than the quiet tenant: refused.
    spawn(&s, "noisy", Priority::Critical, "n3", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("n3", Some(ShedReason::QueueFull)),
        "a critical flood never displaces another tenant's normal waiter"
    );
    // The quiet tenant's second request makes room: the noisy tenant holds 3 to its 1.
    spawn(&s, "quiet", Priority::Normal, "q1", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("n2", Some(ShedReason::QueueFull)),
        "the fattest flow's newest goes, critical or not"
    );
    // Served round robin across the two tenants, not the critical ones first.
    drop(first);
    let mut order = Vec::new();
    for _ in 0..4 {
        let (label, slot) = next(&mut rx).await;
        order.push(label);
        drop(slot);
    }
    assert_eq!(order, ["q0", "n0", "q1", "n1"]);
}

/// Within one tenant, critical goes before normal, and a critical arrival to a full queue
/// takes the place of its own tenant's newest normal waiter.
#[tokio::test(start_paused = true)]
async fn critical_orders_its_own_tenants_waiters() {
    let s = shedder(&limits(Some(1), None, Some((2, 60_000))));
    let first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    spawn(&s, "t", Priority::Normal, "n0", &log);
    spawn(&s, "u", Priority::Normal, "u0", &log);
    settle().await;
    spawn(&s, "t", Priority::Critical, "c0", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("n0", Some(ShedReason::Priority)),
        "its own normal waiter, never u's"
    );
    drop(first);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "u0", "u joined the round first");
    drop(slot);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "c0");
    assert!(slot.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_room_for_a_tenant_with_fewer_waiters() {
    let s = shedder(&limits(Some(1), None, Some((4, 60_000))));
    let first = s.acquire("a", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    for i in 0..4 {
        spawn(&s, "a", Priority::Normal, &format!("a{i}"), &log);
    }
    settle().await;
    spawn(&s, "b", Priority::Normal, "b0", &log);
    let (label, r) = next(&mut rx).await;
    assert_eq!(
        (label.as_str(), reason(&r)),
        ("a3", Some(ShedReason::QueueFull)),
        "a's newest makes room"
    );
    assert_eq!(s.queue_len(), 4);
    drop(first);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "a0");
    drop(slot);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "b0");
    assert!(slot.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_shed_when_its_queue_timeout_passes() {
    let s = shedder(&limits(Some(1), None, Some((4, 250))));
    let _first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    let h = spawn(&s, "t", Priority::Normal, "w", &log);
    settle().await;
    tokio::time::advance(Duration::from_millis(249)).await;
    settle().await;
    assert!(!h.is_finished(), "249ms < 250ms: still waiting");
    tokio::time::advance(Duration::from_millis(2)).await;
    let (_, r) = next(&mut rx).await;
    assert_eq!(reason(&r), Some(ShedReason::QueueTimeout));
    assert_eq!(s.queue_len(), 0, "a timed-out waiter leaves the queue");
    assert_eq!(s.in_flight(), 1);
}

#[tokio::test(start_paused = true)]
async fn size_zero_sheds_at_once_with_retry_after_from_the_drain_rate() {
    let cfg = limits(Some(2), None, Some((0, 1_000)));
    let (s, clock) = shedder_with(&cfg, &TrackedTenants::new(100));
    let a = s.acquire("t", Priority::Normal).await.expect("slot 1");
    let b = s.acquire("t", Priority::Critical).await.expect("slot 2");
    let before = tokio::time::Instant::now();
    let shed = s
        .acquire("t", Priority::Critical)
        .await
        .expect_err("no slot, no waiting");
    assert_eq!(before, tokio::time::Instant::now(), "shed without waiting");
    assert_eq!(shed.reason, ShedReason::MaxInFlight);
    assert!(
        shed.retry_after < Duration::from_secs(1),
        "nothing drained yet, and nothing stuck for long: come back soon ({:?})",
        shed.retry_after
    );
    drop(b);
    for _ in 0..20 {
        drop(
            s.acquire("t", Priority::Normal)
                .await
                .expect("slot 2 is free"),
        );
    }
    clock.advance(Duration::from_secs(1));
    let _c = s.acquire("t", Priority::Normal).await.expect("slot 2");
    let shed = s
        .acquire("t", Priority::Normal)
        .await
        .expect_err("full again");
    let want = 1.0 / 21.0; // 21 slots freed in 1 s, nobody ahead
    assert!(
        (shed.retry_after.as_secs_f64() - want).abs() < 1e-6,
        "{shed:?}"
    );
    drop(a);
    let none = shedder(&limits(Some(1), None, None));
    let _held = none.acquire("t", Priority::Normal).await.expect("slot");
    let shed = none
        .acquire("t", Priority::Normal)
        .await
        .expect_err("no queue section: no waiting");
    assert_eq!(shed.reason, ShedReason::MaxInFlight);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_frees_its_place_at_once() {
    let s = shedder(&limits(Some(1), None, Some((1, 60_000))));
    let first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    let gone = spawn(&s, "t", Priority::Normal, "gone", &log);
    settle().await;
    assert_eq!(s.queue_len(), 1);
    gone.abort();
    settle().await;
    assert_eq!(s.queue_len(), 0, "the client went away: its place is free");
    spawn(&s, "t", Priority::Normal, "next", &log);
    settle().await;
    assert_eq!(s.queue_len(), 1, "the freed place is taken, not refused");
    drop(first);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "next");
    assert!(slot.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_slot_granted_to_a_waiter_that_is_gone_is_passed_on() {
    let s = shedder(&limits(Some(1), None, Some((4, 60_000))));
    let first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    let w1 = spawn(&s, "t", Priority::Normal, "w1", &log);
    spawn(&s, "t", Priority::Normal, "w2", &log);
    settle().await;
    // The grant goes to w1's channel; w1's client leaves before w1 runs again.
    drop(first);
    w1.abort();
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "w2", "w1's slot must reach w2");
    assert!(slot.is_ok());
    assert_eq!((s.in_flight(), s.queue_len()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn reconfigure_in_place_wakes_waiters_and_strands_nobody() {
    let mut cfg = limits(Some(1), None, Some((10, 60_000)));
    let s = shedder(&cfg);
    let first = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let (log, mut rx) = mpsc::unbounded_channel();
    for w in ["w1", "w2", "w3"] {
        spawn(&s, "t", Priority::Normal, w, &log);
    }
    settle().await;
    cfg.max_in_flight = Some(3);
    s.reconfigure(&cfg);
    let (l1, w1) = next(&mut rx).await;
    let (l2, w2) = next(&mut rx).await;
    assert_eq!(
        (l1.as_str(), l2.as_str()),
        ("w1", "w2"),
        "a raised limit wakes waiters in order"
    );
    assert_eq!(
        (s.in_flight(), s.queue_len()),
        (3, 1),
        "counts carried, not doubled"
    );
    cfg.max_in_flight = Some(1);
    s.reconfigure(&cfg);
    drop(w1);
    drop(w2);
    settle().await;
    assert!(
        rx.try_recv().is_err(),
        "still at the lowered limit: no grant"
    );
    assert_eq!((s.in_flight(), s.queue_len()), (1, 1));
    drop(first);
    let (l3, w3) = next(&mut rx).await;
    assert_eq!(
        l3, "w3",
        "below the lowered limit the last waiter is served"
    );
    drop(w3);
    assert_eq!((s.in_flight(), s.queue_len()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_per_tenant_cap_counts_waiters_and_obeys_max_tracked() {
    let tracked = TrackedTenants::new(2);
    let (s, _) = shedder_with(&limits(Some(3), Some(2), Some((10, 60_000))), &tracked);
    let a1 = s.acquire("a", Priority::Normal).await.expect("a's first");
    let b1 = s.acquire("b", Priority::Normal).await.expect("b's first");
    let c1 = s
        .acquire("c", Priority::Normal)
        .await
        .expect("route slot 3");
    assert_eq!(
        tracked.len(),
        2,
        "c found every entry in use: served without a tenant slot"
    );
    let (log, mut rx) = mpsc::unbounded_channel();
    spawn(&s, "a", Priority::Normal, "a2", &log);
    settle().await;
    assert_eq!(s.queue_len(), 1, "a's second waits: under its cap");
    let shed = s
        .acquire("a", Priority::Critical)
        .await
        .expect_err("a's third");
    assert_eq!(
        shed.reason,
        ShedReason::TenantInFlight,
        "a waiter counts: shed at once, not queued"
    );
    assert_eq!(s.queue_len(), 1);
    drop(c1);
    let (label, a2) = next(&mut rx).await;
    assert_eq!(label, "a2");
    drop((b1, a2));
    let d1 = s
        .acquire("d", Priority::Normal)
        .await
        .expect("b's idle entry makes room");
    assert!(tracked.len() <= 2, "the cap holds: {}", tracked.len());
    drop((a1, d1));
    s.tenants
        .for_each(|t, v| assert!(v.is_idle(0), "{t} still counts a slot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_wake_up_is_lost_under_concurrent_release_and_cancel() {
    // Many tasks on a small limit: a busy queue, displacement, cancellation, the tenant cap.
    stress(limits(Some(4), Some(7), Some((48, 600_000))), 64, 200, 4).await;
    // Few tasks on one slot: the queue is often empty, the window of the enqueue/release race.
    stress(limits(Some(1), None, Some((8, 600_000))), 3, 5_000, 1).await;
}

/// `tasks` tasks acquire `rounds` times each, in waves (a barrier after each acquire), so a
/// stranded waiter hangs its wave: nobody else arrives to rescue it. The queue timeout is far
/// past the test's deadline, so a lost wake-up cannot hide as a timeout.
async fn stress(cfg: file::LoadShed, tasks: usize, rounds: usize, max: u32) {
    let tracked = TrackedTenants::new(10_000);
    let gauge = IntGauge::new("queue_depth", "test").expect("a valid gauge");
    let s = LoadShedder::new(&cfg, &tracked, Arc::new(MonotonicClock::new()), gauge, None);
    // granted, shed, cancelled
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let (live, peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let wave = Arc::new(tokio::sync::Barrier::new(tasks));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (s, counts, live, peak, wave) = (
            s.clone(),
            counts.clone(),
            live.clone(),
            peak.clone(),
            wave.clone(),
        );
        handles.push(tokio::spawn(async move {
            let tenant = format!("t{}", t % 8);
            for _ in 0..rounds {
                let p = [Priority::Critical, Priority::Normal, Priority::Sheddable]
                    [fastrand::usize(..3)];
                let r = if fastrand::u8(..4) == 0 {
                    tokio::select! {
                        biased;
                        r = s.acquire(&tenant, p) => Some(r),
                        () = tokio::task::yield_now() => None,
                    }
                } else {
                    Some(s.acquire(&tenant, p).await)
                };
                let outcome = match r {
                    Some(Ok(slot)) => {
                        let n = live.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        for _ in 0..fastrand::usize(0..3) {
                            tokio::task::yield_now().await;
                        }
                        live.fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                        0
                    }
                    Some(Err(_)) => 1,
                    None => 2,
                };
                counts[outcome].fetch_add(1, Ordering::SeqCst);
                wave.wait().await;
            }
        }));
    }
    let all = async {
        for h in handles {
            h.await.expect("no task panics");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("every acquire must end: a lost wake-up strands its wave here");
    let [granted, shed, cancelled] = counts.each_ref().map(|c| c.load(Ordering::SeqCst));
    let peak = peak.load(Ordering::SeqCst);
    println!("{tasks} tasks x {rounds}: granted {granted}, shed {shed}, cancelled {cancelled}, peak {peak}");
    assert_eq!(granted + shed + cancelled, (tasks * rounds) as u64);
    assert!(granted > 0 && peak <= max, "the route limit holds");
    assert_eq!(
        (s.in_flight(), s.queue_len()),
        (0, 0),
        "every slot came back"
    );
    s.tenants
        .for_each(|t, v| assert!(v.is_idle(0), "{t} still counts a slot"));
}

#[tokio::test]
async fn the_adaptive_limit_falls_when_latency_rises_and_recovers_after() {
    let mut cfg = limits(None, None, None);
    cfg.adaptive = Some(Adaptive { min: 4, max: 64 });
    let tracked = TrackedTenants::new(100);
    let clock = ManualClock::new();
    let depth = IntGauge::new("queue_depth", "test").expect("a valid gauge");
    let gauge = IntGauge::new("concurrency_limit", "test").expect("a valid gauge");
    let s = LoadShedder::new(
        &cfg,
        &tracked,
        Arc::new(clock.clone()),
        depth,
        Some(gauge.clone()),
    );
    let mut held: Vec<ShedSlot> = Vec::new();
    let mut curve = Vec::new();
    println!("window  latency_ms  limit  in_flight");
    for w in 0..70 {
        let latency = Duration::from_millis(if (15..30).contains(&w) { 40 } else { 10 });
        // Keep the limit in use: fill every slot it allows, give back those over it.
        held.truncate(s.limit() as usize);
        loop {
            match s.acquire("t", Priority::Normal).await {
                Ok(slot) => held.push(slot),
                Err(shed) => {
                    assert_eq!(
                        shed.reason,
                        ShedReason::Adaptive,
                        "refused past the adaptive limit"
                    );
                    break;
                }
            }
        }
        let in_flight = held.len();
        clock.advance(Duration::from_millis(100));
        for _ in 0..adaptive::MIN_SAMPLES {
            held[0].record(Outcome::Status(200), latency);
        }
        let limit = s.adaptive_limit().expect("adaptive is on");
        assert_eq!(
            gauge.get(),
            i64::from(limit),
            "the gauge shows the limit in force"
        );
        if w % 3 == 2 || w == 15 || w == 30 {
            println!(
                "{w:>6}  {:>10}  {limit:>5}  {in_flight:>9}",
                latency.as_millis()
            );
        }
        curve.push(limit);
    }
    let (before, during, after) = (
        curve[14],
        *curve[15..30].iter().min().unwrap_or(&0),
        curve[69],
    );
    assert_eq!(before, 64, "steady latency keeps the limit at max");
    assert!(during <= 16, "4x latency must cut the limit: {during}");
    assert!(
        curve[29] < before && after == 64,
        "the limit recovers once latency is back: {after}"
    );
}

#[test]
fn priorities_read_from_the_header_and_reasons_label_metrics() {
    let h = |s: &'static str| http::HeaderValue::from_static(s);
    assert_eq!(
        Priority::from_header(Some(&h("critical"))),
        Priority::Critical
    );
    assert_eq!(
        Priority::from_header(Some(&h(" Sheddable "))),
        Priority::Sheddable
    );
    assert_eq!(Priority::from_header(Some(&h("normal"))), Priority::Normal);
    assert_eq!(Priority::from_header(Some(&h("urgent!"))), Priority::Normal);
    assert_eq!(Priority::from_header(None), Priority::Normal);
    let labels = [
        ShedReason::MaxInFlight,
        ShedReason::TenantInFlight,
        ShedReason::QueueFull,
        ShedReason::QueueTimeout,
        ShedReason::Priority,
        ShedReason::Adaptive,
    ]
    .map(|r| r.as_str());
    assert_eq!(
        labels,
        [
            "max_in_flight",
            "tenant_in_flight",
            "queue_full",
            "queue_timeout",
            "priority",
            "adaptive"
        ]
    );
}

#[tokio::test]
async fn a_release_between_the_last_look_and_the_publication_still_wakes_the_waiter() {
    // The one interleaving a lost wake-up needs, forced step by step: the arrival has seen no
    // free slot (under the queue lock) but has not yet published itself when the slot is freed.
    let s = shedder(&limits(Some(1), None, Some((4, 60_000))));
    let held = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let mut q = s.queue.lock();
    assert!(!s.try_take(), "the arrival's last look: no slot");
    drop(held); // waiting is still 0: this release does not dispatch (and takes no lock)
    let (waiter, mut rx) = slot::Waiter::channel();
    s.join(&mut q, Priority::Normal, "t", waiter);
    drop(q);
    assert!(
        matches!(rx.try_recv(), Ok(slot::Grant::Slot(_))),
        "the freed slot must reach the waiter that published itself after the release"
    );
}

/// A route idle for 20 s fills: the request refused then is told the wait until the one in
/// flight ends (the upstream answers in 500 ms), not the 20 s that one slot freed in the 20 s
/// before would say (a black-box test saw `retry-after` grow with the idle time before a
/// burst, to 30 s where the real wait was 0.4 s).
#[tokio::test(start_paused = true)]
async fn a_refusal_after_an_idle_stretch_is_told_the_real_wait() {
    let (s, clock) = shedder_with(
        &limits(Some(1), None, Some((0, 1_000))),
        &TrackedTenants::new(100),
    );
    let first = s.acquire("t", Priority::Normal).await.expect("a slot");
    clock.advance(Duration::from_millis(500));
    first.record(Outcome::Status(200), Duration::from_millis(500));
    drop(first);
    clock.advance(Duration::from_secs(20));
    let _slow = s.acquire("t", Priority::Normal).await.expect("the slot");
    clock.advance(Duration::from_millis(100));
    let shed = s
        .acquire("t", Priority::Normal)
        .await
        .expect_err("one slot, no queue");
    assert_eq!(shed.retry_after, Duration::from_millis(500), "{shed:?}");
}

/// Two routes may share their gauges' labels (two unnamed routes to one upstream): each
/// shedder adds its part, so the series is their sum, and a shedder dropped in a reload takes
/// its part out. `rampart_concurrency_limit` shows the limit in force, `max_in_flight` for a
/// route without `adaptive`.
#[tokio::test(start_paused = true)]
async fn shedders_that_share_a_series_add_up_and_a_fixed_limit_is_shown() {
    let tracked = TrackedTenants::new(100);
    let clock: SharedClock = Arc::new(ManualClock::new());
    let depth = IntGauge::new("queue_depth", "test").expect("a valid gauge");
    let limit = IntGauge::new("concurrency_limit", "test").expect("a valid gauge");
    let make = |max| {
        LoadShedder::new(
            &limits(Some(max), None, Some((5, 60_000))),
            &tracked,
            clock.clone(),
            depth.clone(),
            Some(limit.clone()),
        )
    };
    let (a, b) = (make(1), make(2));
    assert_eq!(limit.get(), 3, "1 + 2");
    let (log, mut rx) = mpsc::unbounded_channel();
    let held_a = a.acquire("t", Priority::Normal).await.expect("a's slot");
    let held_b: Vec<ShedSlot> = vec![
        b.acquire("t", Priority::Normal).await.expect("b's slot"),
        b.acquire("t", Priority::Normal).await.expect("b's slot"),
    ];
    for i in 0..3 {
        spawn(&a, "t", Priority::Normal, &format!("a{i}"), &log);
    }
    spawn(&b, "t", Priority::Normal, "b0", &log);
    settle().await;
    assert_eq!(depth.get(), 4, "3 wait on a, 1 on b");
    drop(held_b);
    let (label, slot) = next(&mut rx).await;
    assert_eq!(label, "b0");
    assert_eq!(depth.get(), 3, "b's waiter served: a's 3 still counted");
    drop(slot);
    b.reconfigure(&limits(Some(7), None, Some((5, 60_000))));
    assert_eq!(limit.get(), 8);
    drop(b);
    assert_eq!(limit.get(), 1, "b gone: a's part is left");
    drop(held_a);
    for _ in 0..3 {
        let (_, slot) = next(&mut rx).await;
        drop(slot);
    }
    assert_eq!(depth.get(), 0);
}

/// `rampart_concurrency_limit` shows an adaptive limit of `u32::MAX` as itself, as it shows
/// one less: it read 0 (the value of a route without a limit), since `u32::MAX` also stands
/// for no limit. Read from the registry's `/metrics` text.
#[tokio::test]
async fn the_largest_limit_is_shown_as_itself_not_as_no_limit() {
    let tracked = TrackedTenants::new(100);
    let m = crate::metrics::Metrics::register();
    let adaptive = |max| {
        let mut cfg = limits(None, None, None);
        // min = max: the limit starts at min (the first window measures the baseline).
        cfg.adaptive = Some(Adaptive { min: max, max });
        cfg
    };
    let routes = [
        ("top", adaptive(u32::MAX)),
        ("below", adaptive(u32::MAX - 1)),
        ("fixed", limits(Some(u32::MAX), None, None)),
        ("none", limits(None, None, None)),
    ];
    let _shedders: Vec<Arc<LoadShedder>> = routes
        .iter()
        .map(|(route, cfg)| {
            LoadShedder::new(
                cfg,
                &tracked,
                Arc::new(ManualClock::new()),
                m.queue_depth.with_label_values(&["l", route]),
                Some(m.concurrency_limit.with_label_values(&[route, "app"])),
            )
        })
        .collect();
    let text = m.render();
    for (route, shown) in [
        ("top", u32::MAX as u64),
        ("below", u32::MAX as u64 - 1),
        ("fixed", u32::MAX as u64),
        ("none", 0),
    ] {
        let line =
            format!("rampart_concurrency_limit{{route=\"{route}\",upstream=\"app\"}} {shown}");
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
}

/// An upstream of the adaptive simulations: `workers` serve a try each for `service_ms` (the
/// rest wait their turn, FIFO; `usize::MAX` = no queueing); a try not answered within
/// `timeout_ms` (the route's `timeout.request`) ends as a 504 timeout.
#[derive(Clone, Copy, Debug)]
struct Upstream {
    workers: usize,
    service_ms: u64,
    timeout_ms: Option<u64>,
}

/// One try of a simulated client: its slot, when it started, and the service left once a
/// worker has it.
struct SimTry {
    slot: ShedSlot,
    started: u64,
    left: Option<u64>,
}

/// `clients` closed-loop clients (one request each at a time; a shed one tries again 10 ms
/// later) against `upstream(t)` for `ms` simulated milliseconds, a millisecond a step, through
/// a route with `load_shed: { max_in_flight: 100, queue: { size: 0 }, adaptive: { min: 2, max:
/// 50 } }`. Returns the adaptive limit at each millisecond.
async fn simulate(clients: usize, ms: u64, upstream: impl Fn(u64) -> Upstream) -> Vec<u32> {
    let mut cfg = limits(Some(100), None, None);
    cfg.adaptive = Some(Adaptive { min: 2, max: 50 });
    let (s, clock) = shedder_with(&cfg, &TrackedTenants::new(100));
    let mut tries: Vec<SimTry> = Vec::new();
    let mut idle: Vec<u64> = vec![0; clients];
    let mut curve = Vec::with_capacity(ms as usize);
    for t in 0..ms {
        let up = upstream(t);
        let mut i = 0;
        while i < tries.len() {
            let r = &mut tries[i];
            if let Some(left) = &mut r.left {
                *left = left.saturating_sub(1);
            }
            let took = t - r.started;
            let outcome = match (r.left, up.timeout_ms) {
                (Some(0), _) => Some(Outcome::Status(200)),
                (_, Some(to)) if took >= to => Some(Outcome::Timeout),
                _ => None,
            };
            if let Some(outcome) = outcome {
                let done = tries.remove(i);
                done.slot.record(outcome, Duration::from_millis(took));
                drop(done);
                idle.push(t);
            } else {
                i += 1;
            }
        }
        let mut still = Vec::with_capacity(idle.len());
        for at in idle.drain(..) {
            if at > t {
                still.push(at);
                continue;
            }
            match s.acquire("t", Priority::Normal).await {
                Ok(slot) => tries.push(SimTry {
                    slot,
                    started: t,
                    left: None,
                }),
                Err(shed) => {
                    assert_eq!(
                        shed.reason,
                        ShedReason::Adaptive,
                        "shed past the adaptive limit"
                    );
                    still.push(t + 10);
                }
            }
        }
        idle = still;
        let busy = tries.iter().filter(|r| r.left.is_some()).count();
        let free = up.workers.saturating_sub(busy);
        for r in tries.iter_mut().filter(|r| r.left.is_none()).take(free) {
            r.left = Some(up.service_ms);
        }
        curve.push(s.adaptive_limit().expect("adaptive is on"));
        clock.advance(Duration::from_millis(1));
    }
    curve
}

/// Prints the limit once a second, and checks the two halves of every scenario: for `over`
/// (from 10 s to 60 s, the upstream overloaded) the limit stays at most `most`, not at `max`;
/// then, the upstream back at its baseline latency with room for everyone, it is `max` again
/// by the end.
fn holds_then_recovers(curve: &[u32], most: u32) {
    let seconds: Vec<u32> = curve.iter().step_by(1000).copied().collect();
    println!("limit each second: {seconds:?}");
    let over = &curve[10_000..60_000];
    let (low, high) = (over.iter().min(), over.iter().max());
    assert!(
        high <= Some(&most),
        "the overloaded upstream must hold the limit at most {most} (from 10 s to 60 s it \
         ranged {low:?}..={high:?})"
    );
    assert_eq!(
        curve.last(),
        Some(&50),
        "once latency is back at the baseline the limit grows back to max"
    );
}

/// The tester's first repro: 5 workers of 50 ms each, 30 clients for 60 s. The upstream holds
/// about 1.5 × its capacity plus the headroom (11), never `max`: the baseline is no longer
/// dragged up by queueing latency. Then 20 s of an upstream that no longer queues.
#[tokio::test]
async fn the_adaptive_limit_holds_a_queueing_upstream_near_its_capacity() {
    let curve = simulate(30, 80_000, |t| Upstream {
        workers: if t < 60_000 { 5 } else { usize::MAX },
        service_ms: 50,
        timeout_ms: None,
    })
    .await;
    holds_then_recovers(&curve, 15);
}

/// Every try times out (a 2 s upstream, `timeout.request: 200ms`): the limit backs off to
/// `min` and stays there, since timeouts are an overload signal whatever their latency; then
/// the upstream answers in 50 ms again.
#[tokio::test]
async fn the_adaptive_limit_stays_at_min_while_every_try_times_out() {
    let curve = simulate(30, 80_000, |t| Upstream {
        workers: usize::MAX,
        service_ms: if t < 60_000 { 2_000 } else { 50 },
        timeout_ms: Some(200),
    })
    .await;
    holds_then_recovers(&curve, 4);
}

/// A steady slow upstream (5 workers of 300 ms) at full demand: the limit stays near its
/// capacity for the whole minute instead of climbing back to `max` after ~15 s.
#[tokio::test]
async fn the_adaptive_limit_holds_a_slow_queueing_upstream_near_its_capacity() {
    let curve = simulate(30, 80_000, |t| Upstream {
        workers: if t < 60_000 { 5 } else { usize::MAX },
        service_ms: 300,
        timeout_ms: None,
    })
    .await;
    holds_then_recovers(&curve, 15);
}

/// A quick 503 is an overload signal, not a fast answer: windows of them cut the limit by
/// `DROP_FACTOR` each, and refused connections (recorded with a latency of 0 when no endpoint
/// is healthy) neither count nor drag the baseline down.
#[tokio::test]
async fn quick_503s_cut_the_adaptive_limit_and_refused_connects_are_no_sample() {
    let mut cfg = limits(Some(100), None, None);
    cfg.adaptive = Some(Adaptive { min: 2, max: 50 });
    let (s, clock) = shedder_with(&cfg, &TrackedTenants::new(100));
    let slot = s.acquire("t", Priority::Normal).await.expect("a free slot");
    let window = |outcome: Outcome, ms: u64| {
        clock.advance(Duration::from_nanos(adaptive::WINDOW_NANOS));
        for _ in 0..adaptive::MIN_SAMPLES {
            slot.record(outcome, Duration::from_millis(ms));
        }
        s.adaptive_limit().expect("adaptive is on")
    };
    assert_eq!(
        window(Outcome::Status(200), 50),
        50,
        "the probe ends at max"
    );
    assert_eq!(window(Outcome::ConnectError, 0), 50, "no sample: no window");
    assert_eq!(
        window(Outcome::Status(200), 50),
        50,
        "50 ms is still the baseline"
    );
    assert_eq!(window(Outcome::Status(503), 1), 40, "× DROP_FACTOR");
    assert_eq!(window(Outcome::Status(503), 1), 32, "× DROP_FACTOR again");
}

/// A probe ends at `PROBE_MAX_NANOS` even when no try ended in it: an idle route (or one whose
/// upstream only refuses connections, which is no sample) no longer keeps its limit at `min`
/// until traffic comes back, shedding the first burst that does.
#[tokio::test]
async fn a_probe_without_samples_ends_after_its_longest_time() {
    let mut cfg = limits(Some(100), None, None);
    cfg.adaptive = Some(Adaptive { min: 2, max: 50 });
    let (s, clock) = shedder_with(&cfg, &TrackedTenants::new(100));
    // Turned on: a probe, the limit at `min`.
    let first = s.acquire("t", Priority::Normal).await.expect("within min");
    let second = s.acquire("t", Priority::Normal).await.expect("within min");
    let shed = s
        .acquire("t", Priority::Normal)
        .await
        .expect_err("past min");
    assert_eq!(shed.reason, ShedReason::Adaptive);
    // Refused connects only: no sample, so no window closes.
    first.record(Outcome::ConnectError, Duration::ZERO);
    drop(first);
    clock.advance(Duration::from_nanos(adaptive::PROBE_MAX_NANOS - 1));
    let _again = s.acquire("t", Priority::Normal).await.expect("within min");
    s.acquire("t", Priority::Normal)
        .await
        .expect_err("the probe still holds the limit at min just before its end");
    assert_eq!(s.adaptive_limit(), Some(2));
    clock.advance(Duration::from_nanos(1));
    let burst: Vec<ShedSlot> = futures_burst(&s, 8).await;
    assert_eq!(
        burst.len(),
        8,
        "the overdue probe ended: the burst is admitted"
    );
    assert_eq!(
        s.adaptive_limit(),
        Some(50),
        "back at the limit before the probe"
    );
    drop(second);
}

/// `n` acquires of tenant `t`, each of which must succeed.
async fn futures_burst(s: &Arc<LoadShedder>, n: usize) -> Vec<ShedSlot> {
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        match s.acquire("t", Priority::Normal).await {
            Ok(slot) => slots.push(slot),
            Err(shed) => panic!("acquire {i} of {n} shed: {:?}", shed.reason),
        }
    }
    slots
}
