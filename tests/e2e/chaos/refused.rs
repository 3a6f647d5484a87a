//! The upstream refuses connections, then comes back: the breaker opens, lets a probe through
//! after `open_for`, and closes; metrics show each transition.

use std::time::Duration;

use super::{ms, table, Load};
use crate::support::{metric_value, metrics, Closed, Proxy};

const GUARDED: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP], connect_timeout: 200ms }
policies:
  guarded:
    timeout: { request: 2s }
    circuit_breaker:
      consecutive_failures: 3
      open_for: 1s
      half_open_probes: 1
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: guarded
"#;

fn transitions(text: &str, from: &str, to: &str) -> f64 {
    metric_value(
        text,
        "rampart_circuit_breaker_transitions_total",
        &[("upstream", "app"), ("from", from), ("to", to)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_open_the_breaker_and_its_return_closes_it() {
    // Nobody listens here yet: every connect is refused.
    let dead = Closed::new();
    let proxy = Proxy::builder(GUARDED).var("APP", &dead).spawn().await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());

    let load = Load::start(addr, "/ok", 2);
    assert_eventually!(
        transitions(&metrics(admin).await, "closed", "open") >= 1.0,
        "refused connections must open the breaker"
    );
    load.wait_more(20).await;
    let back = load.now();
    let app = rampart::sample::Sample::start(dead.release())
        .await
        .expect("the upstream must come back on its address");
    assert_eventually!(
        transitions(&metrics(admin).await, "half_open", "closed") >= 1.0,
        "a probe must close the breaker once the upstream is back"
    );
    let closed_after = load.now() - back;
    load.wait_more(50).await;
    let tally = load.finish().await;
    let text = metrics(admin).await;

    let refused = tally.errors();
    let circuit_open = refused.iter().filter(|o| o.result == Ok(503)).count();
    table(
        "upstream refuses connections, then returns",
        &[
            ("requests sent", tally.sent().to_string()),
            ("errors (while down)", refused.len().to_string()),
            ("of which 503 circuit_open", circuit_open.to_string()),
            (
                "recovery time (back → last error)",
                ms(tally.recovery(back)),
            ),
            ("back → breaker closed", ms(closed_after)),
        ],
    );
    assert!(transitions(&text, "open", "half_open") >= 1.0, "{text}");
    assert!(transitions(&text, "half_open", "closed") >= 1.0, "{text}");
    assert!(circuit_open > 0, "an open breaker refuses with 503");
    // A probe waits at most open_for (1 s) plus the load's own pace.
    assert!(
        closed_after < Duration::from_secs(3),
        "closed {closed_after:?} after the upstream came back"
    );
    assert!(
        tally.recovery(back) < Duration::from_secs(3),
        "errors went on too long after the upstream came back"
    );
    let last = tally.outcomes.iter().rev().take(20);
    assert!(
        last.clone().all(|o| o.result == Ok(200)),
        "{:?}",
        last.collect::<Vec<_>>()
    );
    assert!(app.hits() > 0);
}
