//! SPEC §13's own layout, `from: [jwt, header: x-tenant-id]`: a request without a token names
//! its tenant in the header, any tenant, a verified one's id included. `validate` says so at
//! the header source, and the idempotency store keeps a claimed id's keys apart from the
//! verified tenant's, so a claimed `acme` never gets a verified `acme`'s stored answer.

use super::keys::{claims, ec, jwks, token};
use super::{bearer, start_idempotent, write_jwks, TEMPLATE};
use crate::support::proxy::run;
use crate::support::{http, sample, Proxy};

/// What `validate` prints for `template` (with the jwt variables filled in).
async fn validated(template: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rendered = Proxy::builder(template)
        .var("APP", "127.0.0.1:1")
        .var("JWKS", write_jwks(dir.path(), &jwks(&[&ec("e1")])))
        .var("REFRESH", "5m")
        .render();
    let path = rendered.path.display().to_string();
    let out = run(&["validate", "--config", &path]).await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), path, text)
}

/// (a) The header after the jwt source is warned about at its own place (`- header:` is line
/// 13 of the template, the key at column 7); the file still validates. A header before the
/// token, or a query after it, is warned about only in the second case.
#[tokio::test]
async fn validate_warns_that_a_header_after_a_token_can_claim_any_tenant() {
    let (code, path, text) = validated(TEMPLATE).await;
    assert_eq!(code, Some(0), "{text}");
    let at = format!("{path}:13:7: tenants.from[1].header");
    let line = text
        .lines()
        .find(|l| l.starts_with(&at))
        .unwrap_or_else(|| panic!("no line starting {at:?} in:\n{text}"));
    assert!(line.contains("warning"), "{line}");
    assert!(
        line.contains("a request without a token can claim any tenant id"),
        "{line}"
    );
    assert!(line.contains("trusted party"), "{line}");

    let query = TEMPLATE.replace("    - header: x-tenant-id\n", "    - query: tenant\n");
    assert_ne!(query, TEMPLATE);
    let (code, path, text) = validated(&query).await;
    assert_eq!(code, Some(0), "{text}");
    let at = format!("{path}:13:7: tenants.from[1].query");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&at) && l.contains("can claim any tenant id")),
        "{text}"
    );

    // The header first: a token is never read where the header names a tenant, nothing is
    // claimed past a verification.
    let first = TEMPLATE
        .replace("    - header: x-tenant-id\n", "")
        .replace("  from:\n", "  from:\n    - header: x-tenant-id\n");
    let (code, _, text) = validated(&first).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("can claim any tenant id"), "{text}");
}

/// (b) Over real sockets: acme's token stores its answer under `order-1`; the same key with
/// only `x-tenant-id: acme` is no replay (it reaches the upstream, as the claimed tenant's own
/// first request), and the token's repeat still replays acme's answer, not the claimed one's.
#[tokio::test]
async fn a_claimed_tenant_never_replays_a_verified_tenants_answer() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ec("e1");
    let proxy = start_idempotent(app.addr(), &key, dir.path()).await;
    let addr = proxy.listener("other");
    let t = bearer(&token(&key, &claims("acme", None)));
    let verified = [
        ("authorization", t.as_str()),
        ("idempotency-key", "order-1"),
    ];
    let claimed = [("x-tenant-id", "acme"), ("idempotency-key", "order-1")];

    let stored = http::post(addr, "/echo", &verified, "acme's order").await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.header("x-rampart-idempotent-replay"), None);
    assert_eq!(app.hits_for("/echo"), 1);

    let other = http::post(addr, "/echo", &claimed, "acme's order").await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(
        other.header("x-rampart-idempotent-replay"),
        None,
        "a header-only acme must not be handed the verified acme's stored answer"
    );
    assert_eq!(app.hits_for("/echo"), 2, "it ran as a request of its own");

    // Each side replays its own.
    let again = http::post(addr, "/echo", &verified, "acme's order").await;
    assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    let claimed_again = http::post(addr, "/echo", &claimed, "acme's order").await;
    assert_eq!(
        claimed_again.header("x-rampart-idempotent-replay"),
        Some("true")
    );
    assert_eq!(app.hits_for("/echo"), 2);
}
