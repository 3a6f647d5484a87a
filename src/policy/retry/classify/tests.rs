use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use http::Method;

use super::*;
use crate::config::file;

#[test]
fn failure_table() {
    let table = [
        (Outcome::ConnectError, true),
        (Outcome::Reset, true),
        (Outcome::Timeout, true),
        (Outcome::Status(200), false),
        (Outcome::Status(204), false),
        (Outcome::Status(301), false),
        (Outcome::Status(400), false),
        (Outcome::Status(404), false),
        (Outcome::Status(429), false),
        (Outcome::Status(499), false),
        (Outcome::Status(500), true),
        (Outcome::Status(501), true),
        (Outcome::Status(502), true),
        (Outcome::Status(503), true),
        (Outcome::Status(504), true),
        (Outcome::Status(599), true),
        (Outcome::Status(600), false),
        (Outcome::Status(100), false),
        // Never sent: no verdict either way.
        (Outcome::Unsent, false),
    ];
    for (outcome, failed) in table {
        assert_eq!(is_failure(&outcome), failed, "{outcome:?}");
        assert_eq!(outcome.is_failure(), failed, "{outcome:?}");
    }
    assert_eq!(
        Outcome::from(http::StatusCode::BAD_GATEWAY),
        Outcome::Status(502)
    );
}

#[test]
fn retry_on_table() {
    let on = RetryOn::new(&[
        file::RetryOn::ConnectError,
        file::RetryOn::Reset,
        file::RetryOn::Status(502),
        file::RetryOn::Status(503),
        file::RetryOn::Status(504),
        file::RetryOn::Status(429),
    ]);
    let table = [
        (Outcome::ConnectError, true),
        (Outcome::Reset, true),
        (Outcome::Timeout, false),
        (Outcome::Status(500), false),
        (Outcome::Status(501), false),
        (Outcome::Status(502), true),
        (Outcome::Status(503), true),
        (Outcome::Status(504), true),
        (Outcome::Status(505), false),
        (Outcome::Status(429), true),
        (Outcome::Status(200), false),
        (Outcome::Status(0), false),
        (Outcome::Status(u16::MAX), false),
    ];
    for (outcome, retry) in table {
        assert_eq!(on.should_retry(&outcome), retry, "{outcome:?}");
    }
}

#[test]
fn retry_on_timeout_and_edges() {
    let on = RetryOn::from(
        &[
            file::RetryOn::Timeout,
            file::RetryOn::Status(100),
            file::RetryOn::Status(599),
        ][..],
    );
    assert!(on.should_retry(&Outcome::Timeout));
    // A try never sent is answered as a timeout and retried as one.
    assert!(on.should_retry(&Outcome::Unsent));
    assert!(!RetryOn::new(&[file::RetryOn::Reset]).should_retry(&Outcome::Unsent));
    assert!(!on.should_retry(&Outcome::ConnectError));
    assert!(!on.should_retry(&Outcome::Reset));
    assert!(on.should_retry(&Outcome::Status(100)));
    assert!(on.should_retry(&Outcome::Status(599)));
    assert!(!on.should_retry(&Outcome::Status(598)));
    // Out-of-range codes are ignored rather than panicking.
    let odd = RetryOn::new(&[file::RetryOn::Status(9999)]);
    assert_eq!(odd, RetryOn::default());
}

#[test]
fn empty_set_retries_nothing() {
    let on = RetryOn::new(&[]);
    for outcome in [
        Outcome::ConnectError,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Status(503),
    ] {
        assert!(!on.should_retry(&outcome), "{outcome:?}");
    }
}

#[test]
fn idempotency() {
    let none = HeaderMap::new();
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ] {
        assert!(is_idempotent(&m, &none), "{m} must be idempotent");
    }
    let custom = Method::from_bytes(b"PURGE").expect("PURGE must be a valid method");
    for m in [
        Method::POST,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
        custom,
    ] {
        assert!(
            !is_idempotent(&m, &none),
            "{m} must not be idempotent without a key"
        );
    }
    let mut keyed = HeaderMap::new();
    keyed.insert("Idempotency-Key", HeaderValue::from_static("8e03978e-40d5"));
    assert!(
        is_idempotent(&Method::POST, &keyed),
        "a key must make POST retryable"
    );
    assert!(is_idempotent(&Method::PATCH, &keyed));
    // An empty key names nothing the upstream could tell two sends apart by.
    for empty in ["", "  "] {
        keyed.insert("Idempotency-Key", HeaderValue::from_static(empty));
        assert!(!is_idempotent(&Method::POST, &keyed), "{empty:?}");
    }
}

fn with_retry_after(v: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static(v));
    h
}

/// Wed, 21 Oct 2015 07:28:00 GMT
fn oct_21_2015() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_445_412_480)
}

#[test]
fn retry_after_seconds() {
    let now = oct_21_2015();
    assert_eq!(
        parse_retry_after(&with_retry_after("120"), now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after(&with_retry_after("0"), now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&with_retry_after(" 7 "), now),
        Some(Duration::from_secs(7))
    );
    let huge = with_retry_after("99999999999999999999999");
    assert_eq!(
        parse_retry_after(&huge, now),
        Some(Duration::from_secs(u64::MAX))
    );
}

#[test]
fn retry_after_dates() {
    let now = oct_21_2015();
    let date = with_retry_after("Wed, 21 Oct 2015 07:28:30 GMT");
    assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
    let obsolete = with_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT");
    assert_eq!(
        parse_retry_after(&obsolete, now),
        Some(Duration::from_secs(60))
    );
    let past = with_retry_after("Wed, 21 Oct 2015 07:00:00 GMT");
    assert_eq!(
        parse_retry_after(&past, now),
        Some(Duration::ZERO),
        "a past date waits 0"
    );
}

#[test]
fn retry_after_garbage() {
    let now = oct_21_2015();
    assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    for bad in [
        "",
        "soon",
        "-5",
        "1.5",
        "12s",
        "0x10",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        assert_eq!(
            parse_retry_after(&with_retry_after(bad), now),
            None,
            "{bad:?}"
        );
    }
    let mut h = HeaderMap::new();
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_bytes(b"\xff10").expect("opaque bytes are valid"),
    );
    assert_eq!(parse_retry_after(&h, now), None);
}
