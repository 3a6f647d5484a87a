//! One of two endpoints stops under steady GET load; retries hide it from every client.

use std::time::Duration;

use super::{ms, table, Load};
use crate::support::{http, sample, Proxy};

const TWO_ENDPOINTS: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$A, $B], connect_timeout: 500ms }
policies:
  retrying:
    timeout: { request: 5s }
    retry:
      attempts: 3
      on: [connect_error, reset, 502, 503, 504]
      backoff: { base: 5ms, max: 20ms }
      budget: { ratio: 100%, min_per_second: 1000 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: retrying
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_stopped_under_load_costs_no_client_an_error() {
    let (a, b) = (sample().await, sample().await);
    let b_addr = b.addr();
    let proxy = Proxy::builder(TWO_ENDPOINTS)
        .var("A", a.addr())
        .var("B", b_addr)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    let load = Load::start(addr, "/ok", 4);
    load.wait_more(100).await;
    assert!(b.hits() > 0, "both endpoints must serve before the fault");
    let fault = load.now();
    b.stop();
    load.wait_more(300).await;
    let a_hits_before = a.hits();
    load.wait_more(50).await;
    let tally = load.finish().await;

    let errors = tally.errors();
    table(
        "one of two endpoints stopped (retries on)",
        &[
            ("requests sent", tally.sent().to_string()),
            ("errors", errors.len().to_string()),
            ("recovery time", ms(tally.recovery(fault))),
            (
                "p99 before / after",
                format!(
                    "{} / {}",
                    ms(tally.latency(Duration::ZERO, fault, 0.99)),
                    ms(tally.latency(fault, Duration::MAX, 0.99))
                ),
            ),
        ],
    );
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    assert!(a.hits() > a_hits_before, "the live endpoint keeps serving");
    // The proxy is still whole: a plain request after the storm works.
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}
