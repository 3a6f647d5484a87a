//! What the request path keeps per thread between requests, so that it allocates less: a
//! [`Shelf`] of values given back, and on one, the header maps of finished requests.
//!
//! Why header maps: every proxied request has two header maps, the client's request and the
//! upstream's answer. The lean client side already fills the next request's map from the
//! answer it just wrote (`h1::parse::Reuse`). The request's own map was dropped once its last
//! try ended, and the upstream side built a new map for the next answer: two allocations and
//! two frees per request, and a map's entries are too large for the C library's per-thread
//! cache, so each of those frees took its slow path (about 250 instructions per request in
//! all, callgrind). Now the request's map, emptied, waits here for the next answer read on the
//! same thread. Emptying it costs about 100 of those back (`clear` resets every slot of its
//! index), so the request path is about 100 instructions cheaper, with no allocation left to it.
//!
//! A map is emptied with `clear`, which keeps its capacity. A map that grew beyond
//! [`KEEP_CAPACITY`] (a client that sent a hundred headers) is freed rather than kept, and at
//! most [`KEPT`] maps wait per thread, so what is kept stays small and bounded. The same rule
//! decides whether an answer's map goes on to the lean server's next request on its
//! connection ([`emptied`]), and whether a vector kept from use to use keeps its room
//! ([`trim`]): an upstream's answer of thousands of header lines once left megabytes with
//! each connection it passed through, and with every pair of buffers its thread shelved. The access
//! log keeps its line drafts on a shelf of its own the same way.

use std::cell::RefCell;
use std::thread::LocalKey;

use http::HeaderMap;

/// Values kept for reuse on one thread (declared in a `thread_local!`): at most `most`, the
/// one kept last taken first, so what is taken is likely still in this core's cache.
#[derive(Debug)]
pub struct Shelf<T> {
    kept: RefCell<Vec<T>>,
    most: usize,
}

impl<T> Shelf<T> {
    /// An empty shelf holding at most `most` values.
    pub const fn new(most: usize) -> Self {
        Shelf {
            kept: RefCell::new(Vec::new()),
            most,
        }
    }

    /// The value kept last on this thread's shelf `key`, if any.
    pub fn take(key: &'static LocalKey<Self>) -> Option<T> {
        key.try_with(|s| s.kept.borrow_mut().pop()).ok().flatten()
    }

    /// Keeps `v` on this thread's shelf `key`, once `empty` has readied it for its next use.
    /// On a full shelf, or while the thread ends, `v` is dropped as it is, and `empty` is not
    /// called. `empty` runs with the shelf unborrowed, so what it drops may keep values here.
    pub fn keep(key: &'static LocalKey<Self>, mut v: T, empty: impl FnOnce(&mut T)) {
        let _ = key.try_with(move |s| {
            if s.kept.borrow().len() >= s.most {
                return;
            }
            empty(&mut v);
            let mut kept = s.kept.borrow_mut();
            if kept.len() < s.most {
                kept.push(v);
            }
        });
    }

    /// How many values this thread's shelf `key` holds.
    #[cfg(test)]
    pub fn len(key: &'static LocalKey<Self>) -> usize {
        key.with(|s| s.kept.borrow().len())
    }
}

/// Most maps kept per thread: enough for the requests one worker has in flight at a time on
/// a busy sidecar; beyond it, maps are freed.
const KEPT: usize = 64;
/// A map able to hold more entries than this is freed, not kept.
const KEEP_CAPACITY: usize = 64;

thread_local! {
    static MAPS: Shelf<HeaderMap> = const { Shelf::new(KEPT) };
}

/// An empty map with room for at least `entries`: one kept by this thread if there is one.
pub fn map(entries: usize) -> HeaderMap {
    match Shelf::take(&MAPS) {
        Some(mut m) => {
            if m.capacity() < entries {
                m.reserve(entries);
            }
            m
        }
        None => HeaderMap::with_capacity(entries),
    }
}

/// Whether `m` is small enough to be kept for reuse: room for at most [`KEEP_CAPACITY`]
/// entries, and no more values than that (a name's further values are held apart from its
/// entry, in room `capacity` does not count).
fn small(m: &HeaderMap) -> bool {
    m.capacity() <= KEEP_CAPACITY && m.len() <= KEEP_CAPACITY
}

/// Keeps `m`, emptied, for a later [`map`] on this thread (unless it is large, has never
/// allocated, or enough are kept).
pub fn keep(m: HeaderMap) {
    if m.capacity() == 0 || !small(&m) {
        return;
    }
    Shelf::keep(&MAPS, m, HeaderMap::clear);
}

/// `m` emptied, for its connection's next request (`h1::parse::Reuse`), by the rule of
/// [`keep`]: a map grown large (an upstream's answer of thousands of header lines) is freed
/// instead, and `None` says so. Kept, such a map (megabytes: `clear` keeps every slot) would
/// stay with the connection, and with every pair of buffers its thread shelves.
pub fn emptied(mut m: HeaderMap) -> Option<HeaderMap> {
    if !small(&m) {
        return None;
    }
    m.clear();
    Some(m)
}

/// Lets go of `v`'s room beyond what [`keep`] keeps of a map, once it holds more (the lines of
/// an upstream's answer of thousands of header lines): a vector kept from one use to the next
/// keeps what it grew to, and `clear` keeps it too. Its contents stay.
pub fn trim<T>(v: &mut Vec<T>) {
    if v.capacity() > KEEP_CAPACITY {
        v.shrink_to(KEEP_CAPACITY);
    }
}

/// Lets go of `m`, the empty map a new `Request` or `Response` was made with and that a
/// filled one has just replaced, without dropping it: a map made by `HeaderMap::new` has not
/// allocated (the `http` crate says so), so there is nothing to free, and its drop still cost
/// about 60 instructions a map (its three parts looked at one by one), twice a request (the
/// request's map and the answer's). A map that holds anything, or has room for anything, is
/// dropped as usual.
pub fn forget_new(m: HeaderMap) {
    if m.capacity() == 0 && m.is_empty() {
        std::mem::forget(m);
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    /// Runs `f` on a thread of its own, whose kept maps no other test touches.
    fn alone(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("the test thread");
    }

    thread_local! {
        static NUMBERS: super::Shelf<Vec<u32>> = const { super::Shelf::new(2) };
    }

    /// A shelf gives back the value kept last, emptied by the keeper's own `empty`, holds at
    /// most its count, and leaves a value it cannot hold as it was (`empty` not called).
    #[test]
    fn a_shelf_keeps_at_most_its_count_and_gives_back_the_last_kept_first() {
        use super::Shelf;
        alone(|| {
            assert_eq!(Shelf::take(&NUMBERS), None, "nothing kept yet");
            let mut emptied = 0;
            for v in [vec![1], vec![2, 2], vec![3, 3, 3]] {
                Shelf::keep(&NUMBERS, v, |v| {
                    emptied += 1;
                    v.truncate(1);
                });
            }
            assert_eq!(
                emptied, 2,
                "the third did not fit: dropped without being emptied"
            );
            assert_eq!(Shelf::len(&NUMBERS), 2);
            assert_eq!(
                Shelf::take(&NUMBERS),
                Some(vec![2]),
                "the last kept comes first"
            );
            assert_eq!(Shelf::take(&NUMBERS), Some(vec![1]));
            assert_eq!(Shelf::take(&NUMBERS), None);
        });
    }

    /// What `empty` drops may itself keep a value on the same shelf (no double borrow).
    #[test]
    fn emptying_a_value_may_keep_another_on_the_same_shelf() {
        use super::Shelf;
        alone(|| {
            Shelf::keep(&NUMBERS, vec![1, 2], |v| {
                v.clear();
                Shelf::keep(&NUMBERS, vec![9], |_| {});
            });
            assert_eq!(Shelf::len(&NUMBERS), 2);
            assert_eq!(Shelf::take(&NUMBERS), Some(vec![]));
            assert_eq!(Shelf::take(&NUMBERS), Some(vec![9]));
        });
    }

    #[test]
    fn a_kept_map_comes_back_empty_with_its_room() {
        alone(|| {
            let mut m = HeaderMap::with_capacity(20);
            m.insert("x-a", HeaderValue::from_static("1"));
            m.append("x-a", HeaderValue::from_static("2"));
            let cap = m.capacity();
            super::keep(m);
            let again = super::map(4);
            assert!(again.is_empty(), "{again:?}");
            assert_eq!(again.capacity(), cap, "the same allocation, not a new one");
            // Nothing kept now: a new map with the room asked for.
            let fresh = super::map(10);
            assert!(fresh.is_empty() && fresh.capacity() >= 10);
        });
    }

    #[test]
    fn a_kept_map_grows_when_more_room_is_asked() {
        alone(|| {
            super::keep(HeaderMap::with_capacity(2));
            let m = super::map(40);
            assert!(m.capacity() >= 40);
        });
    }

    /// A map handed on to the connection's next request is emptied, with its room, unless it
    /// grew large: many names, or many values of one (which `capacity` does not count). So is a
    /// vector kept from use to use.
    #[test]
    fn a_map_or_vector_grown_large_is_freed_not_handed_on() {
        alone(|| {
            let mut m = HeaderMap::with_capacity(8);
            m.insert("x-a", HeaderValue::from_static("1"));
            let cap = m.capacity();
            let again = super::emptied(m).expect("a small map is handed on");
            assert!(again.is_empty() && again.capacity() == cap);
            assert!(super::emptied(HeaderMap::new()).is_some());

            let mut names = HeaderMap::with_capacity(super::KEEP_CAPACITY * 4);
            names.insert("x-a", HeaderValue::from_static("1"));
            assert!(super::emptied(names).is_none(), "room for many names");
            let mut values = HeaderMap::new();
            for _ in 0..=super::KEEP_CAPACITY {
                values.append("a", HeaderValue::from_static(""));
            }
            assert!(values.capacity() <= super::KEEP_CAPACITY, "one name");
            assert!(
                super::emptied(values.clone()).is_none(),
                "many values of it"
            );
            super::keep(values);
            assert_eq!(super::Shelf::len(&super::MAPS), 0, "nor kept on the shelf");

            let mut v: Vec<u64> = Vec::with_capacity(super::KEEP_CAPACITY);
            let at = v.as_ptr();
            super::trim(&mut v);
            assert_eq!(
                (v.capacity(), v.as_ptr()),
                (super::KEEP_CAPACITY, at),
                "small: kept"
            );
            v.extend([7; 3]);
            v.reserve(super::KEEP_CAPACITY * 100);
            super::trim(&mut v);
            assert_eq!(v.capacity(), super::KEEP_CAPACITY, "large: its room let go");
            assert_eq!(v, [7; 3]);
        });
    }

    #[test]
    fn large_or_empty_maps_and_maps_beyond_the_count_are_not_kept() {
        alone(|| {
            let big = HeaderMap::with_capacity(super::KEEP_CAPACITY * 4);
            assert!(big.capacity() > super::KEEP_CAPACITY);
            super::keep(big);
            super::keep(HeaderMap::new());
            assert_eq!(super::Shelf::len(&super::MAPS), 0);
            for _ in 0..super::KEPT + 10 {
                super::keep(HeaderMap::with_capacity(8));
            }
            assert_eq!(super::Shelf::len(&super::MAPS), super::KEPT);
        });
    }
}
