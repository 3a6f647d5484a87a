//! Cost of identifying a tenant from a bearer token: full verification (signature, claims)
//! against the cost with the verified-token cache (issue 26), for RS256 and ES256.
//!
//! `verify/uncached` is the work a new token costs (and every request would cost without the
//! cache); `verify/cached` is a token seen within the last minute: one SHA-256 of the token
//! and one sharded map read. Keys are made here: ES256 by rcgen, RS256 by the `openssl`
//! command (skipped when it is missing).

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::Criterion;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rampart::clock::{MonotonicClock, SharedClock, WallClock};
use rampart::config::file::JwtSource;
use rampart::config::units::Dur;
use rampart::tenant::jwt::Jwt;
use serde_json::{json, Value};

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn es256() -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let raw = kp.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..]), "kid": "k"});
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("pem");
    (enc, jwk)
}

fn rs256(dir: &std::path::Path) -> Option<(EncodingKey, Value)> {
    let key = dir.join("rsa.pem");
    let key = key.to_str()?;
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key,
    ])?;
    let modulus = run(&["rsa", "-in", key, "-noout", "-modulus"])?;
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    let enc = EncodingKey::from_rsa_pem(&std::fs::read(key).ok()?).ok()?;
    Some((
        enc,
        json!({"kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": "k"}),
    ))
}

fn verifier(dir: &std::path::Path, jwk: &Value) -> Jwt {
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({ "keys": [jwk] }).to_string()).expect("jwks");
    let cfg = JwtSource {
        header: "authorization".into(),
        claim: "org.id".into(),
        jwks: path.display().to_string(),
        jwks_refresh: Dur::from_secs(300),
        issuers: vec!["https://issuer.test/".into()],
        audiences: vec!["orders".into()],
        jwks_ca: None,
        plan_claim: Some("plan".into()),
    };
    let clock: SharedClock = Arc::new(MonotonicClock::new());
    Jwt::new(
        &cfg,
        Arc::from([Box::from("pro")]),
        None,
        WallClock::system(clock),
        None,
        &rampart::tls::SystemRoots::new(),
    )
}

fn token(enc: &EncodingKey, alg: Algorithm) -> String {
    let now = WallClock::system(Arc::new(MonotonicClock::new())).unix_secs();
    let claims = json!({"org": {"id": "acme"}, "plan": "pro", "iss": "https://issuer.test/",
                        "aud": "orders", "exp": now + 3600, "sub": "user-1"});
    let mut h = Header::new(alg);
    h.kid = Some("k".into());
    encode(&h, &claims, enc).expect("sign")
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keys = vec![("es256", Algorithm::ES256, es256())];
    if let Some(k) = rs256(dir.path()) {
        keys.insert(0, ("rs256", Algorithm::RS256, k));
    }
    let mut g = c.benchmark_group("jwt");
    for (name, alg, (enc, jwk)) in &keys {
        let jwt = verifier(dir.path(), jwk);
        let t = token(enc, *alg);
        assert!(jwt.verify(&t).is_ok(), "the bench token must verify");
        g.bench_function(format!("verify/uncached/{name}"), |b| {
            b.iter(|| jwt.verify_uncached(black_box(&t)))
        });
        g.bench_function(format!("verify/cached/{name}"), |b| {
            b.iter(|| jwt.verify(black_box(&t)))
        });
    }
    g.finish();
    c.final_summary();
}
