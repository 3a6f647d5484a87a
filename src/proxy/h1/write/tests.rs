use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode, Version};

use super::*;

const DATE_NOW: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";
const KEEP: Ask = Ask {
    head: false,
    http10: false,
    keep_alive: true,
};

fn head(rsp: Response<()>, ask: Ask, len: Len) -> (String, Result<Plan, Unsendable>) {
    let mut dst = Vec::new();
    let plan = encode_head(&mut dst, &rsp, None, ask, len, DATE_NOW);
    (String::from_utf8_lossy(&dst).into_owned(), plan)
}

fn rsp(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (n, v) in headers {
        r.headers_mut().append(*n, HeaderValue::from_static(v));
    }
    r
}

fn plan(framing: Framing, last: bool) -> Result<Plan, Unsendable> {
    Ok(Plan { framing, last })
}

#[test]
fn a_known_length_is_announced_and_a_date_added() {
    let (text, p) = head(rsp(200, &[("x-a", "1")]), KEEP, Len::Known(5));
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    );
    assert_eq!(p, plan(Framing::Length(5), false));
}

#[test]
fn a_length_header_is_kept_as_sent_and_the_date_not_doubled() {
    let r = rsp(
        404,
        &[
            ("content-length", "2"),
            ("date", "x"),
            ("content-length", "2"),
        ],
    );
    let (text, p) = head(r, KEEP, Len::Known(2));
    assert_eq!(
        text,
        "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\ndate: x\r\n\r\n"
    );
    assert_eq!(p, plan(Framing::Length(2), false));
}

#[test]
fn an_unknown_length_is_chunked_or_close_delimited_for_http10() {
    let (text, p) = head(rsp(200, &[]), KEEP, Len::Unknown);
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Chunked, false));
    let http10 = Ask {
        http10: true,
        keep_alive: false,
        ..KEEP
    };
    let (text, p) = head(rsp(200, &[]), http10, Len::Unknown);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert_eq!(p, plan(Framing::CloseDelimited, true));
}

#[test]
fn a_non_chunked_coding_gets_chunked_added() {
    let (text, p) = head(
        rsp(200, &[("transfer-encoding", "gzip"), ("x-b", "2")]),
        KEEP,
        Len::Unknown,
    );
    assert!(
        text.contains("transfer-encoding: gzip, chunked\r\nx-b: 2\r\n"),
        "{text}"
    );
    assert_eq!(p, plan(Framing::Chunked, false));
}

#[test]
fn head_and_bodiless_statuses_send_no_body() {
    let head_req = Ask { head: true, ..KEEP };
    let (text, p) = head(rsp(200, &[]), head_req, Len::Known(10));
    assert!(text.contains("content-length: 10\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(0), false));
    let (text, p) = head(rsp(200, &[("content-length", "7")]), head_req, Len::Empty);
    assert!(text.contains("content-length: 7\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(0), false));
    let (text, _) = head(rsp(200, &[]), head_req, Len::Empty);
    assert!(!text.contains("content-length"), "{text}");
    for status in [204, 304] {
        let (text, p) = head(rsp(status, &[]), KEEP, Len::Unknown);
        assert!(!text.contains("content-length"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert_eq!(p, plan(Framing::Length(0), false));
    }
    let (text, p) = head(rsp(200, &[]), KEEP, Len::Empty);
    assert!(text.contains("content-length: 0\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(0), false));
}

#[test]
fn closing_says_so_on_http11_and_keep_alive_on_http10() {
    let close = Ask {
        keep_alive: false,
        ..KEEP
    };
    let (text, p) = head(rsp(200, &[]), close, Len::Known(0));
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(0), true));
    let (text, _) = head(rsp(200, &[("connection", "x-y")]), close, Len::Known(0));
    assert!(text.contains("connection: x-y, close\r\n"), "{text}");
    let (text, p) = head(rsp(200, &[("connection", "close")]), KEEP, Len::Known(0));
    assert_eq!(text.matches("close").count(), 1, "{text}");
    assert_eq!(p, plan(Framing::Length(0), true));
    let http10_ka = Ask {
        http10: true,
        ..KEEP
    };
    let (text, p) = head(rsp(200, &[]), http10_ka, Len::Known(1));
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(1), false));
    let mut old = rsp(200, &[]);
    *old.version_mut() = Version::HTTP_10;
    let (text, p) = head(old, http10_ka, Len::Known(1));
    assert!(!text.contains("connection"), "{text}");
    assert_eq!(p, plan(Framing::Length(1), true));
    // A body of no length ends with the connection: it says so, never `keep-alive`; one whose
    // `content-length` is in the map keeps the connection, and so does a HEAD's answer.
    let (text, p) = head(rsp(200, &[]), http10_ka, Len::Unknown);
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(!text.contains("keep-alive"), "{text}");
    assert_eq!(p, plan(Framing::CloseDelimited, true));
    let (text, p) = head(
        rsp(200, &[("content-length", "3")]),
        http10_ka,
        Len::Unknown,
    );
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(3), false));
    let head_ka = Ask {
        head: true,
        ..http10_ka
    };
    let (text, p) = head(rsp(200, &[]), head_ka, Len::Unknown);
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    assert_eq!(p, plan(Framing::Length(0), false));
}

#[test]
fn conflicting_lengths_are_not_sent() {
    let r = rsp(200, &[("content-length", "2"), ("content-length", "3")]);
    assert_eq!(head(r, KEEP, Len::Unknown).1, Err(Unsendable));
    let r = rsp(200, &[("content-length", "x")]);
    assert_eq!(head(r, KEEP, Len::Unknown).1, Err(Unsendable));
    let r = rsp(
        200,
        &[("content-length", "2"), ("transfer-encoding", "chunked")],
    );
    assert_eq!(head(r, KEEP, Len::Unknown).1, Err(Unsendable));
}

#[test]
fn an_upstream_reason_and_an_interim_status() {
    let mut r = rsp(299, &[]);
    r.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Really"));
    let (text, _) = head(r, KEEP, Len::Empty);
    assert!(text.starts_with("HTTP/1.1 299 Fine Really\r\n"), "{text}");
    // No phrase of its own and none canonical: an empty one (it was the text `<none>`).
    let (text, _) = head(rsp(999, &[]), KEEP, Len::Empty);
    assert!(text.starts_with("HTTP/1.1 999 \r\n"), "{text}");
    let (text, p) = head(rsp(103, &[("link", "x")]), KEEP, Len::Empty);
    assert!(
        text.starts_with("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"),
        "{text}"
    );
    assert_eq!(p, plan(Framing::Length(0), true));
}

#[test]
fn lengths_and_dates_are_read_and_written_as_hyper_does() {
    // Decimal and hex writing is tested with `proxy::wire`.
    assert_eq!(digits(b"0042"), Some(42));
    assert_eq!(digits(b"+1"), None);
    assert_eq!(digits(b"99999999999999999999"), None);
    assert_eq!(date().len(), 29);
}

#[tokio::test]
async fn bodies_are_framed_on_the_wire() {
    use tokio::io::AsyncReadExt;
    let cases: Vec<(Body, &str)> = vec![
        (Body::full("hello"), "content-length: 5\r\n"),
        (Body::Empty, "content-length: 0\r\n"),
    ];
    for (body, want) in cases {
        let (mut far, mut near) = tokio::io::duplex(1 << 16);
        let (keep, spare) = answer(&mut near, &mut Vec::new(), Response::new(body), KEEP).await;
        assert!(keep);
        assert!(spare.is_some());
        drop(near);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains(want), "{text}");
    }
    let _ = (CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING);
}
