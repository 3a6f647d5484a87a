use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

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
            methods: None,
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
    assert!(fb
        .keep_for("t", &Method::GET, &uri("/a?x=1"), &HeaderMap::new())
        .is_some());
    assert!(fb
        .keep_for("t", &Method::HEAD, &uri("/a"), &HeaderMap::new())
        .is_some());
    assert!(fb
        .keep_for("t", &Method::POST, &uri("/a"), &HeaderMap::new())
        .is_none());
    let (no_stale, _) = build(&cfg(false, true), &clock);
    assert!(no_stale
        .keep_for("t", &Method::GET, &uri("/a"), &HeaderMap::new())
        .is_none());
}

#[test]
fn stale_first_then_static_and_only_for_listed_reasons() {
    let clock = ManualClock::new();
    let (fb, m) = build(&cfg(true, true), &clock);
    let Keep { key, store, .. } = fb
        .keep_for("t", &Method::GET, &uri("/a"), &HeaderMap::new())
        .expect("kept");
    assert!(matches!(
        fb.replacement(b"upstream_unavailable", true, Some(&key)),
        Some((Reason::UpstreamUnavailable, Replacement::Static(_)))
    ));
    store.insert(
        key.clone(),
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"old"),
    );
    match fb.replacement(b"timeout", true, Some(&key)) {
        Some((Reason::Timeout, Replacement::Stale(k, _))) => assert_eq!(k.body, "old"),
        other => panic!("a stale answer must be given: {other:?}"),
    }
    assert!(
        fb.replacement(b"circuit_open", true, Some(&key)).is_none(),
        "not listed"
    );
    assert!(fb.replacement(b"rate_limited", true, Some(&key)).is_none());
    clock.advance(Duration::from_secs(301));
    assert!(matches!(
        fb.replacement(b"timeout", true, Some(&key)),
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
    let Keep { key, .. } = fb
        .keep_for("t", &Method::GET, &uri("/a"), &HeaderMap::new())
        .expect("kept");
    assert!(fb.replacement(b"timeout", true, Some(&key)).is_none());
}

/// The static answer stands in for every method unless `static.methods` names the ones it is
/// for; a request of another method keeps its refusal, uncounted.
#[test]
fn static_methods_name_the_requests_the_static_answer_is_for() {
    let clock = ManualClock::new();
    let (every, _) = build(&cfg(false, true), &clock);
    for method in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
        assert!(every.static_for(&method), "{method}");
    }
    let mut reads = cfg(false, true);
    if let Some(s) = reads.static_answer.as_mut() {
        s.methods = Some(vec!["GET".into(), "HEAD".into()]);
    }
    let (fb, m) = build(&reads, &clock);
    assert!(fb.static_for(&Method::GET) && fb.static_for(&Method::HEAD));
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert!(!fb.static_for(&method), "{method}");
    }
    assert!(fb.replacement(b"timeout", false, None).is_none());
    assert!(matches!(
        fb.replacement(b"timeout", true, None),
        Some((Reason::Timeout, Replacement::Static(_)))
    ));
    let count = |r: &str| m.fallbacks.with_label_values(&["r", "static", r]).get();
    assert_eq!(count("timeout"), 1, "only the answer given is counted");
}

#[test]
fn a_reload_keeps_the_store() {
    let clock = ManualClock::new();
    let (fb, m) = build(&cfg(true, true), &clock);
    let Keep { key, store, .. } = fb
        .keep_for("t", &Method::GET, &uri("/a"), &HeaderMap::new())
        .expect("kept");
    store.insert(
        key.clone(),
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from_static(b"old"),
    );
    let shared: SharedClock = Arc::new(clock.clone());
    let again = RouteFallback::build(&cfg(true, true), Some(&fb), "r", &m, &shared);
    assert!(matches!(
        again.replacement(b"timeout", true, Some(&key)),
        Some((_, Replacement::Stale(..)))
    ));
}

fn answer_with(lines: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in lines {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn only_what_a_shared_cache_may_keep_is_kept() {
    let plain = answer_with(&[("content-type", "application/json")]);
    assert!(may_keep(&plain, false));
    // Never kept, whoever asked.
    for never in [
        answer_with(&[("cache-control", "private, no-store")]),
        answer_with(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "No-Store"),
        ]),
        answer_with(&[("cache-control", r#"private="x-user""#)]),
        answer_with(&[("cache-control", "public, no-cache")]),
        answer_with(&[("set-cookie", "sid=AAA")]),
        answer_with(&[("cache-control", "public"), ("set-cookie", "sid=AAA")]),
        answer_with(&[("vary", "accept-encoding, Cookie")]),
        answer_with(&[("vary", "*")]),
    ] {
        assert!(!may_keep(&never, false), "{never:?}");
        assert!(!may_keep(&never, true), "{never:?}");
    }
    // An answer to a request with `authorization`: only when the answer says it may be shared.
    assert!(!may_keep(&plain, true));
    assert!(!may_keep(
        &answer_with(&[("cache-control", "max-age=60")]),
        true
    ));
    let public = answer_with(&[("cache-control", "public, max-age=60")]);
    assert!(may_keep(&public, true));
    assert!(may_keep(&public, false));
    // Never served stale (RFC 9111 §4.2.4), so never kept for a fallback, whoever asked and
    // even with `public`.
    for revalidate in [
        "must-revalidate",
        "max-age=60, Must-Revalidate",
        "public, proxy-revalidate",
        "max-age=0, S-MAXAGE=60",
        "public, s-maxage=60",
    ] {
        let h = answer_with(&[("cache-control", revalidate)]);
        assert!(!may_keep(&h, true), "{revalidate}");
        assert!(!may_keep(&h, false), "{revalidate}");
    }
    let split = answer_with(&[
        ("cache-control", "public"),
        ("cache-control", "proxy-revalidate"),
    ]);
    assert!(!may_keep(&split, false));
    // Other variants are the same answer to the store.
    assert!(may_keep(
        &answer_with(&[("vary", "accept-encoding, origin")]),
        false
    ));
}

#[test]
fn keep_for_notes_a_request_with_authorization() {
    let clock = ManualClock::new();
    let (fb, _) = build(&cfg(true, true), &clock);
    let anon = fb.keep_for("t", &Method::GET, &uri("/a"), &HeaderMap::new());
    assert!(!anon.expect("kept").authorized);
    let authed = answer_with(&[("authorization", "Bearer userA")]);
    let k = fb.keep_for("t", &Method::GET, &uri("/a"), &authed);
    assert!(k.expect("kept").authorized);
}
