//! Idempotency keys (SPEC §10): a request carrying the key header is made safe to repeat.
//!
//! Why in the sidecar: every service that takes payments or orders re-implements this, often
//! with races between the first request and its repeat. Here the first request with a key
//! claims it; its finished answer (status, headers, body up to `max_body`, trailers) is kept for
//! `ttl`;
//! a repeat gets that answer back, marked `x-rampart-idempotent-replay: true`, and never
//! reaches the upstream. A repeat while the first is in flight is 409 `idempotency_in_flight`;
//! the same key on a different request (method, path and query, body digest) is 422
//! `idempotency_key_reused`; a key whose answer was too large to keep is 422
//! `idempotency_not_replayable`. 5xx answers and rampart's own refusals are not kept: the
//! claim is released, so the client may retry. A gRPC answer is judged by the status it
//! stands for (its `grpc-status`, in its head or its trailers, mapped as `proxy::grpc` maps it
//! for the breaker): a failed call (INTERNAL, UNAVAILABLE, ..., or a stream that ends without a
//! status) is not kept either.
//!
//! Keys are scoped by route and tenant, and by whether the tenant was verified (a token's
//! claim, a client certificate) or only claimed (a header, the query, an address, the
//! fallback): with `from: [jwt, header: x-tenant-id]`, a client without a token may name any
//! tenant in the header, and must not be handed the answer a verified `acme` stored under its
//! key, nor store one a verified `acme` would then be replayed. The state lives behind [`IdempotencyStore`]: `begin`
//! is asynchronous (a shared store such as Redis answers over the network); `complete` and
//! `release` are fire-and-forget, as they run where an answer's body ends. The in-memory
//! backend is [`memory::MemoryStore`]; with `global_store` the keys live in Redis
//! ([`crate::store::idempotency::RedisIdempotency`]), shared by every replica.

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use sha2::{Digest as _, Sha256};

use crate::clock::SharedClock;
use crate::config::file;
use crate::metrics::Metrics;
use crate::store::idempotency::{RedisIdempotency, IN_FLIGHT_MAX};
use crate::store::GlobalStore;

/// Marks a replayed answer.
pub const REPLAY_HEADER: &str = "x-rampart-idempotent-replay";

/// Marks the answer to a request that carried a key but ran unprotected, its body being larger
/// than `max_body` (value `body-too-large`): the client learns its repeat will run again.
pub const UNPROTECTED_HEADER: &str = "x-rampart-idempotency";

/// The longest idempotency key accepted, in bytes; a longer one is refused 400 `bad_request`.
/// Keys are UUIDs or similar tokens in practice (the IETF draft recommends a UUID); a bound
/// keeps a client from making rampart digest, and the upstream receive, a key of any length.
pub const MAX_KEY_LEN: usize = 255;

/// sha256 of the request's method, target and body.
pub type Digest = [u8; 32];

/// A boxed future, as a store's `begin` returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a key lives: route, tenant (and whether it was verified) and the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    /// Route label.
    pub route: Arc<str>,
    /// Tenant id.
    pub tenant: String,
    /// Whether a verified token or client certificate named the tenant
    /// ([`TenantId::is_verified`](crate::tenant::TenantId::is_verified)): a verified `acme`'s
    /// keys and the keys of a request that only claimed to be `acme` are apart.
    pub verified: bool,
    /// SHA-256 of the header's value: a client chooses the value, so an entry keeps a fixed
    /// 32 bytes of it whatever its length (a 30 KiB key × `max_entries` would otherwise be
    /// memory the client decides).
    pub key: Digest,
}

/// A finished answer kept for replay.
#[derive(Clone, Debug)]
pub struct StoredAnswer {
    /// Status.
    pub status: StatusCode,
    /// Headers, hop-by-hop ones already stripped.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers the body ended with (a gRPC call's status), replayed after it.
    pub trailers: Option<HeaderMap>,
}

/// What a store says about a key when a request with it arrives.
#[derive(Clone, Debug)]
pub enum Begin {
    /// The key was free: this request runs, and must `complete` or `release` it.
    Claimed,
    /// The first request with the key is still in flight.
    InFlight,
    /// The key was used by a different request.
    Reused,
    /// The first answer, to replay.
    Replay(Arc<StoredAnswer>),
    /// The first answer was too large to keep.
    NotReplayable,
    /// The key was free, but every entry the store may hold (`max_entries`) is a claim in
    /// flight, which is never evicted: the request is refused (503), not run unprotected.
    Full,
}

/// The state of idempotency keys; one per route, or shared by replicas.
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for a request with `digest`, or says what holds it.
    fn begin<'a>(&'a self, key: &'a StoreKey, digest: Digest) -> BoxFuture<'a, Begin>;
    /// The claimed request finished with `answer` (`None`: too large to keep).
    fn complete(&self, key: &StoreKey, digest: Digest, answer: Option<StoredAnswer>);
    /// The claimed request ended without an answer worth keeping; the key is free again.
    fn release(&self, key: &StoreKey, digest: Digest);
    /// The claimed request ended without an answer, but the upstream may still be working on
    /// it (it was sent, and its client left): the key stays in flight for `hold` more (a
    /// repeat is 409), then is free.
    fn hold(&self, key: &StoreKey, digest: Digest, hold: Duration);
    /// Keys held now.
    fn len(&self) -> usize;
    /// Applies a reloaded section's bounds in place; every key stays (see
    /// [`memory::MemoryStore::reconfigure`]).
    fn reconfigure(&self, limits: memory::Limits);
    /// This store is no longer its route's: it stops writing the route's gauges, after setting
    /// them to 0 when `zero` (no store of the route writes them any more).
    fn retire(&self, zero: bool);
    /// Whether no key is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The idempotency section of one route's policy.
#[derive(Debug)]
pub struct RouteIdempotency {
    cfg: file::Idempotency,
    header: HeaderName,
    route: Arc<str>,
    /// Largest answer kept (and largest request body digested).
    pub max_body: usize,
    /// Where keys live.
    pub store: Arc<dyn IdempotencyStore>,
    /// The same store when it is the global one (to tell whether a reload may keep it).
    remote: Option<Arc<RedisIdempotency>>,
}

// === impl RouteIdempotency ===

impl RouteIdempotency {
    /// The runtime of `cfg` for the route labelled `route`. The store of `old` is kept, with
    /// every key in it (claims in flight included: a repeat of a request still running must
    /// stay 409 across a reload), whatever changed in the section, and reconfigured in place;
    /// only a change of where keys live (`global_store` added, removed or moved) starts anew.
    pub fn build(
        cfg: &file::Idempotency,
        old: Option<&RouteIdempotency>,
        route: &Arc<str>,
        metrics: &Metrics,
        clock: &SharedClock,
        global: Option<&Arc<GlobalStore>>,
    ) -> RouteIdempotency {
        // Kept while the keys live in the same place.
        let same_place = |o: &RouteIdempotency| match (&o.remote, global) {
            (Some(r), Some(g)) => r.uses(g),
            (None, None) => true,
            _ => false,
        };
        let limits = memory::Limits {
            ttl: cfg.ttl.0,
            max_entries: cfg.max_entries,
            max_bytes: cfg.max_bytes.0,
        };
        let (store, remote) = match old.filter(|o| same_place(o)) {
            Some(o) => {
                if o.cfg != *cfg {
                    o.store.reconfigure(limits);
                }
                (o.store.clone(), o.remote.clone())
            }
            None => {
                let gauges = memory::Gauges {
                    keys: metrics.idempotency_keys.with_label_values(&[&**route]),
                    bytes: metrics.idempotency_bytes.with_label_values(&[&**route]),
                };
                let s = memory::MemoryStore::new(clock.clone(), limits, gauges);
                match global {
                    Some(g) => {
                        let r = Arc::new(RedisIdempotency::new(g.clone(), s, cfg.ttl.0));
                        (r.clone() as Arc<dyn IdempotencyStore>, Some(r))
                    }
                    None => (Arc::new(s) as Arc<dyn IdempotencyStore>, None),
                }
            }
        };
        RouteIdempotency {
            cfg: cfg.clone(),
            // Validation checked the name; the default is valid.
            header: HeaderName::from_bytes(cfg.header.as_bytes())
                .unwrap_or(HeaderName::from_static("idempotency-key")),
            route: route.clone(),
            max_body: usize::try_from(cfg.max_body.0).unwrap_or(usize::MAX),
            store,
            remote,
        }
    }

    /// How long a claim is held when its request ends with its outcome unknown and no request
    /// deadline bounds it: `ttl`, at most [`IN_FLIGHT_MAX`] (a claim's life in the global
    /// store).
    pub fn hold_without_deadline(&self) -> Duration {
        self.cfg.ttl.0.min(IN_FLIGHT_MAX)
    }

    /// The store key of a request with `headers` from `tenant` (`verified` when a token or a
    /// client certificate named it): `Ok(None)` without the header
    /// (such requests are not touched), `Err` with what is wrong when the key is malformed
    /// (empty, over [`MAX_KEY_LEN`] bytes, or two header lines with different values): such a
    /// request is refused, as the IETF httpapi idempotency-key draft says, rather than run
    /// without the protection its client asked for.
    pub fn key_of(
        &self,
        headers: &HeaderMap,
        tenant: &str,
        verified: bool,
    ) -> Result<Option<StoreKey>, &'static str> {
        let mut all = headers.get_all(&self.header).iter();
        let Some(v) = all.next() else {
            return Ok(None);
        };
        if v.is_empty() {
            return Err("the idempotency key is empty");
        }
        if v.len() > MAX_KEY_LEN {
            return Err("the idempotency key is longer than 255 bytes");
        }
        if all.any(|other| other != v) {
            return Err("the request carries two different idempotency keys");
        }
        Ok(Some(StoreKey {
            route: self.route.clone(),
            tenant: tenant.to_string(),
            verified,
            key: key_digest(v.as_bytes()),
        }))
    }
}

/// The key of a header value as the store keeps it (see [`StoreKey::key`]).
pub fn key_digest(value: &[u8]) -> Digest {
    Sha256::digest(value).into()
}

/// The digest that tells two requests with one key apart.
pub fn digest(method: &Method, uri: &Uri, body: &[u8]) -> Digest {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b" ");
    h.update(target.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().into()
}
