//! A hundred reloads (`POST /reload`, two valid files in turn) under steady load: no client
//! sees a failed request.

use super::{ms, table, Load};
use crate::support::metrics::reloads;
use crate::support::{http, metrics, sample, Proxy};

/// `$APP` behind a route matching `$PREFIX`, with a small policy so each reload rebuilds
/// policy state too.
const TEMPLATE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  p:
    timeout: { request: 5s }
    retry: { attempts: 2 }
    rate_limit: { total: { rate: $RATE, burst: 100000 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - match: { path_prefix: $PREFIX }
        upstream: app
        policy: p
"#;

const RELOADS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let app = sample().await;
    let files = [
        TEMPLATE
            .replace("$PREFIX", "/")
            .replace("$RATE", "100000/s"),
        TEMPLATE
            .replace("$PREFIX", "/o")
            .replace("$RATE", "200000/s"),
    ];
    let mut proxy = Proxy::builder(&files[0])
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let before = reloads(&metrics(admin).await, "success");

    let load = Load::start(addr, "/ok", 4);
    load.wait_more(20).await;
    let t0 = load.now();
    for i in 1..=RELOADS {
        proxy.rewrite_config(&files[i % 2]);
        let rsp = http::post(admin, "/reload", &[], "").await;
        assert_eq!(rsp.status, 200, "reload {i}: {}", rsp.text());
        if i % 10 == 0 {
            // Requests keep flowing between reloads.
            load.wait_more(4).await;
        }
    }
    let storm = load.now() - t0;
    load.wait_more(20).await;
    let tally = load.finish().await;
    let applied = reloads(&metrics(admin).await, "success") - before;
    let errors = tally.errors();
    table(
        "100 reloads (POST /reload, two files in turn) under load",
        &[
            ("requests sent", tally.sent().to_string()),
            ("errors", errors.len().to_string()),
            ("reloads applied", applied.to_string()),
            ("storm took", ms(storm)),
            ("recovery time", ms(tally.recovery(t0))),
        ],
    );
    assert_eq!(applied, RELOADS as f64);
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert_eq!(app.hits_for("/ok"), tally.sent() as u64);
    assert!(!proxy.log().contains("panicked"));
}
