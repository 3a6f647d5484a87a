//! The in-memory idempotency store: one per route, bounded by `max_entries`, oldest out first.
//!
//! A `parking_lot` mutex guards a map and an insertion-order queue; it is held for a map
//! operation only, never across an await. Entries expire `ttl` after they were claimed or
//! finished, a held claim at the end of its hold; an expired entry is treated as absent and
//! dropped when met. The number of keys
//! held is kept in a gauge.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;

use super::{Begin, BoxFuture, Digest, IdempotencyStore, StoreKey, StoredAnswer};
use crate::clock::SharedClock;

/// Keys of one route, in memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: parking_lot::Mutex<Inner>,
    clock: SharedClock,
    ttl: u64,
    max_entries: usize,
    gauge: IntGauge,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<StoreKey, Slot>,
    order: VecDeque<(StoreKey, u64)>,
    seq: u64,
}

#[derive(Debug)]
struct Slot {
    digest: Digest,
    state: State,
    /// When it is gone (clock nanos): `ttl` after its claim or answer, or the end of a hold.
    expires: u64,
    seq: u64,
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Arc<StoredAnswer>),
    TooLarge,
}

// === impl MemoryStore ===

impl MemoryStore {
    /// An empty store keeping entries `ttl`, at most `max_entries`, counted in `gauge`.
    pub fn new(clock: SharedClock, ttl: Duration, max_entries: u64, gauge: IntGauge) -> Self {
        gauge.set(0);
        MemoryStore {
            inner: Default::default(),
            clock,
            ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            max_entries: usize::try_from(max_entries).unwrap_or(usize::MAX).max(1),
            gauge,
        }
    }

    fn begin_now(&self, key: &StoreKey, digest: Digest) -> Begin {
        let now = self.clock.now_nanos();
        let mut g = self.inner.lock();
        if let Some(slot) = g.map.get(key) {
            if now <= slot.expires {
                return match (&slot.state, slot.digest == digest) {
                    (_, false) => Begin::Reused,
                    (State::InFlight, true) => Begin::InFlight,
                    (State::Done(a), true) => Begin::Replay(a.clone()),
                    (State::TooLarge, true) => Begin::NotReplayable,
                };
            }
        }
        g.seq += 1;
        let seq = g.seq;
        let slot = Slot {
            digest,
            state: State::InFlight,
            expires: now.saturating_add(self.ttl),
            seq,
        };
        g.map.insert(key.clone(), slot);
        g.order.push_back((key.clone(), seq));
        g.evict(self.max_entries);
        self.gauge.set(g.map.len() as i64);
        Begin::Claimed
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(&'a self, key: &'a StoreKey, digest: Digest) -> BoxFuture<'a, Begin> {
        let answer = self.begin_now(key, digest);
        Box::pin(std::future::ready(answer))
    }

    fn complete(&self, key: &StoreKey, digest: Digest, answer: Option<StoredAnswer>) {
        let now = self.clock.now_nanos();
        let mut g = self.inner.lock();
        if let Some(slot) = g.map.get_mut(key) {
            if slot.digest == digest && matches!(slot.state, State::InFlight) {
                slot.state = match answer {
                    Some(a) => State::Done(Arc::new(a)),
                    None => State::TooLarge,
                };
                slot.expires = now.saturating_add(self.ttl);
            }
        }
    }

    fn release(&self, key: &StoreKey, digest: Digest) {
        let mut g = self.inner.lock();
        let mine = g
            .map
            .get(key)
            .is_some_and(|s| s.digest == digest && matches!(s.state, State::InFlight));
        if mine {
            g.map.remove(key);
        }
        self.gauge.set(g.map.len() as i64);
    }

    fn hold(&self, key: &StoreKey, digest: Digest, hold: Duration) {
        let now = self.clock.now_nanos();
        let until = now.saturating_add(u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX));
        let mut g = self.inner.lock();
        if let Some(slot) = g.map.get_mut(key) {
            if slot.digest == digest && matches!(slot.state, State::InFlight) {
                slot.expires = until;
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}

// === impl Inner ===

impl Inner {
    fn evict(&mut self, max_entries: usize) {
        while self.map.len() > max_entries {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|s| s.seq == seq) {
                self.map.remove(&key);
            }
        }
        // Released or replaced keys leave dead items in `order`; rebuild it before it doubles.
        if self.order.len() > 2 * self.map.len() + 64 {
            let mut live: Vec<(StoreKey, u64)> =
                self.map.iter().map(|(k, s)| (k.clone(), s.seq)).collect();
            live.sort_by_key(|(_, s)| *s);
            self.order = live.into();
        }
    }
}

#[cfg(test)]
mod tests;
