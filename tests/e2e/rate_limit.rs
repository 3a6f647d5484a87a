//! Per-tenant rate limiting through real sockets: exact admission counts, the 429 contract,
//! overrides, route totals, and bounded memory that eviction cannot turn into a reset.

use std::net::SocketAddr;

use ::http::Method;

use crate::support::{http, metric_value, metrics, sample, Proxy};

/// `$LIMITS` is the body of the policy's `rate_limit` section; `$TENANTS` of `tenants`.
const LIMITED: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
$TENANTS
upstreams:
  app: { endpoints: [$APP] }
policies:
  limited:
    rate_limit:
$LIMITS
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: limited
"#;

const DEFAULT_TENANTS: &str = "  from: [ { header: x-tenant-id } ]\n  fallback: anonymous";

async fn limited(app: SocketAddr, tenants: &str, limits: &str) -> Proxy {
    Proxy::builder(
        &LIMITED
            .replace("$TENANTS", tenants)
            .replace("$LIMITS", limits),
    )
    .var("APP", app)
    .spawn()
    .await
}

/// Sends `n` GETs as `tenant` (None: no header) and returns their statuses.
async fn burst(addr: SocketAddr, tenant: Option<&str>, n: usize) -> Vec<u16> {
    let client = http::client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let headers: Vec<(&str, &str)> =
            tenant.map(|t| vec![("x-tenant-id", t)]).unwrap_or_default();
        let rsp = http::send(&client, addr, Method::GET, "/ok", &headers, http::empty())
            .await
            .expect("every request must be answered");
        out.push(rsp.status.as_u16());
    }
    out
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|s| **s == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_gets_exactly_its_burst_then_429s_with_the_contract() {
    let app = sample().await;
    let proxy = limited(
        app.addr(),
        DEFAULT_TENANTS,
        "      per_tenant: { rate: 1/min, burst: 5 }",
    )
    .await;
    let addr = proxy.listener("inbound");
    let a = burst(addr, Some("tenant-a"), 5).await;
    assert_eq!(a, vec![200; 5], "the burst of 5 is admitted");
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "tenant-a")]).await;
    rsp.assert_rampart(429, "rate_limited");
    let body = rsp.json();
    assert_eq!(body["error"], "rate_limited");
    let retry_after: u64 = rsp
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("whole seconds");
    assert!(
        (55..=60).contains(&retry_after),
        "one token of 1/min takes up to 60 s: {retry_after}"
    );
    // The message says the wait `retry-after` says, in the same whole seconds.
    assert_eq!(
        body["message"],
        format!("rate limit exceeded for tenant tenant-a; retry in {retry_after}s"),
        "{body}"
    );
    assert_eq!(rsp.header("ratelimit-policy"), Some("\"burst\";q=5;w=300"));
    let rl = rsp.header("ratelimit").expect("ratelimit header");
    assert_eq!(
        rl,
        format!("\"burst\";r=0;t={retry_after}"),
        "t and retry-after agree"
    );
    assert_eq!(
        app.hits_for("/ok"),
        5,
        "refused requests never reach the upstream"
    );
    // Another tenant is unaffected.
    assert_eq!(burst(addr, Some("tenant-b"), 5).await, vec![200; 5]);
    let text = metrics(proxy.admin()).await;
    let limited = metric_value(
        &text,
        "rampart_rate_limited_total",
        &[("tenant", "tenant-a"), ("limit", "burst")],
    );
    assert_eq!(limited, Some(1.0), "{text}");
    let code_429 = metric_value(
        &text,
        "rampart_requests_total",
        &[("tenant", "tenant-a"), ("code", "429")],
    );
    assert_eq!(code_429, Some(1.0), "{text}");
    assert_eq!(
        metric_value(&text, "rampart_tenants_tracked", &[]),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_quotas_and_the_fallback_tenant() {
    let app = sample().await;
    let limits = r#"      per_tenant: { rate: 1/min, burst: 2 }
      overrides:
        acme: { rate: 1/min, burst: 6 }
        trial: [ { rate: 1/min, burst: 5 }, { rate: 3/d } ]
      headers: true"#;
    let proxy = limited(app.addr(), DEFAULT_TENANTS, limits).await;
    let addr = proxy.listener("inbound");
    let acme = burst(addr, Some("acme"), 8).await;
    assert_eq!(
        (count(&acme, 200), count(&acme, 429)),
        (6, 2),
        "acme has its own burst of 6"
    );
    let trial = burst(addr, Some("trial"), 5).await;
    assert_eq!(
        count(&trial, 200),
        3,
        "the daily quota of 3 refuses before the burst of 5: {trial:?}"
    );
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "trial")]).await;
    rsp.assert_rampart(429, "rate_limited");
    assert_eq!(
        rsp.header("ratelimit-policy"),
        Some("\"burst\";q=5;w=300, \"quota\";q=3;w=86400")
    );
    let anon = burst(addr, None, 4).await;
    assert_eq!(
        anon,
        vec![200, 200, 429, 429],
        "the fallback tenant is limited like any other"
    );
    // headers: true puts the RateLimit headers on admitted answers too.
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "fresh")]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("ratelimit"), Some("\"burst\";r=1;t=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_total_caps_all_tenants_together() {
    let app = sample().await;
    let limits =
        "      per_tenant: { rate: 1/min, burst: 5 }\n      total: { rate: 1/min, burst: 8 }";
    let proxy = limited(app.addr(), DEFAULT_TENANTS, limits).await;
    let addr = proxy.listener("inbound");
    let mut admitted = 0;
    for t in ["t1", "t2", "t3", "t4"] {
        admitted += count(&burst(addr, Some(t), 3).await, 200);
    }
    assert_eq!(
        admitted, 8,
        "12 requests within every tenant's burst, but the route admits 8"
    );
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "t5")]).await;
    rsp.assert_rampart(429, "rate_limited");
    assert!(rsp
        .header("ratelimit-policy")
        .expect("policy header")
        .contains("\"total\";q=8"));
    let retry_after = rsp.header("retry-after").expect("retry-after");
    assert_eq!(
        rsp.json()["message"],
        format!("the route's total rate limit is exceeded; retry in {retry_after}s"),
    );
    assert_eq!(app.hits_for("/ok"), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_tenants_stay_within_max_tracked() {
    let app = sample().await;
    let tenants = "  from: [ { header: x-tenant-id } ]\n  max_tracked: 10000\n  metrics_labels: 10";
    let proxy = limited(
        app.addr(),
        tenants,
        "      per_tenant: { rate: 10/s, burst: 20 }",
    )
    .await;
    let addr = proxy.listener("inbound");
    const TOTAL: usize = 200_000;
    const WORKERS: usize = 8;
    let mut rss_after_first = 0;
    for phase in 0..2 {
        let (from, to) = if phase == 0 {
            (0, 20_000)
        } else {
            (20_000, TOTAL)
        };
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            tasks.push(tokio::spawn(async move {
                let client = http::client();
                let mut ok = 0usize;
                for i in (from + w..to).step_by(WORKERS) {
                    let id = format!("tenant-{i:07}");
                    let rsp = http::send(
                        &client,
                        addr,
                        Method::GET,
                        "/ok",
                        &[("x-tenant-id", &id)],
                        http::empty(),
                    )
                    .await
                    .expect("answered");
                    ok += usize::from(rsp.status == 200);
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.expect("worker");
        }
        assert_eq!(
            ok,
            to - from,
            "a new tenant's first request is always admitted"
        );
        let text = metrics(proxy.admin()).await;
        let tracked = metric_value(&text, "rampart_tenants_tracked", &[]).expect("gauge");
        assert!(
            tracked <= 10_000.0,
            "tracked {tracked} must stay within max_tracked"
        );
        // Idle (refilled) buckets are dropped first and losslessly, so the count may be far
        // below the cap after a sweep; it is never above it.
        assert!(tracked >= 1.0, "the table is in use: {tracked}");
        let labels =
            crate::support::metrics::label_values(&text, "rampart_requests_total", "tenant");
        assert!(labels.len() <= 11, "tenant labels are capped: {labels:?}");
        if phase == 0 {
            rss_after_first = proxy.rss_kib();
        }
    }
    let grown = proxy.rss_kib().saturating_sub(rss_after_first);
    assert!(
        grown < 32 * 1024,
        "RSS grew {grown} KiB over 180k more tenants: memory must stay bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_tenant_that_spent_its_burst_is_still_refused() {
    let app = sample().await;
    let tenants = "  from: [ { header: x-tenant-id } ]\n  max_tracked: 100";
    let proxy = limited(
        app.addr(),
        tenants,
        "      per_tenant: { rate: 1/h, burst: 5 }",
    )
    .await;
    let addr = proxy.listener("inbound");
    let spent = burst(addr, Some("heavy"), 6).await;
    assert_eq!(count(&spent, 429), 1);
    // 300 other tenants, each as active as "heavy": the table (100) must evict it.
    let mut tasks = Vec::new();
    for w in 0..6 {
        tasks.push(tokio::spawn(async move {
            for i in (w..300).step_by(6) {
                let statuses = burst(addr, Some(&format!("other-{i}")), 6).await;
                assert_eq!(count(&statuses, 200), 5);
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let text = metrics(proxy.admin()).await;
    let tracked = metric_value(&text, "rampart_tenants_tracked", &[]).expect("gauge");
    assert!(tracked <= 100.0, "{tracked}");
    let back = http::get(addr, "/ok", &[("x-tenant-id", "heavy")]).await;
    back.assert_rampart(429, "rate_limited");
    assert_eq!(
        app.hits_for("/ok"),
        5 + 300 * 5,
        "no request past a spent burst reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_neither_resets_nor_refills_buckets() {
    let app = sample().await;
    let limits = "      per_tenant: { rate: 1/h, burst: 3 }";
    let mut proxy = limited(app.addr(), DEFAULT_TENANTS, limits).await;
    let addr = proxy.listener("inbound");
    assert_eq!(
        burst(addr, Some("spent"), 4).await,
        vec![200, 200, 200, 429]
    );
    assert_eq!(burst(addr, Some("light"), 1).await, vec![200]);

    // Same limits, another change in the file: every bucket keeps its state exactly.
    let same = LIMITED
        .replace("$TENANTS", DEFAULT_TENANTS)
        .replace("$LIMITS", &format!("{limits}\n      headers: false"));
    let sha = crate::support::sha256_hex(proxy.rewrite_config(&same).as_bytes());
    proxy.signal("HUP");
    crate::assert_eventually!(
        metrics(proxy.admin()).await.contains(&sha),
        "reload to {sha}"
    );
    assert_eq!(
        burst(addr, Some("spent"), 1).await,
        vec![429],
        "a reload is no reset"
    );
    assert_eq!(burst(addr, Some("light"), 3).await, vec![200, 200, 429]);

    // A doubled burst takes effect at once but keeps the share used: spent stays spent.
    let doubled = LIMITED
        .replace("$TENANTS", DEFAULT_TENANTS)
        .replace("$LIMITS", "      per_tenant: { rate: 1/h, burst: 6 }");
    let sha = crate::support::sha256_hex(proxy.rewrite_config(&doubled).as_bytes());
    proxy.signal("HUP");
    crate::assert_eventually!(
        metrics(proxy.admin()).await.contains(&sha),
        "reload to {sha}"
    );
    assert_eq!(
        burst(addr, Some("spent"), 1).await,
        vec![429],
        "no fresh burst for a spent tenant"
    );
    assert_eq!(
        burst(addr, Some("new"), 7)
            .await
            .iter()
            .filter(|s| **s == 200)
            .count(),
        6,
        "new tenants get the new burst"
    );
}

/// A refusal sent before the request's body was read (`Expect: 100-continue`, or a body over
/// the 64 KiB read with its head, still coming) is followed by the connection's close, and
/// says so: `connection: close` (RFC 9112 §9.6). A refused request whose body was all read
/// keeps its connection. Before, the head said nothing and the connection closed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_is_read_says_the_connection_closes() {
    use crate::support::raw;
    use std::time::Duration;
    let app = sample().await;
    let proxy = limited(
        app.addr(),
        DEFAULT_TENANTS,
        "      per_tenant: { rate: 1/min, burst: 1 }",
    )
    .await;
    let addr = proxy.listener("inbound");
    assert_eq!(burst(addr, None, 1).await, [200]);
    let expect =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
    let large = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nfirst bytes";
    for req in [&expect[..], &large[..]] {
        let rsp = raw::exchange(addr, req, Duration::from_secs(3)).await;
        assert_eq!(rsp.status(), Some(429), "{}", rsp.text());
        assert_eq!(
            rsp.header("connection").as_deref(),
            Some("close"),
            "{}",
            rsp.text()
        );
        assert!(rsp.closed, "closed after it: {}", rsp.text());
    }
    // An upload read to its end (by the upstream) keeps its connection.
    let whole = b"POST /echo HTTP/1.1\r\nHost: a\r\nx-tenant-id: other\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let rsp = raw::exchange(addr, whole, Duration::from_millis(500)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    assert_eq!(rsp.header("connection"), None, "{}", rsp.text());
    assert!(!rsp.closed, "kept: {}", rsp.text());
}
