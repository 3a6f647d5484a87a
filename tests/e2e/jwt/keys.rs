//! Keys, JWKS documents and tokens made in the test: RSA through the `openssl` command (ring
//! cannot generate RSA keys), P-256 through rcgen; a tiny JWKS server on loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::tls::{certs, key, server_config, Issued};

pub const ISS: &str = "https://issuer.test/";
pub const AUD: &str = "orders";

/// A signing key and its public JWK.
pub struct Signer {
    pub enc: EncodingKey,
    pub jwk: Value,
    pub alg: Algorithm,
    pub kid: String,
    /// The public key as PEM (RSA only): the "secret" of an HMAC confusion attack.
    pub public_pem: Option<String>,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect(
        "the openssl command is needed (Debian package openssl; scripts/test.sh installs it)",
    );
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf8")
}

/// A fresh 2048-bit RSA key.
pub fn rsa(kid: &str) -> Signer {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let key = key.to_str().expect("path");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key,
    ]);
    let modulus = openssl(&["rsa", "-in", key, "-noout", "-modulus"]);
    let n = hex(modulus.trim().trim_start_matches("Modulus="));
    let pem = std::fs::read(key).expect("key");
    Signer {
        enc: EncodingKey::from_rsa_pem(&pem).expect("rsa pem"),
        jwk: json!({"kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": kid, "use": "sig"}),
        alg: Algorithm::RS256,
        kid: kid.into(),
        public_pem: Some(openssl(&["rsa", "-in", key, "-pubout"])),
    }
}

/// A fresh P-256 key.
pub fn ec(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let raw = kp.public_key_raw();
    Signer {
        enc: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..]), "kid": kid}),
        alg: Algorithm::ES256,
        kid: kid.into(),
        public_pem: None,
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&Signer]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// Claims of a good token for `tenant` (with `plan`, if any).
pub fn claims(tenant: &str, plan: Option<&str>) -> Value {
    let mut c = json!({"sub": "u1", "org": {"id": tenant}, "iss": ISS, "aud": AUD,
                       "exp": now() + 600, "iat": now()});
    if let Some(p) = plan {
        c["plan"] = json!(p);
    }
    c
}

/// `claims` signed by `s`.
pub fn token(s: &Signer, claims: &Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.clone());
    encode(&h, claims, &s.enc).expect("sign")
}

/// `claims` signed by `s` under a header of the usual fields and `extra`'s (`crit`, which
/// `jsonwebtoken`'s `Header` cannot carry).
pub fn token_with(s: &Signer, extra: &Value, claims: &Value) -> String {
    let mut h = serde_json::to_value(Header::new(s.alg)).expect("a header");
    h["kid"] = json!(s.kid);
    for (k, v) in extra.as_object().expect("an object") {
        h[k] = v.clone();
    }
    let signed = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), &s.enc, s.alg).expect("sign");
    format!("{signed}.{sig}")
}

/// `claims` under `alg: none`.
pub fn unsigned(claims: &Value) -> String {
    let h = b64(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{h}.{}.", b64(claims.to_string().as_bytes()))
}

/// `claims` HMAC-signed with the RSA public key's PEM as the secret.
pub fn hmac_with_public_key(s: &Signer, claims: &Value) -> String {
    let secret = s.public_pem.as_deref().expect("an RSA signer");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(s.kid.clone());
    encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("hs256")
}

/// A JWKS served over plain HTTP on loopback; answers 500 while `failing`.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub body: Arc<ArcSwap<String>>,
    pub failing: Arc<AtomicBool>,
    pub fetches: Arc<AtomicUsize>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves plain HTTP.
    pub async fn start(body: String) -> Self {
        Self::serve(body, None).await
    }

    /// Serves HTTPS as `identity`.
    pub async fn start_tls(body: String, identity: &Issued) -> Self {
        Self::serve(body, Some(acceptor(identity))).await
    }

    /// Serves HTTPS as `identity` from the next connection on (a certificate of another CA).
    pub fn present(&self, identity: &Issued) {
        self.tls.store(Some(Arc::new(acceptor(identity))));
    }

    async fn serve(body: String, tls: Option<TlsAcceptor>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let body = Arc::new(ArcSwap::from_pointee(body));
        let failing = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let tls = Arc::new(ArcSwapOption::from(tls.map(Arc::new)));
        let (b, f, n, t) = (body.clone(), failing.clone(), fetches.clone(), tls.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                let rsp = if f.load(Ordering::SeqCst) {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    let text = b.load_full();
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len())
                };
                match t.load_full() {
                    Some(acceptor) => {
                        if let Ok(t) = acceptor.accept(s).await {
                            answer(t, &rsp).await;
                        }
                    }
                    None => answer(s, &rsp).await,
                }
            }
        });
        JwksServer {
            addr,
            body,
            failing,
            fetches,
            tls,
            task,
        }
    }
}

/// A TLS acceptor presenting `identity`.
fn acceptor(identity: &Issued) -> TlsAcceptor {
    let config = server_config(certs(&identity.cert), key(&identity.key), None, &[]);
    TlsAcceptor::from(Arc::new(config))
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, rsp: &str) {
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).await;
    let _ = s.write_all(rsp.as_bytes()).await;
    let _ = s.shutdown().await;
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
