//! SPEC §13: what the upstream reads about who is calling is what rampart used. Beside a
//! verified token, the client's own `x-tenant-id` is replaced by the token's tenant; the plan
//! header reaches the upstream only from a listener that trusts it, or holding the token's
//! plan. The upstream is a raw capture, so the lines are counted as they were sent.

use std::net::SocketAddr;

use super::keys::{claims, ec, jwks, token, Signer};
use super::{bearer, write_jwks, TEMPLATE};
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
        ("x-gone", "1"),
    ];
    admitted(addr, &sent).await;
    assert_eq!(last(&app, "x-tenant-id"), ["umbrella"]);
    assert!(
        last(&app, "x_tenant_id").is_empty(),
        "CGI-style upstreams read x_tenant_id as x-tenant-id"
    );
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
/// token's tenant.
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
    ];
    let rsp = http::h2_get(proxy.listener("other"), "/ok", &sent).await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(last(&app, "x-tenant-id"), ["wayne"]);
    assert_eq!(last(&app, "x-tenant-plan"), ["pro"]);
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
    ];
    admitted(other, &sent).await;
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
