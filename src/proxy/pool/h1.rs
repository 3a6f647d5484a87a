//! HTTP/1.1 as spoken on upstream connections, without I/O: the request head written, the
//! answer head read, and the answer body's framing (RFC 9112).
//!
//! The connection (`pool.rs`) reads into one buffer and hands it here: [`parse_head`] takes a
//! whole answer head off its front (skipping interim 1xx answers) or says more bytes are
//! needed; [`Chunked`] takes a chunked body off it frame by frame. Body data is split off the
//! read buffer, never copied. Everything is bounded: the head's size ([`MAX_HEAD`], which bounds
//! its header lines too), a chunk's size line ([`MAX_CHUNK_LINE`]) and the trailers.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

/// The largest answer head accepted (each interim head too), and the most trailer bytes.
pub const MAX_HEAD: usize = 64 * 1024 - 1;
/// The header lines an answer head is read with, on the stack. A head of more (within
/// [`MAX_HEAD`]: nginx too takes as many as fit its buffer) is read again with room for as many
/// lines as its bytes end, allocated for it alone.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most interim (1xx) answers before the final one, counted over the whole answer (one
/// try), however many reads brought them.
pub const MAX_INTERIM: u8 = 32;

/// What an answer whose status code is outside 100–599 (RFC 9110 §15) is refused for, from
/// either kind of upstream.
pub const STATUS_OUT_OF_RANGE: &str = "status code outside 100-599";

/// An upstream's answer that breaks HTTP/1.1; the connection cannot be used any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed answer from the upstream: {0}")]
pub struct Malformed(pub &'static str);

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, or a length of zero).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    Close,
}

/// A final answer head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers as received (hop-by-hop ones included).
    pub response: Response<()>,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body bytes.
    None,
    /// Exactly this many bytes, as announced by `content-length`.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Chunked, and exactly this many bytes in all, as the request's `content-length` said: a
    /// request that may end in trailers ([`BodyKind::Trailed`]), its length left out of the
    /// head (RFC 9112 §6.1: never both) and its body still held to it.
    ChunkedExact(u64),
}

/// A request head as written, and what it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// How the body follows the head.
    pub body: Out,
    /// The request itself asked to close the connection (`connection: close`).
    pub close: bool,
    /// The request asks the upstream to switch protocols (`connection: upgrade`, kept only on
    /// a client's upgrade request: `forward::keep_upgrade`): a `101` may answer it.
    pub upgrade: bool,
}

/// What the request's body says about itself before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No bytes at all.
    Empty,
    /// Exactly this many bytes.
    Exact(u64),
    /// Unknown size.
    Unknown,
    /// Whatever its size, a body that may end in trailers (an HTTP/2 request that announces
    /// them): sent chunked, which alone has room for them, and held to its `content-length`.
    Trailed,
}

// === request head ===

/// Writes the head of a request into `dst`: request line (origin-form target), the headers in
/// the map's order, and the body's framing: an exact size becomes `content-length` (not for a
/// GET, HEAD or CONNECT of zero bytes), an unknown one `transfer-encoding: chunked`, and a
/// request without body gets no framing header (a `content-length` it carries is kept). A `content-length` the request already has is
/// trusted over the body's own size, as hyper did; a `transfer-encoding` it keeps (codings other
/// than chunked) gets `chunked` added last. A [`BodyKind::Trailed`] body goes chunked, its
/// `content-length` left out and counted against it instead ([`Out::ChunkedExact`]).
///
/// What the proxy adds (`added`) follows the map's lines: `x-forwarded-proto` always (a line of
/// that name in the map is not written), and `host`, `x-request-id` and `x-forwarded-for` when
/// the map has no line of that name. `None` writes the map alone (the tests of framing).
///
/// A `te` line is named in `connection` (RFC 9110 §10.1.4): `, te` ends the map's first
/// `connection` line (an upgrade's `upgrade`), or a `connection: te` line is written.
///
/// Several `cookie` fields (HTTP/2 clients split them, for HPACK) become one line, joined with
/// "; " as RFC 9113 §8.2.3 requires before HTTP/1.1; so do an HTTP/1.1 client's several lines
/// (RFC 6265 §5.4 has it send one). A map yields a name's values one after the other, so the
/// line is extended in place: one cookie, or none, costs a comparison.
pub fn encode_head(
    dst: &mut Vec<u8>,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    added: Option<&Added<'_>>,
    body: BodyKind,
) -> Written {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if !p.is_empty() => dst.extend_from_slice(p.as_bytes()),
        _ => dst.push(b'/'),
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    // Only a request with a body looks at the framing headers it carries.
    let (te, te_lines, length) = match body {
        BodyKind::Empty => (None, 0, None),
        _ => request_framing(headers),
    };
    let mut close = false;
    let mut upgrade = false;
    let mut te_left = te_lines;
    // A `te` line (`te: trailers`, the one `forward::prepare_request` lets through), and a
    // `connection` line: a sender of `te` must name it in `connection` (RFC 9110 §10.1.4).
    let (mut te_line, mut connection) = (false, false);
    // Which of the lines `added` may give the map has already.
    let (mut host, mut request_id, mut forwarded_for) = (false, false, false);
    // Where the last `cookie` line written ends (0: none yet; the request line comes first).
    let mut cookie_end = 0;
    for (name, value) in headers {
        if *name == header::HOST {
            host = true;
        } else if *name == X_REQUEST_ID {
            request_id = true;
        } else if *name == X_FORWARDED_FOR {
            forwarded_for = true;
        } else if *name == X_FORWARDED_PROTO {
            if added.is_some() {
                // The client's claim: replaced by the truth below.
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING {
            if body == BodyKind::Empty {
                // No body, no framing (hyper did the same).
                continue;
            }
            te_left = te_left.saturating_sub(1);
            if te_left == 0 && te == Some(false) {
                // The hop's own `chunked` goes last, on the same line (`gzip, chunked`).
                dst.extend_from_slice(b"transfer-encoding: ");
                dst.extend_from_slice(value.as_bytes());
                dst.extend_from_slice(b", chunked\r\n");
                continue;
            }
        } else if *name == header::CONTENT_LENGTH {
            if te.is_some() || body == BodyKind::Trailed {
                // RFC 9112 §6.1: never both.
                continue;
            }
        } else if *name == header::COOKIE {
            if cookie_end == dst.len() {
                // The line just written is a `cookie` one: this value joins it.
                dst.truncate(cookie_end - 2);
                dst.extend_from_slice(b"; ");
                dst.extend_from_slice(value.as_bytes());
                dst.extend_from_slice(b"\r\n");
            } else {
                line(dst, b"cookie", value.as_bytes());
            }
            cookie_end = dst.len();
            continue;
        } else if *name == header::CONNECTION {
            // Only a client's upgrade request still has one here (`forward::prepare_request`
            // removes the rest), so most requests never read it.
            let tokens = ConnectionTokens::read(value.as_bytes());
            close |= tokens.close;
            upgrade |= tokens.upgrade;
            if !connection && headers.contains_key(header::TE) {
                // The `te` option joins the first line (RFC 9110 §10.1.4).
                connection = true;
                dst.extend_from_slice(b"connection: ");
                dst.extend_from_slice(value.as_bytes());
                dst.extend_from_slice(b", te\r\n");
                continue;
            }
            connection = true;
        } else if *name == header::TE {
            te_line = true;
        }
        line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if te_line && !connection {
        dst.extend_from_slice(b"connection: te\r\n");
    }
    if let Some(a) = added {
        if !host {
            line(dst, b"host", a.host.as_bytes());
        }
        if !request_id {
            line(dst, b"x-request-id", a.request_id.as_bytes());
        }
        if !forwarded_for {
            line(dst, b"x-forwarded-for", a.forwarded_for.as_bytes());
        }
        line(dst, b"x-forwarded-proto", a.proto().as_bytes());
    }
    let out = match (body, te, length) {
        (BodyKind::Empty, _, _) => Out::None,
        (_, Some(_), _) => Out::Chunked,
        (BodyKind::Trailed, None, length) => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
            length.map_or(Out::Chunked, Out::ChunkedExact)
        }
        (_, None, Some(n)) => Out::Length(n),
        (BodyKind::Exact(n), None, None) => {
            if n > 0 || !is_bodyless_method(method) {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa(n, &mut [0u8; 20]));
                dst.extend_from_slice(b"\r\n");
            }
            Out::Length(n)
        }
        (BodyKind::Unknown, None, None) => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Out::Chunked
        }
    };
    dst.extend_from_slice(b"\r\n");
    Written {
        body: out,
        close,
        upgrade,
    }
}

/// Writes the header line `name: value`. Inlined: most names are constants, whose copies
/// then need no call.
#[inline(always)]
fn line(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 4);
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// The framing headers a request with a body carries: whether a `transfer-encoding` is there
/// (and ends with chunked) and on how many lines, and a valid `content-length` (an invalid or
/// conflicting one is ignored, and the body's own size decides).
fn request_framing(headers: &HeaderMap) -> (Option<bool>, usize, Option<u64>) {
    let mut te = None;
    let mut lines = 0;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        lines += 1;
        let last = v
            .as_bytes()
            .rsplit(|&b| b == b',')
            .map(trim)
            .find(|c| !c.is_empty());
        te = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        match (length, parse_length_list(v.as_bytes())) {
            (_, None) => return (te, lines, None),
            (Some(old), Some(n)) if old != n => return (te, lines, None),
            (_, n) => length = n,
        }
    }
    (te, lines, length)
}

fn is_bodyless_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::CONNECT
}

use crate::proxy::forward::{hop_index, Added, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};
pub use crate::proxy::wire::chunk_line;
use crate::proxy::wire::itoa;

// === answer head ===

/// Where a header's name and value lie in the head: `[name start, name end, value start,
/// value end]` (a head is at most [`MAX_HEAD`] bytes, so `u16` holds every offset).
type Span = [u16; 4];

/// Takes the final answer head off the front of `buf`, skipping (and consuming) interim 1xx
/// answers. `Ok(None)`: the head is not complete yet. `head_request`: the request was HEAD, so
/// the answer has no body whatever its headers say. `interim`: the interim answers this
/// answer's earlier calls skipped (0 for a new request's), counted on here: past
/// [`MAX_INTERIM`] of them the answer is malformed, whether they came in one read or one a
/// read (an upstream that sends a `102` every so often would otherwise hold the try for ever,
/// each read also restarting `timeout.idle`).
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    interim: &mut u8,
    names: &mut Names,
    raw: &mut RawLines,
) -> Result<Option<Head>, Malformed> {
    parse_answer(buf, head_request, false, interim, names, raw)
}

/// [`parse_head`] for a request that may have asked to switch protocols (`upgrade`): then a
/// `101 Switching Protocols` is its final answer, without a body, and the connection is the
/// new protocol's from the byte after it (never reused for HTTP: `keep_alive` is false).
/// Without `upgrade`, a `101` is malformed.
pub fn parse_answer(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
    interim: &mut u8,
    names: &mut Names,
    raw: &mut RawLines,
) -> Result<Option<Head>, Malformed> {
    loop {
        let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
        // The spans of a head of more lines than `spans` holds; empty (not allocated) for
        // every other head.
        let mut long: Vec<Span> = Vec::new();
        let mut scanned = scan_head(buf, &mut [MaybeUninit::uninit(); MAX_HEADERS], &mut spans)?;
        if let Scanned::TooMany = scanned {
            // Read again with a slot for every line the bytes the head may take hold, each
            // line ending in a `\n` (the status line's too: one slot to spare).
            let lines = newlines(&buf[..buf.len().min(MAX_HEAD + 1)]);
            long = vec![[0; 4]; lines];
            scanned = scan_head(buf, &mut vec![MaybeUninit::uninit(); lines], &mut long)?;
        }
        let (len, code, minor, count) = match scanned {
            Scanned::Whole {
                len,
                code,
                minor,
                count,
            } => (len, code, minor, count),
            Scanned::Partial => return Ok(None),
            // With that many slots, only a head longer than it may be has more lines.
            Scanned::TooMany => return Err(Malformed(HEAD_TOO_LARGE)),
        };
        let spans = if long.is_empty() {
            &spans[..count]
        } else {
            &long[..count]
        };
        match code {
            101 if upgrade => {
                let head = buf.split_to(len).freeze();
                let status = StatusCode::SWITCHING_PROTOCOLS;
                let mut found = finish_head(&head, spans, status, minor, true, names, raw)?;
                found.framing = Framing::Empty;
                found.keep_alive = false;
                return Ok(Some(found));
            }
            101 => {
                return Err(Malformed(
                    "101 Switching Protocols, but no upgrade was asked",
                ))
            }
            100..=199 if *interim < MAX_INTERIM => {
                *interim += 1;
                buf.advance(len);
                continue;
            }
            100..=199 => return Err(Malformed("too many interim (1xx) answers")),
            _ => {}
        }
        // `http` takes any three digits; RFC 9110 §15 defines 100 to 599 alone, and a client
        // is to read any other as a 5xx: a malformed answer, as nginx refuses one.
        if code > 599 {
            return Err(Malformed(STATUS_OUT_OF_RANGE));
        }
        let status = StatusCode::from_u16(code).map_err(|_| Malformed("invalid status code"))?;
        let head = buf.split_to(len).freeze();
        let found = finish_head(&head, spans, status, minor, head_request, names, raw);
        return found.map(Some);
    }
}

/// What [`scan_head`] found at the front of the buffer.
enum Scanned {
    /// Not a whole head yet (and not over [`MAX_HEAD`] so far).
    Partial,
    /// A whole head of `len` bytes, with its status code, minor version and `count` header
    /// lines, whose spans are the first `count` of those given.
    Whole {
        len: usize,
        code: u16,
        minor: u8,
        count: usize,
    },
    /// More header lines than the slots given.
    TooMany,
}

/// The message of an answer head over [`MAX_HEAD`].
const HEAD_TOO_LARGE: &str = "answer head larger than 64 KiB";

/// Reads the answer head at the front of `buf` with `slots`, and writes where each header
/// line's name and value are into `spans` (as many as `slots`).
#[inline]
fn scan_head<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut [Span],
) -> Result<Scanned, Malformed> {
    let mut rsp = httparse::Response::new(&mut []);
    let status = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut rsp, buf, slots)
    {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Ok(Scanned::TooMany),
        Err(e) => return Err(Malformed(parse_error(e))),
    };
    let httparse::Status::Complete(len) = status else {
        if buf.len() > MAX_HEAD {
            return Err(Malformed(HEAD_TOO_LARGE));
        }
        return Ok(Scanned::Partial);
    };
    if len > MAX_HEAD {
        return Err(Malformed(HEAD_TOO_LARGE));
    }
    let base = buf.as_ptr() as usize;
    let off = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
    for (span, h) in spans.iter_mut().zip(rsp.headers.iter()) {
        let n = off(h.name.as_bytes());
        let v = off(h.value);
        *span = [n, n + h.name.len() as u16, v, v + h.value.len() as u16];
    }
    Ok(Scanned::Whole {
        len,
        code: rsp.code.unwrap_or(0),
        minor: rsp.version.unwrap_or(0),
        count: rsp.headers.len(),
    })
}

/// How many `\n` `bytes` holds: at least as many as the lines they end.
fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// The header names of the connection's last answer, by their place in it, each with its bytes
/// as sent. An upstream sends the same names in the same order answer after answer, so a name
/// sent again at its place, byte for byte, is cloned (a copy, or a reference count for a name
/// outside the standard set) instead of being checked, lower-cased and, when not standard,
/// allocated anew.
#[derive(Debug, Default)]
pub struct Names(Vec<(Vec<u8>, HeaderName, Kind)>);

/// What reading an answer makes of a header name: decided once per name kept, not per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    RequestId,
    /// Hop-by-hop: the answer is not plain (`forward::strip_hop_by_hop` reads its map).
    NotPlain,
    /// Passed on as it is.
    Other,
}

impl Kind {
    fn of(name: &HeaderName) -> Kind {
        match *name {
            header::CONTENT_LENGTH => Kind::ContentLength,
            header::TRANSFER_ENCODING => Kind::TransferEncoding,
            header::CONNECTION => Kind::Connection,
            header::DATE => Kind::Date,
            _ if *name == X_REQUEST_ID => Kind::RequestId,
            _ if hop_index(name.as_str().as_bytes()).is_some() => Kind::NotPlain,
            _ => Kind::Other,
        }
    }
}

/// Names kept per connection: a usual answer's headers fit.
const NAMES_KEPT: usize = 16;
/// A longer name is not kept.
const NAME_KEPT_LEN: usize = 64;

impl Names {
    /// The name `raw` at place `i` of the head, and its kind.
    fn name(&mut self, i: usize, raw: &[u8]) -> Result<(HeaderName, Kind), Malformed> {
        if let Some((sent, name, kind)) = self.0.get(i) {
            if sent.as_slice() == raw {
                return Ok((name.clone(), *kind));
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| Malformed("invalid header name"))?;
        let kind = Kind::of(&name);
        if raw.len() <= NAME_KEPT_LEN {
            if let Some((sent, kept, k)) = self.0.get_mut(i) {
                sent.clear();
                sent.extend_from_slice(raw);
                *kept = name.clone();
                *k = kind;
            } else if i == self.0.len() && i < NAMES_KEPT {
                self.0.push((raw.to_vec(), name.clone(), kind));
            }
        }
        Ok((name, kind))
    }
}

/// The header lines of the connection's current answer, kept as they came.
///
/// Most answers are plain: a status, a `content-length` of digits and headers that only pass
/// through. Making each of their lines a `HeaderName` and a `HeaderValue` in a map, for the
/// lean server to read them back in order and write them out, was the largest cost of a
/// proxied request (issue 22). So the lines of a plain answer stay here, in the head they
/// came in (the connection keeps both until the answer's body ends), and the lean server
/// writes them as they are (names spelled as the upstream spelled them, as nginx passes them
/// on). The answer's map stays empty; the request's `x-request-id`, if the lines have none,
/// is kept beside them (`id`).
///
/// An answer is plain unless it has a `transfer-encoding`, a hop-by-hop header (or a
/// `connection` naming any header): those go into the map at once, as before, and so does
/// every answer without a body (its connection goes back to the pool before the answer is
/// written). An upstream's `x-rampart-reason` is an ordinary header, kept raw like any other:
/// rampart knows its own answers by their body (`respond::mark_own`), never by that header.
/// Code that reads or changes an answer's headers other than
/// the lean server's writing makes the map whole first: [`crate::proxy::body::whole_headers`].
/// Its `content-length` is one line of digits however it came (repeated, or a list of one
/// value: `finish_head` keeps the first line's first member).
#[derive(Debug, Default)]
pub struct RawLines {
    /// The head the lines are in; empty once they are in the map or let go (a head is never
    /// empty: it has its status line), so it also says whether the lines are still here.
    head: Bytes,
    /// The lines passed on, in order (`connection: keep-alive` and the like are not), each
    /// with its name as read (for [`RawLines::fill`]: a clone, not a second parse).
    lines: Vec<(HeaderName, Span)>,
    /// The lines hold a `content-length` (one, of digits).
    pub length: bool,
    /// The lines hold a `date`.
    pub date: bool,
    /// The request's id (the lines never hold an upstream's): written (or moved into the map)
    /// after them. Kept here rather than put into the empty map, whose first insertion would
    /// hash its name.
    pub id: Option<HeaderValue>,
}

impl RawLines {
    /// Starts keeping the lines of `head`, an answer head being read.
    fn start(&mut self, head: &Bytes) {
        self.head = head.clone();
        self.lines.clear();
        self.length = false;
        self.date = false;
        self.id = None;
    }

    /// Whether the lines are still here, for the lean server to write.
    pub fn pending(&self) -> bool {
        !self.head.is_empty()
    }

    /// Appends the lines, as they came, to a head being written.
    pub fn write(&self, dst: &mut Vec<u8>) {
        for &(_, [ns, _, _, ve]) in &self.lines {
            dst.extend_from_slice(&self.head[ns as usize..ve as usize]);
            dst.extend_from_slice(b"\r\n");
        }
        if let Some(id) = &self.id {
            line(dst, b"x-request-id", id.as_bytes());
        }
    }

    /// Lets go of the head: the answer is written, or will not be.
    pub fn release(&mut self) {
        self.lines.clear();
        self.head = Bytes::new();
        self.id = None;
    }

    /// Lets go of the room of an answer of many lines (up to a line per 3 bytes of a 64 KiB
    /// head), as its connection goes idle: cleared, the vector would keep it.
    pub fn trim(&mut self) {
        crate::proxy::spare::trim(&mut self.lines);
    }

    /// Moves the lines into `map`, in order (after what it holds); they are then no longer here.
    pub fn fill(&mut self, map: &mut HeaderMap) {
        if !self.pending() {
            return;
        }
        map.reserve(self.lines.len());
        for (name, [_, _, vs, ve]) in self.lines.drain(..) {
            let value = HeaderValue::from_maybe_shared(self.head.slice(vs as usize..ve as usize));
            // Checked as the head was read (`finish_head`): this cannot fail.
            if let Ok(value) = value {
                map.append(name, value);
            }
        }
        if let Some(id) = self.id.take() {
            map.append(X_REQUEST_ID, id);
        }
        self.head = Bytes::new();
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        // `scan_head` tells this one apart: never here.
        httparse::Error::TooManyHeaders => HEAD_TOO_LARGE,
        httparse::Error::Version => "not an HTTP/1.x answer",
    }
}

/// Builds the answer from a whole head and decides its framing. The header lines to pass on
/// are kept in `raw`, as they came; they go into the answer's header map here only when the
/// answer is not a plain one (see [`RawLines`]).
fn finish_head(
    head: &Bytes,
    spans: &[Span],
    status: StatusCode,
    minor: u8,
    head_request: bool,
    names: &mut Names,
    raw: &mut RawLines,
) -> Result<Head, Malformed> {
    raw.start(head);
    let mut length: Option<u64> = None;
    // Every `transfer-encoding` line read: how many times they list `chunked`, and whether it
    // is the last coding.
    let (mut te_seen, mut chunked, mut chunked_last) = (false, 0u32, false);
    // RFC 9112 §6.3: these end at their head, whatever it says of a body.
    let bodyless = head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let mut close = false;
    let mut keep_alive = false;
    // Whether the lines may stay raw: nothing in them that the request path reads or changes.
    let mut plain = true;
    // No `content-length` in a 1xx or 204 answer (`forward::lengthless`, the rule an HTTP/2
    // upstream's answer follows too). Read for its framing, never passed on.
    let lengthless = crate::proxy::forward::lengthless(status);
    for (i, &[ns, ne, vs, ve]) in spans.iter().enumerate() {
        let (name, kind) = names.name(i, &head[ns as usize..ne as usize])?;
        let value = &head[vs as usize..ve as usize];
        if kind == Kind::ContentLength {
            let n = parse_length_list(value).ok_or(Malformed("invalid content-length"))?;
            if length.is_some_and(|old| old != n) {
                if !bodyless {
                    return Err(Malformed("conflicting content-length values"));
                }
                // RFC 9112 §6.3: the lines frame no body here (a 304, or an answer to HEAD,
                // says the length of one it does not send), so values that differ are no
                // framing error: the first goes on, as nginx passes it. The connection is
                // not used again, though: a peer that says two lengths may send either.
                close = true;
            }
            let repeated = length.is_some();
            length = length.or(Some(n));
            if lengthless || repeated {
                continue;
            }
            // One line of digits goes on, whatever the upstream sent: a repeated line of the
            // same value is dropped above, and a list of one value (`5, 5`, which an HTTP/2
            // client resets as malformed) is cut to its first member. RFC 9110 §8.6 lets a
            // recipient take either as the one value; nginx passes on one line too. The value
            // starts with a digit (httparse takes the whitespace around it off), and its
            // first member's digits are all that `parse_length_list` found in it.
            let digits = value.iter().take_while(|b| b.is_ascii_digit()).count() as u16;
            raw.length = true;
            raw.lines.push((name, [ns, ne, vs, vs + digits]));
            continue;
        } else if kind == Kind::TransferEncoding {
            te_seen = true;
            for c in value
                .split(|&b| b == b',')
                .map(trim)
                .filter(|c| !c.is_empty())
            {
                chunked_last = c.eq_ignore_ascii_case(b"chunked");
                chunked += u32::from(chunked_last);
            }
            if bodyless {
                // Framing of a body that is not there: not passed on (RFC 9112 §6.1: no
                // `transfer-encoding` in a 1xx or 204 answer).
                continue;
            }
            plain = false;
        } else if kind == Kind::Connection {
            let tokens = ConnectionTokens::read(value);
            close |= tokens.close;
            keep_alive |= tokens.keep_alive;
            if !tokens.others {
                // This connection's business alone, read for framing above: never passed on
                // (`forward::strip_hop_by_hop` would remove it), so not kept.
                continue;
            }
            // It names other headers to remove: `strip_hop_by_hop` reads it from the map.
            plain = false;
        } else if kind == Kind::Date {
            raw.date = true;
        } else if kind == Kind::RequestId {
            // The answer carries the request's id (the client's, or the one rampart made: the
            // one its access log line holds), written after the lines; an upstream's is not
            // passed on.
            continue;
        } else if kind == Kind::NotPlain {
            // A hop-by-hop header, for `strip_hop_by_hop`.
            plain = false;
        }
        // No check of the value's bytes: httparse took exactly those `HeaderValue` takes
        // (`a_value_is_taken_exactly_when_a_header_value_would_be`).
        raw.lines.push((name, [ns, ne, vs, ve]));
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Some(`chunked` is the last coding, and listed once).
    let te = te_seen.then_some(chunked == 1 && chunked_last);
    if te.is_some() && version == Version::HTTP_10 {
        // RFC 9112 §6.1: an HTTP/1.0 message with transfer-encoding has faulty framing.
        return Err(Malformed("transfer-encoding in an HTTP/1.0 answer"));
    }
    if te == Some(false) && !bodyless {
        // Not last (`identity`, `chunked, gzip`), RFC 9112 §6.3 would read the body until the
        // upstream closes, which one that keeps its connection never does; and chunked twice is
        // forbidden (RFC 9112 §7). Refused, a 502 as for any other malformed answer. (A coding
        // before the last `chunked`, `gzip, chunked`, is the content's: an HTTP/1.1 client is
        // given it, `stack::uncodable` refuses it to a client that cannot be.)
        return Err(Malformed(
            "transfer-encoding whose last coding is not chunked, or chunked twice",
        ));
    }
    let framing = if bodyless {
        Framing::Empty
    } else {
        match (te, length) {
            // Only `chunked` alone gets here (see above).
            (Some(_), _) => Framing::Chunked,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let keep_alive = !close
        && (version == Version::HTTP_11 || keep_alive)
        && framing != Framing::Close
        // Both framings at once smells of smuggling: answered, never reused.
        && !(te.is_some() && length.is_some());
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    // A map to fill now, or later if the request path needs it; the spare one this thread
    // keeps, so that the answer's map goes on to hold the next request's headers.
    let mut headers = crate::proxy::spare::map(if plain { 0 } else { raw.lines.len() });
    // An answer without a body gives its connection (and so its raw lines) back at once.
    if !plain || framing == Framing::Empty {
        raw.fill(&mut headers);
    }
    crate::proxy::spare::forget_new(std::mem::replace(response.headers_mut(), headers));
    Ok(Head {
        response,
        framing,
        keep_alive,
    })
}

/// A `content-length` value: digits, or a comma-separated list of equal ones.
fn parse_length_list(raw: &[u8]) -> Option<u64> {
    // The usual value, digits alone, without the list's splitting and trimming.
    if !raw.is_empty() && raw.len() <= 19 && raw.iter().all(u8::is_ascii_digit) {
        return Some(digits(raw));
    }
    let mut found: Option<u64> = None;
    for part in raw.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits(part);
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// The number of at most 19 decimal digits (which cannot overflow a `u64`).
fn digits(d: &[u8]) -> u64 {
    d.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// What a `connection` value says, read in one pass: an answer's (nginx answers
/// `connection: keep-alive` to every request), or a request's on its way out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// It lists a token other than `close` and `keep-alive`: a header to remove on the way
    /// through, or an `upgrade`.
    others: bool,
    /// It lists `upgrade`.
    upgrade: bool,
}

impl ConnectionTokens {
    fn read(raw: &[u8]) -> Self {
        let mut found = Self::default();
        // The value nearly every answer carries, whole: no list to split.
        // Compared as sent first (nginx's spelling): a few instructions, where the comparison
        // that ignores case takes about nine a byte.
        if raw == b"keep-alive" || raw.eq_ignore_ascii_case(b"keep-alive") {
            found.keep_alive = true;
            return found;
        }
        for t in raw.split(|&b| b == b',') {
            let t = trim(t);
            if t.eq_ignore_ascii_case(b"keep-alive") {
                found.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"close") {
                found.close = true;
            } else if !t.is_empty() {
                found.others = true;
                found.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        }
        found
    }
}

// === chunked body ===

/// Decodes a chunked body off the front of a read buffer (RFC 9112 §7.1). Extensions are
/// skipped; trailers are passed on as a header map (those that would frame or route the
/// message, and malformed ones, are dropped).
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    /// The size of the chunk being read, then what is left of its data.
    size: u64,
    /// Bytes of the current size line, or of all trailers so far.
    seen: usize,
    /// The trailer lines read so far (empty, and not allocated, for most bodies).
    trailers: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// First hex digit of a size line.
    SizeStart,
    /// More hex digits.
    Size,
    /// Whitespace after the size.
    SizeSpace,
    /// A chunk extension, up to the line's end.
    Ext,
    /// The LF ending a size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// The CR after the data.
    DataCr,
    /// The LF after the data.
    DataLf,
    /// The start of a trailer line, or the empty line ending the body.
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    /// The whole body was read.
    Done,
}

/// One step of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The buffer ran out; read more.
    More,
    /// The trailers, after the last data and before [`Chunk::End`].
    Trailers(HeaderMap),
    /// The body ended.
    End,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Chunked {
            state: ChunkState::SizeStart,
            size: 0,
            seen: 0,
            trailers: Vec::new(),
        }
    }

    /// Whether the whole body was read and handed on (its trailers too).
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done && self.trailers.is_empty()
    }

    /// The next piece of the body from the front of `buf` (consumed from it).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, Malformed> {
        self.skip_framing(buf)?;
        match self.state {
            ChunkState::Done if !self.trailers.is_empty() => {
                let map = trailer_map(&std::mem::take(&mut self.trailers));
                Ok(if map.is_empty() {
                    Chunk::End
                } else {
                    Chunk::Trailers(map)
                })
            }
            ChunkState::Done => Ok(Chunk::End),
            ChunkState::Data if !buf.is_empty() => {
                let n = (buf.len() as u64).min(self.size) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                Ok(Chunk::Data(buf.split_to(n).freeze()))
            }
            _ => Ok(Chunk::More),
        }
    }

    /// Consumes framing bytes (size lines, CRLFs, trailers) from the front of `buf` until
    /// chunk data, the end of the body, or the end of `buf`.
    pub fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), Malformed> {
        let mut i = 0;
        let r = self.scan(buf, &mut i);
        buf.advance(i);
        r
    }

    fn scan(&mut self, buf: &[u8], i: &mut usize) -> Result<(), Malformed> {
        use ChunkState::*;
        while let Some(&b) = buf.get(*i) {
            let next = match (self.state, b) {
                (Data | Done, _) => return Ok(()),
                (SizeStart | Size, _) if b.is_ascii_hexdigit() => {
                    if self.size > u64::MAX >> 4 {
                        return Err(Malformed("chunk size too large"));
                    }
                    self.size = self.size << 4 | u64::from(hex_value(b));
                    Size
                }
                (SizeStart, _) => return Err(Malformed("invalid chunk size")),
                (Size | SizeSpace, b' ' | b'\t') => SizeSpace,
                (Size | SizeSpace, b';') => Ext,
                (Size | SizeSpace | Ext, b'\r') => SizeLf,
                (Size | SizeSpace, _) => return Err(Malformed("invalid chunk size")),
                (Ext, b'\t') => Ext,
                (Ext, _) if b < b' ' || b == 0x7f => {
                    return Err(Malformed("invalid chunk extension"))
                }
                (Ext, _) => Ext,
                (SizeLf, b'\n') => {
                    self.seen = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.size = 0;
                    SizeStart
                }
                (TrailerStart, b'\r') => EndLf,
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) if b == b'\n' || (b < b' ' && b != b'\t') => {
                    return Err(Malformed("invalid trailer"))
                }
                (TrailerStart | Trailer, _) => {
                    self.trailers.push(b);
                    Trailer
                }
                (TrailerLf, b'\n') => {
                    self.trailers.extend_from_slice(b"\r\n");
                    TrailerStart
                }
                (EndLf, b'\n') => Done,
                (SizeLf | DataLf | TrailerLf | EndLf, _) => {
                    return Err(Malformed("chunked framing: CR without LF"))
                }
                (DataCr, _) => return Err(Malformed("chunk data longer than its size")),
            };
            *i += 1;
            self.state = next;
            self.seen += 1;
            let limit = if matches!(self.state, Trailer | TrailerStart | TrailerLf | EndLf) {
                MAX_HEAD
            } else {
                MAX_CHUNK_LINE
            };
            if self.seen > limit {
                return Err(Malformed("chunk size line or trailers too long"));
            }
        }
        Ok(())
    }
}

/// The trailer lines of a chunked body as headers. Fields that frame, route, describe the
/// connection or otherwise have no place in trailers (RFC 9110 §6.5.1,
/// [`forbidden_in_trailers`](crate::proxy::forward::forbidden_in_trailers)) are dropped, as
/// are lines that do not parse.
fn trailer_map(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    // Room for every line of trailers of more lines than `slots` holds.
    let mut long;
    let mut input = Vec::with_capacity(lines.len() + 2);
    input.extend_from_slice(lines);
    input.extend_from_slice(b"\r\n");
    let fields = match httparse::parse_headers(&input, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        Err(httparse::Error::TooManyHeaders) => {
            long = vec![httparse::EMPTY_HEADER; newlines(&input)];
            match httparse::parse_headers(&input, &mut long) {
                Ok(httparse::Status::Complete((_, fields))) => fields,
                _ => return map,
            }
        }
        _ => return map,
    };
    for f in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            continue;
        };
        if !crate::proxy::forward::forbidden_in_trailers(&name) {
            map.append(name, value);
        }
    }
    map
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
