//! Idempotency keys in the global store (SPEC §10: "with global_store the keys live in the
//! store"), so a repeat that lands on another replica is still recognised.
//!
//! One Redis hash per key, `PREFIX{ROUTE}:i:TENANT:HEX(sha256 of the key)` for a tenant a
//! request only claimed (a header, the query, ...), `PREFIX{ROUTE}:iv:TENANT:HEX(...)` for one
//! a token or a client certificate verified ([`StoreKey::verified`]: the two never share an
//! entry; the claimed form is the one every key had before, so a rampart without `jwt` or
//! `client_cert` sources keeps its keys across the upgrade), with fields `d`
//! (the request digest), `s` (`f` in flight, `a` answered, `x` too large to keep) and, once
//! answered, `st`, `h`, `b`, `t` (status, headers, body, trailers: empty when it had none). Claiming is one script (read and write
//! under Redis's single thread, so two replicas cannot both claim); completing, releasing and
//! holding (a claim whose client left after it was sent: its expiry is set to the hold) are
//! scripts that act only if the entry is still this request's claim. An answered entry
//! expires `ttl` after the answer, as in memory. A claim expires after `ttl` or
//! [`IN_FLIGHT_MAX`], whichever is shorter: in memory a claim dies with its process, here it
//! would outlive a replica that crashed mid-request and answer 409 for the whole `ttl`. The
//! price: a request still running after a minute no longer holds its key.
//!
//! When the store is down or slow, a claim falls back to this process's in-memory store, so a
//! repeat on the same replica is still caught; `complete` and `release` go to both (each acts
//! only on its own claim). `max_entries` and `max_bytes` bound only that fallback.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::Script;

use super::GlobalStore;
use crate::policy::idempotency::memory::{Limits, MemoryStore};
use crate::policy::idempotency::{
    Begin, BoxFuture, Digest, IdempotencyStore, StoreKey, StoredAnswer,
};

const BEGIN: &str = r"
local d = redis.call('HGET', KEYS[1], 'd')
if not d then
  redis.call('HSET', KEYS[1], 'd', ARGV[1], 's', 'f')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if d ~= ARGV[1] then return {'reused'} end
local s = redis.call('HGET', KEYS[1], 's')
if s == 'f' then return {'inflight'} end
if s == 'x' then return {'toolarge'} end
return {'answer', redis.call('HGET', KEYS[1], 'st'), redis.call('HGET', KEYS[1], 'h'), redis.call('HGET', KEYS[1], 'b'), redis.call('HGET', KEYS[1], 't') or ''}
";

const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'd') ~= ARGV[1] or redis.call('HGET', KEYS[1], 's') ~= 'f' then
  return 0
end
if ARGV[3] == 'x' then
  redis.call('HSET', KEYS[1], 's', 'x')
else
  redis.call('HSET', KEYS[1], 's', 'a', 'st', ARGV[4], 'h', ARGV[5], 'b', ARGV[6], 't', ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'd') == ARGV[1] and redis.call('HGET', KEYS[1], 's') == 'f' then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const HOLD: &str = r"
if redis.call('HGET', KEYS[1], 'd') == ARGV[1] and redis.call('HGET', KEYS[1], 's') == 'f' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Longest a claim is held in the store without an answer.
pub const IN_FLIGHT_MAX: Duration = Duration::from_secs(60);

/// The keys of one route in the global store, with an in-memory fallback.
#[derive(Debug)]
pub struct RedisIdempotency {
    store: Arc<GlobalStore>,
    local: MemoryStore,
    /// `ttl` in ms (a reload may change it in place).
    ttl_ms: AtomicU64,
    /// How long a claim lives in the store, ms.
    claim_ms: AtomicU64,
}

/// `ttl` and a claim's life, in ms.
fn lives_ms(ttl: Duration) -> (u64, u64) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    (ms(ttl), ms(ttl.min(IN_FLIGHT_MAX)))
}

// === impl RedisIdempotency ===

impl RedisIdempotency {
    /// Keys kept `ttl` in `store`; `local` takes the claims made while the store is down.
    pub fn new(store: Arc<GlobalStore>, local: MemoryStore, ttl: Duration) -> Self {
        let (ttl_ms, claim_ms) = lives_ms(ttl);
        RedisIdempotency {
            store,
            local,
            ttl_ms: AtomicU64::new(ttl_ms),
            claim_ms: AtomicU64::new(claim_ms),
        }
    }

    /// Whether this store talks to `store` as configured now (connection, prefix, timeout).
    pub fn uses(&self, store: &Arc<GlobalStore>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }

    fn key(&self, key: &StoreKey) -> String {
        let mut k = self.store.key_base(&key.route);
        k.push_str(if key.verified { ":iv:" } else { ":i:" });
        k.push_str(&key.tenant);
        k.push(':');
        for b in key.key {
            let _ = write!(k, "{b:02x}");
        }
        k
    }

    async fn begin_remote(&self, key: &StoreKey, digest: Digest) -> Option<Begin> {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(BEGIN));
        let mut inv = script.prepare_invoke();
        inv.key(self.key(key))
            .arg(&digest[..])
            .arg(self.claim_ms.load(Relaxed));
        let reply: Vec<Vec<u8>> = self
            .store
            .call(|mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await
            .ok()?;
        let mut it = reply.into_iter();
        let begin = match it.next().as_deref() {
            Some(b"claimed") => Begin::Claimed,
            Some(b"reused") => Begin::Reused,
            Some(b"inflight") => Begin::InFlight,
            Some(b"toolarge") => Begin::NotReplayable,
            Some(b"answer") => {
                let status = it.next().unwrap_or_default();
                let headers = it.next().unwrap_or_default();
                let body = it.next().unwrap_or_default();
                let trailers = it.next().unwrap_or_default();
                Begin::Replay(Arc::new(decode(&status, &headers, body, &trailers)?))
            }
            _ => return None,
        };
        Some(begin)
    }

    /// Runs `script` on `key` in the background (the caller is where an answer's body ends).
    fn spawn(
        &self,
        script: &'static std::sync::OnceLock<Script>,
        text: &'static str,
        key: &StoreKey,
        args: Vec<Vec<u8>>,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key) = (self.store.clone(), self.key(key));
        rt.spawn(async move {
            let script = script.get_or_init(|| Script::new(text));
            let mut inv = script.prepare_invoke();
            inv.key(key);
            for a in &args {
                inv.arg(&a[..]);
            }
            let _: Result<i64, _> = store
                .call(|mut conn| {
                    let inv = &inv;
                    async move { inv.invoke_async(&mut conn).await }
                })
                .await;
        });
    }
}

impl IdempotencyStore for RedisIdempotency {
    fn begin<'a>(&'a self, key: &'a StoreKey, digest: Digest) -> BoxFuture<'a, Begin> {
        Box::pin(async move {
            match self.begin_remote(key, digest).await {
                Some(b) => b,
                None => self.local.begin(key, digest).await,
            }
        })
    }

    fn complete(&self, key: &StoreKey, digest: Digest, answer: Option<StoredAnswer>) {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let ttl = self.ttl_ms.load(Relaxed).to_string().into_bytes();
        let args = match &answer {
            Some(a) => vec![
                digest.to_vec(),
                ttl,
                b"a".to_vec(),
                a.status.as_u16().to_string().into_bytes(),
                encode_headers(&a.headers),
                a.body.to_vec(),
                a.trailers.as_ref().map(encode_headers).unwrap_or_default(),
            ],
            None => vec![digest.to_vec(), ttl, b"x".to_vec()],
        };
        self.spawn(&SCRIPT, COMPLETE, key, args);
        self.local.complete(key, digest, answer);
    }

    fn release(&self, key: &StoreKey, digest: Digest) {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        self.spawn(&SCRIPT, RELEASE, key, vec![digest.to_vec()]);
        self.local.release(key, digest);
    }

    fn hold(&self, key: &StoreKey, digest: Digest, hold: Duration) {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let args = vec![digest.to_vec(), ms.to_string().into_bytes()];
        self.spawn(&SCRIPT, HOLD, key, args);
        self.local.hold(key, digest, hold);
    }

    /// Keys held in this process's fallback (the store's own are not counted).
    fn len(&self) -> usize {
        self.local.len()
    }

    /// The new `ttl` applies to the claims and answers written from now on; the fallback is
    /// reconfigured in place.
    fn reconfigure(&self, limits: Limits) {
        let (ttl_ms, claim_ms) = lives_ms(limits.ttl);
        self.ttl_ms.store(ttl_ms, Relaxed);
        self.claim_ms.store(claim_ms, Relaxed);
        self.local.reconfigure(limits);
    }

    fn retire(&self, zero: bool) {
        self.local.retire(zero);
    }
}

/// Headers as `name NUL value LF` lines: neither byte can occur in a name or a value.
fn encode_headers(h: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in h {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// An answer as the store keeps it; `trailers` empty: it had none (or was stored by a version
/// that did not keep them).
fn decode(status: &[u8], headers: &[u8], body: Vec<u8>, trailers: &[u8]) -> Option<StoredAnswer> {
    let status = std::str::from_utf8(status).ok()?.parse::<u16>().ok()?;
    let trailers = decode_headers(trailers);
    Some(StoredAnswer {
        status: StatusCode::from_u16(status).ok()?,
        headers: decode_headers(headers),
        body: Bytes::from(body),
        trailers: Some(trailers).filter(|t| !t.is_empty()),
    })
}

/// The lines of [`encode_headers`]; malformed ones are skipped.
fn decode_headers(headers: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in headers.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(2, |b| *b == 0);
        let (Some(n), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            map.append(n, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_the_round_trip_through_their_encoding() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2; Path=/"));
        let a = decode(b"201", &encode_headers(&h), b"{\"id\":7}".to_vec(), b"")
            .expect("a stored answer must decode");
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(a.headers, h);
        assert_eq!(&a.body[..], b"{\"id\":7}");
        assert!(a.trailers.is_none(), "none stored: none replayed");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("fine"));
        let a = decode(b"200", b"", b"msg".to_vec(), &encode_headers(&t)).expect("decodes");
        assert_eq!(a.trailers, Some(t));
        assert!(decode(b"abc", b"", Vec::new(), b"").is_none());
    }

    /// The store is shared: what another writer put there is read as untrusted bytes.
    #[test]
    fn junk_in_the_store_decodes_to_nothing_or_to_clean_headers() {
        for status in [
            &b""[..],
            b"99",
            b"1000",
            b"65536",
            b"-1",
            b"\xff\xfe",
            b"200 ",
        ] {
            assert!(decode(status, b"", Vec::new(), b"").is_none(), "{status:?}");
        }
        let junk =
            b"no-nul-here\n\0value-without-name\nbad name\0v\nok\0\x7f\n\n\0\0\nx-fine\0yes\n";
        let a = decode(b"200", junk, b"body".to_vec(), junk).expect("a valid status decodes");
        assert_eq!(a.headers.len(), 1, "{:?}", a.headers);
        assert_eq!(a.headers["x-fine"], "yes");
        assert_eq!(a.trailers, Some(a.headers.clone()));
        let huge = vec![b'a'; 1 << 20];
        let a = decode(b"200", &huge, Vec::new(), &huge).expect("a valid status decodes");
        assert!(a.headers.is_empty());
        assert!(a.trailers.is_none());
    }
}
