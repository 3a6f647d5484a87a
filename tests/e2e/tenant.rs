//! Tenant identification: fallback, rejection, validation, and the cap on metric labels.

use std::net::SocketAddr;

use crate::support::capture::Capture;
use crate::support::{
    http, metric_value, metrics, metrics::label_values, one_route, sample, Proxy,
};

async fn proxy(app: SocketAddr, tenants: &str) -> Proxy {
    Proxy::builder(&one_route("tenants: $TENANTS"))
        .var("TENANTS", tenants)
        .var("APP", app)
        .spawn()
        .await
}

/// `rampart_requests_total` of the inbound `app` route for `tenant` and `code`.
fn requests(text: &str, tenant: &str, code: &str) -> Option<f64> {
    let labels = [
        ("listener", "inbound"),
        ("route", "app"),
        ("tenant", tenant),
        ("code", code),
    ];
    metric_value(text, "rampart_requests_total", &labels)
}

#[tokio::test]
async fn fallback_tenant_when_header_absent() {
    let app = sample().await;
    let proxy = proxy(
        app.addr(),
        "{ from: [ { header: x-tenant-id } ], fallback: anonymous }",
    )
    .await;
    let addr = proxy.listener("inbound");
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    // An empty value names no tenant either.
    let empty = http::get(addr, "/ok", &[("x-tenant-id", "")]).await;
    assert_eq!(empty.status, 200);
    let with = http::get(addr, "/ok", &[("x-tenant-id", "acme")]).await;
    assert_eq!(with.status, 200);
    assert_eq!(app.hits_for("/ok"), 3);

    let admin = proxy.admin();
    assert_eventually!(
        requests(&metrics(admin).await, "anonymous", "200") == Some(2.0),
        "anonymous counted twice:\n{}",
        metrics(admin).await
    );
    assert_eq!(requests(&metrics(admin).await, "acme", "200"), Some(1.0));
}

#[tokio::test]
async fn fallback_reject_answers_401_tenant_required() {
    let app = sample().await;
    let proxy = proxy(
        app.addr(),
        "{ from: [ { header: x-tenant-id } ], fallback: reject }",
    )
    .await;
    let addr = proxy.listener("inbound");
    http::get(addr, "/ok", &[])
        .await
        .assert_rampart(401, "tenant_required");
    // An empty value is no tenant id: refused the same way, never served as a tenant "".
    http::get(addr, "/ok", &[("x-tenant-id", "")])
        .await
        .assert_rampart(401, "tenant_required");
    assert_eq!(
        app.hits(),
        0,
        "a rejected request must not reach the upstream"
    );

    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "acme")]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(app.hits_for("/ok"), 1);
}

#[tokio::test]
async fn invalid_tenant_ids_answer_400() {
    let app = sample().await;
    let proxy = proxy(app.addr(), "{ from: [ { header: x-tenant-id } ] }").await;
    let addr = proxy.listener("inbound");

    let longest = "a".repeat(128);
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", &longest)]).await;
    assert_eq!(rsp.status, 200, "128 bytes is allowed");
    let allowed = "Tenant.1_a:b@c-d";
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", allowed)]).await;
    assert_eq!(rsp.status, 200, "every allowed character class");

    let too_long = "a".repeat(129);
    for bad in [too_long.as_str(), "a b", "a/b", "tenant%2F"] {
        http::get(addr, "/ok", &[("x-tenant-id", bad)])
            .await
            .assert_rampart(400, "invalid_tenant");
    }
    assert_eq!(
        app.hits_for("/ok"),
        2,
        "invalid tenants must not reach the upstream"
    );
}

/// `_other` labels the tenants folded past `metrics_labels`: a client naming itself so, by
/// header or query, is refused as any invalid id is, and never counted in that series.
#[tokio::test]
async fn the_folded_tenants_label_is_an_invalid_tenant_id() {
    let app = sample().await;
    let proxy = proxy(
        app.addr(),
        "{ from: [ { header: x-tenant-id }, { query: tenant } ] }",
    )
    .await;
    let addr = proxy.listener("inbound");
    // Each is told it is reserved: it meets the characters' rule (before, the message stated
    // that rule as what it broke).
    let reserved = [
        ("/ok", "_other", "tenant id '_other' is reserved"),
        ("/ok?tenant=_other", "", "tenant id '_other' is reserved"),
        // `-` is the tenant of an optional route's request that names none: reserved alike.
        ("/ok", "-", "tenant id '-' is reserved"),
        ("/ok?tenant=-", "", "tenant id '-' is reserved"),
    ];
    for (path, header, said) in reserved {
        let sent: &[(&str, &str)] = match header {
            "" => &[],
            h => &[("x-tenant-id", h)],
        };
        let rsp = http::get(addr, path, sent).await;
        rsp.assert_rampart(400, "invalid_tenant");
        assert!(rsp.text().contains(said), "{path} {header}: {}", rsp.text());
    }
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "a b")]).await;
    rsp.assert_rampart(400, "invalid_tenant");
    assert!(rsp.text().contains("1 to 128 characters"), "{}", rsp.text());
    let rsp = http::get(addr, "/ok", &[("x-tenant-id", "_Other")]).await;
    assert_eq!(rsp.status, 200, "another spelling is a tenant like any");
    assert_eq!(
        app.hits_for("/ok"),
        1,
        "a refused id must not reach the upstream"
    );
    let admin = proxy.admin();
    assert_eventually!(
        requests(&metrics(admin).await, "_Other", "200") == Some(1.0),
        "the good request is counted"
    );
    let text = metrics(admin).await;
    assert_eq!(requests(&text, "_other", "200"), None, "{text}");
}

#[tokio::test]
async fn metrics_labels_cap_puts_extra_tenants_in_other() {
    let app = sample().await;
    let proxy = proxy(
        app.addr(),
        "{ from: [ { header: x-tenant-id } ], metrics_labels: 2 }",
    )
    .await;
    let addr = proxy.listener("inbound");
    for tenant in ["t1", "t2", "t3", "t4", "t1"] {
        let rsp = http::get(addr, "/ok", &[("x-tenant-id", tenant)]).await;
        assert_eq!(rsp.status, 200);
    }
    let admin = proxy.admin();
    assert_eventually!(
        metric_value(&metrics(admin).await, "rampart_requests_total", &[]) == Some(5.0),
        "five requests counted"
    );
    let text = metrics(admin).await;
    assert_eq!(requests(&text, "t1", "200"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "t2", "200"), Some(1.0), "{text}");
    assert_eq!(requests(&text, "_other", "200"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "t3", "200"), None, "{text}");
    assert_eq!(
        label_values(&text, "rampart_requests_total", "tenant"),
        ["_other", "t1", "t2"]
    );
}

const PER_ADDRESS: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from: [ { header: x-tenant-id }, { client_ip: $FROM } ]
  fallback: nobody
upstreams:
  app: { endpoints: [$APP] }
policies:
  per_address:
    rate_limit:
      per_tenant: { rate: 1/m, burst: 2 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: per_address
"#;

/// The statuses of `n` GETs to `addr` with `headers`.
async fn statuses(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(http::get(addr, "/ok", headers).await.status.as_u16());
    }
    out
}

/// `client_ip: peer`: a request that names no tenant is limited per client address (the
/// connection's, here 127.0.0.1), which is its tenant in the metrics; a named tenant still
/// comes first (the sources' order).
#[tokio::test]
async fn a_client_without_a_tenant_is_limited_by_its_address() {
    let app = sample().await;
    let proxy = Proxy::builder(PER_ADDRESS)
        .var("FROM", "peer")
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    assert_eq!(statuses(addr, 3, &[]).await, [200, 200, 429]);
    // A forged x-forwarded-for does not move a peer's bucket.
    assert_eq!(
        statuses(addr, 1, &[("x-forwarded-for", "198.51.100.9")]).await,
        [429]
    );
    assert_eq!(
        statuses(addr, 3, &[("x-tenant-id", "acme")]).await,
        [200, 200, 429]
    );
    assert_eq!(app.hits_for("/ok"), 4);
    let text = metrics(proxy.admin()).await;
    assert_eq!(requests(&text, "127.0.0.1", "200"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "127.0.0.1", "429"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "nobody", "200"), None, "{text}");
}

/// `client_ip: x-forwarded-for`: the address the proxy in front appended (the last one) is the
/// tenant, whatever a client wrote before it; a line whose last entry is not an address names
/// no one (the fallback).
#[tokio::test]
async fn behind_a_proxy_the_forwarded_address_is_limited() {
    let app = sample().await;
    let proxy = Proxy::builder(PER_ADDRESS)
        .var("FROM", "x-forwarded-for")
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let one = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(statuses(addr, 2, &one).await, [200, 200]);
    // The client's own entries come first; the proxy's is last.
    let spoofed = [("x-forwarded-for", "203.0.113.5, 198.51.100.1")];
    assert_eq!(statuses(addr, 1, &spoofed).await, [429]);
    let other = [("x-forwarded-for", "2001:db8::7")];
    assert_eq!(statuses(addr, 2, &other).await, [200, 200]);
    let junk = [("x-forwarded-for", "unknown")];
    assert_eq!(statuses(addr, 3, &junk).await, [200, 200, 429]);
    let text = metrics(proxy.admin()).await;
    assert_eq!(requests(&text, "198.51.100.1", "429"), Some(1.0), "{text}");
    assert_eq!(requests(&text, "2001:db8::7", "200"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "nobody", "429"), Some(1.0), "{text}");
    assert_eq!(
        requests(&text, "203.0.113.5", "429"),
        None,
        "a client's own entry is no one's bucket: {text}"
    );
}

/// Two proxies in front (`trusted_hops: 2`) and IPv6 clients counted by their /64
/// (`ipv6_prefix: 64`): two addresses of one /64 share a bucket, another /64 has its own.
#[tokio::test]
async fn two_proxies_in_front_and_ipv6_clients_by_their_block() {
    let app = sample().await;
    let proxy = Proxy::builder(PER_ADDRESS)
        .var(
            "FROM",
            "{ from: x-forwarded-for, trusted_hops: 2, ipv6_prefix: 64 }",
        )
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let a = [("x-forwarded-for", "2001:db8:1:2::5, 10.0.0.9")];
    let b = [("x-forwarded-for", "6.6.6.6, 2001:db8:1:2:ffff::6, 10.0.0.9")];
    let c = [("x-forwarded-for", "2001:db8:1:3::5, 10.0.0.9")];
    assert_eq!(statuses(addr, 2, &a).await, [200, 200]);
    assert_eq!(statuses(addr, 1, &b).await, [429], "the same /64");
    assert_eq!(statuses(addr, 1, &c).await, [200], "another /64");
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        requests(&text, "2001:db8:1:2::", "429"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests(&text, "2001:db8:1:3::", "200"),
        Some(1.0),
        "{text}"
    );
}

/// A listener that trusts `x-tenant-plan`, plans `tight` (1 an hour) and `pro` (3), `tight`
/// assigned to initech, umbrella and cyberdyne, 10 an hour for the rest; answers carry the RateLimit
/// headers.
const TRUSTED_PLANS: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from: [ { header: x-tenant-id } ]
  plans:
    plan_header: x-tenant-plan
    assign: { tight: [initech, umbrella, cyberdyne] }
upstreams:
  app: { endpoints: [$APP] }
policies:
  api:
    rate_limit:
      headers: true
      per_tenant: { rate: 10/h, burst: 10 }
      plans:
        tight: { rate: 1/h, burst: 1 }
        pro: { rate: 3/h, burst: 3 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    trust_plan_header: true
    routes:
      - { upstream: app, policy: api }
"#;

/// A trusted plan header names a plan only when it is, exactly, one some policy gives limits
/// to (as a token's `plan_claim`): `platinum`, which none has, and `Pro` name none, and the
/// tenant gets its `assign`ed plan's limits (`tight`: 1), or without one the default (10);
/// `pro` gets its own (3). The header still reaches the upstream as sent, and rampart warns
/// once a period, not once a request. Before, any text
/// was the plan, and a plan without limits meant the default ones: initech, assigned `tight`,
/// got 10 an hour by saying `platinum`.
#[tokio::test]
async fn a_trusted_plan_header_naming_no_configured_plan_falls_to_assign() {
    let app = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = Proxy::builder(TRUSTED_PLANS)
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let policy = |tenant: &'static str, plan: &'static str| async move {
        let rsp = http::get(
            addr,
            "/ok",
            &[("x-tenant-id", tenant), ("x-tenant-plan", plan)],
        )
        .await;
        (
            rsp.status.as_u16(),
            rsp.header("ratelimit-policy")
                .unwrap_or_default()
                .to_owned(),
        )
    };
    // Assigned `tight`: one request an hour, whatever unknown plan the header says.
    let (status, first) = policy("initech", "platinum").await;
    assert_eq!(status, 200);
    assert!(first.contains(";q=1;"), "{first}");
    let plat = [("x-tenant-id", "initech"), ("x-tenant-plan", "platinum")];
    assert_eq!(statuses(addr, 2, &plat).await, [429, 429]);
    let (status, first) = policy("umbrella", "Pro").await;
    assert_eq!(status, 200);
    assert!(first.contains(";q=1;"), "{first}");
    // A known plan is its own: cyberdyne is `tight` by assign, `pro` by the header.
    let (status, first) = policy("cyberdyne", "pro").await;
    assert_eq!(status, 200);
    assert!(first.contains(";q=3;"), "{first}");
    let pro = [("x-tenant-id", "cyberdyne"), ("x-tenant-plan", "pro")];
    assert_eq!(statuses(addr, 3, &pro).await, [200, 200, 429]);
    // No plan assigned: the default limits.
    let (status, first) = policy("hooli", "platinum").await;
    assert_eq!(status, 200);
    assert!(first.contains(";q=10;"), "{first}");
    assert_eq!(
        app.header(app.hits() - 1, "x-tenant-plan"),
        ["platinum"],
        "passed as sent"
    );
    // Five requests named no plan: one warning (the next is due in 30 s), naming the first.
    let warned = || {
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("a trusted plan_header names no plan"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eventually!(!warned().is_empty(), "log:\n{}", proxy.log());
    let lines = warned();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("platinum"), "{lines:#?}");
}
