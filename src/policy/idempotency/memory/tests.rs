use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::*;
use crate::clock::ManualClock;

fn store(clock: &ManualClock, max: u64) -> MemoryStore {
    let gauge = IntGauge::new("g", "g").expect("valid gauge");
    MemoryStore::new(Arc::new(clock.clone()), Duration::from_secs(60), max, gauge)
}

fn key(k: &str) -> StoreKey {
    StoreKey {
        route: Arc::from("r"),
        tenant: "t".into(),
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
    assert!(s.gauge.get() <= 1000, "{}", s.gauge.get());
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
