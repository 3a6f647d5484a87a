//! SPEC §13: tenants from verified JWTs, plans, and routes that need no tenant.

mod claimed;
mod early;
mod identity;
mod keys;
mod lines;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use self::keys::{
    claims, ec, hmac_with_public_key, jwks, rsa, token, token_with, unsigned, JwksServer, Signer,
};
use crate::support::tls::{Ca, Pki};
use crate::support::{http, sample, Proxy};

/// Two listeners (`inbound` trusts the plan header, `other` does not), each with a /healthz
/// route needing no tenant and a limited catch-all route.
const TEMPLATE: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from:
    - jwt:
        claim: org.id
        jwks: $JWKS
        jwks_refresh: $REFRESH
        issuers: [https://issuer.test/]
        audiences: [orders]
        plan_claim: plan
    - header: x-tenant-id
  fallback: reject
  plans:
    plan_header: x-tenant-plan
    assign: { gold: [initech] }
upstreams:
  app: { endpoints: [$APP] }
policies:
  api:
    rate_limit:
      per_tenant: { rate: 1/h, burst: 1 }
      plans:
        pro: { rate: 3/h, burst: 3 }
        gold: { rate: 2/h, burst: 2 }
      overrides: { acme: { rate: 5/h, burst: 5 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    trust_plan_header: true
    routes:
      - { match: { path_prefix: /healthz }, upstream: app, tenant: optional }
      - { upstream: app, policy: api }
  - name: other
    direction: inbound
    listen: $LISTEN_other
    routes:
      - { upstream: app, policy: api }
"#;

async fn start(app: SocketAddr, jwks: &str, refresh: &str) -> Proxy {
    Proxy::builder(TEMPLATE)
        .var("APP", app)
        .var("JWKS", jwks)
        .var("REFRESH", refresh)
        .spawn()
        .await
}

/// rampart with [`TEMPLATE`] whose `api` policy also keeps idempotent answers (an hour,
/// bodies up to 4 KiB), in front of `app`, verifying `key`'s tokens from a JWKS file in `dir`.
async fn start_idempotent(app: SocketAddr, key: &Signer, dir: &std::path::Path) -> Proxy {
    let policy = TEMPLATE.replace(
        "  api:\n",
        "  api:\n    idempotency: { ttl: 1h, max_body: 4KiB }\n",
    );
    assert_ne!(policy, TEMPLATE);
    Proxy::builder(&policy)
        .var("APP", app)
        .var("JWKS", write_jwks(dir, &jwks(&[key])))
        .var("REFRESH", "5m")
        .spawn()
        .await
}

fn write_jwks(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("jwks.json");
    let tmp = dir.join("jwks.json.tmp");
    std::fs::write(&tmp, text).expect("write jwks");
    std::fs::rename(&tmp, &path).expect("rename jwks");
    path.to_str().expect("path").to_owned()
}

/// How many of `n` requests with `headers` are admitted (200).
async fn admitted(addr: SocketAddr, headers: &[(&str, &str)], n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let rsp = http::get(addr, "/ok", headers).await;
        assert!(rsp.status == 200 || rsp.status == 429, "{rsp:?}");
        ok += usize::from(rsp.status == 200);
    }
    ok
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// RFC 7515 §4.1.11: a token whose header lists critical extensions (`crit`) the recipient
/// does not understand is invalid. rampart understands none: such a token, signed by a key of
/// the JWKS and good in every other way, is 401 `invalid_token`; the same token signed without
/// `crit`, or with another unlisted header field, names its tenant.
#[tokio::test]
async fn a_token_with_critical_extensions_answers_401() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let proxy = start(app.addr(), &write_jwks(dir.path(), &jwks(&[&r])), "5m").await;
    let addr = proxy.listener("other");
    let crit = serde_json::json!({ "crit": ["exp-ext"], "exp-ext": true });
    for (tenant, extra) in [("c1", crit), ("c2", serde_json::json!({ "crit": [] }))] {
        let t = bearer(&token_with(&r, &extra, &claims(tenant, None)));
        let rsp = http::get(addr, "/ok", &[("authorization", &t)]).await;
        rsp.assert_rampart(401, "invalid_token");
    }
    let plain = bearer(&token_with(
        &r,
        &serde_json::json!({ "x-note": 1 }),
        &claims("c3", None),
    ));
    let rsp = http::get(addr, "/ok", &[("authorization", &plain)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

#[tokio::test]
async fn a_token_names_the_tenant_and_bad_tokens_answer_401() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, e) = (rsa("r1"), ec("e1"));
    let path = write_jwks(dir.path(), &jwks(&[&r, &e]));
    let proxy = start(app.addr(), &path, "5m").await;
    let addr = proxy.listener("other");

    // Limited as globex (burst 1) whatever x-tenant-id says.
    let t = bearer(&token(&r, &claims("globex", None)));
    let first = admitted(addr, &[("authorization", &t), ("x-tenant-id", "a1")], 1).await;
    let second = admitted(addr, &[("authorization", &t), ("x-tenant-id", "a2")], 1).await;
    assert_eq!((first, second), (1, 0));
    // An EC-signed token for another tenant has its own bucket; no token: the header.
    let te = bearer(&token(&e, &claims("hooli", None)));
    assert_eq!(admitted(addr, &[("authorization", &te)], 2).await, 1);
    assert_eq!(admitted(addr, &[("x-tenant-id", "a1")], 1).await, 1);

    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims("evil", None);
        c[k] = v;
        c
    };
    let other_key = rsa("r1");
    let bad = [
        (
            "expired",
            token(&r, &with("exp", keys::now().saturating_sub(120).into())),
        ),
        (
            "issuer",
            token(&r, &with("iss", "https://evil.test/".into())),
        ),
        ("audience", token(&r, &with("aud", "billing".into()))),
        ("signature", token(&other_key, &claims("evil", None))),
        ("alg none", unsigned(&claims("evil", None))),
        ("hmac", hmac_with_public_key(&r, &claims("evil", None))),
    ];
    let before = app.hits();
    for (what, t) in bad {
        let rsp = http::get(
            addr,
            "/ok",
            &[("authorization", &bearer(&t)), ("x-tenant-id", "a9")],
        )
        .await;
        rsp.assert_rampart(401, "invalid_token");
        assert_eq!(
            rsp.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert!(rsp.text().contains("failed verification"), "{what}");
    }
    // The same valid token twice, on two lines or on one: refused, and told why (before, it
    // was told the token failed verification, which it had not).
    let twice = format!("{te}, {te}");
    for sent in [
        &[
            ("authorization", te.as_str()),
            ("authorization", te.as_str()),
        ][..],
        &[("authorization", twice.as_str())][..],
    ] {
        let rsp = http::get(addr, "/ok", sent).await;
        rsp.assert_rampart(401, "invalid_token");
        assert!(
            rsp.text().contains("more than one bearer token"),
            "{}",
            rsp.text()
        );
    }
    assert_eq!(
        app.hits(),
        before,
        "refused tokens never reach the upstream"
    );
}

#[tokio::test]
async fn plans_from_claim_header_and_assign_in_order() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let path = write_jwks(dir.path(), &jwks(&[&r]));
    let proxy = start(app.addr(), &path, "5m").await;
    let (trusted, untrusted) = (proxy.listener("inbound"), proxy.listener("other"));
    let tok = |tenant: &str, plan: Option<&str>| bearer(&token(&r, &claims(tenant, plan)));

    // Claim: pro (3), even where a trusted header says gold.
    let g = tok("globex", Some("pro"));
    let h = [("authorization", g.as_str()), ("x-tenant-plan", "gold")];
    assert_eq!(admitted(trusted, &h, 6).await, 3);
    // The tenant's own override beats its plan.
    assert_eq!(
        admitted(
            untrusted,
            &[("authorization", &tok("acme", Some("pro")))],
            8
        )
        .await,
        5
    );
    // Header: believed only on the trusting listener.
    let h = [("x-tenant-id", "hooli"), ("x-tenant-plan", "pro")];
    assert_eq!(admitted(trusted, &h, 6).await, 3);
    assert_eq!(admitted(untrusted, &h, 6).await, 1);
    // Assign: initech is gold, unless a trusted header says otherwise.
    assert_eq!(
        admitted(untrusted, &[("x-tenant-id", "initech")], 6).await,
        2
    );
    let h = [("x-tenant-id", "initech"), ("x-tenant-plan", "pro")];
    assert_eq!(admitted(trusted, &h, 6).await, 3);
    // A token without a plan claim falls to assign.
    let i = tok("initech", None);
    assert_eq!(
        admitted(untrusted, &[("authorization", &i)], 1).await,
        0,
        "same bucket"
    );
}

#[tokio::test]
async fn an_optional_route_serves_requests_without_a_tenant() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let path = write_jwks(dir.path(), &jwks(&[&r]));
    let proxy = start(app.addr(), &path, "5m").await;
    let addr = proxy.listener("inbound");
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/healthz", &[]).await.status, 200);
    }
    let rsp = http::get(addr, "/ok", &[]).await;
    rsp.assert_rampart(401, "tenant_required");
    // RFC 9110 §15.5.2, RFC 6750 §3: the 401 says a bearer token is how to get in.
    assert_eq!(rsp.header("www-authenticate"), Some("Bearer"), "{rsp:?}");
    // A bad token is still refused there.
    let h = [("authorization", "Bearer a.b.c")];
    http::get(addr, "/healthz", &h)
        .await
        .assert_rampart(401, "invalid_token");
}

/// A gateway's header (bare token) before `authorization` (Bearer only); a burst of 1.
const OWN_HEADER: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from:
    - jwt: { header: X-JWT, claim: org.id, jwks: $JWKS, issuers: [https://issuer.test/], audiences: [orders] }
    - jwt: { claim: org.id, jwks: $JWKS, issuers: [https://issuer.test/], audiences: [orders] }
  fallback: reject
upstreams:
  app: { endpoints: [$APP] }
policies:
  api:
    rate_limit: { per_tenant: { rate: 1/h, burst: 1 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: app, policy: api }
"#;

#[tokio::test]
async fn a_header_of_its_own_carries_the_token_bare_or_after_bearer() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let proxy = Proxy::builder(OWN_HEADER)
        .var("APP", app.addr())
        .var("JWKS", write_jwks(dir.path(), &jwks(&[&r])))
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    // A bare token (as x-goog-iap-jwt-assertion carries one) names its tenant (burst 1), and
    // the same tenant's token after `Bearer ` is counted in the same bucket.
    let t = token(&r, &claims("globex", None));
    assert_eq!(admitted(addr, &[("x-jwt", &t)], 1).await, 1);
    assert_eq!(admitted(addr, &[("x-jwt", &bearer(&t))], 1).await, 0);
    let t2 = bearer(&token(&r, &claims("initech", None)));
    assert_eq!(admitted(addr, &[("x-jwt", &t2)], 1).await, 1);
    // A value there that is no good token is refused, as `Bearer <bad>` in authorization is.
    let before = app.hits();
    for bad in ["abc", "Bearer a.b.c", "Basic dXNlcjpwdw=="] {
        let rsp = http::get(addr, "/ok", &[("x-jwt", bad)]).await;
        rsp.assert_rampart(401, "invalid_token");
        assert_eq!(
            rsp.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{bad}"
        );
    }
    assert_eq!(
        app.hits(),
        before,
        "refused tokens never reach the upstream"
    );
    // `authorization` still takes only the Bearer scheme: a bare token there is no token.
    let t3 = token(&r, &claims("hooli", None));
    http::get(addr, "/ok", &[("authorization", &t3)])
        .await
        .assert_rampart(401, "tenant_required");
    assert_eq!(
        admitted(addr, &[("authorization", &bearer(&t3))], 1).await,
        1
    );
}

/// Two identity providers' tokens on one header: each `jwt` source verifies its own.
const TWO_ISSUERS: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from:
    - jwt: { claim: org.id, jwks: $JWKS_A, issuers: [https://issuer.test/], audiences: [orders] }
    - jwt: { claim: org.id, jwks: $JWKS_B, issuers: [https://other.test/], audiences: [orders] }
    - header: x-tenant-id
  fallback: reject
upstreams:
  app: { endpoints: [$APP] }
policies:
  api:
    rate_limit: { per_tenant: { rate: 1/h, burst: 1 } }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: app, policy: api }
"#;

#[tokio::test]
async fn a_second_jwt_source_verifies_the_tokens_of_its_own_issuer() {
    let app = sample().await;
    let (da, db) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (a, b) = (rsa("a1"), ec("b1"));
    let proxy = Proxy::builder(TWO_ISSUERS)
        .var("APP", app.addr())
        .var("JWKS_A", write_jwks(da.path(), &jwks(&[&a])))
        .var("JWKS_B", write_jwks(db.path(), &jwks(&[&b])))
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let of_b = |tenant: &str| {
        let mut c = claims(tenant, None);
        c["iss"] = "https://other.test/".into();
        bearer(&token(&b, &c))
    };
    // The second provider's token names its tenant (its bucket of 1: the next is refused).
    let tb = of_b("umbrella");
    let h = [("authorization", tb.as_str()), ("x-tenant-id", "x1")];
    assert_eq!(admitted(addr, &h, 2).await, 1);
    // The first provider's token still works, in a bucket of its own.
    let ta = bearer(&token(&a, &claims("initech", None)));
    assert_eq!(admitted(addr, &[("authorization", &ta)], 1).await, 1);
    // A token neither verifies is refused, never passed to the header source behind them:
    // the second provider's key under the first's issuer, and a key neither knows.
    let mut forged = claims("umbrella2", None);
    forged["iss"] = keys::ISS.into();
    let stranger = rsa("a1");
    let before = app.hits();
    for t in [token(&b, &forged), token(&stranger, &claims("x2", None))] {
        let t = bearer(&t);
        let h = [("authorization", t.as_str()), ("x-tenant-id", "x3")];
        http::get(addr, "/ok", &h)
            .await
            .assert_rampart(401, "invalid_token");
    }
    assert_eq!(
        app.hits(),
        before,
        "refused tokens never reach the upstream"
    );
}

#[tokio::test]
async fn a_rotated_jwks_file_is_read_again() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (rsa("old"), ec("new"));
    let path = write_jwks(dir.path(), &jwks(&[&old]));
    let proxy = start(app.addr(), &path, "1s").await;
    let addr = proxy.listener("other");
    let t = bearer(&token(&new, &claims("globex", None)));
    http::get(addr, "/ok", &[("authorization", &t)])
        .await
        .assert_rampart(401, "invalid_token");
    write_jwks(dir.path(), &jwks(&[&new]));
    assert_eventually!(
        http::get(addr, "/ok", &[("authorization", &t)])
            .await
            .status
            == 200
    );
    // A broken file keeps the last good keys.
    write_jwks(dir.path(), "{ not json");
    // Past one refresh (jwks_refresh is at least 1s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t2 = bearer(&token(&new, &claims("initech", None)));
    assert_eq!(
        http::get(addr, "/ok", &[("authorization", &t2)])
            .await
            .status,
        200
    );
}

/// A reload serves the JWKS file it read, as it serves the TLS files: a key taken out of the
/// file (a leaked one) is refused from the reload on, and the new key verifies, without
/// waiting for `jwks_refresh` (5m here). Before, a reload that left the source's settings as
/// they were kept the old keys until the next refresh.
#[tokio::test]
async fn a_reload_serves_the_jwks_file_it_read() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (k1, k2) = (rsa("k1"), ec("k2"));
    let path = write_jwks(dir.path(), &jwks(&[&k1]));
    let proxy = start(app.addr(), &path, "5m").await;
    let addr = proxy.listener("other");
    let (t1, t2) = (
        bearer(&token(&k1, &claims("globex", None))),
        bearer(&token(&k2, &claims("initech", None))),
    );
    assert_eq!(
        http::get(addr, "/ok", &[("authorization", &t1)])
            .await
            .status,
        200
    );
    write_jwks(dir.path(), &jwks(&[&k2]));
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    http::get(addr, "/ok", &[("authorization", &t1)])
        .await
        .assert_rampart(401, "invalid_token");
    let rsp = http::get(addr, "/ok", &[("authorization", &t2)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

/// A JWKS file replaced by a FIFO: each refresh refuses it by what it is, in the words
/// `rampart validate` uses (before, it read the FIFO as empty and said "not a JWKS: EOF while
/// parsing"), never waits on it, and keeps the last good keys.
#[tokio::test]
async fn a_jwks_file_turned_fifo_is_refused_at_refresh_as_validate_refuses_it() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let path = write_jwks(dir.path(), &jwks(&[&r]));
    let proxy = start(app.addr(), &path, "1s").await;
    let fifo = crate::support::fifo(dir.path());
    std::fs::rename(&fifo, &path).expect("the FIFO takes the JWKS file's place");
    let said = format!("JWKS file {path:?} is not a regular file");
    // As written, or inside a JSON log line.
    let logged = |log: String| log.contains(&said) || log.contains(&said.replace('"', "\\\""));
    assert_eventually!(logged(proxy.log()), "{said} in:\n{}", proxy.log());
    assert!(
        !proxy.log().contains("EOF while parsing"),
        "{}",
        proxy.log()
    );
    let out = crate::support::proxy::run(&[
        "validate",
        "--config",
        &proxy.config_path().display().to_string(),
    ])
    .await;
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&said), "validate says the same: {err}");
    // The refresh never blocked: the last good keys still verify.
    let t = bearer(&token(&r, &claims("globex", None)));
    let rsp = http::get(proxy.listener("other"), "/ok", &[("authorization", &t)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

/// `issuers:` or `audiences:` left null (its items commented out, `~`) was read as not
/// written, with a generic warning: `validate` passed and a token of any issuer was served.
/// Refused, where it is written, as `[]` is.
#[tokio::test]
async fn validate_refuses_null_issuers_and_audiences() {
    for (from, to, at) in [
        (
            "issuers: [https://issuer.test/]",
            "issuers: ~",
            "tenants.from[0].jwt.issuers",
        ),
        (
            "audiences: [orders]",
            "audiences:\n          # - orders",
            "tenants.from[0].jwt.audiences",
        ),
        (
            "audiences: [orders]",
            "audiences: [orders, \" \"]",
            "tenants.from[0].jwt.audiences[1]",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = TEMPLATE.replace(from, to);
        assert_ne!(template, TEMPLATE);
        let rendered = Proxy::builder(&template)
            .var("APP", "127.0.0.1:1")
            .var("JWKS", write_jwks(dir.path(), &jwks(&[&rsa("r1")])))
            .var("REFRESH", "5m")
            .render();
        let out = crate::support::proxy::run(&[
            "validate",
            "--config",
            &rendered.path.display().to_string(),
        ])
        .await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(0), "{to}: {err}");
        assert!(err.contains(&format!("{at}: ")), "{to}: {err}");
        assert!(
            err.contains("is empty (null), which would be read as not written")
                || err.contains("matches no token"),
            "{to}: {err}"
        );
    }
}

#[tokio::test]
async fn a_jwks_url_gates_readiness_and_rotates() {
    let app = sample().await;
    let (k1, k2) = (ec("k1"), rsa("k2"));
    let server = JwksServer::start(jwks(&[&k1])).await;
    server.failing.store(true, Ordering::SeqCst);
    let url = format!("http://{}/jwks.json", server.addr);
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (fetches, failing, flag) = (
        server.fetches.clone(),
        server.failing.clone(),
        opened.clone(),
    );
    let gate = async move {
        // Not ready while every fetch fails: spawn cannot return before the gate opens.
        assert_eventually!(fetches.load(Ordering::SeqCst) >= 3);
        flag.store(true, Ordering::SeqCst);
        failing.store(false, Ordering::SeqCst);
    };
    let (proxy, ()) = tokio::join!(start(app.addr(), &url, "1s"), gate);
    assert!(
        opened.load(Ordering::SeqCst),
        "ready only after a fetch succeeded"
    );
    let addr = proxy.listener("other");
    let t1 = bearer(&token(&k1, &claims("globex", None)));
    assert_eq!(
        http::get(addr, "/ok", &[("authorization", &t1)])
            .await
            .status,
        200
    );
    // Rotation: k2 in, k1 out; a failing issuer afterwards keeps k2.
    server.body.store(Arc::new(jwks(&[&k2])));
    let t2 = bearer(&token(&k2, &claims("initech", None)));
    assert_eventually!(
        http::get(addr, "/ok", &[("authorization", &t2)])
            .await
            .status
            == 200
    );
    let t1b = bearer(&token(&k1, &claims("hooli", None)));
    http::get(addr, "/ok", &[("authorization", &t1b)])
        .await
        .assert_rampart(401, "invalid_token");
    server.failing.store(true, Ordering::SeqCst);
    // Past one refresh (jwks_refresh is at least 1s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t2b = bearer(&token(&k2, &claims("umbrella", None)));
    assert_eq!(
        http::get(addr, "/ok", &[("authorization", &t2b)])
            .await
            .status,
        200
    );
    assert_eq!(http::get(proxy.admin(), "/readyz", &[]).await.status, 200);
}

/// rampart in front of `app`, fetching `server`'s JWKS over https every `refresh` and
/// trusting the CA in `ca` for it (`jwks_ca`).
async fn trusting(
    app: SocketAddr,
    server: &JwksServer,
    refresh: &str,
    ca: &std::path::Path,
) -> Proxy {
    let url = format!("https://127.0.0.1:{}/jwks.json", server.addr.port());
    let template = TEMPLATE.replace(
        "        plan_claim: plan\n",
        "        plan_claim: plan\n        jwks_ca: $CA\n",
    );
    Proxy::builder(&template)
        .var("APP", app)
        .var("JWKS", &url)
        .var("REFRESH", refresh)
        .var("CA", ca.display())
        .spawn()
        .await
}

#[tokio::test]
async fn an_https_jwks_is_fetched_through_rustls_trusting_jwks_ca() {
    let app = sample().await;
    let ca = Ca::new("issuer-ca");
    let pki = Pki::new();
    let ca_path = pki.ca("issuer-ca", &ca);
    let k = ec("k1");
    let server = JwksServer::start_tls(jwks(&[&k]), &ca.server(7)).await;
    let proxy = trusting(app.addr(), &server, "5m", &ca_path).await;
    let t = bearer(&token(&k, &claims("globex", None)));
    let rsp = http::get(proxy.listener("other"), "/ok", &[("authorization", &t)]).await;
    assert_eq!(rsp.status, 200);
    assert!(server.fetches.load(Ordering::SeqCst) >= 1);
}

/// Without `jwks_ca`, an https JWKS is verified against the system roots (SPEC §13), here the
/// bundle the proxy's `SSL_CERT_FILE` names (set on that child only).
#[tokio::test]
async fn an_https_jwks_without_jwks_ca_trusts_the_system_roots() {
    let app = sample().await;
    let ca = Ca::new("system-installed issuer ca");
    let pki = Pki::new();
    let bundle = pki.ca("bundle", &ca);
    let k = ec("k1");
    let server = JwksServer::start_tls(jwks(&[&k]), &ca.server(7)).await;
    let url = format!("https://127.0.0.1:{}/jwks.json", server.addr.port());
    let proxy = Proxy::builder(TEMPLATE)
        .var("APP", app.addr())
        .var("JWKS", &url)
        .var("REFRESH", "5m")
        .env("SSL_CERT_FILE", bundle.display())
        .spawn()
        .await;
    let t = bearer(&token(&k, &claims("globex", None)));
    let rsp = http::get(proxy.listener("other"), "/ok", &[("authorization", &t)]).await;
    assert_eq!(rsp.status, 200, "{}", proxy.log());
    assert!(server.fetches.load(Ordering::SeqCst) >= 1);
}

/// A reload that changes a `jwt` source's checks but not where its keys come from keeps the
/// keys it has: here the JWKS server is down when `audiences` grows, and the token still
/// names its tenant, and rampart stays ready. Before, any change of the source started an
/// empty key store that waited for the issuer: 503 `jwks_unavailable` for every bearer
/// request and `/readyz` 503 until a fetch succeeded.
#[tokio::test]
async fn a_reload_that_changes_the_checks_keeps_the_keys_of_a_jwks_url() {
    let app = sample().await;
    let k = ec("k1");
    let server = JwksServer::start(jwks(&[&k])).await;
    let url = format!("http://{}/jwks.json", server.addr);
    let mut proxy = start(app.addr(), &url, "5m").await;
    let addr = proxy.listener("other");
    let t = bearer(&token(&k, &claims("globex", None)));
    let rsp = http::get(addr, "/ok", &[("authorization", &t)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    server.failing.store(true, Ordering::SeqCst);
    let fetches = server.fetches.load(Ordering::SeqCst);
    let checks = TEMPLATE.replace("audiences: [orders]", "audiences: [orders, billing]");
    proxy.rewrite_config(&checks);
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let t2 = bearer(&token(&k, &claims("initech", None)));
    let rsp = http::get(addr, "/ok", &[("authorization", &t2)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(http::get(proxy.admin(), "/readyz", &[]).await.status, 200);
    // The new checks act: a token for another audience is refused.
    let mut other = claims("hooli", None);
    other["aud"] = "shipping".into();
    http::get(
        addr,
        "/ok",
        &[("authorization", &bearer(&token(&k, &other)))],
    )
    .await
    .assert_rampart(401, "invalid_token");
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        fetches,
        "a reload fetches no key it kept"
    );
    // Read another way (another jwks_refresh): a new refresh task, from the same keys.
    proxy.rewrite_config(&checks.replace("$REFRESH", "1m"));
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let rsp = http::get(addr, "/ok", &[("authorization", &t2)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(http::get(proxy.admin(), "/readyz", &[]).await.status, 200);
}

/// A reload reads `jwks_ca` again, as it reads every CA file (README), and an https JWKS is
/// fetched trusting what it holds now: the issuer moves to a certificate of another CA (and a
/// new key), the bundle is rewritten, SIGHUP, and a token of the new key names its tenant by
/// the next refresh. Before, the refresh task kept the TLS client it started with, and the
/// new key was never fetched.
#[tokio::test]
async fn a_reload_fetches_an_https_jwks_trusting_the_new_jwks_ca() {
    let app = sample().await;
    let (ca1, ca2) = (Ca::new("issuer-ca-1"), Ca::new("issuer-ca-2"));
    let pki = Pki::new();
    let ca_path = pki.ca("jwks-ca", &ca1);
    let (k1, k2) = (ec("k1"), ec("k2"));
    let server = JwksServer::start_tls(jwks(&[&k1]), &ca1.server(7)).await;
    let proxy = trusting(app.addr(), &server, "1s", &ca_path).await;
    let addr = proxy.listener("other");
    let t1 = bearer(&token(&k1, &claims("globex", None)));
    let rsp = http::get(addr, "/ok", &[("authorization", &t1)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    server.present(&ca2.server(8));
    server.body.store(Arc::new(jwks(&[&k2])));
    pki.ca("jwks-ca", &ca2);
    proxy.signal("HUP");
    let t2 = bearer(&token(&k2, &claims("initech", None)));
    assert_eventually!(
        http::get(addr, "/ok", &[("authorization", &t2)])
            .await
            .status
            == 200,
        "{}",
        proxy.log()
    );
}

/// A reload that makes an https JWKS trust another CA file (`jwks_ca` naming another file)
/// withdraws the trust its keys were fetched under: they are not kept, and tokens wait for a
/// fetch the new CA vouches for (503 `jwks_unavailable` while the issuer's certificate is not
/// one). Before, the new source started from the old keys and, its fetches failing, kept them
/// for good.
#[tokio::test]
async fn a_reload_to_another_jwks_ca_file_does_not_keep_keys_fetched_under_the_old() {
    let app = sample().await;
    let (ca1, ca2) = (Ca::new("issuer-ca-1"), Ca::new("issuer-ca-2"));
    let pki = Pki::new();
    let (path1, path2) = (pki.ca("ca-1", &ca1), pki.ca("ca-2", &ca2));
    let k1 = ec("k1");
    let server = JwksServer::start_tls(jwks(&[&k1]), &ca1.server(7)).await;
    let mut proxy = trusting(app.addr(), &server, "1s", &path1).await;
    let addr = proxy.listener("other");
    let t1 = bearer(&token(&k1, &claims("globex", None)));
    assert_eq!(
        http::get(addr, "/ok", &[("authorization", &t1)])
            .await
            .status,
        200
    );
    let text = proxy.rewrite_config(&TEMPLATE.replace(
        "        plan_claim: plan\n",
        &format!(
            "        plan_claim: plan\n        jwks_ca: {}\n",
            path2.display()
        ),
    ));
    assert!(text.contains("ca-2"), "{text}");
    proxy.signal("HUP");
    assert_eventually!(
        http::get(addr, "/ok", &[("authorization", &t1)])
            .await
            .status
            == 503,
        "{}",
        proxy.log()
    );
}

/// Why a token was refused is logged (at debug) escaped: a client's `alg` with a newline in it,
/// echoed by the parse error, cannot start a line of its own in the text log. Before, the
/// reason was written as it was, and the client forged a log line.
#[tokio::test]
async fn a_refused_tokens_reason_cannot_forge_a_log_line() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let proxy = Proxy::builder(TEMPLATE)
        .var("APP", app.addr())
        .var("JWKS", write_jwks(dir.path(), &jwks(&[&r])))
        .var("REFRESH", "5m")
        .env("RUST_LOG", "info,rampart::tenant=debug")
        .text_log()
        .spawn()
        .await;
    let forged = serde_json::json!({ "alg": "RS256\nFORGED admin granted" });
    let t = bearer(&token_with(&r, &forged, &claims("globex", None)));
    let rsp = http::get(proxy.listener("other"), "/ok", &[("authorization", &t)]).await;
    rsp.assert_rampart(401, "invalid_token");
    assert_eventually!(
        proxy.log().contains("bearer token refused"),
        "{}",
        proxy.log()
    );
    let log = proxy.log();
    assert!(log.contains("FORGED admin granted"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}
