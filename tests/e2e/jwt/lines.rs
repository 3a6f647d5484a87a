//! One rule for where a bearer token is (RFC 6750 §2.1, RFC 9110 §11.6.2), over HTTP/1.1 and
//! HTTP/2 alike: lines that carry no token (empty, `Bearer` alone, `Basic ...` in
//! `authorization`) are passed over; exactly one token is the token; two tokens, or a token's
//! line holding more than `Bearer <token>`, is 401 `invalid_token` saying what is wrong.

use super::keys::{claims, jwks, rsa, token};
use super::{bearer, write_jwks};
use std::net::SocketAddr;

use crate::support::http::{self, Resp};
use crate::support::{sample, Proxy};

/// A gateway's own header (token bare or after `Bearer `), then `authorization`; every request
/// needs a tenant, and no limit stands in the way.
const TWO_HEADERS: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from:
    - jwt: { header: x-jwt, claim: org.id, jwks: $JWKS, issuers: [https://issuer.test/], audiences: [orders] }
    - jwt: { claim: org.id, jwks: $JWKS, issuers: [https://issuer.test/], audiences: [orders] }
  fallback: reject
upstreams:
  app: { endpoints: [$APP] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { upstream: app }
"#;

#[tokio::test]
async fn one_rule_reads_the_bearer_token_over_h1_and_h2() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = rsa("r1");
    let proxy = Proxy::builder(TWO_HEADERS)
        .var("APP", app.addr())
        .var("JWKS", write_jwks(dir.path(), &jwks(&[&r])))
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let t = token(&r, &claims("globex", None));
    let b = bearer(&t);
    let (basic, tab) = ("Basic dXNlcjpwdw==", format!("Bearer\t{t}"));
    // Served: one token, beside lines that carry none (before, each was refused as "more
    // than one bearer token").
    let served: Vec<Vec<(&str, String)>> = vec![
        vec![
            ("authorization", b.clone()),
            ("authorization", String::new()),
        ],
        vec![
            ("authorization", b.clone()),
            ("authorization", basic.into()),
        ],
        vec![
            ("authorization", b.clone()),
            ("authorization", "Bearer".into()),
        ],
        vec![("x-jwt", t.clone()), ("x-jwt", String::new())],
        vec![("x-jwt", t.clone()), ("x-jwt", "Bearer".into())],
    ];
    // Refused, each told its own fault.
    let refused: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("authorization", format!("{b} extra"))],
            "followed by more text after a space",
        ),
        (vec![("authorization", format!("{b},"))], "a stray comma"),
        (
            vec![("authorization", format!("{basic}, {b}"))],
            "shares its line with other credentials",
        ),
        (
            vec![("authorization", format!("{b}, {basic}"))],
            "shares its line with other credentials",
        ),
        (vec![("authorization", tab.clone())], "separated by spaces"),
        (vec![("x-jwt", tab.clone())], "separated by spaces"),
        (
            vec![("authorization", b.clone()), ("authorization", b.clone())],
            "more than one bearer token",
        ),
        (
            vec![("x-jwt", t.clone()), ("x-jwt", basic.into())],
            "neither a bearer token nor `Bearer <token>`",
        ),
    ];
    let before = app.hits();
    for h2 in [false, true] {
        for sent in &served {
            let rsp = get(addr, sent, h2).await;
            assert_eq!(rsp.status, 200, "{sent:?} (h2: {h2}): {}", rsp.text());
        }
        for (sent, says) in &refused {
            let rsp = get(addr, sent, h2).await;
            rsp.assert_rampart(401, "invalid_token");
            assert_eq!(
                rsp.header("www-authenticate"),
                Some("Bearer error=\"invalid_token\""),
                "{sent:?}"
            );
            let m = rsp.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(m.contains(says), "{sent:?} (h2: {h2}): {m}");
        }
    }
    assert_eq!(
        app.hits() - before,
        2 * served.len() as u64,
        "only the served requests reach the upstream"
    );
}

/// GET /ok with `sent`, over HTTP/2 when `h2`.
async fn get(addr: SocketAddr, sent: &[(&str, String)], h2: bool) -> Resp {
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match h2 {
        false => http::get(addr, "/ok", &sent).await,
        true => http::h2_get(addr, "/ok", &sent).await,
    }
}
