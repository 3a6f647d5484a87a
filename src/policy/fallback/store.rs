//! The stale store: the last 2xx answer per (tenant, method, target) of one route, bounded.
//!
//! Bounds, chosen so a route with a fallback can never grow without limit: at most
//! [`MAX_ENTRIES`] answers, bodies of at most [`MAX_BODY`] each (larger ones are not kept), and
//! at most [`MAX_BYTES`] held in all, counting what each answer holds (its body, its header and
//! trailer fields with the maps that hold them, its key and its entry: [`StaleStore::bytes`]);
//! the oldest insertion goes first when a bound is hit. Entries older than the policy's
//! `stale` are never served and are dropped when met.
//!
//! What is kept holds exactly what is counted: the body and the header and trailer fields are
//! copied out of the buffers they were read and parsed in when the answer is stored (a view
//! would hold a connection's whole read buffer), once per kept answer and before the lock is
//! taken. A body the same as the one kept for its key (a target whose answer does not change,
//! asked again and again) is not copied again: the kept one's bytes are shared
//! ([`StaleStore::insert_trailed`]).
//!
//! A `parking_lot` mutex guards it: it is taken once when a kept answer's body ends and once
//! when a fallback is needed, never across an await, and only on routes with `fallback.stale`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::clock::SharedClock;
use crate::policy::held::{fields_size, owned_fields, ReadBody};

/// Most answers kept per route.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest body kept; a larger answer is passed through and not kept.
pub const MAX_BODY: usize = 256 * 1024;
/// Most bytes held per route: bodies, header and trailer fields with their maps, keys and
/// entries.
pub const MAX_BYTES: usize = 32 << 20;

/// What an entry holds beside its body, fields and key strings: its slot in the map (key and
/// answer) and its item in the insertion order, each doubled for the map's spare buckets and
/// the order's dead items (it is rebuilt past twice the live ones).
const ENTRY_OVERHEAD: usize = 2 * (std::mem::size_of::<Key>() + std::mem::size_of::<Kept>())
    + 2 * std::mem::size_of::<(Key, u64)>();

/// Copies of the key's strings held per entry (map, insertion order).
const KEY_COPIES: usize = 2;

/// What a kept answer is found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Tenant id.
    pub tenant: String,
    /// GET or HEAD.
    pub method: Method,
    /// Path and query, as requested.
    pub target: String,
}

/// A kept answer.
#[derive(Clone, Debug)]
pub struct Kept {
    /// Its status (2xx).
    pub status: StatusCode,
    /// Its headers, hop-by-hop ones already stripped.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// The trailers its body ended with (a chunked answer's, an HTTP/2 one's), served with it.
    pub trailers: Option<HeaderMap>,
    at: u64,
    seq: u64,
    /// What the entry holds in memory: body, header and trailer fields with their maps, its
    /// key (the client chooses the target, so the key counts against the byte cap too) and
    /// the entry itself ([`ENTRY_OVERHEAD`]).
    size: usize,
}

/// The bounded store of one route.
#[derive(Debug)]
pub struct StaleStore {
    inner: parking_lot::Mutex<Inner>,
    clock: SharedClock,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Kept>,
    /// Insertion order, oldest first; an item whose seq no longer matches the map is skipped.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    seq: u64,
}

// === impl StaleStore ===

impl StaleStore {
    /// An empty store with the default bounds.
    pub fn new(clock: SharedClock) -> Self {
        Self::with_bounds(clock, MAX_ENTRIES, MAX_BYTES)
    }

    /// An empty store with the given bounds (tests use small ones).
    pub fn with_bounds(clock: SharedClock, max_entries: usize, max_bytes: usize) -> Self {
        StaleStore {
            inner: Default::default(),
            clock,
            max_entries,
            max_bytes,
        }
    }

    /// Keeps `body`, which must own exactly its bytes, as the answer for `key`, replacing the
    /// previous one.
    pub fn insert(&self, key: Key, status: StatusCode, headers: HeaderMap, body: Bytes) {
        self.insert_trailed(key, status, headers, ReadBody::exact(body), None);
    }

    /// Keeps `body` and the `trailers` it ended with as the answer for `key`, replacing the
    /// previous one. The fields are copied into maps of their own, and the body into bytes of
    /// its own unless it is exact already (see the module doc), or the same as the body kept
    /// for `key` now, whose bytes are then shared: a look under the lock (a hashed lookup and
    /// a handle's count), the comparison and any copy outside it.
    pub fn insert_trailed(
        &self,
        key: Key,
        status: StatusCode,
        headers: HeaderMap,
        body: ReadBody,
        trailers: Option<HeaderMap>,
    ) {
        if body.len() > MAX_BODY {
            return;
        }
        let body = if body.is_exact() {
            body.into_owned()
        } else {
            let kept = self.inner.lock().map.get(&key).map(|k| k.body.clone());
            match kept {
                Some(same) if same[..] == body[..] => same,
                _ => body.into_owned(),
            }
        };
        let at = self.clock.now_nanos();
        let headers = owned_fields(&headers);
        let trailers = trailers.as_ref().map(owned_fields);
        let size = ENTRY_OVERHEAD
            + KEY_COPIES * (key.tenant.len() + key.target.len())
            + body.len()
            + fields_size(&headers)
            + trailers.as_ref().map_or(0, fields_size);
        let mut g = self.inner.lock();
        g.seq += 1;
        let seq = g.seq;
        g.bytes += size;
        g.order.push_back((key.clone(), seq));
        let kept = Kept {
            status,
            headers,
            body,
            trailers,
            at,
            seq,
            size,
        };
        if let Some(old) = g.map.insert(key, kept) {
            g.bytes -= old.size;
        }
        g.evict(self.max_entries, self.max_bytes);
    }

    /// The answer kept for `key` if it is at most `max_age` old, with its age.
    pub fn get(&self, key: &Key, max_age: Duration) -> Option<(Kept, Duration)> {
        let now = self.clock.now_nanos();
        let mut g = self.inner.lock();
        let kept = g.map.get(key)?;
        let age = Duration::from_nanos(now.saturating_sub(kept.at));
        if age > max_age {
            if let Some(old) = g.map.remove(key) {
                g.bytes -= old.size;
            }
            return None;
        }
        Some((kept.clone(), age))
    }

    /// Answers kept now.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now, as counted against the byte cap: bodies, header and trailer fields with
    /// their maps, keys and entries.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

// === impl Inner ===

impl Inner {
    fn evict(&mut self, max_entries: usize, max_bytes: usize) {
        while self.map.len() > max_entries || self.bytes > max_bytes {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|k| k.seq == seq) {
                if let Some(old) = self.map.remove(&key) {
                    self.bytes -= old.size;
                }
            }
        }
        // Replaced keys leave dead items in `order`; rebuild it before it doubles.
        if self.order.len() > 2 * self.map.len() + 64 {
            let mut live: Vec<(Key, u64)> =
                self.map.iter().map(|(k, v)| (k.clone(), v.seq)).collect();
            live.sort_by_key(|(_, s)| *s);
            self.order = live.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::policy::held::FIELD_SLOT;

    fn key(target: &str) -> Key {
        Key {
            tenant: "t".into(),
            method: Method::GET,
            target: target.into(),
        }
    }

    fn put(s: &StaleStore, target: &str, body: &'static [u8]) {
        s.insert(
            key(target),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
        );
    }

    /// What an answer with no field counts under `target` (tenant "t") with a `body`-byte body.
    fn cost(target: &str, body: usize) -> usize {
        ENTRY_OVERHEAD + KEY_COPIES * (1 + target.len()) + body
    }

    #[test]
    fn kept_answers_age_out_after_stale() {
        let clock = ManualClock::new();
        let s = StaleStore::new(Arc::new(clock.clone()));
        put(&s, "/a", b"one");
        clock.advance(Duration::from_secs(60));
        let (kept, age) = s.get(&key("/a"), Duration::from_secs(60)).expect("kept");
        assert_eq!(kept.body, "one");
        assert_eq!(age, Duration::from_secs(60));
        clock.advance(Duration::from_millis(1));
        assert!(s.get(&key("/a"), Duration::from_secs(60)).is_none());
        assert!(s.is_empty(), "an expired entry is dropped when met");
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_long_client_chosen_target_counts_against_the_byte_cap() {
        let s = StaleStore::with_bounds(Arc::new(ManualClock::new()), 100, 1000);
        let long = format!("/{}", "x".repeat(30 * 1024));
        put(&s, &long, b"ok");
        assert!(s.bytes() <= 1000, "{}", s.bytes());
        assert!(s.is_empty(), "an entry larger than the cap is not kept");
    }

    #[test]
    fn entries_and_bytes_are_bounded_oldest_first() {
        // Each entry below costs its body, its tenant and its target and its entry; room for
        // three of them and a little more.
        let room = 3 * cost("/1", 2) + 1;
        let s = StaleStore::with_bounds(Arc::new(ManualClock::new()), 3, room);
        for t in ["/1", "/2", "/3", "/4"] {
            put(&s, t, b"ab");
        }
        assert_eq!(s.len(), 3);
        assert!(
            s.get(&key("/1"), Duration::MAX).is_none(),
            "the oldest went first"
        );
        put(&s, "/5", b"123456789");
        assert!(s.bytes() <= room, "{}", s.bytes());
        assert_eq!(s.len(), 2, "a larger answer pushed the oldest out");
        assert!(s.get(&key("/5"), Duration::MAX).is_some());
        // Replacing one key many times keeps the order list small.
        for _ in 0..1000 {
            put(&s, "/5", b"x");
        }
        assert!(s.inner.lock().order.len() < 100);
        assert_eq!(s.len(), 1.max(s.len()));
    }

    #[test]
    fn trailers_are_kept_with_their_body_and_counted() {
        let s = StaleStore::new(Arc::new(ManualClock::new()));
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("c0ffee"));
        let body = Bytes::from_static(b"data");
        s.insert_trailed(
            key("/t"),
            StatusCode::OK,
            HeaderMap::new(),
            ReadBody::exact(body),
            Some(trailers),
        );
        let (kept, _) = s.get(&key("/t"), Duration::MAX).expect("kept");
        assert_eq!(kept.trailers.expect("trailers")["x-checksum"], "c0ffee");
        assert_eq!(
            s.bytes(),
            cost("/t", 4) + "x-checksum".len() + "c0ffee".len() + FIELD_SLOT
        );
    }

    /// A kept answer's header and trailer values are copies of exactly their bytes, not views
    /// into the buffer they were read into (a connection's read buffer, which a view holds
    /// whole for as long as the answer is kept); and the bytes it counts against the cap are
    /// what it holds: its fields with the maps that hold them and its entry, not only field
    /// lengths. Before, a kept answer counted body, key and field lengths and held the views:
    /// 10 000 answers could pin many times the 32 MiB cap.
    #[test]
    fn a_kept_answer_owns_its_fields_and_counts_what_it_holds() {
        let s = StaleStore::new(Arc::new(ManualClock::new()));
        let buffer = Bytes::from(vec![b'v'; 16 * 1024]);
        let view = |r: std::ops::Range<usize>| {
            http::HeaderValue::from_maybe_shared(buffer.slice(r)).expect("a valid value")
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-one", view(0..3));
        headers.append("x-one", view(3..5));
        let mut sensitive = view(6..8);
        sensitive.set_sensitive(true);
        headers.insert("x-secret", sensitive);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", view(5..6));
        s.insert_trailed(
            key("/h"),
            StatusCode::OK,
            headers,
            ReadBody::exact(Bytes::from_static(b"data")),
            Some(trailers),
        );

        let (kept, _) = s.get(&key("/h"), Duration::MAX).expect("kept");
        let within = buffer.as_ptr_range();
        let trailers = kept.trailers.clone().expect("trailers");
        let mut n = 0;
        for (name, value) in kept.headers.iter().chain(trailers.iter()) {
            n += 1;
            assert!(
                !within.contains(&value.as_bytes().as_ptr()),
                "{name} must be a copy, not a view into the read buffer"
            );
        }
        assert_eq!(n, 4);
        assert_eq!(kept.headers.get_all("x-one").iter().count(), 2);
        assert!(kept.headers["x-secret"].is_sensitive());
        assert_eq!(kept.headers["x-secret"], "vv");
        assert_eq!(trailers["grpc-status"], "v");

        // Body 4, tenant 1, target 2, fields "x-one" 3 + 2, "x-secret" 2, "grpc-status" 1,
        // plus the three map slots that hold them and the entry that holds it all.
        let lengths = 4 + 1 + 2 + (5 + 3) + (5 + 2) + (8 + 2) + (11 + 1);
        let entry = std::mem::size_of::<Key>() + std::mem::size_of::<Kept>();
        let held = s.bytes();
        assert!(
            held >= lengths + 3 * FIELD_SLOT + entry,
            "{held} bytes counted"
        );
        // An answer with no field at all still counts its entry, some hundreds of bytes.
        put(&s, "/e", b"data");
        let bare = s.bytes() - held;
        assert!(bare >= 4 + 1 + 2 + entry, "{bare}");
        assert_eq!(bare, cost("/e", 4));
        assert!((200..1000).contains(&bare), "{bare}");
    }

    #[test]
    fn large_bodies_are_not_kept() {
        let s = StaleStore::new(Arc::new(ManualClock::new()));
        let big = Bytes::from(vec![0u8; MAX_BODY + 1]);
        s.insert(key("/big"), StatusCode::OK, HeaderMap::new(), big);
        assert!(s.is_empty());
    }
}
