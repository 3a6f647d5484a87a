use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::cache::TokenCache;
use super::early::{Early, EARLY_EVERY};
use super::keys::{parse_jwks, KeyStore};
use super::*;
use crate::clock::{ManualClock, SharedClock};
use crate::config::units::Dur;

const NOW: u64 = 1_800_000_000;

struct Signer {
    enc: EncodingKey,
    jwk: Value,
    alg: Algorithm,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn ec_signer(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let raw = kp.public_key_raw();
    Signer {
        enc: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..]), "kid": kid}),
        alg: Algorithm::ES256,
    }
}

fn ed_signer(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed key");
    Signer {
        enc: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).expect("ed pem"),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key_raw()), "kid": kid}),
        alg: Algorithm::EdDSA,
    }
}

fn sign(s: &Signer, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(kid.into());
    encode(&h, claims, &s.enc).expect("sign")
}

fn cfg() -> JwtSource {
    JwtSource {
        header: "authorization".into(),
        claim: "org.id".into(),
        jwks: "unused.json".into(),
        jwks_refresh: Dur::from_secs(60),
        issuers: vec!["https://issuer.test/".into()],
        audiences: vec!["orders".into()],
        jwks_ca: None,
        plan_claim: Some("plan".into()),
    }
}

/// The plans some policy gives limits to.
fn plans() -> Arc<[Box<str>]> {
    Arc::from([Box::from("pro"), Box::from("gold")])
}

fn claims(tenant: &str) -> Value {
    json!({"org": {"id": tenant}, "plan": "pro", "iss": "https://issuer.test/",
           "aud": "orders", "exp": NOW + 600, "nbf": NOW - 10})
}

fn verifier(jwks: &[&Value], cap: usize) -> (Jwt, ManualClock, Arc<KeyStore>) {
    verifier_on(cfg(), jwks, cap)
}

fn verifier_on(cfg: JwtSource, jwks: &[&Value], cap: usize) -> (Jwt, ManualClock, Arc<KeyStore>) {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let wall = WallClock::anchored(shared.clone(), NOW * 1_000_000_000);
    let store = Arc::new(KeyStore::empty(Early::new(shared, cfg.jwks_refresh.0)));
    let doc = json!({ "keys": jwks }).to_string();
    store.set(parse_jwks(doc.as_bytes()).expect("jwks"));
    (
        Jwt::with_keys(&cfg, plans(), store.clone(), wall, cap),
        clock,
        store,
    )
}

#[test]
fn a_valid_token_names_its_tenant_and_plan() {
    let ec = ec_signer("k1");
    let ed = ed_signer("k2");
    let (j, _, _) = verifier(&[&ec.jwk, &ed.jwk], 10);
    for (s, kid) in [(&ec, "k1"), (&ed, "k2")] {
        let v = j.verify(&sign(s, kid, &claims("acme"))).expect("valid");
        assert_eq!(&*v.tenant, "acme");
        assert_eq!(v.plan.as_deref(), Some("pro"));
    }
}

/// A plan claim names a plan only when it is, exactly, one some policy gives limits to; any
/// other claim names none (the tenant is still the token's), so its plan comes from the next
/// source and the upstream is never told it. Before, every claim was taken as sent.
#[test]
fn a_plan_claim_names_only_a_configured_plan() {
    let ec = ec_signer("k1");
    let (j, _, _) = verifier(&[&ec.jwk], 0);
    let with_plan = |plan: Option<Value>| {
        let mut c = claims("acme");
        match plan {
            Some(p) => c["plan"] = p,
            None => drop(c.as_object_mut().expect("object").remove("plan")),
        }
        j.verify(&sign(&ec, "k1", &c)).expect("a good token")
    };
    let v = with_plan(Some(json!("gold")));
    assert_eq!(v.plan.as_deref(), Some("gold"));
    assert_eq!(
        v.plan_value.as_ref().map(|h| h.as_bytes()),
        Some(&b"gold"[..])
    );
    for (what, claim) in [
        ("absent", None),
        ("not configured", Some(json!("platinum"))),
        ("empty", Some(json!(""))),
        ("padded", Some(json!(" gold "))),
        ("another case", Some(json!("Gold"))),
        ("20 KB", Some(json!("g".repeat(20 * 1024)))),
        ("a number", Some(json!(7))),
        ("null", Some(Value::Null)),
        ("an array", Some(json!(["gold"]))),
        ("an object", Some(json!({"name": "gold"}))),
    ] {
        let v = with_plan(claim);
        assert_eq!(&*v.tenant, "acme", "{what}");
        assert_eq!(v.plan, None, "{what}");
        assert_eq!(v.plan_value, None, "{what}");
    }
}

#[test]
fn a_token_before_the_keys_are_loaded_is_not_judged() {
    // A JWKS URL not yet fetched: a good token was answered 401 invalid_token, and clients
    // threw it away.
    let ec = ec_signer("k1");
    let clock: SharedClock = Arc::new(ManualClock::new());
    let wall = WallClock::anchored(clock.clone(), NOW * 1_000_000_000);
    let store = Arc::new(KeyStore::empty(Early::new(clock, EARLY_EVERY)));
    let j = Jwt::with_keys(&cfg(), plans(), store.clone(), wall, 10);
    let token = sign(&ec, "k1", &claims("acme"));
    assert_eq!(j.verify(&token), Err(Reason::JwksUnavailable));
    let doc = json!({ "keys": [&ec.jwk] }).to_string();
    store.set(parse_jwks(doc.as_bytes()).expect("jwks"));
    assert_eq!(
        &*j.verify(&token).expect("valid once loaded").tenant,
        "acme"
    );
}

/// A refused token whose `kid` names no key in force asks for one early read of the JWKS
/// (`early.rs`), and the request waits for it; tokens after it within the interval ask
/// nothing, whatever their `kid`; a token of a known `kid`, without one, or of an algorithm no
/// key is taken for never asks. Nothing asks of a store no task reads.
#[test]
fn a_token_of_an_unknown_kid_asks_one_early_read() {
    let ec = ec_signer("k1");
    let (j, clock, store) = verifier(&[&ec.jwk], 10);
    let rotated = ec_signer("k2");
    let headers = |token: &str| {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
        h.insert(http::header::AUTHORIZATION, v);
        h
    };
    let unknown = |token: &str| {
        let mut reread = Reread::default();
        j.unknown_key(&headers(token), &mut reread);
        reread.is_due()
    };
    let new_key = sign(&rotated, "k2", &claims("acme"));
    assert_eq!(j.verify(&new_key), Err(Reason::InvalidToken));
    assert!(
        !unknown(&new_key),
        "no task reads the store: nothing to wait for"
    );
    let _kick = store.early.serve();
    assert!(unknown(&new_key), "asks, and waits");
    assert!(store.early.is_asked());
    for kid in ["k3", "k4", "k5"] {
        assert!(
            unknown(&sign(&rotated, kid, &claims("acme"))),
            "{kid}: under way, waits"
        );
    }
    store.early.done();
    for kid in ["k2", "k6"] {
        assert!(
            !unknown(&sign(&rotated, kid, &claims("acme"))),
            "{kid}: asked too lately"
        );
    }
    assert!(!store.early.is_asked());
    clock.advance(Duration::from_secs(60));
    let no_kid = Header::new(Algorithm::ES256);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k9".into());
    for (what, token) in [
        ("known kid", sign(&rotated, "k1", &claims("acme"))),
        (
            "no kid",
            encode(&no_kid, &claims("acme"), &rotated.enc).expect("sign"),
        ),
        (
            "hmac",
            encode(&hs, &claims("acme"), &EncodingKey::from_secret(b"s")).expect("sign"),
        ),
    ] {
        assert_eq!(j.verify(&token), Err(Reason::InvalidToken), "{what}");
        assert!(!unknown(&token), "{what}");
    }
    assert!(!store.early.is_asked(), "none of them asked");
    assert!(unknown(&new_key), "the interval has passed");
}

#[test]
fn refused_tokens() {
    let ec = ec_signer("k1");
    let other = ec_signer("k1");
    let (j, _, _) = verifier(&[&ec.jwk], 10);
    let with = |k: &str, v: Value| {
        let mut c = claims("acme");
        c[k] = v;
        sign(&ec, "k1", &c)
    };
    let bad = [
        ("expired", with("exp", json!(NOW - 61))),
        ("not yet", with("nbf", json!(NOW + 61))),
        ("issuer", with("iss", json!("https://evil.test/"))),
        ("audience", with("aud", json!("billing"))),
        ("no tenant", with("org", json!({}))),
        ("signature", sign(&other, "k1", &claims("acme"))),
        ("unknown kid", sign(&ec, "k9", &claims("acme"))),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in bad {
        assert_eq!(j.verify(&token), Err(Reason::InvalidToken), "{what}");
    }
    // A good token naming a tenant that is not a valid id: the id is refused, not the token
    // (a new token would not help), and nothing is cached.
    for id in [json!("a b"), json!("x".repeat(129))] {
        let token = with("org", json!({ "id": id }));
        assert_eq!(j.verify(&token), Err(Reason::InvalidTenant), "{id}");
    }
    assert_eq!(j.cached(), 0);
    let mut no_aud = claims("acme");
    no_aud.as_object_mut().expect("object").remove("aud");
    assert!(j.verify(&sign(&ec, "k1", &no_aud)).is_err(), "missing aud");
    // Within the leeway.
    assert!(j.verify(&with("exp", json!(NOW - 59))).is_ok());
}

#[test]
fn none_and_hmac_are_refused() {
    let ec = ec_signer("k1");
    let (j, _, _) = verifier(&[&ec.jwk], 10);
    let payload = b64(claims("acme").to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
    assert_eq!(j.verify(&none), Err(Reason::InvalidToken));
    // HMAC keyed with the public key's text: the classic confusion attack.
    let secret = ec.jwk.to_string();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = encode(
        &h,
        &claims("acme"),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("hs");
    assert_eq!(j.verify(&hs), Err(Reason::InvalidToken));
}

/// The protected header is read once, for what verification needs: `alg`, `kid`, and whether
/// a `crit` is there at all. A `crit` of any value (`null`, empty, malformed) refuses a token
/// signed by a trusted key that passes without it; a header that is no JSON object (an array
/// would fill the fields in order) or no base64url, or a token short of a segment, is refused.
#[test]
fn the_header_is_read_once_for_alg_kid_and_crit() {
    let ec = ec_signer("k1");
    let (j, _, _) = verifier(&[&ec.jwk], 0);
    let payload = b64(claims("acme").to_string().as_bytes());
    // Signed by hand: jsonwebtoken's `Header` has no `crit`.
    let signed = |header: &str| {
        let message = format!("{}.{payload}", b64(header.as_bytes()));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &ec.enc, ec.alg).expect("sign");
        format!("{message}.{sig}")
    };
    let plain = r#"{"alg":"ES256","kid":"k1","typ":"JWT","x-note":1}"#;
    let read = Protected::read(&signed(plain));
    let want = Protected {
        alg: Algorithm::ES256,
        kid: Some("k1".into()),
        crit: false,
    };
    assert_eq!(read, Ok(want));
    assert!(j.verify(&signed(plain)).is_ok());
    for crit in ["null", "[]", r#"["exp"]"#, "5", "{}"] {
        let h = format!(r#"{{"alg":"ES256","kid":"k1","crit":{crit}}}"#);
        assert!(Protected::read(&signed(&h)).expect("read").crit, "{crit}");
        assert_eq!(j.verify(&signed(&h)), Err(Reason::InvalidToken), "{crit}");
    }
    let bad = [
        signed(r#"["ES256","k1"]"#),
        signed(r#" ["ES256","k1"]"#),
        signed(r#"{"alg":"ES256","kid":5}"#),
        signed(r#"{"alg":"ES256","alg":"ES256"}"#),
        format!("{}.{payload}", b64(plain.as_bytes())),
        format!("e30!.{payload}.sig"),
    ];
    for t in bad {
        assert!(Protected::read(&t).is_err(), "{t}");
        assert_eq!(j.verify(&t), Err(Reason::InvalidToken), "{t}");
    }
}

#[test]
fn bearer_header_parsing() {
    let ec = ec_signer("k1");
    let (j, _, _) = verifier(&[&ec.jwk], 10);
    let mut h = HeaderMap::new();
    assert!(j.check(&h).is_none());
    h.insert("authorization", "Basic dXNlcjpwdw==".parse().expect("hv"));
    assert!(j.check(&h).is_none(), "another scheme is no token");
    let token = sign(&ec, "k1", &claims("acme"));
    h.insert(
        "authorization",
        format!("bearer {token}").parse().expect("hv"),
    );
    assert_eq!(&*j.check(&h).expect("some").expect("ok").tenant, "acme");
    h.insert("authorization", "Bearer x.y.z".parse().expect("hv"));
    assert_eq!(j.check(&h), Some(Err(Reason::InvalidToken)));
}

#[test]
fn another_header_holds_the_token_bare_or_after_bearer() {
    let ec = ec_signer("k1");
    let mut c = cfg();
    c.header = "X-JWT".into();
    let (j, _, _) = verifier_on(c, &[&ec.jwk], 10);
    let token = sign(&ec, "k1", &claims("acme"));
    let tenant_of = |v: String| {
        let mut h = HeaderMap::new();
        h.insert("x-jwt", v.parse().expect("hv"));
        j.check(&h).map(|r| r.map(|v| v.tenant.to_string()))
    };
    for v in [
        token.clone(),
        format!("Bearer {token}"),
        format!(" bearer  {token} "),
    ] {
        assert_eq!(tenant_of(v), Some(Ok("acme".into())));
    }
    for v in ["abc", "Basic dXNlcjpwdw==", "Bearer x.y.z", "x.y.z"] {
        assert_eq!(tenant_of(v.into()), Some(Err(Reason::InvalidToken)), "{v}");
    }
    for v in ["", "Bearer"] {
        assert_eq!(tenant_of(v.into()), None, "{v:?} is no token");
    }
    let mut h = HeaderMap::new();
    h.insert("x-jwt", HeaderValue::from_bytes(b"\xff.y.z").expect("hv"));
    assert_eq!(j.check(&h), Some(Err(Reason::InvalidToken)), "not text");
    h.clear();
    h.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("hv"),
    );
    assert_eq!(j.check(&h), None, "only its own header is read");
}

#[test]
fn the_cache_serves_hits_until_ttl_or_exp() {
    let ec = ec_signer("k1");
    let (j, clock, store) = verifier(&[&ec.jwk], 10);
    let token = sign(&ec, "k1", &claims("acme"));
    j.verify(&token).expect("valid");
    assert_eq!(j.cached(), 1);
    // The same keys read again: the cached verdict holds, for at most a minute.
    let same = json!({ "keys": [ec.jwk] }).to_string();
    store.set(parse_jwks(same.as_bytes()).expect("jwks"));
    clock.advance(Duration::from_secs(59));
    assert!(j.verify(&token).is_ok(), "cached");
    clock.advance(Duration::from_secs(2));
    assert!(j.verify(&token).is_ok(), "verified again, and cached anew");
    // Keys rotated away: the cached verdict goes with them at once.
    let other = ec_signer("k2");
    let doc = json!({ "keys": [other.jwk] }).to_string();
    store.set(parse_jwks(doc.as_bytes()).expect("jwks"));
    assert_eq!(
        j.verify(&token),
        Err(Reason::InvalidToken),
        "its key is gone"
    );
    // A token about to expire is cached only until exp + leeway.
    store.set(parse_jwks(same.as_bytes()).expect("jwks"));
    let mut c = claims("acme");
    // The wall clock is at NOW + 61: expired 10 s ago, 50 s of leeway left.
    c["exp"] = json!(NOW + 51);
    let short = sign(&ec, "k1", &c);
    assert!(j.verify(&short).is_ok());
    clock.advance(Duration::from_secs(49));
    assert!(j.verify(&short).is_ok());
    clock.advance(Duration::from_secs(2));
    assert_eq!(j.verify(&short), Err(Reason::InvalidToken));
}

#[test]
fn the_cache_is_bounded() {
    let v = Arc::new(Verified::new("t", None));
    let c = TokenCache::new(2);
    let s = 1_000_000_000;
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        c.insert(TokenCache::key(t), v.clone(), (10 * s, 0), s + i as u64);
    }
    assert_eq!(c.len(), 2);
    assert!(c.get(&TokenCache::key("c"), s, 0).is_none());
    // Once entries expired, a sweep (at most once a second) makes room.
    c.insert(TokenCache::key("d"), v.clone(), (20 * s, 0), 11 * s);
    assert_eq!(c.len(), 1);
    assert!(c.get(&TokenCache::key("d"), 11 * s, 0).is_some());
    // Verified with keys no longer in force: a miss, and the entry goes.
    assert!(c.get(&TokenCache::key("d"), 11 * s, 1).is_none());
    assert_eq!(c.len(), 0);
}

#[test]
fn claim_paths() {
    let c = json!({"a": {"b": {"c": "deep"}}, "n": 42, "f": 1.5, "o": {}, "s": "top"});
    let get = |p: &str| claim_str(&c, &path(p));
    assert_eq!(get("a.b.c").as_deref(), Some("deep"));
    assert_eq!(get("s").as_deref(), Some("top"));
    assert_eq!(get("n").as_deref(), Some("42"));
    assert_eq!(get("f"), None);
    assert_eq!(get("o"), None);
    assert_eq!(get("a.x"), None);
    assert_eq!(get("s.x"), None);
}

#[test]
fn jwks_parsing_skips_what_it_cannot_use() {
    let ec = ec_signer("k1");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "use": "enc", "kid": "e"},
        {"kty": "weird"},
        ec.jwk,
    ]})
    .to_string();
    let keys = parse_jwks(doc.as_bytes()).expect("one usable");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].algs, vec![Algorithm::ES256]);
    assert!(parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
    assert!(parse_jwks(b"[]").is_err());
}
