//! Tokens verified recently, so a client that sends the same token on every request pays for
//! one signature check a minute rather than one per request.
//!
//! Keyed by the token's SHA-256 (a cache hit must be the same token, not a colliding one), and
//! bounded: at most `cap` entries, each valid until the earlier of the token's `exp` and
//! [`CACHE_TTL_NANOS`] after it was verified, and only while the keys it was verified with are
//! in force: a key removed from the JWKS stops being trusted as soon as the JWKS is read without
//! it (each entry holds the key store's epoch, which a changed key set bumps). When the map is full, expired entries are swept (at most once a second, so
//! a flood of distinct tokens cannot make every insert walk the map); if it is still full the
//! new token is simply not cached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::Verified;

/// Longest time a verified token is trusted without checking it again.
pub(super) const CACHE_TTL_NANOS: u64 = 60_000_000_000;
/// Time between two sweeps of a full cache.
const SWEEP_EVERY_NANOS: u64 = 1_000_000_000;

/// Verified tokens by their hash.
#[derive(Debug)]
pub(crate) struct TokenCache {
    /// Claims, valid until (clock nanoseconds), the key store's epoch they were verified in.
    map: DashMap<[u8; 32], (Arc<Verified>, u64, u64), foldhash::fast::RandomState>,
    cap: usize,
    last_sweep: AtomicU64,
}

// === impl TokenCache ===

impl TokenCache {
    /// A cache of at most `cap` tokens (0: no caching).
    pub(crate) fn new(cap: usize) -> Self {
        TokenCache {
            map: DashMap::default(),
            cap,
            last_sweep: AtomicU64::new(0),
        }
    }

    /// The key of `token`.
    pub(crate) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The verified claims of `key`, if cached, still valid at `now` and verified with the keys
    /// of `epoch`.
    pub(crate) fn get(&self, key: &[u8; 32], now: u64, epoch: u64) -> Option<Arc<Verified>> {
        let hit = self.map.get(key)?;
        let (v, until, at) = &*hit;
        if *until > now && *at == epoch {
            return Some(v.clone());
        }
        drop(hit);
        self.map
            .remove_if(key, |_, (_, until, at)| *until <= now || *at != epoch);
        None
    }

    /// Remembers `v` for `key` until `until` (clock nanoseconds), verified with the keys of
    /// `epoch`.
    pub(crate) fn insert(
        &self,
        key: [u8; 32],
        v: Arc<Verified>,
        (until, epoch): (u64, u64),
        now: u64,
    ) {
        if self.map.len() >= self.cap {
            let last = self.last_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) < SWEEP_EVERY_NANOS
                || self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            self.map.retain(|_, (_, u, _)| *u > now);
            if self.map.len() >= self.cap {
                return;
            }
        }
        self.map.insert(key, (v, until, epoch));
    }

    /// Tokens cached now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
