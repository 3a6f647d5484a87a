//! One upstream turns slow under load: its breaker (slow_call) opens, another route to a
//! healthy upstream keeps its latency, and the breaker closes within `open_for` of the heal.

use std::time::Duration;

use super::{ms, table, Load};
use crate::support::{metric_value, metrics, sample, Proxy};

const TWO_ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  slowed: { endpoints: [$SLOWED] }
  healthy: { endpoints: [$HEALTHY] }
policies:
  guarded:
    timeout: { request: 5s }
    circuit_breaker:
      slow_call: { duration: 300ms, threshold: 50% }
      failure_rate: { threshold: 50%, window: 10, min_calls: 5 }
      open_for: 1s
      half_open_probes: 1
    load_shed:
      max_in_flight: 16
      queue: { size: 0, timeout: 10ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - match: { path_prefix: /slow }
        upstream: slowed
        policy: guarded
      - upstream: healthy
"#;

fn state(text: &str, s: &str) -> f64 {
    metric_value(
        text,
        "rampart_circuit_breaker_state",
        &[("upstream", "slowed"), ("state", s)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_upstream_trips_its_breaker_and_leaves_another_route_flat() {
    let (slowed, healthy) = (sample().await, sample().await);
    let proxy = Proxy::builder(TWO_ROUTES)
        .var("SLOWED", slowed.addr())
        .var("HEALTHY", healthy.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());

    // `/slow` goes to the `slowed` upstream; its `ms` says how slow it is.
    let victim = Load::start(addr, "/slow?ms=5", 8);
    let probe = Load::start(addr, "/ok", 2);
    probe.wait_more(200).await;
    let fault = probe.now();
    victim.set_path("/slow?ms=2000");
    assert_eventually!(
        state(&metrics(admin).await, "open") == 1.0,
        "slow calls must open the breaker"
    );
    let opened = probe.now();
    probe.wait_more(200).await;
    let heal = probe.now();
    victim.set_path("/slow?ms=5");
    assert_eventually!(
        state(&metrics(admin).await, "closed") == 1.0,
        "the breaker must close once the upstream is healthy again"
    );
    let closed_after = probe.now() - heal;
    let victims = victim.finish().await;
    let probes = probe.finish().await;

    let (p50_before, p99_before) = (
        probes.latency(Duration::ZERO, fault, 0.5),
        probes.latency(Duration::ZERO, fault, 0.99),
    );
    let (p50_during, p99_during) = (
        probes.latency(fault, heal, 0.5),
        probes.latency(fault, heal, 0.99),
    );
    let refused = victims.errors().len();
    table(
        "one upstream turns slow (2 s answers): breaker slow_call, load_shed 16 in flight as backstop",
        &[
            (
                "slowed route: requests / not 200",
                format!("{} / {refused}", victims.sent()),
            ),
            (
                "healthy route: requests / errors",
                format!("{} / {}", probes.sent(), probes.errors().len()),
            ),
            (
                "healthy p50 before / during",
                format!("{} / {}", ms(p50_before), ms(p50_during)),
            ),
            (
                "healthy p99 before / during",
                format!("{} / {}", ms(p99_before), ms(p99_during)),
            ),
            ("fault → breaker open", ms(opened - fault)),
            ("heal → breaker closed (open_for 1 s)", ms(closed_after)),
        ],
    );
    assert!(probes.errors().is_empty(), "{:?}", probes.errors());
    assert!(
        p50_during <= p50_before * 3 + Duration::from_millis(20),
        "healthy p50 went from {p50_before:?} to {p50_during:?}"
    );
    assert!(
        p99_during < Duration::from_millis(500),
        "healthy p99 during the fault: {p99_during:?}"
    );
    // open_for, plus one slow call in the window at worst, plus the polling.
    assert!(
        closed_after < Duration::from_millis(3500),
        "closed {closed_after:?} after the heal"
    );
    assert!(healthy.hits() > 0 && slowed.hits() > 0);
}
