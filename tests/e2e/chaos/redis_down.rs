//! The global store dies under steady load (issue 23, scenario 6): two ramparts share one
//! tenant limit through Redis; Redis is killed, then restarted on the same port. Requests keep
//! flowing under `on_store_error: local` (each rampart enforces the limit on its own, so the
//! fleet admits about twice as much), none waits past the store timeout, and once Redis is back
//! the shared limit holds again by itself.

use std::time::Duration;

use super::{ms, table, Load, Tally};
use crate::support::redis::{replicas, store_up, Redis};
use crate::support::{metric_value, metrics, sample};

/// One tenant (`anonymous`: the load sends no tenant header) limited to 50/s fleet-wide.
const SHARED: &str = r#"
version: 1
admin: { listen: $ADMIN }
global_store:
  redis: { url: "$REDIS", timeout: 50ms }
upstreams:
  app: { endpoints: [$APP] }
policies:
  shared:
    rate_limit:
      per_tenant: { rate: 50/s, burst: 10 }
      scope: global
      on_store_error: local
      lease: 5
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: shared
"#;

/// How long each phase (store up, down, back) runs.
const PHASE: Duration = Duration::from_millis(1500);

/// Admitted answers per second among requests sent in `[from, to)`.
fn admitted_rate(t: &Tally, from: Duration, to: Duration) -> f64 {
    let n = t
        .outcomes
        .iter()
        .filter(|o| o.sent >= from && o.sent < to && o.result == Ok(200))
        .count();
    n as f64 / (to - from).as_secs_f64()
}

/// Answers that are neither admitted nor refused by the limit: 5xx, client errors.
fn failures(t: &Tally) -> usize {
    t.outcomes
        .iter()
        .filter(|o| !matches!(o.result, Ok(200) | Ok(429)))
        .count()
}

fn slowest(t: &Tally, from: Duration, to: Duration) -> Duration {
    t.outcomes
        .iter()
        .filter(|o| o.sent >= from && o.sent < to)
        .map(|o| o.took)
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_falls_back_and_its_return_restores_the_shared_limit() {
    let mut redis = Redis::start().await;
    let app = sample().await;
    let (a, b) = replicas(SHARED, &redis, app.addr()).await;
    let loads = [
        Load::start(a.listener("inbound"), "/ok", 2),
        Load::start(b.listener("inbound"), "/ok", 2),
    ];
    tokio::time::sleep(PHASE).await;

    let killed = loads[0].now();
    redis.kill();
    assert_eventually!(
        store_up(&a).await == Some(0.0),
        "the store must be seen down"
    );
    tokio::time::sleep(PHASE).await;

    let restarted = loads[0].now();
    redis.restart().await;
    for p in [&a, &b] {
        assert_eventually!(store_up(p).await == Some(1.0), "the store must come back");
    }
    let back = loads[0].now() - restarted;
    let resumed = loads[0].now();
    tokio::time::sleep(PHASE).await;
    let end = loads[0].now();

    let mut outcomes = Vec::new();
    for l in loads {
        outcomes.extend(l.finish().await.outcomes);
    }
    let tally = Tally { outcomes };
    let text = metrics(a.admin()).await;
    let errors = metric_value(
        &text,
        "rampart_ratelimit_backend_errors_total",
        &[("backend", "redis")],
    )
    .unwrap_or(0.0);
    let fallbacks = metric_value(
        &text,
        "rampart_ratelimit_store_fallbacks_total",
        &[("route", "app")],
    )
    .unwrap_or(0.0);
    let (up, down, after) = (
        admitted_rate(&tally, Duration::from_millis(300), killed),
        admitted_rate(&tally, killed + Duration::from_millis(200), restarted),
        admitted_rate(&tally, resumed + Duration::from_millis(200), end),
    );
    table(
        "Redis killed under load, then restarted (2 ramparts, 50/s shared)",
        &[
            ("requests sent", tally.sent().to_string()),
            ("errors (neither 200 nor 429)", failures(&tally).to_string()),
            ("admitted/s, store up", format!("{up:.0}")),
            (
                "admitted/s, store down (local limits)",
                format!("{down:.0}"),
            ),
            ("admitted/s, store back", format!("{after:.0}")),
            (
                "slowest answer while down",
                ms(slowest(&tally, killed, restarted)),
            ),
            ("recovery time (restart → store up on both)", ms(back)),
            ("backend errors (rampart a)", format!("{errors}")),
            ("fallback decisions (rampart a)", format!("{fallbacks}")),
        ],
    );

    assert_eq!(
        failures(&tally),
        0,
        "requests must keep flowing under the fallback"
    );
    assert!(
        slowest(&tally, killed, restarted) < Duration::from_millis(500),
        "no request may wait on a dead store past its timeout"
    );
    assert!(fallbacks > 0.0 && errors > 0.0, "{text}");
    // Shared: about 50/s plus the burst; local: each rampart its own 50/s.
    assert!(
        up < 75.0,
        "the shared limit held before the fault: {up:.0}/s"
    );
    assert!(
        down > up * 1.3,
        "each rampart enforces alone while down: {down:.0}/s vs {up:.0}/s"
    );
    assert!(after < 75.0, "the shared limit holds again: {after:.0}/s");
    assert!(back < Duration::from_secs(4), "recovery took {back:?}");
}
