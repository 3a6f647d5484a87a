//! Name resolution of an upstream, driven by a scripted resolver on tokio's paused clock.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{Lookup, Upstream};
use crate::clock::{ManualClock, SharedClock};
use crate::config::file;
use crate::metrics::Metrics;

/// A resolver whose answer the test sets: `Some(addresses)`, or `None` for a failed lookup.
#[derive(Clone, Default)]
struct Scripted {
    answer: Arc<ArcSwap<Option<Vec<SocketAddr>>>>,
    asked: Arc<AtomicU32>,
}

impl Scripted {
    fn answer(&self, a: Option<&[&str]>) {
        let a = a.map(|v| v.iter().map(|s| s.parse().expect("addr")).collect());
        self.answer.store(Arc::new(a));
    }

    fn asked(&self) -> u32 {
        self.asked.load(Ordering::Relaxed)
    }

    /// The upstream `api` of `cfg` (carrying over from `prev`), resolved by this resolver.
    fn build(
        &self,
        cfg: &file::Upstream,
        prev: Option<&Upstream>,
        metrics: &Metrics,
        clock: &SharedClock,
    ) -> Arc<Upstream> {
        Upstream::with_lookup("api", cfg, prev, None, metrics, clock, self.lookup())
    }

    fn lookup(&self) -> Lookup {
        let me = self.clone();
        Arc::new(move |_name: &str| {
            me.asked.fetch_add(1, Ordering::Relaxed);
            let answer = Option::clone(&me.answer.load());
            Box::pin(
                async move { answer.ok_or_else(|| io::Error::other("scripted lookup failure")) },
            )
        })
    }
}

fn cfg() -> file::Upstream {
    serde_json::from_value(serde_json::json!({
        "endpoints": ["svc.test:8080"],
        "resolve_every": "5s",
    }))
    .expect("upstream config")
}

fn addrs(up: &Upstream) -> Vec<String> {
    up.endpoints().iter().map(|e| e.label.to_string()).collect()
}

/// Lets the resolver task run up to its next sleep.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn failed_lookup_after_reload_keeps_carried_addresses() {
    let metrics = Metrics::register();
    let clock: SharedClock = Arc::new(ManualClock::new());
    let dns = Scripted::default();
    dns.answer(Some(&["10.0.0.1:8080", "10.0.0.2:8080"]));
    let cfg = cfg();

    let first = dns.build(&cfg, None, &metrics, &clock);
    settle().await;
    assert_eq!(dns.asked(), 1);
    assert_eq!(addrs(&first), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // A reload right as DNS goes away: the new generation's first lookup fails.
    dns.answer(None);
    let second = dns.build(&cfg, Some(&first), &metrics, &clock);
    drop(first);
    assert_eq!(
        addrs(&second),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "carried"
    );
    settle().await;
    assert_eq!(dns.asked(), 2, "the new generation looked the name up");
    assert_eq!(
        addrs(&second),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "a failed lookup keeps the carried addresses"
    );

    // Still failing at the next round: still kept.
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(dns.asked(), 3);
    assert_eq!(addrs(&second), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // DNS is back with another answer: it replaces them.
    dns.answer(Some(&["10.0.0.3:8080"]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(dns.asked(), 4);
    assert_eq!(addrs(&second), ["10.0.0.3:8080"]);
}

#[tokio::test(start_paused = true)]
async fn name_never_resolved_has_no_addresses() {
    let metrics = Metrics::register();
    let clock: SharedClock = Arc::new(ManualClock::new());
    let dns = Scripted::default();
    let up = dns.build(&cfg(), None, &metrics, &clock);
    settle().await;
    assert_eq!(dns.asked(), 1);
    assert!(addrs(&up).is_empty());
    assert!(up
        .no_endpoint_message()
        .contains("svc.test:8080 has not resolved"));
}

/// Whether `metrics` exports a `rampart_upstream_connections` series of `upstream`, `endpoint`.
fn connections_series(metrics: &Metrics, upstream: &str, endpoint: &str) -> bool {
    let (u, e) = (
        format!("upstream=\"{upstream}\""),
        format!("endpoint=\"{endpoint}\""),
    );
    metrics
        .render()
        .lines()
        .any(|l| l.starts_with("rampart_upstream_connections{") && l.contains(&u) && l.contains(&e))
}

/// A reload replaced the upstream (another `outlier`: the endpoints are carried over) while a
/// request of the old one is still open, and DNS answers differently at the old loop's next
/// round: the retired upstream looks nothing up any more, so it neither drops the series of an
/// endpoint the new one still uses nor makes one for an address the new one does not have.
#[tokio::test(start_paused = true)]
async fn retired_upstream_resolves_no_more_and_leaves_the_series_alone() {
    let metrics = Metrics::register();
    let clock: SharedClock = Arc::new(ManualClock::new());
    let dns = Scripted::default();
    dns.answer(Some(&["10.0.0.1:8080", "10.0.0.2:8080"]));
    let first = dns.build(&cfg(), None, &metrics, &clock);
    settle().await;
    assert!(connections_series(&metrics, "api", "10.0.0.2:8080"));

    // Reload 2 s later; `first` stays referred to (a request in flight under it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cfg = cfg();
    cfg.outlier = Some(
        serde_json::from_value(serde_json::json!({ "consecutive_failures": 3 })).expect("outlier"),
    );
    let second = dns.build(&cfg, Some(&first), &metrics, &clock);
    first.retire();
    settle().await;
    assert_eq!(dns.asked(), 2);
    assert_eq!(addrs(&second), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // The old loop's round (t = 5 s) would see .2 gone and .3 new.
    dns.answer(Some(&["10.0.0.1:8080", "10.0.0.3:8080"]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle().await;
    assert!(
        connections_series(&metrics, "api", "10.0.0.2:8080"),
        "the new upstream's endpoint keeps its connections series"
    );
    assert!(
        !connections_series(&metrics, "api", "10.0.0.3:8080"),
        "no series for an address only the retired upstream saw"
    );
    assert_eq!(dns.asked(), 2, "the retired upstream looked nothing up");

    // The new loop's round (t = 7 s) sees .2 again: it keeps its endpoint, still counted.
    dns.answer(Some(&["10.0.0.1:8080", "10.0.0.2:8080"]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(dns.asked(), 3);
    assert_eq!(addrs(&second), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(connections_series(&metrics, "api", "10.0.0.2:8080"));
    drop(first);
}

/// Two fixed endpoints, the first of which just refused a connection, with `balance`.
fn one_refused(balance: &str) -> (Arc<Upstream>, SocketAddr, SocketAddr) {
    let metrics = Metrics::register();
    let clock: SharedClock = Arc::new(ManualClock::new());
    let cfg: file::Upstream = serde_json::from_value(serde_json::json!({
        "endpoints": ["127.0.0.1:1", "127.0.0.1:2"],
        "balance": balance,
    }))
    .expect("upstream config");
    let up = Scripted::default().build(&cfg, None, &metrics, &clock);
    let eps = up.endpoints();
    let (refused, answered) = (eps[0].addr, eps[1].addr);
    up.connect_failed(&eps[0]);
    (up, refused, answered)
}

/// A retry after an answered try (a 503) with the other endpoint refusing connections goes
/// back to the one that answered: the refusing one would only spend the try on another
/// refusal. Both kinds of balance.
#[tokio::test(start_paused = true)]
async fn retry_prefers_the_endpoint_that_answered_over_one_that_refused() {
    for balance in ["round_robin", "p2c"] {
        let (up, refused, answered) = one_refused(balance);
        let now = tokio::time::Instant::now();
        for _ in 0..20 {
            let first = up.pick(None, now).expect("an endpoint");
            assert_eq!(
                first.addr, answered,
                "{balance}: a refusing endpoint is passed over"
            );
            let again = up.pick(Some(answered), now).expect("an endpoint");
            assert_eq!(
                again.addr, answered,
                "{balance}: the answering one before the refusing one"
            );
            let other = up.pick(Some(refused), now).expect("an endpoint");
            assert_eq!(other.addr, answered, "{balance}");
        }
    }
}
