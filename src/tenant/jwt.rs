//! The `jwt` tenant source (SPEC §13): the tenant is a claim of a bearer token whose signature,
//! expiry, issuer and audience were checked against a JWKS.
//!
//! Why: a header names whichever tenant the client likes; a signed token names the one its
//! issuer vouched for. The cryptography is jsonwebtoken's (ring underneath); this module picks
//! the key (by `kid`, among the algorithms that key allows), checks the times against the
//! injected [`WallClock`] with [`LEEWAY_SECS`] of leeway, reads the claims, and caches the
//! outcome briefly (`cache.rs`) so a hot client costs one signature check a minute. The JWKS is
//! kept fresh by `refresh.rs`, and read early for a token of a key it lacks (`early.rs`).

mod bearer;
mod cache;
mod early;
mod keys;
mod refresh;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use self::bearer::Found;
use self::cache::{TokenCache, CACHE_TTL_NANOS};
use self::early::Asked;
use self::keys::KeyStore;
use crate::clock::WallClock;
use crate::config::file::JwtSource;
use crate::error::Reason;
use crate::throttle::{Throttle, WARN_EVERY};
use crate::tls::SystemRoots;

pub use self::early::Rejudge;
pub(crate) use self::early::Reread;
pub use self::refresh::{is_url, same_key_source, JwksRead, MAX_JWKS_BYTES};

/// Leeway on `exp` and `nbf`, for clocks that disagree a little.
pub const LEEWAY_SECS: u64 = 60;
/// Verified tokens cached per source.
pub const CACHE_CAP: usize = 10_000;
/// Most characters of a refused plan claim a warning shows.
const SHOWN_CLAIM: usize = 40;

/// What a verified token says.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// The tenant (from `claim`), a valid tenant id.
    pub tenant: Arc<str>,
    /// The plan (from `plan_claim`), if configured and naming a configured plan (see
    /// [`Jwt::verify_uncached`]).
    pub plan: Option<Arc<str>>,
    /// `tenant` as a header value (`None` only for an id that is no valid one, which
    /// [`Jwt::verify`] refuses): made once per verified token, not per request, for the header
    /// lines that tell the upstream the verified tenant (`Identify::vouch`).
    pub(crate) tenant_value: Option<HeaderValue>,
    /// `plan` as a header value, when it can be one.
    pub(crate) plan_value: Option<HeaderValue>,
}

// === impl Verified ===

impl Verified {
    /// What a token naming `tenant`, and `plan` if any, says.
    pub fn new(tenant: &str, plan: Option<&str>) -> Self {
        Verified {
            tenant: Arc::from(tenant),
            plan: plan.map(Arc::from),
            tenant_value: HeaderValue::from_str(tenant).ok(),
            plan_value: plan.and_then(|p| HeaderValue::from_str(p).ok()),
        }
    }
}

/// One configured `jwt` source with its keys and cache.
#[derive(Debug)]
pub struct Jwt {
    cfg: JwtSource,
    header: HeaderName,
    claim: Vec<String>,
    plan_claim: Option<Vec<String>>,
    /// The plans some policy gives limits to (`rate_limit.plans`): the only ones a token may
    /// name. Shared by the generation's `jwt` sources.
    plans: Arc<[Box<str>]>,
    /// A claim naming none of `plans` is warned about at most every [`WARN_EVERY`]; taken only
    /// when such a token is verified (once a minute per token, by the cache).
    unplanned: Mutex<Throttle>,
    validations: Vec<(Algorithm, Validation)>,
    keys: Arc<KeyStore>,
    cache: TokenCache,
    wall: WallClock,
}

// === impl Jwt ===

impl Jwt {
    /// The source for `cfg`, whose tokens may name the plans `plans`. The keys depend only on
    /// where they come from, so those of `prev` (the source a reload replaces) are kept
    /// whatever else changed (`issuers`, `audiences`, `claim`...): a reload never waits for a
    /// JWKS URL again, nor answers 503 while its issuer is down. With the same key source
    /// ([`same_key_source`]) its keys and their refresh task are kept (a file's keys are
    /// replaced by what the reload read); with the same `jwks` refreshed at another
    /// `jwks_refresh`, a new task starts from its last good keys; with another `jwks_ca` file,
    /// from none (the old keys were fetched under a trust withdrawn). A new one
    /// serves what its load's validation read (`read`: the file's bytes, the https client);
    /// without that, it reads the file, and an https JWKS without `jwks_ca` trusts `system`,
    /// the system roots of this config load.
    pub fn new(
        cfg: &JwtSource,
        plans: Arc<[Box<str>]>,
        prev: Option<&Jwt>,
        wall: WallClock,
        read: Option<&JwksRead>,
        system: &SystemRoots,
    ) -> Self {
        let keys = match prev.filter(|p| p.cfg.jwks == cfg.jwks) {
            Some(p) if same_key_source(&p.cfg, cfg) => {
                // A reload serves the file its validation read, as it serves the TLS files: a
                // key taken out (a leaked one) is refused from this reload on, not from the
                // next refresh. (Validation checked the bytes; a URL is not fetched by a reload.)
                match read {
                    Some(JwksRead::File(bytes)) => {
                        if let Ok(keys) = keys::parse_jwks(bytes) {
                            p.keys.set(keys);
                        }
                    }
                    // Fetched from now on trusting the `jwks_ca` this reload read (the file's
                    // content may have changed), the keys kept meanwhile.
                    Some(JwksRead::Https(c)) => p.keys.tls.store(Some(c.clone())),
                    None => {}
                }
                p.keys.clone()
            }
            // Another `jwks_refresh` alone starts from the last good keys. Another `jwks_ca`
            // withdraws the trust they were fetched under: the new source waits for a fetch
            // the new CA vouches for.
            p => refresh::start(
                cfg,
                read,
                system,
                p.filter(|p| p.cfg.jwks_ca == cfg.jwks_ca).map(|p| &*p.keys),
                wall.clock().clone(),
            ),
        };
        Self::with_keys(cfg, plans, keys, wall, CACHE_CAP)
    }

    fn with_keys(
        cfg: &JwtSource,
        plans: Arc<[Box<str>]>,
        keys: Arc<KeyStore>,
        wall: WallClock,
        cap: usize,
    ) -> Self {
        let header =
            HeaderName::from_bytes(cfg.header.as_bytes()).unwrap_or(http::header::AUTHORIZATION);
        let validations = ALGS.iter().map(|&a| (a, validation(cfg, a))).collect();
        Jwt {
            header,
            claim: path(&cfg.claim),
            plan_claim: cfg.plan_claim.as_deref().map(path),
            plans,
            unplanned: Mutex::new(Throttle::new(WARN_EVERY)),
            validations,
            keys,
            cache: TokenCache::new(cap),
            wall,
            cfg: cfg.clone(),
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &JwtSource {
        &self.cfg
    }

    /// The header its token is read from.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether the keys were read or fetched once (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.keys.is_loaded()
    }

    /// The token in `headers`: `None` when there is none (try the next source), else the
    /// verified claims or [`Reason::InvalidToken`].
    ///
    /// `authorization` holds credentials of many schemes, so only `Bearer <token>` there is
    /// a token (`Basic ...` is someone else's business). Any other header exists only to
    /// carry a token, and gateways put it there bare (`x-goog-iap-jwt-assertion`,
    /// `cf-access-jwt-assertion`): its value is the token, after an optional `Bearer `, and a
    /// value that is no good token is refused rather than passed over. The rule in full, for
    /// both (lines with no token, several, text beside one): `bearer.rs`.
    pub fn check(&self, headers: &HeaderMap) -> Option<Result<Arc<Verified>, Reason>> {
        match self.found(headers) {
            Found::Nothing => None,
            Found::Token(token) => Some(self.verify(token)),
            Found::Bad(_) => Some(Err(Reason::InvalidToken)),
        }
    }

    /// Why the token lines of `headers` are refused before any verification, if they are:
    /// asked only to word a refusal.
    pub fn malformed(&self, headers: &HeaderMap) -> Option<&'static str> {
        match self.found(headers) {
            Found::Bad(b) => Some(b.message()),
            _ => None,
        }
    }

    fn found<'h>(&self, headers: &'h HeaderMap) -> Found<'h> {
        let bare = self.header != http::header::AUTHORIZATION;
        bearer::find(headers, &self.header, bare)
    }

    /// Verifies `token`, from the cache when it was verified lately.
    pub fn verify(&self, token: &str) -> Result<Arc<Verified>, Reason> {
        if !self.keys.is_loaded() {
            // Not judged: a 401 would tell the client its token is bad (and many clients
            // then throw it away); its keys (a JWKS URL's first fetch) are still to come.
            return Err(Reason::JwksUnavailable);
        }
        let now = self.wall.clock().now_nanos();
        let key = TokenCache::key(token);
        // Read before verifying: a verdict reached with keys replaced meanwhile is not kept.
        let epoch = self.keys.epoch();
        if let Some(v) = self.cache.get(&key, now, epoch) {
            return Ok(v);
        }
        let (verified, exp) = self.verify_uncached(token).map_err(|why| {
            // Escaped (Debug): the reason may echo the client's text (its `alg`), and a
            // newline in it would start a forged line of the text log.
            tracing::debug!(?why, "bearer token refused");
            Reason::InvalidToken
        })?;
        // A good token whose tenant is not a valid id: a new token would not help the client,
        // so the answer is the one a bad id in a header gets (not cached: it is rare).
        if !super::is_valid_id(verified.tenant.as_bytes()) {
            return Err(Reason::InvalidTenant);
        }
        let verified = Arc::new(verified);
        let left = (exp + LEEWAY_SECS).saturating_sub(self.wall.unix_secs());
        let until = now + CACHE_TTL_NANOS.min(left.saturating_mul(1_000_000_000));
        self.cache
            .insert(key, verified.clone(), (until, epoch), now);
        Ok(verified)
    }

    /// For a request whose token this source refused (`check` gave [`Reason::InvalidToken`]):
    /// when the token names a key (`kid`) the keys in force lack, asks for an early read of
    /// the JWKS (`early.rs`), and notes in `reread` the read to wait for when one is under
    /// way. Asked only on the refusal path, so the verdict of a token that verifies costs
    /// nothing more.
    ///
    /// A token with no `kid`, or with an algorithm no key would be taken for, asks nothing: no
    /// read can make it verify. Nor does one whose `kid` is in force (refused for its
    /// signature, times or claims; or, rarely, refused an instant before a read brought its
    /// key in, as it would have been before: its retry is served).
    pub(crate) fn unknown_key(&self, headers: &HeaderMap, reread: &mut Reread) {
        let Found::Token(token) = self.found(headers) else {
            return;
        };
        if !self.keys.is_loaded() {
            // Not refused but unjudged (503): the first read is retried already.
            return;
        }
        let Ok(header) = Protected::read(token) else {
            return;
        };
        let Some(kid) = header.kid.filter(|_| !header.crit) else {
            return;
        };
        if !self.validations.iter().any(|(a, _)| *a == header.alg) {
            return;
        }
        // Read before the keys: a read that lands in between makes the wait see a change.
        let epoch = self.keys.epoch();
        if self.keys.has_kid(&kid) {
            return;
        }
        if self.keys.early.ask() == Asked::UnderWay {
            reread.wait_for(&self.keys, epoch);
        }
    }

    /// Full verification; the claims (the tenant's id not yet checked as one) and `exp`, or
    /// why not.
    pub fn verify_uncached(&self, token: &str) -> Result<(Verified, u64), String> {
        let header = Protected::read(token)?;
        if header.crit {
            return Err("the header lists critical extensions (crit), and rampart understands none (RFC 7515 §4.1.11)".into());
        }
        let alg = header.alg;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("algorithm {alg:?} is not accepted"))?;
        let keys = self.keys.keys();
        let mut candidates = keys
            .iter()
            .filter(|k| k.algs.contains(&alg) && (header.kid.is_none() || k.kid == header.kid));
        let mut last = format!("no key of the JWKS verifies {alg:?} (kid {:?})", header.kid);
        let claims = loop {
            let Some(k) = candidates.next() else {
                return Err(last);
            };
            match jsonwebtoken::decode::<Value>(token, &k.key, validation) {
                Ok(data) => break data.claims,
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => last = e.to_string(),
                    _ => return Err(e.to_string()),
                },
            }
        };
        let exp = self.check_times(&claims)?;
        // Checked as a tenant id by `verify`: a token can be good and its tenant id not.
        let tenant = claim_str(&claims, &self.claim).ok_or("the tenant claim is missing")?;
        let plan = self.plan_claim.as_ref().and_then(|p| self.plan(&claims, p));
        Ok((Verified::new(&tenant, plan), exp))
    }

    /// The plan the claim at `path` names, when it is a string naming a configured plan
    /// exactly (`" gold"` and `"Gold"` are not `gold`: an issuer that sends them is told so
    /// by the warning, not guessed at). Any other claim (empty, not a string, a plan no
    /// policy gives limits to) names no plan: the tenant's plan comes from the next source
    /// (a trusted `plan_header`, `assign`), and the upstream is not told the claim.
    fn plan<'c>(&self, claims: &'c Value, path: &[String]) -> Option<&'c str> {
        let v = path.iter().try_fold(claims, |v, step| v.get(step))?;
        if let Some(p) = v
            .as_str()
            .filter(|p| super::configured_plan(&self.plans, p.as_bytes()).is_some())
        {
            return Some(p);
        }
        let since = self.unplanned.lock().note(1, tokio::time::Instant::now());
        if let Some(n) = since {
            let shown: String = match v.as_str() {
                Some(p) => format!("{:?}", p.chars().take(SHOWN_CLAIM).collect::<String>()),
                None => format!("a JSON {}", kind(v)),
            };
            tracing::warn!(
                claim = %shown,
                tokens = n,
                "a verified token's plan_claim names no plan of rate_limit.plans; its tenant's plan comes from the next source (tokens: how many since the last warning)"
            );
        }
        None
    }

    /// `exp` (required) and `nbf` against the wall clock, with leeway; returns `exp`.
    fn check_times(&self, claims: &Value) -> Result<u64, String> {
        let now = self.wall.unix_secs();
        let secs = |name: &str| claims.get(name).and_then(Value::as_f64).map(|f| f as u64);
        let exp = secs("exp").ok_or("no exp claim")?;
        if exp + LEEWAY_SECS < now {
            return Err(format!("expired at {exp}, now {now}"));
        }
        if let Some(nbf) = secs("nbf") {
            if nbf > now + LEEWAY_SECS {
                return Err(format!("not valid before {nbf}, now {now}"));
            }
        }
        Ok(exp)
    }

    /// Tokens in the cache now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// The algorithms a token may use (HMAC and `none` are absent on purpose).
const ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// jsonwebtoken's checks for `alg`: signature, issuer, audience. Times are checked by
/// [`Jwt::check_times`] on the injected clock instead of the crate's system clock.
fn validation(cfg: &JwtSource, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    let mut required = vec!["exp"];
    if !cfg.issuers.is_empty() {
        v.set_issuer(&cfg.issuers);
        required.push("iss");
    }
    if cfg.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// What verification reads of a token's protected header: its `alg` and `kid`, and whether it
/// names critical extensions, from one decoding of the header segment. (jsonwebtoken's `decode`
/// reads the header again to check the signature; it takes no header read before.)
#[derive(Debug, PartialEq, Eq, Deserialize)]
struct Protected {
    alg: Algorithm,
    kid: Option<String>,
    /// Whether the header has a `crit` parameter, whatever its value. It lists extensions a
    /// recipient must understand to accept the token (RFC 7515 §4.1.11); rampart understands
    /// none, so any `crit`, an empty, `null` or malformed one included (the RFC forbids them),
    /// makes the token invalid.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

// === impl Protected ===

impl Protected {
    /// The header of `token`: the segment before its last two dots, as jsonwebtoken takes it,
    /// base64url without padding, a JSON object. Fields it does not read are not checked here;
    /// `decode` refuses a token whose header jsonwebtoken cannot read.
    fn read(token: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let mut parts = token.rsplitn(3, '.');
        let (Some(_), Some(_), Some(segment)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("header: the token has fewer than three segments".into());
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|e| format!("header: {e}"))?;
        // serde reads a struct from a JSON array too; a header is an object (RFC 7515 §4).
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err("header: not a JSON object".into());
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("header: {e}"))
    }
}

/// `true` for a field that is there, whatever it holds.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Whether `bytes` is a JWKS with at least one usable key (for `rampart validate`).
pub fn check_jwks(bytes: &[u8]) -> Result<(), String> {
    keys::parse_jwks(bytes).map(drop)
}

/// A dotted claim path (`org.id`) as its steps.
pub fn path(dotted: &str) -> Vec<String> {
    dotted.split('.').map(str::to_owned).collect()
}

/// What kind of JSON value `v` is, for a warning.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The claim at `path` as text: a string, or a whole number written out.
pub fn claim_str(claims: &Value, path: &[String]) -> Option<String> {
    let v = path.iter().try_fold(claims, |v, step| v.get(step))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}
