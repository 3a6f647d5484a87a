//! The in-memory idempotency store: one per route, bounded by `max_entries`, oldest finished
//! answer out first. A claim in flight is never evicted (its repeat would run the request
//! again); when all `max_entries` are claims in flight, a new key is refused ([`Begin::Full`],
//! 503 `idempotency_table_full`) until one ends or expires.
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
    /// Eviction order, oldest first; a claim in flight met here goes to the back.
    order: VecDeque<(StoreKey, u64)>,
    seq: u64,
    /// Slots in flight, expired ones included until they are dropped.
    in_flight: usize,
    /// When a sweep may find an expired claim (clock nanos): no claim in flight expires
    /// before (lowered as claims are made or held, set by each sweep).
    next_sweep: u64,
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
        if g.in_flight >= self.max_entries && !g.make_room(now, self.max_entries) {
            self.gauge.set(g.map.len() as i64);
            return Begin::Full;
        }
        g.seq += 1;
        let seq = g.seq;
        let expires = now.saturating_add(self.ttl);
        g.next_sweep = g.next_sweep.min(expires.saturating_add(1));
        let slot = Slot {
            digest,
            state: State::InFlight,
            expires,
            seq,
        };
        if let Some(old) = g.map.insert(key.clone(), slot) {
            g.forget(&old);
        }
        g.in_flight += 1;
        g.order.push_back((key.clone(), seq));
        g.evict(self.max_entries, now);
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
                g.in_flight -= 1;
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
            if let Some(old) = g.map.remove(key) {
                g.forget(&old);
            }
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
                g.next_sweep = g.next_sweep.min(until.saturating_add(1));
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}

// === impl Inner ===

impl Inner {
    /// Drops the count of `old`, a slot taken out of the map.
    fn forget(&mut self, old: &Slot) {
        if matches!(old.state, State::InFlight) {
            self.in_flight -= 1;
        }
    }

    /// With `max_entries` claims in flight (expired ones counted): drops the expired slots, if
    /// one may have expired since the last sweep, and says whether a claim fits now. The sweep
    /// walks the whole map, so it runs at most once per expiry: it notes when the first live
    /// claim expires, and until then a full table is refused at once.
    fn make_room(&mut self, now: u64, max_entries: usize) -> bool {
        if now >= self.next_sweep {
            self.map.retain(|_, s| now <= s.expires);
            self.in_flight = 0;
            self.next_sweep = u64::MAX;
            for s in self.map.values() {
                if matches!(s.state, State::InFlight) {
                    self.in_flight += 1;
                    self.next_sweep = self.next_sweep.min(s.expires.saturating_add(1));
                }
            }
        }
        self.in_flight < max_entries
    }

    /// Drops the oldest finished (or expired) entries until at most `max_entries` are held; a
    /// claim in flight is never dropped (it goes to the back of the order). Callers keep at
    /// most `max_entries` claims in flight, so a finished entry is found while over the bound.
    fn evict(&mut self, max_entries: usize, now: u64) {
        let mut passed = 0;
        while self.map.len() > max_entries && passed <= self.order.len() {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let live = match self.map.get(&key) {
                Some(s) if s.seq == seq => matches!(s.state, State::InFlight) && now <= s.expires,
                // Released or replaced: a dead item.
                _ => continue,
            };
            if live {
                self.order.push_back((key, seq));
                passed += 1;
            } else if let Some(old) = self.map.remove(&key) {
                self.forget(&old);
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
