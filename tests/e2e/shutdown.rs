//! Graceful shutdown: on SIGTERM (and SIGINT) readiness drops at once, the listener closes,
//! requests in flight finish, and the process exits 0 within `shutdown_grace`.

use std::time::Duration;

use crate::support::{http, one_route, sample, Proxy};

const GRACE: Duration = Duration::from_secs(5);

async fn drains_in_flight_then_exits_0(sig: &str) {
    let app = sample().await;
    let mut proxy = Proxy::builder(&one_route("runtime: { shutdown_grace: 5s }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());

    let in_flight = tokio::spawn(async move { http::get(addr, "/slow?ms=1500", &[]).await });
    assert_eventually!(
        app.hits_for("/slow") == 1,
        "the slow request must be in flight"
    );

    let signalled = tokio::time::Instant::now();
    proxy.signal(sig);
    assert_eventually!(
        http::try_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 503),
        "/readyz must answer 503 while draining"
    );
    assert!(
        !in_flight.is_finished(),
        "readiness must drop before the drain ends"
    );
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener must stop accepting"
    );
    assert!(
        !in_flight.is_finished(),
        "the listener must close before the drain ends"
    );

    let rsp = in_flight.await.expect("the client task must not panic");
    assert_eq!(rsp.status, 200, "the request in flight must finish");
    assert_eq!(rsp.text(), "ok\n");

    let status = proxy.wait_exit(GRACE + Duration::from_secs(2)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let took = signalled.elapsed();
    assert!(
        took < GRACE,
        "exit must not wait for the whole grace: {took:?}"
    );
    assert_eq!(app.hits_for("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_then_exits_0() {
    drains_in_flight_then_exits_0("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_then_exits_0() {
    drains_in_flight_then_exits_0("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_proxy_exits_0_at_once_on_sigterm() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&one_route("runtime: { shutdown_grace: 5s }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    assert_eq!(
        http::get(proxy.listener("inbound"), "/ok", &[])
            .await
            .status,
        200
    );
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(2)).await;
    let status = status.unwrap_or_else(|| panic!("an idle proxy must exit fast:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0));
}

/// A second SIGTERM (or SIGINT) while a request held by a slow upstream drains: rampart stops
/// waiting for it and exits 0 at once, not at the end of a 30 s grace, having written the
/// access log line of the request answered before and the audit trail's shutdown entry.
async fn a_second_signal_ends_the_drain(second: &str) {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (access, audit) = (
        dir.path().join("access.jsonl"),
        dir.path().join("audit.jsonl"),
    );
    let template = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 30s }
audit: { file: $AUDIT }
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: { to: $ACCESS }
    routes:
      - upstream: app
"#;
    let mut proxy = Proxy::builder(template)
        .var("APP", app.addr())
        .var("ACCESS", access.display())
        .var("AUDIT", audit.display())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    let _held = tokio::spawn(async move { http::try_get(addr, "/slow?ms=60000", &[]).await });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is in flight");

    proxy.signal("TERM");
    assert_eventually!(
        http::try_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 503),
        "draining"
    );
    let signalled = tokio::time::Instant::now();
    proxy.signal(second);
    let status = proxy.wait_exit(Duration::from_secs(8)).await;
    let status =
        status.unwrap_or_else(|| panic!("a second signal must end the drain:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let log = proxy.log();
    assert!(log.contains("second signal while draining"), "{log}");

    let lines = crate::support::log_lines(&access);
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/ok" && l["status"] == 200),
        "{lines:?}"
    );
    let trail = std::fs::read_to_string(&audit).expect("audit trail");
    assert!(trail.lines().any(|l| l.contains("\"shutdown\"")), "{trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_while_draining_exits_at_once() {
    a_second_signal_ends_the_drain("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigint_after_sigterm_exits_at_once() {
    a_second_signal_ends_the_drain("INT").await;
}
