use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::*;
use crate::clock::ManualClock;
use crate::policy::held::FIELD_SLOT;

fn store(clock: &ManualClock, max: u64) -> MemoryStore {
    bounded(clock, max, u64::MAX)
}

fn bounded(clock: &ManualClock, max_entries: u64, max_bytes: u64) -> MemoryStore {
    let limits = Limits {
        ttl: Duration::from_secs(60),
        max_entries,
        max_bytes,
    };
    let gauges = Gauges {
        keys: IntGauge::new("k", "k").expect("valid gauge"),
        bytes: IntGauge::new("b", "b").expect("valid gauge"),
    };
    MemoryStore::new(Arc::new(clock.clone()), limits, gauges)
}

fn key(k: &str) -> StoreKey {
    StoreKey {
        route: Arc::from("r"),
        tenant: "t".into(),
        verified: false,
        key: super::super::key_digest(k.as_bytes()),
    }
}

fn answer() -> StoredAnswer {
    StoredAnswer {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"made"),
        trailers: None,
    }
}

#[test]
fn a_key_is_claimed_then_in_flight_then_replayed() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Claimed));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::InFlight));
    assert!(matches!(s.begin_now(&key("a"), [2; 32]), Begin::Reused));
    s.complete(&key("a"), [1; 32], Some(answer()));
    match s.begin_now(&key("a"), [1; 32]) {
        Begin::Replay(a) => assert_eq!(a.body, "made"),
        other => panic!("a finished key must replay: {other:?}"),
    }
    assert!(matches!(s.begin_now(&key("a"), [2; 32]), Begin::Reused));
}

#[test]
fn a_released_key_is_free_and_a_large_answer_is_not_replayable() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Claimed));
    s.release(&key("a"), [1; 32]);
    assert!(s.is_empty());
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Claimed));
    s.complete(&key("a"), [1; 32], None);
    assert!(matches!(
        s.begin_now(&key("a"), [1; 32]),
        Begin::NotReplayable
    ));
    // A release after completion does not free the key.
    s.release(&key("a"), [1; 32]);
    assert_eq!(s.len(), 1);
}

#[test]
fn entries_expire_after_ttl() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    s.begin_now(&key("a"), [1; 32]);
    s.complete(&key("a"), [1; 32], Some(answer()));
    clock.advance(Duration::from_secs(60));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Replay(_)));
    clock.advance(Duration::from_secs(1));
    assert!(matches!(s.begin_now(&key("a"), [2; 32]), Begin::Claimed));
}

#[test]
fn memory_stays_within_max_entries_under_1m_keys_oldest_out_first() {
    let clock = ManualClock::new();
    let s = store(&clock, 1000);
    for i in 0..1_000_000u32 {
        let k = key(&i.to_string());
        s.begin_now(&k, [0; 32]);
        if i % 2 == 0 {
            s.complete(&k, [0; 32], Some(answer()));
        } else {
            s.release(&k, [0; 32]);
        }
        assert!(s.len() <= 1000);
    }
    assert!(s.gauges.keys.get() <= 1000, "{}", s.gauges.keys.get());
    assert!(s.inner.lock().order.len() <= 2 * 1000 + 64);
    assert!(
        matches!(s.begin_now(&key("0"), [0; 32]), Begin::Claimed),
        "the oldest went first"
    );
    assert!(matches!(
        s.begin_now(&key("999998"), [0; 32]),
        Begin::Replay(_)
    ));
}

#[test]
fn a_huge_key_costs_no_more_memory_than_a_short_one() {
    // The client chooses the header's value; the store keeps 32 bytes of it, whatever its size.
    let huge = "k".repeat(30 * 1024);
    assert_eq!(key(&huge).key.len(), key("a").key.len());
    assert_ne!(
        key(&huge).key,
        key(&"k".repeat(30 * 1024 - 1)).key,
        "distinct keys stay distinct"
    );
}

#[test]
fn a_held_claim_stays_in_flight_until_its_hold_ends_then_is_free() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Claimed));
    s.hold(&key("a"), [1; 32], Duration::from_secs(2));
    clock.advance(Duration::from_secs(2));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::InFlight));
    clock.advance(Duration::from_millis(1));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Claimed));
    // A hold of another request's claim, or of a finished one, changes nothing.
    s.hold(&key("a"), [2; 32], Duration::ZERO);
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::InFlight));
    s.complete(&key("a"), [1; 32], Some(answer()));
    s.hold(&key("a"), [1; 32], Duration::ZERO);
    clock.advance(Duration::from_secs(1));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::Replay(_)));
}

#[test]
fn claims_in_flight_are_never_evicted_and_a_full_table_refuses_new_keys() {
    let clock = ManualClock::new();
    let s = store(&clock, 3);
    for k in ["t1", "t2", "t3"] {
        assert!(matches!(s.begin_now(&key(k), [1; 32]), Begin::Claimed));
    }
    assert!(matches!(s.begin_now(&key("t4"), [1; 32]), Begin::Full));
    assert!(matches!(s.begin_now(&key("t1"), [1; 32]), Begin::InFlight));
    assert_eq!(s.len(), 3);
    // A finished answer makes room: it goes, the claims in flight stay, oldest or not.
    s.complete(&key("t2"), [1; 32], Some(answer()));
    assert!(matches!(s.begin_now(&key("t4"), [1; 32]), Begin::Claimed));
    for k in ["t1", "t3", "t4"] {
        assert!(
            matches!(s.begin_now(&key(k), [1; 32]), Begin::InFlight),
            "{k}"
        );
    }
    assert!(matches!(s.begin_now(&key("t2"), [1; 32]), Begin::Full));
    // A released claim frees its place.
    s.release(&key("t3"), [1; 32]);
    assert!(matches!(s.begin_now(&key("t5"), [1; 32]), Begin::Claimed));
    assert_eq!(s.len(), 3);
}

#[test]
fn the_oldest_finished_answer_goes_first_past_older_claims_in_flight() {
    let clock = ManualClock::new();
    let s = store(&clock, 3);
    s.begin_now(&key("a"), [1; 32]);
    for k in ["b", "c"] {
        s.begin_now(&key(k), [1; 32]);
        s.complete(&key(k), [1; 32], Some(answer()));
    }
    assert!(matches!(s.begin_now(&key("d"), [1; 32]), Begin::Claimed));
    assert!(matches!(s.begin_now(&key("a"), [1; 32]), Begin::InFlight));
    assert!(matches!(s.begin_now(&key("c"), [1; 32]), Begin::Replay(_)));
    assert_eq!(s.len(), 3, "b went");
}

#[test]
fn an_expired_hold_frees_room_in_a_full_table() {
    let clock = ManualClock::new();
    let s = store(&clock, 2);
    s.begin_now(&key("a"), [1; 32]);
    s.begin_now(&key("b"), [1; 32]);
    s.hold(&key("a"), [1; 32], Duration::from_secs(1));
    assert!(matches!(s.begin_now(&key("c"), [1; 32]), Begin::Full));
    clock.advance(Duration::from_millis(1001));
    assert!(matches!(s.begin_now(&key("c"), [1; 32]), Begin::Claimed));
    assert!(matches!(s.begin_now(&key("d"), [1; 32]), Begin::Full));
    // Its request's late release finds nothing of its own to free.
    s.release(&key("a"), [1; 32]);
    assert!(matches!(s.begin_now(&key("d"), [1; 32]), Begin::Full));
    s.complete(&key("b"), [1; 32], None);
    assert!(matches!(s.begin_now(&key("d"), [1; 32]), Begin::Claimed));
    assert_eq!(s.len(), 2);
}

fn answer_of(len: usize) -> StoredAnswer {
    StoredAnswer {
        body: Bytes::from(vec![b'x'; len]),
        ..answer()
    }
}

/// What `a` counts in the bytes held, kept under a key of tenant `t`.
fn cost_of(a: &StoredAnswer) -> i64 {
    i64::try_from(size_of_kept(&key("any"), &owned(a.clone()))).expect("small")
}

/// What an answer of a `len`-byte body and no header field counts.
fn cost(len: usize) -> i64 {
    cost_of(&answer_of(len))
}

fn kept(s: &MemoryStore, k: &str, a: StoredAnswer) {
    assert!(
        matches!(s.begin_now(&key(k), [1; 32]), Begin::Claimed),
        "{k}"
    );
    s.complete(&key(k), [1; 32], Some(a));
}

#[test]
fn expired_entries_are_freed_by_the_next_request_not_only_ignored() {
    let clock = ManualClock::new();
    let s = store(&clock, 1000);
    for i in 0..100 {
        kept(&s, &i.to_string(), answer());
    }
    assert_eq!((s.len(), s.gauges.bytes.get()), (100, 100 * cost(4)));
    clock.advance(Duration::from_secs(61));
    // One more request: the 100 expired answers go with it, whatever key it carries.
    kept(&s, "new", answer());
    assert_eq!(s.len(), 1);
    assert_eq!((s.gauges.keys.get(), s.gauges.bytes.get()), (1, cost(4)));
}

#[test]
fn a_sweep_frees_expired_answers_claims_and_holds_in_a_quiet_store() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    kept(&s, "done", answer());
    s.begin_now(&key("held"), [1; 32]);
    s.hold(&key("held"), [1; 32], Duration::from_secs(1));
    clock.advance(Duration::from_secs(30));
    s.begin_now(&key("running"), [1; 32]);
    s.sweep();
    assert_eq!(s.len(), 2, "the hold ended");
    assert_eq!(s.gauges.keys.get(), 2);
    clock.advance(Duration::from_secs(31));
    s.sweep();
    assert_eq!(s.len(), 1, "the answer expired, the later claim lives");
    assert_eq!((s.gauges.keys.get(), s.gauges.bytes.get()), (1, 0));
    assert!(matches!(
        s.begin_now(&key("running"), [1; 32]),
        Begin::InFlight
    ));
    clock.advance(Duration::from_secs(30));
    s.sweep();
    assert!(s.is_empty());
    assert_eq!(s.gauges.keys.get(), 0);
    // An answer lives `ttl` from when it came, not from its claim's expiry.
    assert!(matches!(s.begin_now(&key("late"), [1; 32]), Begin::Claimed));
    clock.advance(Duration::from_secs(10));
    s.complete(&key("late"), [1; 32], Some(answer()));
    clock.advance(Duration::from_secs(55));
    s.sweep();
    assert!(matches!(
        s.begin_now(&key("late"), [1; 32]),
        Begin::Replay(_)
    ));
}

#[test]
fn kept_answers_stay_within_max_bytes_the_oldest_losing_their_body() {
    let clock = ManualClock::new();
    let two = 2 * cost(4);
    let s = bounded(&clock, 100, u64::try_from(two + 2).expect("small"));
    kept(&s, "a", answer());
    kept(&s, "b", answer());
    assert_eq!(s.gauges.bytes.get(), two);
    kept(&s, "c", answer());
    assert_eq!(s.gauges.bytes.get(), two);
    assert!(matches!(
        s.begin_now(&key("a"), [1; 32]),
        Begin::NotReplayable
    ));
    assert!(matches!(s.begin_now(&key("a"), [2; 32]), Begin::Reused));
    for k in ["b", "c"] {
        assert!(
            matches!(s.begin_now(&key(k), [1; 32]), Begin::Replay(_)),
            "{k}"
        );
    }
    // Header fields count.
    let mut headed = answer();
    headed
        .headers
        .insert("x-a", http::HeaderValue::from_static("1"));
    let headed_cost = cost_of(&headed);
    assert!(headed_cost > cost(4) + 4);
    kept(&s, "d", headed);
    assert!(matches!(
        s.begin_now(&key("b"), [1; 32]),
        Begin::NotReplayable
    ));
    assert!(matches!(
        s.begin_now(&key("c"), [1; 32]),
        Begin::NotReplayable
    ));
    assert_eq!(s.gauges.bytes.get(), headed_cost);
    assert!(matches!(s.begin_now(&key("d"), [1; 32]), Begin::Replay(_)));
}

/// The newest answer is always kept, even one that alone passes `max_bytes` (its header
/// fields count there, while `max_body` bounds only its body: `max_bytes: 1KiB` with
/// `max_body: 1KiB`, which validation accepts, kept no 1000-byte answer with its headers, and
/// its repeat was 422). The older answers lose their body for it; the next answer takes its.
#[test]
fn the_newest_answer_is_kept_even_past_max_bytes() {
    let clock = ManualClock::new();
    let s = bounded(&clock, 100, 1024);
    kept(&s, "old", answer_of(24));
    let mut at_limit = answer_of(1000);
    at_limit.headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/octet-stream"),
    );
    let big_cost = cost_of(&at_limit);
    kept(&s, "big", at_limit);
    match s.begin_now(&key("big"), [1; 32]) {
        Begin::Replay(a) => assert_eq!(a.body.len(), 1000),
        other => panic!("the newest answer must be kept: {other:?}"),
    }
    assert!(matches!(
        s.begin_now(&key("old"), [1; 32]),
        Begin::NotReplayable
    ));
    assert_eq!((s.len(), s.gauges.bytes.get()), (2, big_cost));
    kept(&s, "next", answer_of(4));
    assert!(matches!(
        s.begin_now(&key("big"), [1; 32]),
        Begin::NotReplayable
    ));
    assert!(matches!(
        s.begin_now(&key("next"), [1; 32]),
        Begin::Replay(_)
    ));
    assert_eq!((s.len(), s.gauges.bytes.get()), (3, cost(4)));
}

#[test]
fn bytes_and_bookkeeping_stay_bounded_under_300k_keys() {
    let clock = ManualClock::new();
    let s = bounded(&clock, 1000, 4000);
    for i in 0..300_000u32 {
        let k = key(&i.to_string());
        s.begin_now(&k, [0; 32]);
        match i % 3 {
            0 => s.complete(&k, [0; 32], Some(answer_of(100))),
            1 => s.release(&k, [0; 32]),
            _ => s.hold(&k, [0; 32], Duration::from_millis(10)),
        }
        if i % 1000 == 0 {
            clock.advance(Duration::from_millis(100));
        }
        assert!(s.gauges.bytes.get() <= 4000);
    }
    let g = s.inner.lock();
    assert!(g.map.len() <= 1000);
    assert!(g.due.len() <= 2 * 1000 + 65, "{}", g.due.len());
    assert!(g.kept.len() <= 2 * 1000 + 65, "{}", g.kept.len());
    assert!(g.order.len() <= 2 * 1000 + 64);
}

fn limits(ttl_s: u64, max_entries: u64, max_bytes: u64) -> Limits {
    Limits {
        ttl: Duration::from_secs(ttl_s),
        max_entries,
        max_bytes,
    }
}

/// A reload that changes the section reconfigures the store in place: every key stays (a
/// claim in flight still answers 409, and its answer is replayed once it comes); a lower
/// `max_bytes` takes the bodies of the oldest answers (their keys stay, not replayable), a
/// lower `max_entries` drops the oldest finished entries and never a claim in flight; a new
/// `ttl` applies to entries claimed or answered from then on.
#[test]
fn a_reconfigured_store_keeps_its_keys_and_applies_the_new_bounds() {
    let clock = ManualClock::new();
    let three = u64::try_from(3 * cost(100)).expect("small");
    // Room for two answers of 100 bytes and a small one, not three of 100.
    let lower = u64::try_from(2 * cost(100) + cost(4)).expect("small");
    let s = bounded(&clock, 100, three);
    kept(&s, "a", answer_of(100));
    kept(&s, "b", answer_of(100));
    kept(&s, "c", answer_of(100));
    assert!(matches!(s.begin_now(&key("run"), [1; 32]), Begin::Claimed));
    s.reconfigure(limits(60, 100, lower));
    assert!(matches!(s.begin_now(&key("run"), [1; 32]), Begin::InFlight));
    assert!(matches!(
        s.begin_now(&key("a"), [1; 32]),
        Begin::NotReplayable
    ));
    for k in ["b", "c"] {
        assert!(
            matches!(s.begin_now(&key(k), [1; 32]), Begin::Replay(_)),
            "{k}"
        );
    }
    assert_eq!((s.len(), s.gauges.bytes.get()), (4, 2 * cost(100)));

    // Down to 2 entries: the oldest finished go, the claim in flight stays.
    s.reconfigure(limits(60, 2, lower));
    assert_eq!(s.len(), 2);
    assert!(matches!(s.begin_now(&key("run"), [1; 32]), Begin::InFlight));
    assert!(matches!(s.begin_now(&key("c"), [1; 32]), Begin::Replay(_)));
    s.complete(&key("run"), [1; 32], Some(answer()));
    assert!(matches!(
        s.begin_now(&key("run"), [1; 32]),
        Begin::Replay(_)
    ));

    // A shorter ttl: entries held keep their expiry, new ones get the new ttl.
    s.reconfigure(limits(5, 100, lower));
    kept(&s, "short", answer());
    clock.advance(Duration::from_secs(6));
    s.sweep();
    assert!(matches!(
        s.begin_now(&key("short"), [1; 32]),
        Begin::Claimed
    ));
    assert!(matches!(s.begin_now(&key("c"), [1; 32]), Begin::Replay(_)));
    assert!(matches!(
        s.begin_now(&key("run"), [1; 32]),
        Begin::Replay(_)
    ));
    clock.advance(Duration::from_secs(50));
    s.sweep();
    assert_eq!(s.len(), 2, "the new claim expired, 5 s after it came");
    clock.advance(Duration::from_secs(5));
    s.sweep();
    assert!(s.is_empty(), "those from before expire at their own time");
}

/// A store no longer its route's stops writing the route's gauges: set to 0 when the route
/// lost `idempotency`, left to the store that writes them now otherwise.
#[test]
fn a_retired_store_lets_go_of_its_gauges() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    kept(&s, "a", answer());
    assert_eq!((s.gauges.keys.get(), s.gauges.bytes.get()), (1, cost(4)));
    s.retire(true);
    assert_eq!((s.gauges.keys.get(), s.gauges.bytes.get()), (0, 0));
    // A request of the old generation still ends here: the gauges stay as they are.
    kept(&s, "b", answer());
    clock.advance(Duration::from_secs(61));
    s.sweep();
    assert_eq!((s.gauges.keys.get(), s.gauges.bytes.get()), (0, 0));

    let t = store(&clock, 10);
    kept(&t, "a", answer());
    t.gauges.keys.set(7);
    t.retire(false);
    kept(&t, "b", answer());
    assert_eq!(t.gauges.keys.get(), 7, "another store writes them now");
}

/// A kept answer's header and trailer values are copies of exactly their bytes, not views into
/// the buffer they were read into (a connection's read buffer, which a view holds whole for as
/// long as the answer is kept); and the bytes it counts are what it holds: its body and fields
/// and the maps that hold them, and its entry in the store (slot, key copies, queue items).
/// Before, a kept answer counted its body and field lengths only (a 4-byte answer counted 4
/// bytes and held hundreds), and its values held their read buffer: RSS stood ~1.5× the
/// `max_bytes` the bytes gauge said was held.
#[test]
fn a_kept_answer_owns_its_fields_and_counts_what_it_holds() {
    let clock = ManualClock::new();
    let s = store(&clock, 10);
    let buffer = Bytes::from(vec![b'v'; 16 * 1024]);
    let view = |r: std::ops::Range<usize>| {
        http::HeaderValue::from_maybe_shared(buffer.slice(r)).expect("a valid value")
    };
    let mut a = answer();
    a.headers.insert("x-one", view(0..3));
    a.headers.append("x-one", view(3..5));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", view(5..6));
    a.trailers = Some(trailers);
    let mut sensitive = view(6..8);
    sensitive.set_sensitive(true);
    a.headers.insert("x-secret", sensitive);
    kept(&s, "a", a);

    let Begin::Replay(replayed) = s.begin_now(&key("a"), [1; 32]) else {
        panic!("must replay");
    };
    let within = buffer.as_ptr_range();
    let values = replayed
        .headers
        .iter()
        .chain(replayed.trailers.iter().flat_map(|t| t.iter()));
    let mut n = 0;
    for (name, value) in values {
        n += 1;
        assert!(
            !within.contains(&value.as_bytes().as_ptr()),
            "{name} must be a copy, not a view into the read buffer"
        );
    }
    assert_eq!(n, 4);
    assert_eq!(replayed.headers.get_all("x-one").iter().count(), 2);
    assert!(replayed.headers["x-secret"].is_sensitive());
    assert_eq!(replayed.headers["x-secret"], "vv");

    // Body 4, fields "x-one" 3 + 2, "x-secret" 2, "grpc-status" 1: 30 bytes, plus what holds
    // them.
    let fields = 4 + (5 + 3) + (5 + 2) + (8 + 2) + (11 + 1);
    let held = s.gauges.bytes.get();
    let entry = i64::try_from(ENTRY_OVERHEAD + KEY_COPIES).expect("small");
    assert!(held >= fields + entry, "{held} bytes counted");
    assert!(
        held >= fields + entry + 3 * i64::try_from(FIELD_SLOT).expect("small"),
        "{held}: three header map slots at least"
    );
    // An answer with no field at all still counts its entry.
    kept(&s, "b", answer());
    assert_eq!(s.gauges.bytes.get() - held, 4 + entry);
    // As near as can be told, and no more than a few times so: an answer with no field is
    // counted some hundreds of bytes.
    assert!((200..1000).contains(&entry), "{entry}");
}
