//! Endpoint health through real sockets: active checks take a failing endpoint out and bring it
//! back, `/readyz` follows the inbound upstream's health, p2c prefers the faster endpoint, and
//! outlier ejection never takes out more than `max_ejected`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::support::{http, metric_value, metrics, sample, Proxy};

/// `$UPSTREAM` is the body of upstream `app`.
const TEMPLATE: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app:
$UPSTREAM
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
"#;

async fn proxy_with(upstream: &str) -> Proxy {
    Proxy::builder(&TEMPLATE.replace("$UPSTREAM", upstream))
        .spawn()
        .await
}

fn healthy_gauge(text: &str, endpoint: SocketAddr) -> Option<f64> {
    let ep = endpoint.to_string();
    metric_value(
        text,
        "rampart_upstream_endpoint_healthy",
        &[("upstream", "app"), ("endpoint", ep.as_str())],
    )
}

/// An upstream that answers 200 after `delay`, naming itself in `x-sample-addr`.
async fn delayed_server(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind must work");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    let mut rsp = hyper::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    rsp.headers_mut().insert(
                        "x-sample-addr",
                        addr.to_string()
                            .parse()
                            .expect("an address is a header value"),
                    );
                    Ok::<_, Infallible>(rsp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let (a, b) = (sample().await, sample().await);
    let proxy = proxy_with(&format!(
        "    endpoints: [{}, {}]\n    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}",
        a.addr(),
        b.addr()
    ))
    .await;
    let addr = proxy.listener("inbound");
    a.set_healthy(false);
    assert_eventually!(
        healthy_gauge(&metrics(proxy.admin()).await, a.addr()) == Some(0.0),
        "endpoint a must be marked unhealthy"
    );
    a.reset();
    for _ in 0..10 {
        let rsp = http::get(addr, "/ok", &[]).await;
        assert_eq!(
            rsp.served_by(),
            Some(b.addr()),
            "an unhealthy endpoint gets no traffic"
        );
    }
    assert_eq!(a.hits_for("/ok"), 0);
    a.set_healthy(true);
    assert_eventually!(
        healthy_gauge(&metrics(proxy.admin()).await, a.addr()) == Some(1.0),
        "endpoint a must come back"
    );
    for _ in 0..10 {
        http::get(addr, "/ok", &[]).await;
    }
    assert!(
        a.hits_for("/ok") > 0,
        "a healthy-again endpoint gets traffic again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_inbound_upstreams_health() {
    let app = sample().await;
    let proxy = proxy_with(&format!(
        "    endpoints: [{}]\n    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }}",
        app.addr()
    ))
    .await;
    assert_eq!(http::get(proxy.admin(), "/readyz", &[]).await.status, 200);
    app.set_healthy(false);
    assert_eventually!(
        http::get(proxy.admin(), "/readyz", &[]).await.status == 503,
        "/readyz must fail while the inbound upstream has no healthy endpoint"
    );
    app.set_healthy(true);
    assert_eventually!(
        http::get(proxy.admin(), "/readyz", &[]).await.status == 200,
        "/readyz must recover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_sends_most_traffic_to_the_faster_endpoint() {
    // The slow endpoint is 250 times slower, so that a loaded machine cannot make the fast one
    // look as slow: its tries, the scheduler's delays included, would have to take about
    // 250 ms. At 25 ms, under a load average of 13, the fast one got 71 % once: its latency
    // EWMA rises at once to a slow sample, and its answers are slower too. A random pick
    // still sends each request to either with even odds, however slow each is: about half.
    let fast = delayed_server(Duration::from_millis(1)).await;
    let slow = delayed_server(Duration::from_millis(250)).await;
    let proxy = proxy_with(&format!(
        "    endpoints: [{fast}, {slow}]\n    balance: p2c"
    ))
    .await;
    let addr = proxy.listener("inbound");
    // Eight clients at once, so in-flight counts weigh in as they do under load.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut by_fast = 0u32;
                for _ in 0..40 {
                    let rsp = http::get(addr, "/", &[]).await;
                    assert_eq!(rsp.status, 200);
                    by_fast += u32::from(rsp.served_by() == Some(fast));
                }
                by_fast
            })
        })
        .collect();
    let mut to_fast = 0;
    for t in tasks {
        to_fast += t.await.expect("client task must not panic");
    }
    let total = 8 * 40;
    println!(
        "p2c split: fast {to_fast} / slow {} of {total}",
        total - to_fast
    );
    assert!(
        to_fast * 100 >= total * 75,
        "p2c must send most traffic to the faster endpoint: {to_fast} of {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_never_ejects_more_than_max_ejected() {
    let apps = [
        sample().await,
        sample().await,
        sample().await,
        sample().await,
    ];
    let list: Vec<String> = apps.iter().map(|a| a.addr().to_string()).collect();
    let proxy = proxy_with(&format!(
        "    endpoints: [{}]\n    outlier: {{ consecutive_failures: 2, eject_for: 30s, max_ejected: 50% }}",
        list.join(", ")
    ))
    .await;
    let addr = proxy.listener("inbound");
    // Every endpoint fails: without the cap, all four would be ejected.
    for _ in 0..40 {
        assert_eq!(http::get(addr, "/status/500", &[]).await.status, 500);
    }
    let text = metrics(proxy.admin()).await;
    let ejected = apps
        .iter()
        .filter(|a| healthy_gauge(&text, a.addr()) == Some(0.0))
        .count();
    assert_eq!(
        ejected, 2,
        "50% of 4 endpoints may be ejected, and they were"
    );
    let state = http::get(proxy.admin(), "/state", &[]).await.json();
    assert!(
        state["endpoints"]["app"].as_array().map(Vec::len) == Some(4),
        "/state lists every endpoint: {state}"
    );
}
