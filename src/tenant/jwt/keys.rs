//! The verification keys of one JWKS, and which algorithms each key allows.
//!
//! A key's algorithms come from its `alg` when the JWKS names one, else from its type and curve
//! (RSA: RS256/384/512 and PS256/384/512; P-256: ES256; P-384: ES384; Ed25519: EdDSA). HMAC
//! (`oct`) keys and encryption keys are never loaded, so a token can neither pick `none` nor
//! verify an HMAC over a public key as if it were a shared secret.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::early::Early;

/// One usable verification key.
pub(crate) struct Key {
    /// Its `kid`, if the JWKS gives one.
    pub(crate) kid: Option<String>,
    /// The signature algorithms it verifies.
    pub(crate) algs: Vec<Algorithm>,
    /// The key itself, parsed once.
    pub(crate) key: DecodingKey,
    /// Its JWK as the JWKS gave it, to tell a changed key set from the same one read again.
    pub(crate) jwk: String,
}

/// The keys in force for one `jwt` source, swapped whole when the JWKS is read again.
pub(crate) struct KeyStore {
    keys: ArcSwap<Vec<Key>>,
    /// Whether a read or fetch has succeeded once (`/readyz` waits for a URL's first).
    loaded: AtomicBool,
    /// Bumped whenever the keys in force change: a verdict cached under another epoch was
    /// reached with keys that may be gone (`cache.rs`).
    epoch: AtomicU64,
    /// The TLS client an `https://` JWKS is fetched with (`refresh.rs`): a reload puts in
    /// the one its validation built, `jwks_ca` read again.
    pub(crate) tls: ArcSwapOption<rustls::ClientConfig>,
    /// Reads asked before their time by tokens naming a `kid` the keys lack (`early.rs`).
    pub(crate) early: Early,
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

// === impl KeyStore ===

impl KeyStore {
    /// A store with no keys yet, read early as `early` says.
    pub(crate) fn empty(early: Early) -> Self {
        KeyStore {
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            tls: ArcSwapOption::empty(),
            early,
        }
    }

    /// Whether a key of the keys in force has the `kid` `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys
            .load()
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys now in force.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Puts `keys` in force; a set that differs from the one before starts a new epoch.
    pub(crate) fn set(&self, keys: Vec<Key>) {
        let keys = Arc::new(keys);
        let old = self.keys.swap(keys.clone());
        if !old.iter().map(|k| &k.jwk).eq(keys.iter().map(|k| &k.jwk)) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.loaded.store(true, Ordering::Release);
    }

    /// Puts in force the keys `other` has, if it ever loaded any: a store that takes the
    /// place of `other` for the same JWKS is loaded from the start.
    pub(crate) fn inherit(&self, other: &KeyStore) {
        if other.is_loaded() {
            self.keys.store(other.keys());
            self.loaded.store(true, Ordering::Release);
        }
    }

    /// The epoch of the keys in force (see [`KeyStore::set`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether keys were loaded at least once.
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.keys.load().len())
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

/// Parses a JWKS document; keys of an unsupported kind are skipped, a document with no usable
/// key at all is an error (so a bad re-read never replaces good keys with none).
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<Key> = doc
        .keys
        .into_iter()
        .filter_map(|v| {
            let text = v.to_string();
            let jwk = serde_json::from_value::<Jwk>(v).ok()?;
            usable(&jwk, text)
        })
        .collect();
    if keys.is_empty() {
        return Err(
            "the JWKS holds no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into(),
        );
    }
    Ok(keys)
}

fn usable(jwk: &Jwk, text: String) -> Option<Key> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    let algs = match jwk.common.key_algorithm {
        Some(named) => {
            let alg = signature_alg(named)?;
            by_type.contains(&alg).then(|| vec![alg])?
        }
        None => by_type,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
        jwk: text,
    })
}

/// The asymmetric signature algorithm a JWK `alg` names, if it is one.
fn signature_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
