//! Graceful shutdown: on SIGTERM (and SIGINT) readiness drops at once, the listener closes,
//! requests in flight finish, and the process exits 0 within `shutdown_grace`.

use std::time::Duration;

use rampart::sample::Sample;
use tokio::task::JoinHandle;

use crate::support::conn::Conn;
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
    // A SIGHUP while draining reloads nothing, and says so (before, it went unheeded).
    proxy.signal("HUP");
    assert_eventually!(
        proxy.log().contains("SIGHUP while shutting down"),
        "the SIGHUP is refused in the log"
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
    assert!(
        !trail.contains("\"reload\""),
        "no reload while draining: {trail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_while_draining_exits_at_once() {
    a_second_signal_ends_the_drain("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigint_after_sigterm_exits_at_once() {
    a_second_signal_ends_the_drain("INT").await;
}

/// A request still in flight when `shutdown_grace` ends is cut by rampart, not by its client:
/// its access log line says so (503, reason `shutdown`), not 499 ("client closed request"),
/// and the process exits 0 at the end of the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_end_of_the_grace_is_not_logged_as_the_clients_499() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let cfg = format!(
        r#"
version: 1
admin: {{ listen: $ADMIN }}
runtime: {{ shutdown_grace: 300ms }}
upstreams:
  app: {{ endpoints: [$APP] }}
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: {{ to: {} }}
    routes:
      - upstream: app
"#,
        log.display()
    );
    let mut proxy = Proxy::builder(&cfg).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    let in_flight = tokio::spawn(async move {
        http::try_get(addr, "/slow?ms=5000", &[("x-request-id", "cut-at-grace")]).await
    });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is in flight");
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(3)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    assert!(
        in_flight.await.expect("no panic").is_err(),
        "the client's connection was closed without an answer"
    );
    let lines = crate::support::log_lines(&log);
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "cut-at-grace")
        .unwrap_or_else(|| panic!("a line for the cut request: {lines:?}\n{}", proxy.log()));
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["reason"], "shutdown", "{line}");
    assert_eq!(line["tries"], 1, "{line}");
}

/// The same for HTTP/2 requests, which hyper serves each in a task of its own: both streams
/// of an h2c connection still waiting for their upstream when the grace ends are cut (their
/// client sees them fail, never an answer), logged as 503 `shutdown` with their try, and the
/// process exits 0 at the end of the grace. Before, the connection's task was cut but its
/// streams' tasks ran on, to the upstream's answer or the process's exit, and left no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_cut_at_the_end_of_the_grace_are_logged_as_cut() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let cfg = format!(
        r#"
version: 1
admin: {{ listen: $ADMIN }}
runtime: {{ shutdown_grace: 300ms }}
upstreams:
  app: {{ endpoints: [$APP] }}
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    access_log: {{ to: {} }}
    routes:
      - upstream: app
"#,
        log.display()
    );
    let mut proxy = Proxy::builder(&cfg).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");
    let send = http::h2c(addr).await;
    let calls: Vec<_> = ["h2-cut-1", "h2-cut-2"]
        .into_iter()
        .map(|id| {
            let mut send = send.clone();
            let req = ::http::Request::get(format!("http://{addr}/slow?ms=5000"))
                .header("x-request-id", id)
                .body(http::empty())
                .expect("request");
            tokio::spawn(async move { send.send_request(req).await })
        })
        .collect();
    assert_eventually!(app.hits_for("/slow") == 2, "both requests are in flight");
    let signalled = tokio::time::Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(3)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "exited at the grace's end: {took:?}"
    );
    for call in calls {
        let got = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .expect("the stream ended with the grace")
            .expect("no panic");
        assert!(got.is_err(), "cut, never answered: {got:?}");
    }
    let lines = crate::support::log_lines(&log);
    for id in ["h2-cut-1", "h2-cut-2"] {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("a line for {id}: {lines:?}\n{}", proxy.log()));
        assert_eq!(line["status"], 503, "{line}");
        assert_eq!(line["reason"], "shutdown", "{line}");
        assert_eq!(line["tries"], 1, "{line}");
    }
}

/// The same for a listener a reload removes: a request still in flight on it when the grace
/// ends is cut, logged as 503 `shutdown`, counted under that code (not 499), and its try
/// counted as abandoned with cause `shutdown`, not `client_gone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_when_a_removed_listener_drains_is_counted_as_rampart_s_cut() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let base = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 300ms }
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
"#;
    let extra = format!(
        "  - name: extra\n    direction: inbound\n    listen: $LISTEN_extra\n    \
         access_log: {{ to: {} }}\n    routes:\n      - upstream: app\n",
        log.display()
    );
    let mut proxy = Proxy::builder(&format!("{base}{extra}"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("extra"), proxy.admin());
    let in_flight = tokio::spawn(async move {
        http::try_get(addr, "/slow?ms=5000", &[("x-request-id", "cut-by-reload")]).await
    });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is in flight");
    proxy.rewrite_config(base);
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), in_flight)
            .await
            .expect("cut within the grace")
            .expect("no panic")
            .is_err(),
        "the client's connection was closed without an answer"
    );
    let lines = crate::support::wait_log_lines(&log, 1).await;
    assert_eq!(lines[0]["request_id"], "cut-by-reload", "{lines:?}");
    assert_eq!(lines[0]["status"], 503, "{lines:?}");
    assert_eq!(lines[0]["reason"], "shutdown", "{lines:?}");
    let text = crate::support::metrics(admin).await;
    let count =
        |name: &str, labels: &[(&str, &str)]| crate::support::metric_value(&text, name, labels);
    assert_eq!(
        count(
            "rampart_requests_total",
            &[("listener", "extra"), ("code", "503")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count("rampart_requests_total", &[("code", "499")]),
        None,
        "{text}"
    );
    assert_eq!(
        count(
            "rampart_upstream_tries_abandoned_total",
            &[("cause", "shutdown")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(
            "rampart_upstream_tries_abandoned_total",
            &[("cause", "client_gone")]
        ),
        Some(0.0),
        "{text}"
    );
}

/// SIGTERM soon after a reload took away the socket a request is in flight on (removed its
/// listener, or, `moved`, moved the listener to another address of its port): the drain waits
/// for that request as for one on a listener in force, and rampart exits 0 once it is
/// answered. Before, the drain waited only for the listeners in force; those idle, rampart
/// exited at once and the request was cut unanswered, unlogged and uncounted.
async fn sigterm_waits_for_a_socket_a_reload_took_away(moved: bool) {
    use crate::reload::{movable, reload_to, EXTRA};
    let app = sample().await;
    let port = crate::support::free_port();
    let runtime = "runtime: { shutdown_grace: 10s }";
    let kept = movable("127.0.0.1", runtime);
    let (before, after) = if moved {
        (kept, movable("0.0.0.0", runtime))
    } else {
        (format!("{kept}{EXTRA}"), kept)
    };
    let mut proxy = Proxy::builder(&before)
        .var("APP", app.addr())
        .var("PORT", port)
        .spawn()
        .await;
    let at = if moved {
        ([127, 0, 0, 1], port).into()
    } else {
        proxy.listener("extra")
    };
    let in_flight = tokio::spawn(async move { http::try_get(at, "/slow?ms=1500", &[]).await });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is in flight");
    reload_to(&mut proxy, &after).await;
    let signalled = tokio::time::Instant::now();
    proxy.signal("TERM");
    let rsp = in_flight.await.expect("no panic");
    let rsp = rsp.unwrap_or_else(|e| panic!("must be answered ({e}); log:\n{}", proxy.log()));
    assert_eq!(rsp.status, 200, "log:\n{}", proxy.log());
    let status = proxy.wait_exit(Duration::from_secs(12)).await;
    let status = status.unwrap_or_else(|| panic!("rampart must exit; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "not the whole grace: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_request_on_a_listener_a_reload_removed() {
    sigterm_waits_for_a_socket_a_reload_took_away(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_request_on_the_old_socket_of_a_listener_a_reload_moved() {
    sigterm_waits_for_a_socket_a_reload_took_away(true).await;
}

/// Listener `extra` with its one place (`max_connections: 1`, one worker, `shutdown_grace:
/// 2s`, its access log to `log`) taken by a slow request (`/slow?ms=1000`, in flight on
/// return, its status to come from the task): a connection made next waits for the place.
/// With the policy without `extra`, to reload to.
async fn one_place_taken(log: &std::path::Path) -> (Sample, Proxy, String, JoinHandle<u16>) {
    use crate::reload::{movable, EXTRA};
    let app = sample().await;
    let runtime = "runtime: { shutdown_grace: 2s, max_connections: 1 }";
    let kept = movable("127.0.0.1", runtime);
    let logged = EXTRA.replace(
        "    routes:",
        &format!("    access_log: {{ to: {} }}\n    routes:", log.display()),
    );
    let proxy = Proxy::builder(&format!("{kept}{logged}"))
        .var("APP", app.addr())
        .var("PORT", crate::support::free_port())
        .env("RAMPART_WORKERS", 1)
        .spawn()
        .await;
    let at = proxy.listener("extra");
    let first =
        tokio::spawn(async move { http::get(at, "/slow?ms=1000", &[]).await.status.as_u16() });
    assert_eventually!(app.hits_for("/slow") == 1, "the first request is in flight");
    (app, proxy, kept, first)
}

/// A listener a reload removes drains within one grace, its connections waiting for a place
/// (`max_connections`) included: one served only once a place freed, still waiting for its
/// upstream when the grace (counted from the reload) ends, is cut then, and logged as cut.
/// Before, the connections were given a second grace counted from the last place given,
/// while the listener's handle stopped waiting for them at the first one's end: such a
/// connection was then never cut, and ran on to its upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_waited_for_a_place_is_cut_at_the_end_of_a_removed_listener_s_grace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let (app, mut proxy, kept, first) = one_place_taken(&log).await;
    let at = proxy.listener("extra");
    let second = tokio::spawn(async move {
        http::try_get(at, "/slow?ms=10000", &[("x-request-id", "waited")]).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.hits_for("/slow"), 1, "the second waits for a place");
    crate::reload::reload_to(&mut proxy, &kept).await;
    let reloaded = tokio::time::Instant::now();
    assert_eq!(first.await.expect("no panic"), 200);
    assert_eventually!(
        app.hits_for("/slow") == 2,
        "the second is served once a place frees"
    );
    let second = tokio::time::timeout(Duration::from_secs(4), second)
        .await
        .expect("cut at the grace's end, not answered at the upstream's")
        .expect("no panic");
    let took = reloaded.elapsed();
    assert!(second.is_err(), "cut, never answered: {second:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3000),
        "cut at the end of the grace counted from the reload: {took:?}"
    );
    let lines = crate::support::wait_log_lines(&log, 2).await;
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "waited")
        .unwrap_or_else(|| panic!("a line for the cut request: {lines:?}"));
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["reason"], "shutdown", "{line}");
}

/// A request the lean server hands to hyper (a chunked upload; a CONNECT, an upgrade or a
/// body slow to come go the same way) on a connection first served once its listener, removed
/// by a reload, drains (it waited for a place) is answered, and the connection is then closed.
/// Before, hyper was told to close before it had read the request handed to it, and closed
/// the connection unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_handed_to_hyper_on_a_connection_served_once_its_listener_drains_is_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, mut proxy, kept, first) = one_place_taken(&dir.path().join("access.jsonl")).await;
    let mut second = Conn::open(proxy.listener("extra")).await;
    second
        .send(b"POST /echo HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    crate::reload::reload_to(&mut proxy, &kept).await;
    assert_eq!(first.await.expect("no panic"), 200);
    let answer = second.answer(false).await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "hello".to_owned()),
        "log:\n{}",
        proxy.log()
    );
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(second.closes().await, "closed after its answer");
    assert_eq!(app.hits_for("/echo"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_asked_for_while_draining_is_refused_and_binds_nothing() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&one_route("runtime: { shutdown_grace: 5s }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("inbound"), proxy.admin());
    let in_flight = tokio::spawn(async move { http::get(addr, "/slow?ms=1500", &[]).await });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request in flight");
    proxy.signal("TERM");
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener must stop accepting"
    );
    // Before the fix the reload bound the listener again, to be cut at exit.
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 503, "{rsp:?}");
    assert!(rsp.text().contains("shutting down"), "{rsp:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no listener is bound again while draining"
    );
    assert_eq!(in_flight.await.expect("client task").status, 200);
    let status = proxy.wait_exit(GRACE + Duration::from_secs(2)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
}

/// The same for HTTP/2 requests on a listener a reload removes: a stream still waiting for
/// its upstream when the grace ends is cut (its client never answered), counted under 503 and
/// not 499, and its try counted as abandoned with cause `shutdown`. Before, hyper's stream
/// task dropped it after its connection as a client's going: a 499, cause `client_gone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_cut_when_a_removed_listener_drains_is_counted_as_rampart_s_cut() {
    let app = sample().await;
    let base = r#"
version: 1
admin: { listen: $ADMIN }
runtime: { shutdown_grace: 300ms }
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
"#;
    let extra = "  - name: extra\n    direction: inbound\n    listen: $LISTEN_extra\n    \
                 routes:\n      - upstream: app\n";
    let mut proxy = Proxy::builder(&format!("{base}{extra}"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let (addr, admin) = (proxy.listener("extra"), proxy.admin());
    let mut send = http::h2c(addr).await;
    let req = ::http::Request::get(format!("http://{addr}/slow?ms=5000"))
        .body(http::empty())
        .expect("request");
    let in_flight = tokio::spawn(async move { send.send_request(req).await });
    assert_eventually!(app.hits_for("/slow") == 1, "the slow request is in flight");
    proxy.rewrite_config(base);
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let got = tokio::time::timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("cut within the grace")
        .expect("no panic");
    assert!(got.is_err(), "cut, never answered: {got:?}");
    let count = |text: &str, name: &str, labels: &[(&str, &str)]| {
        crate::support::metric_value(text, name, labels)
    };
    assert_eventually!(
        count(
            &crate::support::metrics(admin).await,
            "rampart_requests_total",
            &[("listener", "extra"), ("code", "503")]
        ) == Some(1.0),
        "the cut request is counted as 503"
    );
    let text = crate::support::metrics(admin).await;
    assert_eq!(
        count(&text, "rampart_requests_total", &[("code", "499")]),
        None,
        "{text}"
    );
    assert_eq!(
        count(
            &text,
            "rampart_upstream_tries_abandoned_total",
            &[("cause", "shutdown")]
        ),
        Some(1.0),
        "{text}"
    );
}

/// A reload already under way when shutdown begins (past its look at the drain, reading its
/// file) applies, and is recorded in the audit trail before the shutdown: the trail ends with
/// the shutdown, as the policy in force at exit is the reload's. Before, the shutdown's entry
/// was written at once and the reload's after it. In process, on one thread: the reload is
/// parked on its file's read when the shutdown begins.
#[tokio::test]
async fn a_reload_under_way_when_shutdown_begins_is_in_the_trail_before_the_shutdown() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = dir.path().join("audit.jsonl");
    let rendered = Proxy::builder(&one_route("audit: { file: $AUDIT }"))
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .render();
    let config = rampart::load_config(&rendered.path).expect("the policy validates");
    let r = rampart::Rampart::start(config)
        .await
        .expect("rampart starts");
    let shared = r.shared().clone();
    let reload = tokio::spawn(async move {
        rampart::reload::reload(&shared, rampart::audit::Source::Post).await
    });
    // The reload runs up to its file's read, on the blocking pool.
    tokio::task::yield_now().await;
    r.shutdown().await;
    let applied = reload.await.expect("the reload's task");
    assert!(applied.is_ok(), "begun before the shutdown: {applied:?}");

    let text = std::fs::read_to_string(&trail).expect("the trail");
    let shape: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .map(|l| (l["event"].to_string(), l["result"].to_string()))
        .collect();
    let want = [("start", "ok"), ("reload", "ok"), ("shutdown", "ok")]
        .map(|(e, r)| (format!("\"{e}\""), format!("\"{r}\"")));
    assert_eq!(shape, want, "{text}");
}
