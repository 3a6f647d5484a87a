//! rampart's own fault injection as the fault source: a "chaos" rampart in front of the
//! upstream aborts a share of requests with 503 and delays another share, and the calling
//! rampart's retries and per-try timeout must hide both from its clients — the drill the
//! `fault` policy exists for, run under steady load.

use std::time::Duration;

use super::{ms, table, Load};
use crate::support::{metric_value, metrics, sample, Proxy};

/// The rampart in front of the upstream, injecting the faults into every request.
const CHAOS: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  drill:
    fault:
      abort: { percent: 15%, status: 503 }
      delay: { percent: 5%, duration: 600ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: drill
"#;

/// The caller's rampart: retries on 503 and on a try that takes too long.
const CALLER: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  resilient:
    timeout: { request: 3s, per_try: 200ms }
    retry:
      attempts: 4
      on: [503, timeout]
      backoff: { base: 2ms, max: 10ms }
      budget: { ratio: 100%, min_per_second: 100 }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - upstream: app
        policy: resilient
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_aborts_and_delays_are_hidden_by_the_callers_retries() {
    let app = sample().await;
    let chaos = Proxy::builder(CHAOS).var("APP", app.addr()).spawn().await;
    let caller = Proxy::builder(CALLER)
        .var("APP", chaos.listener("inbound"))
        .spawn()
        .await;

    let load = Load::start(caller.listener("outbound"), "/ok", 4);
    load.wait_more(600).await;
    let tally = load.finish().await;

    let chaos_text = metrics(chaos.admin()).await;
    let caller_text = metrics(caller.admin()).await;
    let injected = |kind: &str| {
        metric_value(
            &chaos_text,
            "rampart_faults_injected_total",
            &[("route", "app"), ("kind", kind)],
        )
        .unwrap_or(0.0)
    };
    let (aborts, delays) = (injected("abort"), injected("delay"));
    let retries = metric_value(
        &caller_text,
        "rampart_retries_total",
        &[("route", "app"), ("upstream", "app")],
    )
    .unwrap_or(0.0);
    let errors = tally.errors();
    let p99 = tally.latency(Duration::ZERO, Duration::MAX, 0.99);
    table(
        "the fault policy as the fault source (15% aborts, 5% delays of 600 ms)",
        &[
            ("requests sent", tally.sent().to_string()),
            ("aborts injected", aborts.to_string()),
            ("delays injected", delays.to_string()),
            ("retries by the caller", retries.to_string()),
            ("errors seen by clients", errors.len().to_string()),
            ("p99 latency", ms(p99)),
        ],
    );

    assert!(aborts >= 30.0, "the drill must inject aborts: {chaos_text}");
    assert!(delays >= 5.0, "the drill must inject delays: {chaos_text}");
    // Every retry has an injected cause, and every injected abort is retried unless it hit
    // the last try (a client error) or its request was still in flight when the load stopped
    // (at most one per client). A delay may come with an abort on the same try, so delays
    // only bound from above.
    let in_flight = 4.0;
    assert!(
        retries <= aborts + delays,
        "a retry without an injected fault: {retries} retries for {aborts} aborts, {delays} delays"
    );
    assert!(
        retries >= aborts - errors.len() as f64 - in_flight,
        "each injected abort must be retried: {retries} retries for {aborts} aborts"
    );
    assert!(
        errors.len() <= tally.sent() / 100,
        "retries must hide the faults from clients: {} errors in {}: {:?}",
        errors.len(),
        tally.sent(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    // A delayed try is cut at 200 ms and retried: no client waits for the 600 ms delay.
    assert!(p99 < Duration::from_millis(600), "p99 {p99:?}");
}
