//! SPEC §13: what the upstream reads about who is calling is what rampart used. Beside a
//! verified token, the client's own `x-tenant-id` is replaced by the token's tenant; the plan
//! header reaches the upstream only from a listener that trusts it, or holding the token's
//! plan. The upstream is a raw capture, so the lines are counted as they were sent.

use std::net::SocketAddr;

use super::keys::{claims, ec, jwks, token, Signer};
use super::{bearer, start_idempotent, write_jwks, TEMPLATE};
use crate::support::capture::Capture;
use crate::support::{http, Proxy};

/// The upstream's answer to every request (keep-alive).
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// rampart with [`TEMPLATE`] (`inbound` trusts `x-tenant-plan`, `other` does not; 1 request
/// an hour per tenant, 2 on plan gold, 3 on pro) in front of `app`, verifying `key`'s tokens.
async fn start(app: &Capture, key: &Signer, dir: &tempfile::TempDir) -> Proxy {
    Proxy::builder(TEMPLATE)
        .var("APP", app.addr())
        .var("JWKS", write_jwks(dir.path(), &jwks(&[key])))
        .var("REFRESH", "5m")
        .spawn()
        .await
}

/// Every value of `name` in the last request the upstream received.
fn last(app: &Capture, name: &str) -> Vec<String> {
    assert!(app.hits() > 0, "no request reached the upstream");
    app.header(app.hits() - 1, name)
}

/// GET /ok over HTTP/1.1 with `headers`; must be admitted.
async fn admitted(addr: SocketAddr, headers: &[(&str, &str)]) {
    let rsp = http::get(addr, "/ok", headers).await;
    assert_eq!(rsp.status, 200, "{headers:?}: {rsp:?}");
}

/// (a), (b): beside a verified token, every `x-tenant-id` line a client sent is replaced by
/// one with the token's tenant, which is the tenant the rate limit counted; a tenant named by
/// the header alone reaches the upstream as sent.
#[tokio::test]
async fn a_verified_tenant_replaces_the_clients_tenant_header() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let addr = proxy.listener("other");

    let t = bearer(&token(&key, &claims("globex", None)));
    let sent = [
        ("authorization", t.as_str()),
        ("x-tenant-id", "mallory"),
        ("x-tenant-id", "eve"),
    ];
    admitted(addr, &sent).await;
    assert_eq!(last(&app, "x-tenant-id"), ["globex"]);
    assert_eq!(
        last(&app, "authorization"),
        [t.as_str()],
        "the token passes"
    );
    // Counted as globex (a burst of 1), whatever the header says.
    let rsp = http::get(
        addr,
        "/ok",
        &[("authorization", &t), ("x-tenant-id", "mallory2")],
    )
    .await;
    rsp.assert_rampart(429, "rate_limited");
    assert!(rsp.text().contains("for tenant globex"), "{}", rsp.text());
    assert_eq!(
        app.hits(),
        1,
        "a refused request never reaches the upstream"
    );

    // A `connection` list naming the tenant header (a hop-by-hop claim, RFC 9110 §7.6.1)
    // cannot take the verified line away; the other names it lists still go.
    let t = bearer(&token(&key, &claims("umbrella", None)));
    let sent = [
        ("authorization", t.as_str()),
        ("connection", "keep-alive, X-Tenant-Id, x-gone"),
        ("x-tenant-id", "mallory"),
        ("x_tenant_id", "mallory"),
        ("x-tenant_id", "evil2"),
        ("x_tenant-id", "evil3"),
        ("x-gone", "1"),
    ];
    admitted(addr, &sent).await;
    assert_eq!(last(&app, "x-tenant-id"), ["umbrella"]);
    for n in ["x_tenant_id", "x-tenant_id", "x_tenant-id"] {
        assert!(
            last(&app, n).is_empty(),
            "CGI-style upstreams read {n} as x-tenant-id"
        );
    }
    assert!(
        last(&app, "x-gone").is_empty(),
        "a listed header still goes"
    );

    // A token and no header: the upstream is told the tenant all the same.
    let t = bearer(&token(&key, &claims("initech", None)));
    admitted(addr, &[("authorization", &t)]).await;
    assert_eq!(last(&app, "x-tenant-id"), ["initech"]);

    // (b) The header names the tenant: it passes as sent.
    admitted(addr, &[("x-tenant-id", "hooli")]).await;
    assert_eq!(last(&app, "x-tenant-id"), ["hooli"]);
}

/// The same over HTTP/2: a client's `x-tenant-id` beside its token reaches the upstream as the
/// token's tenant, and its spellings with `_` (`x-tenant_id`, `x_tenant-plan`) not at all.
#[tokio::test]
async fn an_h2_clients_tenant_header_beside_a_token_is_replaced_too() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let t = bearer(&token(&key, &claims("wayne", Some("pro"))));
    let sent = [
        ("authorization", t.as_str()),
        ("x-tenant-id", "mallory"),
        ("x-tenant-plan", "gold"),
        ("x-tenant_id", "evil2"),
        ("x_tenant-id", "evil3"),
        ("x_tenant-plan", "gold2"),
    ];
    let rsp = http::h2_get(proxy.listener("other"), "/ok", &sent).await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(last(&app, "x-tenant-id"), ["wayne"]);
    assert_eq!(last(&app, "x-tenant-plan"), ["pro"]);
    for n in ["x-tenant_id", "x_tenant-id", "x_tenant-plan"] {
        assert!(last(&app, n).is_empty(), "{n} reached the upstream");
    }
}

/// (c): a listener that does not trust the plan header ignores it, and so the upstream never
/// gets it; a trusting listener, which used it, passes it on.
#[tokio::test]
async fn a_plan_header_reaches_the_upstream_only_from_a_trusting_listener() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let (trusting, other) = (proxy.listener("inbound"), proxy.listener("other"));

    let sent = [
        ("x-tenant-id", "umbrella"),
        ("x-tenant-plan", "pro"),
        ("x-tenant-plan", "gold"),
        ("x_tenant_plan", "pro"),
        ("x-tenant_plan", "gold"),
    ];
    admitted(other, &sent).await;
    assert!(
        last(&app, "x-tenant_plan").is_empty(),
        "read as x-tenant-plan"
    );
    assert_eq!(last(&app, "x-tenant-plan"), Vec::<String>::new());
    assert_eq!(
        last(&app, "x_tenant_plan"),
        Vec::<String>::new(),
        "CGI-style upstreams read it as x-tenant-plan"
    );
    assert_eq!(last(&app, "x-tenant-id"), ["umbrella"]);
    // A token without a plan claim: the client's plan header goes all the same.
    let t = bearer(&token(&key, &claims("soylent", None)));
    admitted(other, &[("authorization", &t), ("x-tenant-plan", "pro")]).await;
    assert_eq!(last(&app, "x-tenant-plan"), Vec::<String>::new());

    let sent = [("x-tenant-id", "cyberdyne"), ("x-tenant-plan", "pro")];
    admitted(trusting, &sent).await;
    assert_eq!(last(&app, "x-tenant-plan"), ["pro"]);
}

/// (d): a plan from the token's `plan_claim` reaches the upstream in the plan header, in
/// place of the client's, on either listener.
#[tokio::test]
async fn a_claimed_plan_is_what_the_upstream_reads_in_the_plan_header() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let (trusting, other) = (proxy.listener("inbound"), proxy.listener("other"));

    let t = bearer(&token(&key, &claims("globex", Some("pro"))));
    let sent = [("authorization", t.as_str()), ("x-tenant-plan", "gold")];
    admitted(trusting, &sent).await;
    assert_eq!(last(&app, "x-tenant-plan"), ["pro"]);
    assert_eq!(last(&app, "x-tenant-id"), ["globex"]);

    let t = bearer(&token(&key, &claims("acme", Some("pro"))));
    admitted(other, &[("authorization", &t)]).await;
    assert_eq!(last(&app, "x-tenant-plan"), ["pro"]);
}

/// A token's plan claim counts only when it names, exactly, a plan some policy gives limits
/// to (`gold`): then the tenant gets that plan's limits and the upstream reads it. A claim of
/// an unconfigured plan, an empty one, a padded one or one of 20 KB names no plan: the tenant
/// is still the token's, its plan comes from the next source (`assign`, or the plan header on
/// the trusting listener) and the upstream never reads the claim. Before, each was taken as
/// the plan and sent upstream as it came.
#[tokio::test]
async fn a_plan_claim_counts_only_when_it_names_a_configured_plan() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let (trusting, other) = (proxy.listener("inbound"), proxy.listener("other"));
    // How many of 4 requests from `tenant` with a token claiming `plan` (and the client's
    // own `x-tenant-plan: pro`) are admitted, and the plan lines the upstream last read.
    let run = |addr: SocketAddr, tenant: &'static str, plan: String| {
        let app = &app;
        let t = bearer(&token(&key, &claims(tenant, Some(&plan))));
        async move {
            let before = app.hits();
            let mut ok = 0;
            for _ in 0..4 {
                let sent = [("authorization", t.as_str()), ("x-tenant-plan", "pro")];
                let rsp = http::get(addr, "/ok", &sent).await;
                assert!(rsp.status == 200 || rsp.status == 429, "{rsp:?}");
                ok += usize::from(rsp.status == 200);
            }
            assert_eq!(app.hits() - before, ok);
            (ok, last(app, "x-tenant-plan"))
        }
    };
    // gold (2 an hour), told upstream in place of the client's pro.
    assert_eq!(
        run(other, "globex", "gold".into()).await,
        (2, vec!["gold".into()])
    );
    let long = "g".repeat(20 * 1024);
    let cases = [
        ("platinum", "platinum".into()),
        ("empty", String::new()),
        ("padded", " gold ".into()),
        ("20 KB", long),
    ];
    // The listener that does not trust the header: the default (1 an hour), and no plan
    // line upstream, neither the claim nor the client's.
    for (tenant, (what, plan)) in ["t1", "t2", "t3", "t4"].into_iter().zip(cases.clone()) {
        assert_eq!(run(other, tenant, plan).await, (1, vec![]), "{what}");
    }
    // initech is on gold by `assign`.
    assert_eq!(run(other, "initech", "platinum".into()).await, (2, vec![]));
    // The trusting listener: the client's header names the plan (pro, 3 an hour), and passes.
    for (tenant, (what, plan)) in ["t5", "t6", "t7", "t8"].into_iter().zip(cases) {
        assert_eq!(
            run(trusting, tenant, plan).await,
            (3, vec!["pro".into()]),
            "{what}"
        );
    }
}

/// Writes `head` (and its body) on a new connection to `addr` and reads until the upstream's
/// `ok` has come back; the bytes read.
async fn raw(addr: SocketAddr, head: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("answered");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// An upgrade request (its one try goes by `proxy::upgrade`, not the exchange) whose
/// `connection` list names the tenant header: the verified line still reaches the upstream,
/// with `connection: upgrade` and nothing the client listed.
#[tokio::test]
async fn an_upgrade_requests_connection_list_cannot_remove_the_verified_tenant() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start(&app, &key, &dir).await;
    let t = bearer(&token(&key, &claims("umbrella", None)));
    let head = format!(
        "GET /chat HTTP/1.1\r\nhost: svc\r\nauthorization: {t}\r\n\
         upgrade: websocket\r\nconnection: Upgrade, X-Tenant-Id, x-gone\r\n\
         x-tenant-id: mallory\r\nx-gone: 1\r\n\r\n"
    );
    raw(proxy.listener("other"), &head).await;
    assert_eq!(last(&app, "x-tenant-id"), ["umbrella"]);
    assert_eq!(
        last(&app, "upgrade"),
        ["websocket"],
        "it went as an upgrade"
    );
    assert_eq!(last(&app, "connection"), ["upgrade"]);
    assert!(
        last(&app, "x-gone").is_empty(),
        "a listed header still goes"
    );
}

/// The same for a request with an idempotency key (its body read ahead by
/// `proxy::idempotent`, the third path to the upstream).
#[tokio::test]
async fn an_idempotent_requests_connection_list_cannot_remove_the_verified_tenant() {
    let app = Capture::start(OK).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start_idempotent(app.addr(), &key, dir.path()).await;
    let t = bearer(&token(&key, &claims("umbrella", Some("gold"))));
    let head = format!(
        "POST /pay HTTP/1.1\r\nhost: svc\r\nauthorization: {t}\r\n\
         idempotency-key: k1\r\ncontent-length: 2\r\n\
         connection: keep-alive, X-Tenant-Id, x-tenant-plan, x-gone\r\n\
         x-tenant-id: mallory\r\nx-tenant-plan: pro\r\nx-gone: 1\r\n\r\nhi"
    );
    raw(proxy.listener("other"), &head).await;
    assert!(
        app.requests()[0].starts_with("POST /pay"),
        "{:?}",
        app.requests()
    );
    assert_eq!(last(&app, "x-tenant-id"), ["umbrella"]);
    assert_eq!(last(&app, "x-tenant-plan"), ["gold"]);
    assert!(
        last(&app, "x-gone").is_empty(),
        "a listed header still goes"
    );
}
