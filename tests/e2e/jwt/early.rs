//! SPEC §13 `jwks_refresh`: a token naming a key (`kid`) the JWKS lacked at its last read has
//! it read early, and waits for that read, so a key the issuer has just rotated in is served
//! at once, not after `jwks_refresh` (an hour here). Early reads are bounded whatever the
//! tokens: one at a time, at most one per 30 s, counted at the JWKS server.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;

use super::keys::{claims, ec, jwks, token, token_with, JwksServer, Signer};
use super::{bearer, start, write_jwks};
use crate::support::metrics::{metric_value, metrics};
use crate::support::{http, sample, Proxy};
use rampart::sample::Sample;

/// rampart in front of the sample app, its JWKS (`k1` alone) at a URL read every hour.
async fn behind_url(k1: &Signer) -> (Sample, JwksServer, Proxy) {
    let app = sample().await;
    let server = JwksServer::start(jwks(&[k1])).await;
    let url = format!("http://{}/jwks.json", server.addr);
    let proxy = start(app.addr(), &url, "1h").await;
    (app, server, proxy)
}

/// The issuer adds a key and signs with it: its first token is served (200), by one early
/// read of the JWKS, URL or file, long before the next scheduled one. Before, it was 401
/// `invalid_token` until `jwks_refresh` had passed.
#[tokio::test]
async fn a_token_of_a_key_just_rotated_in_is_served_at_once() {
    let (k1, k2) = (ec("k1"), ec("k2"));
    let (app, server, proxy) = behind_url(&k1).await;
    let addr = proxy.listener("other");
    let t1 = bearer(&token(&k1, &claims("globex", None)));
    let rsp = http::get(addr, "/ok", &[("authorization", &t1)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let fetched = server.fetches.load(Ordering::SeqCst);
    server.body.store(Arc::new(jwks(&[&k1, &k2])));
    let t2 = bearer(&token(&k2, &claims("initech", None)));
    let rsp = http::get(addr, "/ok", &[("authorization", &t2)]).await;
    assert_eq!(
        rsp.status,
        200,
        "the rotated-in key's first token: {}",
        rsp.text()
    );
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        fetched + 1,
        "one early fetch"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_jwks(dir.path(), &jwks(&[&k1]));
    let proxy = start(app.addr(), &path, "1h").await;
    let addr = proxy.listener("other");
    write_jwks(dir.path(), &jwks(&[&k1, &k2]));
    let rsp = http::get(addr, "/ok", &[("authorization", &t2)]).await;
    assert_eq!(rsp.status, 200, "a JWKS file read early: {}", rsp.text());
}

/// Any client can name any `kid`: 60 tokens of unknown kids, 40 of them at once, make one
/// early fetch, not 60; each is refused 401 `invalid_token` and counted once as such. Within
/// the interval (30 s) a key rotated in meanwhile waits for a read too: still refused, and
/// still no fetch. Before, no early fetch was made at all.
#[tokio::test]
async fn a_flood_of_unknown_kids_makes_one_early_fetch_per_interval() {
    let (k1, k2) = (ec("k1"), ec("k2"));
    let (_app, server, proxy) = behind_url(&k1).await;
    let addr = proxy.listener("other");
    let fetched = server.fetches.load(Ordering::SeqCst);
    let forger = ec("forger");
    let forged = |i: usize| {
        let kid = json!({ "kid": format!("kid-{i}-{}", fastrand::u64(..)) });
        bearer(&token_with(
            &forger,
            &kid,
            &claims(&format!("evil{i}"), None),
        ))
    };
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..40 {
        let t = forged(i);
        flood.spawn(async move { http::get(addr, "/ok", &[("authorization", &t)]).await });
    }
    while let Some(rsp) = flood.join_next().await {
        rsp.expect("a request").assert_rampart(401, "invalid_token");
    }
    for i in 40..60 {
        let rsp = http::get(addr, "/ok", &[("authorization", &forged(i))]).await;
        rsp.assert_rampart(401, "invalid_token");
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        fetched + 1,
        "one early fetch for the flood"
    );
    let text = metrics(proxy.admin()).await;
    let refused = [("listener", "other"), ("code", "401")];
    assert_eq!(
        metric_value(&text, "rampart_requests_total", &refused),
        Some(60.0)
    );

    server.body.store(Arc::new(jwks(&[&k1, &k2])));
    let t2 = bearer(&token(&k2, &claims("initech", None)));
    http::get(addr, "/ok", &[("authorization", &t2)])
        .await
        .assert_rampart(401, "invalid_token");
    assert_eq!(server.fetches.load(Ordering::SeqCst), fetched + 1);
}
