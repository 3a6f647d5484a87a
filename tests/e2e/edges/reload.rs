//! Reload keeps each route's state its own, applies `tenants.max_tracked` and `runtime`, and
//! refuses (saying why) what only a restart can change.

use std::time::Duration;

use super::OK;
use crate::support::capture::Capture;
use crate::support::metrics::{config_sha, reloads};
use crate::support::{free_addr, http, metric_value, metrics, raw, Proxy};

const TWO_ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  one: { rate_limit: { per_tenant: { rate: 1/h, burst: 1 } } }
  two: { rate_limit: { per_tenant: { rate: 1/h, burst: 3 } } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { match: { path_prefix: /a }, upstream: app, policy: one }
      - { match: { path_prefix: /b }, upstream: app, policy: two }
"#;

async fn post_reload(admin: std::net::SocketAddr) -> http::Resp {
    http::post(admin, "/reload", &[], "").await
}

/// Before 2464352 routes were matched to their old state by (label, upstream): both routes are
/// labelled `app`, so after any reload `/b` got `/a`'s spent limiter and its first request was
/// 429. Fails on the old code (reasoned from `generation.rs` at 8024b07).
#[tokio::test]
async fn a_reload_of_an_unchanged_file_keeps_each_routes_limiter() {
    let app = Capture::start(OK).await;
    let proxy = Proxy::builder(TWO_ROUTES)
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    assert_eq!(http::get(addr, "/a", &[]).await.status, 200);
    http::get(addr, "/a", &[])
        .await
        .assert_rampart(429, "rate_limited");

    let rsp = post_reload(admin).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    for i in 0..3 {
        let rsp = http::get(addr, "/b", &[]).await;
        assert_eq!(
            rsp.status,
            200,
            "/b request {i} must be admitted: {}",
            rsp.text()
        );
    }
    http::get(addr, "/b", &[])
        .await
        .assert_rampart(429, "rate_limited");
    http::get(addr, "/a", &[])
        .await
        .assert_rampart(429, "rate_limited");
    assert_eq!(app.hits(), 4, "one /a and three /b reach the upstream");
}

const TRACKED: &str = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { header_read_timeout: $HEAD }
tenants: { max_tracked: $MAX }
upstreams:
  app: { endpoints: [$APP] }
policies:
  limited: { rate_limit: { per_tenant: { rate: 1000/s, burst: 1000 } } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: app, policy: limited }
"#;

fn tracked_with(max: u32, head: &str) -> String {
    TRACKED
        .replace("$MAX", &max.to_string())
        .replace("$HEAD", head)
}

async fn tracked(admin: std::net::SocketAddr) -> f64 {
    metric_value(&metrics(admin).await, "rampart_tenants_tracked", &[]).unwrap_or(0.0)
}

/// Before 2464352 `set_max_tracked` was never called on reload, so the cap stayed 100 and all
/// twelve tenants stayed tracked. Fails on the old code (reasoned from `reload.rs` at 8024b07).
#[tokio::test]
async fn a_lowered_max_tracked_applies_after_reload() {
    let app = Capture::start(OK).await;
    let mut proxy = Proxy::builder(&tracked_with(100, "10s"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    for i in 0..6 {
        let t = format!("early{i}");
        assert_eq!(
            http::get(addr, "/", &[("x-tenant-id", &t)]).await.status,
            200
        );
    }
    assert_eq!(tracked(admin).await, 6.0);

    proxy.rewrite_config(&tracked_with(3, "10s"));
    let rsp = post_reload(admin).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    for i in 0..6 {
        let t = format!("late{i}");
        let rsp = http::get(addr, "/", &[("x-tenant-id", &t)]).await;
        assert!(
            [200, 429, 503].contains(&rsp.status.as_u16()),
            "{}",
            rsp.text()
        );
        let now = tracked(admin).await;
        assert!(now <= 3.0, "tenants tracked {now} over the new cap of 3");
    }
}

/// Before 2464352 a changed `admin.listen` was ignored silently (reload reported success).
/// Fails on the old code (reasoned from `reload.rs` at 8024b07: no such check).
#[tokio::test]
async fn a_changed_admin_listen_is_refused_saying_a_restart_is_needed() {
    let app = Capture::start(OK).await;
    let mut proxy = Proxy::builder(&tracked_with(100, "10s"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let admin = proxy.admin();
    let (sha, before) = (config_sha(admin).await, metrics(admin).await);
    let moved = tracked_with(100, "10s").replace(
        "admin: { listen: $ADMIN }",
        &format!("admin: {{ listen: {} }}", free_addr()),
    );
    proxy.rewrite_config(&moved);
    let rsp = post_reload(admin).await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(
        rsp.text().contains("restart"),
        "the refusal must say a restart is needed: {}",
        rsp.text()
    );
    // Placed at the new value, as every refusal of the file is: line 3 (the template starts
    // with an empty line), column 18.
    let want = format!(
        "{}:3:18: admin.listen: changed from {admin} to ",
        proxy.config_path().display()
    );
    assert!(
        rsp.text().contains(&want),
        "want {want:?} in {}",
        rsp.text()
    );
    assert_eq!(config_sha(admin).await, sha, "the old config stays");
    let after = metrics(admin).await;
    assert_eq!(
        reloads(&after, "failure"),
        reloads(&before, "failure") + 1.0
    );
    // Logged as the refusal it is, in the words of every refused file, not as a failure.
    assert_eventually!(
        proxy
            .log()
            .contains("reload refused; the configuration in force stays"),
        "the log must say the reload was refused: {}",
        proxy.log()
    );
    assert!(!proxy.log().contains("reload failed"), "{}", proxy.log());
}

/// Before 2464352 `runtime` changes were ignored for listeners that stay, and a silent socket
/// was never closed at all. Fails on the old code (reasoned: no watchdog at 8024b07).
#[tokio::test]
async fn a_lowered_header_read_timeout_applies_to_new_connections() {
    let app = Capture::start(OK).await;
    let mut proxy = Proxy::builder(&tracked_with(100, "20s"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    proxy.rewrite_config(&tracked_with(100, "1s"));
    let rsp = post_reload(admin).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let silent = raw::exchange(addr, b"", Duration::from_secs(6)).await;
    assert!(silent.closed, "a silent connection must be closed");
    assert!(
        silent.elapsed >= Duration::from_millis(900) && silent.elapsed < Duration::from_secs(3),
        "closed at the new 1s head timeout, not the old 20s: {:?}",
        silent.elapsed
    );
}
