//! The in-memory idempotency store: one per route, bounded by `max_entries` keys and
//! `max_bytes` of kept answers. Oldest finished answer out first at `max_entries`; a claim in
//! flight is never evicted (its repeat would run the request again); when all `max_entries`
//! are claims in flight, a new key is refused ([`Begin::Full`], 503 `idempotency_table_full`)
//! until one ends or expires. Past `max_bytes`, the oldest kept answers lose their body and
//! stay as keys that are not replayable (a repeat is 422 `idempotency_not_replayable`, as for
//! an answer over `max_body`): the key still guards against running the request twice, and
//! costs a fixed few hundred bytes, bounded by `max_entries`. The newest answer is always kept,
//! even when it alone passes `max_bytes` (its header fields and entry count, `max_body` only
//! its body).
//!
//! A kept answer counts what it holds ([`size_of_kept`]): its body, its header and trailer
//! fields with the maps that hold them, and its entry (slot, key copies, queue items). What is
//! kept holds exactly that: the body is a copy of exactly its bytes (made by the tee that read
//! it), and the fields are copied out of the buffers they were parsed in when the answer is
//! stored (a view would hold a connection's whole read buffer), once per answer, off the path
//! of requests that do not finish one.
//!
//! A reload that changes the route's `idempotency` keeps the store and reconfigures it in place
//! ([`MemoryStore::reconfigure`]): every key stays, claims in flight included, so a repeat of
//! a request still running is 409 across the reload. A new `ttl` applies to entries claimed or
//! answered from then on (those held keep the expiry they were given); a lower `max_entries` or
//! `max_bytes` is enforced at once, as when an answer comes.
//!
//! A `parking_lot` mutex guards a map, a claim-order queue (for `max_entries`), a
//! completion-order queue (for `max_bytes`) and a heap of expiries; it is held for a map
//! operation only, never across an await. Entries expire `ttl` after they were claimed or
//! finished, a held claim at the end of its hold; expired entries are dropped from the heap's
//! top on every call (each expiry is popped once: amortised O(log n)), and by a task that
//! sweeps every quarter `ttl` (10 ms to 5 s) while the store lives, so memory and the gauges
//! fall when traffic stops. The keys held are in the gauge `rampart_idempotency_keys`, the
//! bytes of kept answers (as counted against `max_bytes`) in `rampart_idempotency_bytes`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::IntGauge;

use super::{Begin, BoxFuture, Digest, IdempotencyStore, StoreKey, StoredAnswer};
use crate::clock::SharedClock;
use crate::policy::held::{fields_size, owned_fields};

/// The bounds of one store.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long an entry lives after its claim or its answer.
    pub ttl: Duration,
    /// Most keys held.
    pub max_entries: u64,
    /// Most bytes of kept answers (bodies, header and trailer fields, and their entries).
    pub max_bytes: u64,
}

/// The gauges a store keeps current.
#[derive(Clone, Debug)]
pub struct Gauges {
    /// `rampart_idempotency_keys{route}`.
    pub keys: IntGauge,
    /// `rampart_idempotency_bytes{route}`.
    pub bytes: IntGauge,
}

/// Keys of one route, in memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Arc<parking_lot::Mutex<Inner>>,
    clock: SharedClock,
    gauges: Gauges,
    /// Whether the sweeping task was started (or no runtime could take it).
    sweeping: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    /// `ttl` in clock nanos.
    ttl: u64,
    max_entries: usize,
    max_bytes: usize,
    /// Set once the store is no longer its route's (a reload took `idempotency` off it, or
    /// replaced the store): it stops writing the gauges, which are no longer its own.
    retired: bool,
    map: HashMap<StoreKey, Slot>,
    /// Eviction order, oldest claim first; a claim in flight met here goes to the back.
    order: VecDeque<(StoreKey, u64)>,
    /// Kept answers, oldest answer first: the first to lose their body past `max_bytes`.
    kept: VecDeque<(StoreKey, u64)>,
    /// Every expiry set, soonest on top; an item whose slot has since changed is skipped.
    due: BinaryHeap<Reverse<Due>>,
    seq: u64,
    /// Slots in flight.
    in_flight: usize,
    /// Bytes of kept answers, as [`size_of_kept`] counts them.
    bytes: usize,
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
    Done(Arc<StoredAnswer>, usize),
    TooLarge,
}

/// An expiry: the slot of `key` claimed as `seq` goes at `at`, if it still expires then.
#[derive(Debug)]
struct Due {
    at: u64,
    seq: u64,
    key: StoreKey,
}

// === impl Due ===

// Ordered by time, then claim: the key plays no part.
impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

// === impl MemoryStore ===

impl MemoryStore {
    /// An empty store within `limits`, counted in `gauges`.
    pub fn new(clock: SharedClock, limits: Limits, gauges: Gauges) -> Self {
        gauges.keys.set(0);
        gauges.bytes.set(0);
        let mut inner = Inner::default();
        inner.set_limits(limits);
        MemoryStore {
            inner: Arc::new(parking_lot::Mutex::new(inner)),
            clock,
            gauges,
            sweeping: AtomicBool::new(false),
        }
    }

    /// Applies `limits` in place (a reload changed the section): every key stays; a new `ttl`
    /// applies to entries claimed or answered from now on; past a lower `max_entries` the
    /// oldest finished entries go (never a claim in flight), past a lower `max_bytes` the
    /// oldest kept answers lose their body (their keys stay, not replayable; the newest is
    /// kept).
    pub fn reconfigure(&self, limits: Limits) {
        let now = self.clock.now_nanos();
        let mut g = self.inner.lock();
        g.set_limits(limits);
        g.sweep(now);
        let (max_entries, max_bytes) = (g.max_entries, g.max_bytes);
        g.evict(max_entries, now);
        g.drop_dead_newest();
        g.shed_bytes(max_bytes);
        report(&g, &self.gauges);
    }

    /// Lets go of the gauges: this store is no longer its route's. With `zero`, they are set
    /// to 0 first (the route keeps no keys any more); without, another store now writes them.
    pub fn retire(&self, zero: bool) {
        let mut g = self.inner.lock();
        g.retired = true;
        if zero {
            self.gauges.keys.set(0);
            self.gauges.bytes.set(0);
        }
    }

    fn begin_now(&self, key: &StoreKey, digest: Digest) -> Begin {
        let now = self.clock.now_nanos();
        let mut g = self.inner.lock();
        let swept = g.sweep(now);
        let found = g.map.get(key).filter(|s| now <= s.expires).map(|slot| {
            match (&slot.state, slot.digest == digest) {
                (_, false) => Begin::Reused,
                (State::InFlight, true) => Begin::InFlight,
                (State::Done(a, _), true) => Begin::Replay(a.clone()),
                (State::TooLarge, true) => Begin::NotReplayable,
            }
        });
        if let Some(found) = found {
            if swept {
                report(&g, &self.gauges);
            }
            return found;
        }
        // The sweep dropped every expired claim: those left are live.
        if g.in_flight >= g.max_entries {
            report(&g, &self.gauges);
            return Begin::Full;
        }
        g.seq += 1;
        let seq = g.seq;
        let expires = now.saturating_add(g.ttl);
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
        g.due_at(key, seq, expires);
        let max_entries = g.max_entries;
        g.evict(max_entries, now);
        report(&g, &self.gauges);
        drop(g);
        self.start_sweeping();
        Begin::Claimed
    }

    /// Drops the expired entries now; the sweeping task calls it, and tests.
    pub fn sweep(&self) {
        sweep(&self.inner, &self.clock, &self.gauges);
    }

    /// Starts, once, the task that sweeps expired entries while traffic is quiet, if a runtime
    /// runs here (unit tests have none and call [`MemoryStore::sweep`] themselves).
    fn start_sweeping(&self) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let period = self.inner.lock().sweep_period();
        let inner = Arc::downgrade(&self.inner);
        let (clock, gauges) = (self.clock.clone(), self.gauges.clone());
        drop(rt.spawn(sweep_every(inner, clock, gauges, period)));
    }
}

/// Sweeps the store behind `inner` every quarter `ttl` (as it is now: a reload may change it)
/// until it is dropped (its route lost `idempotency`, say): without it the entries of a key
/// never met again would stay until `max_entries` pushed them out.
async fn sweep_every(
    inner: Weak<parking_lot::Mutex<Inner>>,
    clock: SharedClock,
    gauges: Gauges,
    mut period: Duration,
) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        period = sweep(&inner, &clock, &gauges);
    }
}

/// Drops the expired entries; returns the period until the next sweep.
fn sweep(inner: &parking_lot::Mutex<Inner>, clock: &SharedClock, gauges: &Gauges) -> Duration {
    let now = clock.now_nanos();
    let mut g = inner.lock();
    g.sweep(now);
    report(&g, gauges);
    g.sweep_period()
}

fn report(g: &Inner, gauges: &Gauges) {
    if g.retired {
        return;
    }
    gauges
        .keys
        .set(i64::try_from(g.map.len()).unwrap_or(i64::MAX));
    gauges.bytes.set(i64::try_from(g.bytes).unwrap_or(i64::MAX));
}

/// What a kept answer's entry holds beside its body and header fields: its slot and the key
/// in the map, the key in the claim-order, answer-order and expiry (two: claim and answer)
/// queues, the shared `StoredAnswer` with its two header maps, and slack for the map's spare
/// buckets. The key's tenant string is counted once per copy, apart.
const ENTRY_OVERHEAD: usize = 2 * (std::mem::size_of::<StoreKey>() + std::mem::size_of::<Slot>())
    + 2 * std::mem::size_of::<(StoreKey, u64)>()
    + 2 * std::mem::size_of::<Reverse<Due>>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<StoredAnswer>();

/// Copies of the key held per entry (map, claim order, answer order, two expiries).
const KEY_COPIES: usize = 5;

/// What a kept answer counts against `max_bytes` (and in `rampart_idempotency_bytes`): what
/// it holds in memory, as near as can be told without asking the allocator: its body, its
/// header and trailer fields with the maps that hold them, and its entry in the store
/// ([`ENTRY_OVERHEAD`], and the key's tenant in each copy of the key).
fn size_of_kept(key: &StoreKey, a: &StoredAnswer) -> usize {
    ENTRY_OVERHEAD
        + KEY_COPIES * key.tenant.len()
        + a.body.len()
        + fields_size(&a.headers)
        + a.trailers.as_ref().map_or(0, fields_size)
}

/// `a` as it is kept: its header and trailer fields copied out of the buffers they were read
/// into (its body already owns exactly its bytes: `ClaimKeeper` in `proxy/idempotent.rs` copied it).
fn owned(a: StoredAnswer) -> StoredAnswer {
    StoredAnswer {
        status: a.status,
        headers: owned_fields(&a.headers),
        body: a.body,
        trailers: a.trailers.as_ref().map(owned_fields),
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(&'a self, key: &'a StoreKey, digest: Digest) -> BoxFuture<'a, Begin> {
        let answer = self.begin_now(key, digest);
        Box::pin(std::future::ready(answer))
    }

    fn complete(&self, key: &StoreKey, digest: Digest, answer: Option<StoredAnswer>) {
        let now = self.clock.now_nanos();
        let sized = answer.map(|a| {
            let a = owned(a);
            let size = size_of_kept(key, &a);
            (a, size)
        });
        let mut g = self.inner.lock();
        let expires = now.saturating_add(g.ttl);
        let Some(slot) = g.map.get_mut(key) else {
            return;
        };
        if slot.digest != digest || !matches!(slot.state, State::InFlight) {
            return;
        }
        let seq = slot.seq;
        slot.expires = expires;
        // The newest answer is kept whatever its size (the caller kept its body within
        // `max_body`; its header fields may take it past `max_bytes`): the older lose theirs.
        let kept = match sized {
            Some((a, size)) => {
                slot.state = State::Done(Arc::new(a), size);
                Some(size)
            }
            None => {
                slot.state = State::TooLarge;
                None
            }
        };
        g.in_flight -= 1;
        g.due_at(key, seq, expires);
        if let Some(size) = kept {
            g.bytes += size;
            g.kept.push_back((key.clone(), seq));
            let max_bytes = g.max_bytes;
            g.shed_bytes(max_bytes);
        }
        g.sweep(now);
        report(&g, &self.gauges);
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
        report(&g, &self.gauges);
    }

    fn hold(&self, key: &StoreKey, digest: Digest, hold: Duration) {
        let now = self.clock.now_nanos();
        let until = now.saturating_add(u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX));
        let mut g = self.inner.lock();
        let Some(slot) = g.map.get_mut(key) else {
            return;
        };
        if slot.digest == digest && matches!(slot.state, State::InFlight) {
            slot.expires = until;
            let seq = slot.seq;
            g.due_at(key, seq, until);
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    fn reconfigure(&self, limits: Limits) {
        MemoryStore::reconfigure(self, limits);
    }

    fn retire(&self, zero: bool) {
        MemoryStore::retire(self, zero);
    }
}

// === impl Inner ===

impl Inner {
    fn set_limits(&mut self, limits: Limits) {
        self.ttl = u64::try_from(limits.ttl.as_nanos()).unwrap_or(u64::MAX);
        self.max_entries = usize::try_from(limits.max_entries)
            .unwrap_or(usize::MAX)
            .max(1);
        self.max_bytes = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    }

    /// A quarter `ttl`, 10 ms to 5 s.
    fn sweep_period(&self) -> Duration {
        (Duration::from_nanos(self.ttl) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// Whether the `kept` item (`key`, `seq`) is an answer still held.
    fn is_kept(&self, key: &StoreKey, seq: u64) -> bool {
        self.map
            .get(key)
            .is_some_and(|s| s.seq == seq && matches!(s.state, State::Done(..)))
    }

    /// Takes dead items off the back of `kept`, so that its last item is the newest answer
    /// held (which [`Inner::shed_bytes`] spares).
    fn drop_dead_newest(&mut self) {
        while let Some((key, seq)) = self.kept.back() {
            if self.is_kept(key, *seq) {
                break;
            }
            self.kept.pop_back();
        }
    }

    /// Drops the counts of `old`, a slot taken out of the map.
    fn forget(&mut self, old: &Slot) {
        match old.state {
            State::InFlight => self.in_flight -= 1,
            State::Done(_, size) => self.bytes -= size,
            State::TooLarge => {}
        }
    }

    /// Notes that the slot of `key` claimed as `seq` now expires `at`. Items of slots since
    /// changed stay in the heap until their time; rebuilt from the map before they double it.
    fn due_at(&mut self, key: &StoreKey, seq: u64, at: u64) {
        self.due.push(Reverse(Due {
            at,
            seq,
            key: key.clone(),
        }));
        if self.due.len() > 2 * self.map.len() + 64 {
            self.due = self
                .map
                .iter()
                .map(|(k, s)| {
                    Reverse(Due {
                        at: s.expires,
                        seq: s.seq,
                        key: k.clone(),
                    })
                })
                .collect();
        }
    }

    /// Drops every entry expired at `now`, soonest first (each expiry is popped once); says
    /// whether one was.
    fn sweep(&mut self, now: u64) -> bool {
        let mut dropped = false;
        while let Some(Reverse(due)) = self.due.peek() {
            if due.at >= now {
                break;
            }
            let Some(Reverse(due)) = self.due.pop() else {
                break;
            };
            let current = self
                .map
                .get(&due.key)
                .is_some_and(|s| s.seq == due.seq && s.expires == due.at);
            if current {
                if let Some(old) = self.map.remove(&due.key) {
                    self.forget(&old);
                    dropped = true;
                }
            }
        }
        dropped
    }

    /// Takes the bodies of the oldest kept answers until at most `max_bytes` are held, or only
    /// the last item of `kept` (the newest answer) is left; their keys stay, not replayable.
    fn shed_bytes(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes && self.kept.len() > 1 {
            let Some((key, seq)) = self.kept.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get_mut(&key) else {
                continue;
            };
            if slot.seq != seq {
                continue;
            }
            if let State::Done(_, size) = slot.state {
                slot.state = State::TooLarge;
                self.bytes -= size;
            }
        }
        // Answers dropped or replaced otherwise leave dead items; rebuild before they double.
        // (Filtered in place: the order is the one answers came in, which their expiries no
        // longer tell once a reload changed `ttl`.)
        if self.kept.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.kept.retain(|(k, seq)| {
                map.get(k)
                    .is_some_and(|s| s.seq == *seq && matches!(s.state, State::Done(..)))
            });
        }
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
