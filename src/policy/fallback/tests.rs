use std::sync::Arc;

use http::HeaderMap;

use super::*;
use crate::clock::ManualClock;
use crate::config::units::Dur;

fn cfg(stale: bool, with_static: bool) -> file::Fallback {
    file::Fallback {
        on: vec![FallbackOn::UpstreamUnavailable, FallbackOn::Timeout],
        stale: stale.then_some(Dur(Duration::from_secs(300))),
        static_answer: with_static.then(|| file::StaticAnswer {
            status: 200,
            content_type: "application/json".into(),
            body: r#"{"items":[]}"#.into(),
        }),
    }
}

fn build(c: &file::Fallback, clock: &ManualClock) -> (RouteFallback, Metrics) {
    let m = Metrics::register();
    let clock: SharedClock = Arc::new(clock.clone());
    (RouteFallback::build(c, None, "r", &m, &clock), m)
}

fn uri(s: &str) -> Uri {
    s.parse().expect("a valid uri")
}

#[test]
fn only_get_and_head_are_kept() {
    let clock = ManualClock::new();
    let (fb, _) = build(&cfg(true, true), &clock);
    assert!(fb.keep_for("t", &Method::GET, &uri("/a?x=1")).is_some());
    assert!(fb.keep_for("t", &Method::HEAD, &uri("/a")).is_some());
    assert!(fb.keep_for("t", &Method::POST, &uri("/a")).is_none());
    let (no_stale, _) = build(&cfg(false, true), &clock);
    assert!(no_stale.keep_for("t", &Method::GET, &uri("/a")).is_none());
}

#[test]
fn stale_first_then_static_and_only_for_listed_reasons() {
    let clock = ManualClock::new();
    let (fb, m) = build(&cfg(true, true), &clock);
    let (key, store) = fb.keep_for("t", &Method::GET, &uri("/a")).expect("kept");
    assert!(matches!(
        fb.replacement(b"upstream_unavailable", Some(&key)),
        Some((Reason::UpstreamUnavailable, Replacement::Static(_)))
    ));
    store.insert(
        key.clone(),
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"old"),
    );
    match fb.replacement(b"timeout", Some(&key)) {
        Some((Reason::Timeout, Replacement::Stale(k, _))) => assert_eq!(k.body, "old"),
        other => panic!("a stale answer must be given: {other:?}"),
    }
    assert!(
        fb.replacement(b"circuit_open", Some(&key)).is_none(),
        "not listed"
    );
    assert!(fb.replacement(b"rate_limited", Some(&key)).is_none());
    clock.advance(Duration::from_secs(301));
    assert!(matches!(
        fb.replacement(b"timeout", Some(&key)),
        Some((_, Replacement::Static(_)))
    ));
    let count = |kind: &str, r: &str| m.fallbacks.with_label_values(&["r", kind, r]).get();
    assert_eq!(count("stale", "timeout"), 1);
    assert_eq!(count("static", "timeout"), 1);
    assert_eq!(count("static", "upstream_unavailable"), 1);
}

#[test]
fn without_static_and_nothing_kept_the_refusal_stays() {
    let clock = ManualClock::new();
    let (fb, _) = build(&cfg(true, false), &clock);
    let (key, _) = fb.keep_for("t", &Method::GET, &uri("/a")).expect("kept");
    assert!(fb.replacement(b"timeout", Some(&key)).is_none());
}

#[test]
fn a_reload_keeps_the_store() {
    let clock = ManualClock::new();
    let (fb, m) = build(&cfg(true, true), &clock);
    let (key, store) = fb.keep_for("t", &Method::GET, &uri("/a")).expect("kept");
    store.insert(
        key.clone(),
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"old"),
    );
    let shared: SharedClock = Arc::new(clock.clone());
    let again = RouteFallback::build(&cfg(true, true), Some(&fb), "r", &m, &shared);
    assert!(matches!(
        again.replacement(b"timeout", Some(&key)),
        Some((_, Replacement::Stale(..)))
    ));
}
