//! The lean HTTP/1.1 server's head reader and answer writer on arbitrary bytes
//! (`rampart::proxy::h1`): nothing panics, and
//! - a head it serves itself is one httparse reads whole at the same length, carries no
//!   `Transfer-Encoding`, protocol switch or `Expect`/`TE`, is not CONNECT and fits the limit;
//!   its body is exactly the bytes after it that its one `content-length` (plain digits, at
//!   most `WHOLE_BODY_MAX`) counts, or none without one;
//! - a head whose body is not all here asks for exactly the bytes that make it whole, leaves
//!   the buffer as it was, and with those bytes is served (or handed off, or refused for its
//!   target, never asked again);
//! - reading with the names kept from earlier heads gives the very request a fresh read gives;
//! - pipelined requests are taken one after the other, each from where the last one's body
//!   ended;
//! - a head it refuses (answered by rampart itself) is one httparse refuses (400), one past
//!   the limit or with more lines than `MAX_HEADERS` (431), or a whole one whose target
//!   `http::Uri` refuses or whose framing lines (`content-length`, `transfer-encoding`) hyper
//!   refuses; never an HTTP/2 preface, and the buffer is left as it was;
//! - an answer head written from any status and headers parses back as one response with at
//!   most one framing header;
//! - the path of every target it serves normalises (`rampart::proxy::normalize`) without a
//!   panic, to a path normalising leaves alone, with no `//`, no dot segment, and the query
//!   kept.

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, EXPECT, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Response, StatusCode};
use rampart::proxy::body::ClientIn;
use rampart::proxy::h1::parse::{parse, Parsed, Refusal, Reuse, MAX_HEADERS, WHOLE_BODY_MAX};
use rampart::proxy::h1::write::{encode_head, Ask, Len};
use rampart::proxy::normalize;

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&knob, mut buf)) = data.split_first() else {
        return;
    };
    let max_head = 32 + usize::from(knob) * 16;
    let mut reuse = Reuse::default();
    let mut served = 0;
    while served < 16 {
        let mut read = BytesMut::from(buf);
        let got = parse(&mut read, max_head, &mut reuse);
        assert!(reuse.names.len() <= 32, "names kept beyond the bound");
        match got {
            Parsed::Partial => {
                assert!(buf.len() < max_head, "partial beyond the limit");
                assert_eq!(&read[..], buf, "a partial head stays in the buffer");
                break;
            }
            Parsed::HandOff => {
                assert_eq!(&read[..], buf, "a hand-off finds the buffer as it was");
                break;
            }
            Parsed::Refuse(refusal) => {
                assert_eq!(&read[..], buf, "a refusal leaves the buffer as it was");
                check_refusal(buf, max_head, refusal);
                break;
            }
            Parsed::Body(need) => {
                assert_eq!(&read[..], buf, "a body wait finds the buffer as it was");
                check_body_wait(buf, max_head, need);
                break;
            }
            Parsed::Simple(head) => {
                let taken = head.len + check_simple(buf, max_head, &head);
                assert_eq!(
                    &read[..],
                    &buf[taken..],
                    "only the head and its body are taken"
                );
                let fresh = match parse(&mut BytesMut::from(buf), max_head, &mut Reuse::default()) {
                    Parsed::Simple(h) => h,
                    other => panic!("a fresh read disagrees: {other:?}"),
                };
                assert_eq!(fresh.len, head.len);
                assert_eq!(fresh.keep_alive, head.keep_alive);
                assert_eq!(fresh.req.method(), head.req.method());
                assert_eq!(fresh.req.uri(), head.req.uri());
                assert_eq!(fresh.req.version(), head.req.version());
                assert_eq!(fresh.req.headers(), head.req.headers());
                assert_eq!(
                    format!("{:?}", fresh.req.body()),
                    format!("{:?}", head.req.body())
                );
                answer_parses_back(head.req.headers(), knob);
                normal_form_is_kept(head.req.uri());
                buf = &buf[taken..];
                served += 1;
            }
        }
    }
}

/// Checks a refused head against httparse, which hyper reads with: 431 for one past the limit
/// or with too many lines, 414 for one whose request line does not end within the limit or
/// whose target is longer than hyper takes, 400 for one it refuses otherwise; a whole head within the limit is
/// refused only for its framing lines; an HTTP/2 preface never.
fn check_refusal(buf: &[u8], max_head: usize, refusal: Refusal) {
    assert!(
        !buf.starts_with(b"PRI * HTTP/2"),
        "an HTTP/2 preface refused"
    );
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let got = req.parse(buf);
    let too_large = match got {
        Ok(httparse::Status::Complete(len)) => len > max_head,
        Ok(httparse::Status::Partial) => buf.len() >= max_head,
        Err(e) => e == httparse::Error::TooManyHeaders,
    };
    let whole = matches!(got, Ok(httparse::Status::Complete(_)));
    let framing = whole
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-length")
                || h.name.eq_ignore_ascii_case("transfer-encoding")
        });
    let bad_target = whole && req.path.is_some_and(|p| http::Uri::try_from(p).is_err());
    let long_target = whole && req.path.is_some_and(|p| p.len() >= usize::from(u16::MAX));
    // Whether the request line (after any empty lines) ends within the limit.
    let within = &buf[..buf.len().min(max_head)];
    let start = within
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(within.len());
    let line_fits = within[start..].contains(&b'\n');
    match refusal {
        Refusal::TooLarge => assert!(too_large || framing, "431 for {got:?}"),
        Refusal::UriTooLong => assert!((too_large && !line_fits) || long_target, "414 for {got:?}"),
        Refusal::Malformed => assert!(
            !too_large && (got.is_err() || framing || bad_target),
            "400 for {got:?}"
        ),
        // HTTP/2's alone (`listener::serve`): the HTTP/1.1 parser never gives it.
        Refusal::PaddedValue | Refusal::UntokenedName => {
            panic!("an HTTP/2 refusal for an HTTP/1.1 head {got:?}")
        }
        // The lean server's, for a preface it hands off at the wrong place (`h1::serve`).
        Refusal::MisplacedPreface => panic!("a misplaced preface from the parser {got:?}"),
    }
}

/// Checks a head whose body is not all here: `need` is its head and its `content-length`,
/// and with that many bytes the same head is served whole.
fn check_body_wait(buf: &[u8], max_head: usize, need: usize) {
    assert!(
        need > buf.len(),
        "asked for {need} bytes with {} here",
        buf.len()
    );
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        panic!("a body wait without a whole head");
    };
    assert!(len <= max_head && need - len <= WHOLE_BODY_MAX);
    let mut whole = buf.to_vec();
    whole.resize(need, b'x');
    match parse(
        &mut BytesMut::from(&whole[..]),
        max_head,
        &mut Reuse::default(),
    ) {
        Parsed::Simple(head) => {
            assert_eq!(head.len, len);
            assert_eq!(head.len + check_simple(&whole, max_head, &head), need);
        }
        Parsed::HandOff => {}
        // A target `http::Uri` refuses is found once the body is here, and refused.
        Parsed::Refuse(Refusal::Malformed)
            if req.path.is_some_and(|p| http::Uri::try_from(p).is_err()) => {}
        other => panic!("the body whole, and still {other:?}"),
    }
}

/// Checks a head served lean; returns the length of its body.
fn check_simple(buf: &[u8], max_head: usize, head: &rampart::proxy::h1::parse::Head) -> usize {
    assert!(head.len > 0 && head.len <= buf.len() && head.len <= max_head);
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    assert_eq!(
        req.parse(&buf[..head.len]),
        Ok(httparse::Status::Complete(head.len)),
        "the head is whole"
    );
    let r = &head.req;
    assert_ne!(r.method(), Method::CONNECT);
    for name in [TRANSFER_ENCODING, UPGRADE, EXPECT, TE] {
        assert!(!r.headers().contains_key(&name), "{name} in a simple head");
    }
    let lengths: Vec<_> = r.headers().get_all(CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "two lengths in a simple head");
    let length = match lengths.first() {
        None => 0,
        Some(v) => {
            let v = v.as_bytes();
            assert!(
                v == b"0" || (v[0] != b'0' && v.iter().all(u8::is_ascii_digit)),
                "a length that is not plain digits: {}",
                v.escape_ascii()
            );
            let n: usize = std::str::from_utf8(v).unwrap().parse().unwrap();
            assert!(n <= WHOLE_BODY_MAX, "a body over the most taken whole");
            n
        }
    };
    match r.body() {
        ClientIn::Empty => assert_eq!(length, 0, "a length and no body"),
        ClientIn::Whole(Some(b)) => {
            assert!(length > 0, "a body of nothing");
            assert_eq!(
                &b[..],
                &buf[head.len..head.len + length],
                "the body is the bytes after the head"
            );
        }
        other => panic!("a body the lean server does not make: {other:?}"),
    }
    length
}

/// Writes an answer with `headers` (a request's, as arbitrary input) and reads it back.
fn answer_parses_back(headers: &HeaderMap, knob: u8) {
    let mut rsp = Response::new(());
    *rsp.status_mut() = StatusCode::from_u16(100 + u16::from(knob) * 2).unwrap_or(StatusCode::OK);
    *rsp.headers_mut() = headers.clone();
    let ask = Ask {
        head: knob & 1 == 1,
        http10: knob & 2 == 2,
        keep_alive: knob & 4 == 4,
    };
    let len = match knob % 3 {
        0 => Len::Empty,
        1 => Len::Known(u64::from(knob)),
        _ => Len::Unknown,
    };
    let mut dst = Vec::new();
    let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
    if encode_head(&mut dst, &rsp, None, ask, len, date).is_err() {
        // Conflicting lengths: nothing is sent (the caller drops `dst`).
        return;
    }
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut back = httparse::Response::new(&mut slots);
    assert_eq!(
        back.parse(&dst),
        Ok(httparse::Status::Complete(dst.len())),
        "an answer head that does not parse back: {:?}",
        String::from_utf8_lossy(&dst)
    );
    let te = back
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let cl = back
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    assert!(
        !(te && cl > 0),
        "both framings: {:?}",
        String::from_utf8_lossy(&dst)
    );
}

/// Normalises a served target's path, runs of `/` merged and not: normalising the result
/// changes nothing, it has no dot segment (and no `//` when merged), and the request keeps its
/// query.
fn normal_form_is_kept(uri: &http::Uri) {
    for merge in [true, false] {
        let Ok(Some(once)) = normalize::path(uri.path(), merge) else {
            continue;
        };
        assert_eq!(
            normalize::path(&once, merge),
            Ok(None),
            "{uri} -> {once}: not idempotent (merge {merge})"
        );
        assert!(
            once.starts_with('/') && !(merge && once.contains("//")),
            "{uri} -> {once}"
        );
        for seg in once.split('/') {
            assert!(
                seg != "." && seg != "..",
                "{uri} -> {once}: a dot segment left"
            );
        }
        let mut req = http::Request::new(());
        *req.uri_mut() = uri.clone();
        normalize::request(&mut req, merge).expect("a path with a normal form gets it");
        assert_eq!(req.uri().path(), once);
        assert_eq!(req.uri().query(), uri.query());
    }
}
