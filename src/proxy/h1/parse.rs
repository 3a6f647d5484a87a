//! Reading one HTTP/1 request head, and deciding whether the lean server may serve it.
//!
//! The decision is deliberately narrow: a head that parses whole (with the same `httparse`
//! settings hyper uses), within the head limit, that carries no body and asks for nothing
//! special. Everything else — a malformed or oversized head, body framing of any kind,
//! `Upgrade`, `Expect`, `TE`, CONNECT, an HTTP/2 preface — is [`Parsed::HandOff`]: the
//! connection goes to hyper with these bytes replayed, so refusals (400, 431, 414...) and
//! body framing stay exactly hyper's.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::proxy::body::ClientIn;

/// Most header lines in a head (hyper's default: more are answered 431 by hyper).
pub const MAX_HEADERS: usize = 100;

/// Longest request target hyper accepts (longer ones are answered 414 by hyper).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// What to do with the bytes at the front of a connection's buffer.
// Returned once per request and taken apart at once: boxing the large variant would cost an
// allocation per request to save a few bytes of stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// No whole head yet, and still under the limit: read more.
    Partial,
    /// Not for the lean server: hand the connection, these bytes first, to hyper.
    HandOff,
    /// A simple request, ready for the request path.
    Simple(Head),
}

/// What one connection keeps from head to head so that reading one allocates little.
#[derive(Debug, Default)]
pub struct Reuse {
    /// An empty header map to fill (the previous answer's, emptied).
    pub map: Option<HeaderMap>,
    /// The previous head's header names, in order, as sent and as parsed: a client sends
    /// the same names in the same order on each request, and a name found here is not parsed
    /// (or, for a name that is not a standard one, allocated) again.
    pub names: Vec<(Bytes, HeaderName)>,
}

/// How many header names a connection remembers.
const NAMES_KEPT: usize = 32;

/// A simple request's head.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the buffer it took (request line, header lines and the empty line).
    pub len: usize,
    /// Whether the client lets the connection live after the answer (HTTP/1.1 unless it
    /// says `close`; HTTP/1.0 only if it says `keep-alive` and not `close`).
    pub keep_alive: bool,
    /// The request (it has no body).
    pub req: Request<ClientIn>,
}

/// Reads the head at the front of `buf` (at most `max_head` bytes long), with what the
/// connection kept from earlier heads.
pub fn parse(buf: &[u8], max_head: usize, reuse: &mut Reuse) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut []);
    let cfg = httparse::ParserConfig::default();
    let len = match cfg.parse_request_with_uninit_headers(&mut raw, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        // Oversized, malformed, too many headers, HTTP/2's preface: hyper answers them.
        _ => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(minor)) = (raw.method, raw.path, raw.version) else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if method == Method::CONNECT || target.len() > MAX_TARGET {
        return Parsed::HandOff;
    }
    let http11 = minor == 1;
    // One copy of the head; the target and every header value are slices of it.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let at = |s: &[u8]| {
        let from = s.as_ptr() as usize - buf.as_ptr() as usize;
        head.slice(from..from + s.len())
    };
    let Ok(uri) = Uri::from_maybe_shared(at(target.as_bytes())) else {
        return Parsed::HandOff;
    };
    let mut headers = reuse.map.take().unwrap_or_default();
    headers.reserve(raw.headers.len());
    let (mut close, mut keep_alive_token, mut length) = (false, false, false);
    for (i, h) in raw.headers.iter().enumerate() {
        let name = match reuse.names.get(i) {
            // The same bytes as the name kept at this place: the same name.
            Some((raw, n)) if raw.as_ref() == h.name.as_bytes() => n.clone(),
            _ => {
                let Ok(n) = HeaderName::from_bytes(h.name.as_bytes()) else {
                    return hand_off(headers, &mut reuse.map);
                };
                let kept = (at(h.name.as_bytes()), n.clone());
                if let Some(slot) = reuse.names.get_mut(i) {
                    *slot = kept;
                } else if i < NAMES_KEPT {
                    reuse.names.push(kept);
                }
                n
            }
        };
        match name {
            // Body framing (chunked, a length other than 0, or two lengths), protocol
            // switches, `100-continue` and trailers: hyper's business.
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT | header::TE => {
                return hand_off(headers, &mut reuse.map);
            }
            header::CONTENT_LENGTH => {
                if length || h.value != b"0" {
                    return hand_off(headers, &mut reuse.map);
                }
                length = true;
            }
            header::CONNECTION => {
                close |= has_token(h.value, b"close");
                keep_alive_token |= has_token(h.value, b"keep-alive");
            }
            _ => {}
        }
        let Ok(value) = HeaderValue::from_maybe_shared(at(h.value)) else {
            return hand_off(headers, &mut reuse.map);
        };
        headers.append(name, value);
    }
    let mut req = Request::new(ClientIn::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *req.headers_mut() = headers;
    Parsed::Simple(Head {
        len,
        keep_alive: !close && (http11 || keep_alive_token),
        req,
    })
}

/// Gives the (emptied) map back for the next head, and says hand off.
fn hand_off(mut headers: HeaderMap, spare: &mut Option<HeaderMap>) -> Parsed {
    headers.clear();
    *spare = Some(headers);
    Parsed::HandOff
}

/// Whether the comma-separated list `value` holds `token` (ASCII case-insensitive), read as
/// hyper reads `Connection`: a value that is not visible ASCII holds nothing.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    if !value
        .iter()
        .all(|&b| (b' '..0x7f).contains(&b) || b == b'\t')
    {
        return false;
    }
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn simple(bytes: &[u8]) -> Head {
        match parse(bytes, MAX, &mut Reuse::default()) {
            Parsed::Simple(h) => h,
            other => panic!(
                "{:?}: wanted a simple head, got {other:?}",
                bytes.escape_ascii()
            ),
        }
    }

    fn decision(bytes: &[u8]) -> &'static str {
        match parse(bytes, MAX, &mut Reuse::default()) {
            Parsed::Partial => "partial",
            Parsed::HandOff => "hand-off",
            Parsed::Simple(_) => "simple",
        }
    }

    #[test]
    fn a_plain_get_is_read_whole() {
        let bytes = b"GET /a/b?c=d HTTP/1.1\r\nHost: app.local\r\nX-Tenant-Id: t1\r\n\r\nGET /next";
        let h = simple(bytes);
        assert_eq!(h.len, bytes.len() - "GET /next".len());
        assert!(h.keep_alive);
        assert_eq!(h.req.method(), Method::GET);
        assert_eq!(h.req.uri().path(), "/a/b");
        assert_eq!(h.req.uri().query(), Some("c=d"));
        assert_eq!(h.req.version(), Version::HTTP_11);
        assert_eq!(h.req.headers()["host"], "app.local");
        assert_eq!(h.req.headers()["x-tenant-id"], "t1");
        assert_eq!(h.req.headers().len(), 2);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let ka = |b: &[u8]| simple(b).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: foo, CLOSE \r\nHost: a\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        // A value that is not visible ASCII names no token (as in hyper).
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\xff\r\n\r\n"
        ));
    }

    #[test]
    fn heads_with_a_body_or_a_protocol_switch_go_to_hyper() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(decision(bytes), "hand-off", "{}", bytes.escape_ascii());
        }
        let zero = simple(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(zero.req.headers()["content-length"], "0");
    }

    #[test]
    fn malformed_heads_go_to_hyper_for_its_answer() {
        for bytes in [
            &b"GET /o k HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ] {
            assert_eq!(decision(bytes), "hand-off", "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn partial_heads_wait_until_the_limit() {
        assert_eq!(decision(b""), "partial");
        assert_eq!(decision(b"GET / HTTP/1.1\r\nHo"), "partial");
        assert_eq!(decision(b"PRI * HTTP/2.0\r\n"), "hand-off");
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX));
        assert_eq!(decision(long.as_bytes()), "hand-off");
        let whole = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX));
        assert_eq!(decision(whole.as_bytes()), "hand-off");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(decision(many.as_bytes()), "hand-off");
    }

    #[test]
    fn the_spare_map_is_reused() {
        let mut map = HeaderMap::with_capacity(32);
        let cap = map.capacity();
        map.insert("x-old", HeaderValue::from_static("v"));
        map.clear();
        let mut reuse = Reuse {
            map: Some(map),
            names: Vec::new(),
        };
        let Parsed::Simple(h) = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", MAX, &mut reuse) else {
            panic!("simple");
        };
        assert!(reuse.map.is_none());
        assert_eq!(h.req.headers().capacity(), cap);
        assert_eq!(h.req.headers().len(), 1);
    }

    #[test]
    fn kept_names_are_reused_and_replaced_when_they_differ() {
        let mut reuse = Reuse::default();
        let mut names = |bytes: &[u8]| match parse(bytes, MAX, &mut reuse) {
            Parsed::Simple(h) => h
                .req
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let first = names(b"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: t\r\n\r\n");
        assert_eq!(first, ["host=a", "x-tenant-id=t"]);
        let again = names(b"GET / HTTP/1.1\r\nhOST: b\r\nx-tenant-id: u\r\n\r\n");
        assert_eq!(again, ["host=b", "x-tenant-id=u"]);
        let other = names(b"GET / HTTP/1.1\r\nX-Tenant-Ie: v\r\nHost: c\r\nAccept: */*\r\n\r\n");
        assert_eq!(other, ["x-tenant-ie=v", "host=c", "accept=*/*"]);
        assert_eq!(reuse.names.len(), 3);
        assert_eq!(reuse.names[0].1.as_str(), "x-tenant-ie");
        assert_eq!(&reuse.names[0].0[..], b"X-Tenant-Ie");
    }

    #[test]
    fn tokens_are_matched_as_hyper_does() {
        assert!(has_token(b"close", b"close"));
        assert!(has_token(b" Keep-Alive , Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert!(!has_token(b"close\xff", b"close"));
        assert!(!has_token(b"", b"close"));
    }
}
