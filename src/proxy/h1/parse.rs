//! Reading one HTTP/1 request head, and deciding whether the lean server may serve it.
//!
//! The decision is deliberately narrow: a head that parses whole (with the same `httparse`
//! settings hyper uses), within the head limit, that asks for nothing special and carries no
//! body, or one `content-length` of at most [`WHOLE_BODY_MAX`] bytes, all of which are in the
//! buffer behind the head (a small upload usually comes in the same read; one that does not
//! is [`Parsed::Body`]: the server reads on until it is). Everything
//! else — chunked or repeated or odd body framing, a larger body, `Upgrade`, `Expect`, `TE`,
//! CONNECT, an HTTP/2 preface — is [`Parsed::HandOff`]: the connection goes to hyper with these
//! bytes replayed, so streamed bodies, their timeouts and refusals of framing (400, 414...)
//! stay exactly hyper's. A head that no server could read — one `httparse` refuses (hyper
//! reads with the same settings, and answers 400), too long or with too many lines (hyper:
//! 431) — is [`Parsed::Refuse`]: rampart answers it itself, with the same status, so the
//! answer carries its reason and request id and is counted and logged like any other.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::proxy::body::ClientIn;
use crate::proxy::forward::{AsteriskForm, Noted, Sent};

/// Most header lines in a request head, over either protocol (README, `head_too_large`; the
/// count Apache's `LimitRequestFields` allows by default): more are answered 431. The lean
/// server reads a head with this many slots, hyper's HTTP/1 server is given it
/// (`listener::h1_server_builder`, its default too), and an HTTP/2 request is held to it by
/// [`too_many_fields`].
pub const MAX_HEADERS: usize = 100;
// README and `stack::refuse_head`'s message name the number.
const _: () = assert!(MAX_HEADERS == 100);

/// Whether an HTTP/2 request's fields (the pseudo-header ones, its request line, are not in
/// `headers`) are more than [`MAX_HEADERS`] lines as HTTP/1.1 would carry them: its `cookie`
/// fields, which a client may send split into crumbs (RFC 9113 §8.2.3), count as the one line
/// they are joined into. (The h2 layer holds the block to [`h2_header_list_size`] first.)
/// One comparison for any request of up to 100 fields.
pub fn too_many_fields(headers: &HeaderMap) -> bool {
    let fields = headers.len();
    fields > MAX_HEADERS && {
        let crumbs = headers.get_all(header::COOKIE).iter().count();
        fields - crumbs.saturating_sub(1) > MAX_HEADERS
    }
}

/// Whether an HTTP/2 request's head is longer than `max_head` bytes as HTTP/1.1 would carry it,
/// the bound the lean server holds a head to: its request line (`GET /path HTTP/1.1`), a `host`
/// line of its `:authority` if it has no `host` field, each field a `name: value` line
/// (`cookie` crumbs joined with `; ` into the one line they make) and the empty line. The h2
/// layer's own bound ([`h2_header_list_size`]) counts each field 32 bytes more, and is set
/// above this so that such heads reach rampart's answer, not the h2 library's bare 431.
pub fn h2_too_long(method: &Method, uri: &Uri, headers: &HeaderMap, max_head: usize) -> bool {
    let target = match uri.path_and_query() {
        Some(p) => p.as_str().len(),
        None => uri.authority().map_or(1, |a| a.as_str().len()),
    };
    let mut len = method.as_str().len() + 1 + target + " HTTP/1.1\r\n\r\n".len();
    if !headers.contains_key(header::HOST) {
        len += uri
            .authority()
            .map_or(0, |a| "host: \r\n".len() + a.as_str().len());
    }
    let mut cookie = false;
    for (name, value) in headers {
        len += value.len()
            + match name == header::COOKIE && std::mem::replace(&mut cookie, true) {
                true => "; ".len(),
                false => name.as_str().len() + ": \r\n".len(),
            };
    }
    len > max_head
}

/// The h2 layer's bound on an HTTP/2 request's header list under a `max_head` limit (see
/// [`h2_too_long`]): HTTP/2 counts each field as its name, its value and 32 bytes (RFC 9113
/// §6.5.2), where an HTTP/1.1 line adds 4, and a `cookie` crumb 38 where it adds 2. Twice the
/// limit and 32 bytes for each of [`MAX_HEADERS`] fields and the pseudo-header ones lets
/// through every head within the limit as HTTP/1.1 carries it (crumbs of about 34 bytes
/// and more on average), so that rampart refuses it, counted and logged; a larger one is still the h2
/// library's bare 431, and the bound holds what one stream's head may cost.
pub fn h2_header_list_size(max_head: usize) -> u32 {
    let size = max_head
        .saturating_mul(2)
        .saturating_add(32 * (MAX_HEADERS + 8));
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// Whether an HTTP/2 request has a field value that starts or ends with a space or a tab,
/// which RFC 9113 §8.2.1 makes malformed. HTTP/1.1's parser takes such whitespace off (it is
/// the OWS around a value, RFC 9112 §5); HTTP/2 has no such step, and the h2 library passes the
/// value on as sent, so `content-type: "application/json "` or `x-tenant-id: "acme "` would
/// reach the upstream (or be matched by rampart) as a value no HTTP/1.1 peer can send. A look
/// at each value's two ends; HTTP/2 only.
pub fn padded_value(headers: &HeaderMap) -> bool {
    let pad = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    headers.values().any(|v| {
        let b = v.as_bytes();
        pad(b.first()) || pad(b.last())
    })
}

/// Whether an HTTP/2 request has a field name with a byte outside RFC 9110's `token`
/// (§5.1): the `http` crate takes `"` in a name that comes over HTTP/2 (its HTTP/1 table
/// does not; every other byte it takes there is a `tchar`), and `x"y: 1` would reach an
/// HTTP/1.1 upstream as a line no parser reads. A table lookup per byte of each distinct
/// name; HTTP/2 only (HTTP/1.1's parser refuses such a name itself).
pub fn untokened_name(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|n| n.as_str().bytes().any(|b| !TCHAR[usize::from(b)]))
}

/// RFC 9110 §5.6.2's `tchar`, in lower case (header names are): true for the bytes a field
/// name may have.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_digit()
            || c.is_ascii_lowercase()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// Longest request target hyper accepts (longer ones are answered 414 by hyper).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Largest request body the lean server takes with its head (a larger one streams, by hyper).
pub const WHOLE_BODY_MAX: usize = 64 * 1024;

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
    /// A head the lean server may serve, whose body is not all here yet: read on until the
    /// buffer holds this many bytes (the head and its body), then parse again. The buffer is
    /// left as it was.
    Body(usize),
    /// A simple request, ready for the request path.
    Simple(Head),
    /// A head no server reads: answer this and close the connection.
    Refuse(Refusal),
}

/// Why a head is refused before it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1 as `httparse` reads it (400).
    Malformed,
    /// Longer than the head limit, or more than [`MAX_HEADERS`] lines (431).
    TooLarge,
    /// Longer than the head limit in its request line alone (414), or with a target longer
    /// than hyper takes ([`MAX_TARGET`]).
    UriTooLong,
    /// An HTTP/2 request with a field value that starts or ends with a space or a tab (400):
    /// malformed (RFC 9113 §8.2.1), and read differently by different servers ([`padded_value`]).
    PaddedValue,
    /// An HTTP/2 request with a field name that is not a `token` (400), which no HTTP/1.1
    /// upstream could be sent ([`untokened_name`]).
    UntokenedName,
    /// An HTTP/2 connection preface after a request, or over TLS (400): prior knowledge is
    /// for the start of a cleartext connection alone (RFC 9113 §3.3); over TLS, HTTP/2 is
    /// agreed by ALPN `h2` (§3.2). The lean server decides it ([`Parsed::HandOff`] says where
    /// a preface is, not whether it may be there).
    MisplacedPreface,
}

/// How an HTTP/2 connection starts (its preface): hyper's to serve, not a malformed head.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2";

/// Whether `read`, bytes the lean server hands over, starts an HTTP/2 preface (or all of it
/// is the start of one): for hyper's auto server, which tells the two apart.
pub fn h2_preface(read: &[u8]) -> bool {
    let n = read.len().min(H2_PREFACE_START.len());
    read[..n] == H2_PREFACE_START[..n]
}

/// Whether `read` begins with a whole request head (as `httparse` reads it, the lines it skips
/// before one included): a later request the client has finished sending. Only where a
/// client's end of stream is judged (`h1::answer_unless_gone`), never per request.
pub fn whole_head(read: &[u8]) -> bool {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let cfg = httparse::ParserConfig::default();
    matches!(
        cfg.parse_request_with_uninit_headers(&mut req, read, &mut slots),
        Ok(httparse::Status::Complete(_))
    )
}

/// What one connection keeps from head to head so that reading one allocates little.
#[derive(Debug, Default)]
pub struct Reuse {
    /// An empty header map to fill (the previous answer's, emptied).
    pub map: Option<HeaderMap>,
    /// The previous head's header names, in order: where `spelled` holds each as sent, the
    /// name parsed from it, and what [`Sent`] notes of it. A client sends the same names in
    /// the same order on each request, and a name found here is not parsed (or, for a name
    /// that is not a standard one, allocated) or classified again.
    pub names: Vec<(u32, u32, HeaderName, Noted)>,
    /// The kept names as sent, one after another. A copy of their own: a kept name must not
    /// hold on to the buffer a head was read into (the connection's read buffer, now).
    spelled: Vec<u8>,
    /// Each header line of the head being read: its name, and where its value is in the head.
    lines: Vec<(HeaderName, u32, u32)>,
    /// The last `host` value found to be `host[:port]` (`authority::valid`): a client sends the
    /// same one on each request, and a value equal to it is not checked again (a comparison of
    /// its few bytes, where the check cost 170 instructions a request).
    host: Vec<u8>,
}

/// Longest `host` value kept as checked.
const HOST_KEPT_MAX: usize = 256;

/// How many header names a connection remembers.
const NAMES_KEPT: usize = 32;
/// Most bytes of kept names a connection holds; past it, new names are not kept.
const SPELLED_MAX: usize = 2048;

/// A simple request's head.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head (request line, header lines and the empty line); the buffer gave
    /// these and then the body's (`content-length`) bytes.
    pub len: usize,
    /// Whether the client lets the connection live after the answer (HTTP/1.1 unless it
    /// says `close`; HTTP/1.0 only if it says `keep-alive` and not `close`).
    pub keep_alive: bool,
    /// The request, with its body if it has one ([`ClientIn::Whole`]).
    pub req: Request<ClientIn>,
    /// Which of the lines the request path would look up it holds.
    pub sent: Sent,
}

/// Reads the head at the front of `buf` (at most `max_head` bytes long), with what the
/// connection kept from earlier heads. A simple head, and its body, are taken off the front of
/// `buf`; the request's target, header values and body are slices of those bytes, not copies.
/// Otherwise `buf` is left as it was.
///
/// Two passes: the first reads the head in place and decides everything that may hand the
/// connection off (so a hand-off finds its bytes untouched); only then is the head split off
/// the buffer, and the second builds the request from slices of it. Once the request is
/// dropped, the buffer is the connection's alone again and is read into again in place, so
/// reading a head allocates nothing.
pub fn parse(buf: &mut BytesMut, max_head: usize, reuse: &mut Reuse) -> Parsed {
    let First {
        len,
        method,
        target,
        http11,
        keep_alive,
        sent,
        body,
    } = match read(buf, max_head, reuse) {
        Ok(first) => first,
        Err(Stop::Partial) => return Parsed::Partial,
        Err(Stop::HandOff) => return Parsed::HandOff,
        Err(Stop::Body(need)) => return Parsed::Body(need),
        Err(Stop::Refuse(r)) => return Parsed::Refuse(r),
    };
    let head = buf.split_to(len).freeze();
    // A target hyper's `Uri` refuses is refused as hyper refuses it (400).
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0 as usize..target.1 as usize)) else {
        put_back(buf, head, reuse);
        return Parsed::Refuse(Refusal::Malformed);
    };
    // The previous answer's map, else one the thread kept (a new connection's first head).
    let mut headers = reuse
        .map
        .take()
        .unwrap_or_else(|| crate::proxy::spare::map(0));
    headers.reserve(reuse.lines.len());
    let mut refused = false;
    for (name, vs, ve) in reuse.lines.drain(..) {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)) else {
            refused = true;
            break;
        };
        headers.append(name, value);
    }
    if refused {
        headers.clear();
        reuse.map = Some(headers);
        put_back(buf, head, reuse);
        return Parsed::HandOff;
    }
    let body = match body {
        0 => ClientIn::Empty,
        n => ClientIn::Whole(Some(buf.split_to(n).freeze())),
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    crate::proxy::spare::forget_new(std::mem::replace(req.headers_mut(), headers));
    // `OPTIONS http://x`, an absolute URI with no path and no query: `Uri` makes its path `/`,
    // so that it asks about the server itself (RFC 9112 §3.2.4) is noted here, where the
    // target is still as sent, for `forward::prepare_request` to send it as `OPTIONS *`.
    if req.method() == Method::OPTIONS && req.uri().scheme().is_some() {
        let t = &head[target.0 as usize..target.1 as usize];
        let after = t
            .windows(3)
            .position(|w| w == b"://")
            .map_or(t.len(), |n| n + 3);
        if !t[after..].iter().any(|b| matches!(b, b'/' | b'?' | b'#')) {
            req.extensions_mut().insert(AsteriskForm);
        }
    }
    Parsed::Simple(Head {
        len,
        keep_alive,
        req,
        sent,
    })
}

/// What the request line of a refused head says, as far as it can be read, for the access log
/// and the trace: its method (else `-`) and its target (else `*`). Only on the refusal path.
pub fn refused_line(buf: &[u8]) -> Request<()> {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    let method = words.next().and_then(|m| Method::from_bytes(m).ok());
    let uri = words.next().and_then(|t| Uri::try_from(t).ok());
    let mut req = Request::new(());
    *req.method_mut() = method.unwrap_or_else(|| Method::from_bytes(b"-").unwrap_or_default());
    *req.uri_mut() = uri.unwrap_or_else(|| Uri::from_static("*"));
    req
}

/// What the first pass of [`parse`] found in a whole head it may serve (its header lines are
/// in `Reuse::lines`).
struct First {
    len: usize,
    method: Method,
    /// Where the target is in the head.
    target: (u32, u32),
    http11: bool,
    keep_alive: bool,
    sent: Sent,
    /// Bytes of body after the head (its `content-length`), all of them in the buffer.
    body: usize,
}

/// Why the first pass of [`parse`] stopped.
enum Stop {
    Partial,
    HandOff,
    Refuse(Refusal),
    /// The head is one to serve, but its body is not all here: the bytes needed in all.
    Body(usize),
}

/// Why a head longer than `max_head` is refused: [`Refusal::UriTooLong`] when its request line
/// does not end within the limit (RFC 9112 §3: a target too long for the server is 414, as
/// hyper answers one past its own bound), [`Refusal::TooLarge`] when the header lines are what
/// is long. Only on this error path: a head within the limit costs nothing more. The empty
/// lines a client may send before the request line (RFC 9112 §2.2; `httparse` skips them)
/// are not counted as part of it.
fn too_long(buf: &[u8], max_head: usize) -> Refusal {
    let within = &buf[..buf.len().min(max_head)];
    let start = within
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(within.len());
    match within[start..].contains(&b'\n') {
        true => Refusal::TooLarge,
        false => Refusal::UriTooLong,
    }
}

/// The first pass of [`parse`], over the buffer in place.
fn read(buf: &[u8], max_head: usize, reuse: &mut Reuse) -> Result<First, Stop> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut []);
    let cfg = httparse::ParserConfig::default();
    let len = match cfg.parse_request_with_uninit_headers(&mut raw, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Err(Stop::Partial),
        _ if buf.starts_with(H2_PREFACE_START) => return Err(Stop::HandOff),
        Err(httparse::Error::TooManyHeaders) => return Err(Stop::Refuse(Refusal::TooLarge)),
        // Whole or not, longer than the limit: 414 when its request line alone does not fit.
        Ok(_) => return Err(Stop::Refuse(too_long(buf, max_head))),
        Err(_) => return Err(Stop::Refuse(Refusal::Malformed)),
    };
    let (Some(method), Some(target), Some(minor)) = (raw.method, raw.path, raw.version) else {
        return Err(Stop::HandOff);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(Stop::HandOff);
    };
    if target.len() > MAX_TARGET {
        return Err(Stop::Refuse(Refusal::UriTooLong));
    }
    if method == Method::CONNECT {
        return Err(Stop::HandOff);
    }
    // Where a piece of the head is: the head starts the buffer and is under 4 GiB.
    let at = |s: &[u8]| {
        let from = (s.as_ptr() as usize - buf.as_ptr() as usize) as u32;
        (from, from + s.len() as u32)
    };
    let http11 = minor == 1;
    let (mut close, mut keep_alive_token) = (false, false);
    let mut length: Option<usize> = None;
    let mut sent = Sent::default();
    // Not for the lean server, but read to its end: its framing may be one hyper refuses.
    let mut hand_off = false;
    let mut framing = Framing::default();
    reuse.lines.clear();
    for (i, h) in raw.headers.iter().enumerate() {
        let kept = reuse.names.get(i).filter(|(from, to, _, _)| {
            reuse.spelled.get(*from as usize..*to as usize) == Some(h.name.as_bytes())
        });
        let (name, noted) = match kept {
            // The same bytes as the name kept at this place: the same name.
            Some((_, _, n, noted)) => (n.clone(), *noted),
            None => {
                let Ok(n) = HeaderName::from_bytes(h.name.as_bytes()) else {
                    return Err(Stop::HandOff);
                };
                let noted = Noted::of(&n);
                keep_name(reuse, i, h.name.as_bytes(), &n, noted);
                (n, noted)
            }
        };
        match name {
            // Chunked bodies: hyper's business, unless their framing is one it refuses.
            header::TRANSFER_ENCODING => {
                framing.transfer_encoding(h.value, http11)?;
                hand_off = true;
            }
            // Protocol switches, `100-continue` and trailers: hyper's business.
            header::UPGRADE | header::EXPECT | header::TE => hand_off = true,
            // One plain length, small enough; two, or any other spelling: hyper's (or refused
            // as hyper refuses them).
            header::CONTENT_LENGTH => {
                framing.content_length(h.value)?;
                match (length, body_length(h.value)) {
                    (None, Some(n)) => length = Some(n),
                    _ => hand_off = true,
                }
            }
            header::CONNECTION => {
                close |= has_token(h.value, b"close");
                keep_alive_token |= has_token(h.value, b"keep-alive");
            }
            // The same value as the last one checked: valid.
            header::HOST if reuse.host == h.value => sent.note_valid_host(),
            header::HOST => {
                sent.note_as(Noted::Host, h.value);
                if !sent.bad_host && h.value.len() <= HOST_KEPT_MAX {
                    reuse.host.clear();
                    reuse.host.extend_from_slice(h.value);
                }
            }
            _ => sent.note_as(noted, h.value),
        }
        let (vs, ve) = at(h.value);
        reuse.lines.push((name, vs, ve));
    }
    framing.end()?;
    if hand_off {
        return Err(Stop::HandOff);
    }
    let body = length.unwrap_or(0);
    if buf.len() - len < body {
        // Not all here: the server reads on (and hands off if the rest is slow to come).
        return Err(Stop::Body(len + body));
    }
    let keep_alive = !close && (http11 || keep_alive_token);
    Ok(First {
        len,
        method,
        target: at(target.as_bytes()),
        http11,
        keep_alive,
        sent,
        body,
    })
}

/// A request's body framing read as hyper reads it (RFC 9112 §6.3), line by line, to refuse
/// what hyper would refuse (400, as hyper answers but for a length past its largest, which
/// hyper answers 431) instead of handing it to hyper: a
/// `transfer-encoding` on HTTP/1.0 or whose last coding is not `chunked`, a `content-length`
/// that is not digits, or two that differ (a `content-length` after a `transfer-encoding` is
/// ignored, one before it dropped). The smuggling attempts, answered and logged like any
/// refusal. hyper's own checks stay behind it for the connections it serves.
#[derive(Debug, Default)]
struct Framing {
    length: Option<u64>,
    seen_length: bool,
    te: bool,
    chunked: bool,
    /// `chunked` codings named so far, on all the lines.
    chunkings: u8,
}

impl Framing {
    fn transfer_encoding(&mut self, value: &[u8], http11: bool) -> Result<(), Stop> {
        if !http11 {
            return Err(Stop::Refuse(Refusal::Malformed));
        }
        self.te = true;
        if self.seen_length {
            self.length = None;
        }
        // `chunked` must be the last coding, and applied once (RFC 9112 §6.1): `chunked,
        // chunked` is refused, as nginx and HAProxy refuse it, not read as one.
        self.chunked = super::write::chunked_last(value);
        self.chunkings = self.chunkings.saturating_add(chunkings(value));
        if self.chunkings > 1 {
            return Err(Stop::Refuse(Refusal::Malformed));
        }
        Ok(())
    }

    fn content_length(&mut self, value: &[u8]) -> Result<(), Stop> {
        self.seen_length = true;
        if self.te {
            return Ok(());
        }
        let Some(n) = super::write::digits(value) else {
            return Err(Stop::Refuse(Refusal::Malformed));
        };
        match self.length {
            Some(before) if before != n => Err(Stop::Refuse(Refusal::Malformed)),
            Some(_) => Ok(()),
            // hyper's largest length is two short of u64::MAX (past it hyper answers 431 "head
            // too large", which would blame the head): a length no body can have, 400.
            None if n > u64::MAX - 2 => Err(Stop::Refuse(Refusal::Malformed)),
            None => {
                self.length = Some(n);
                Ok(())
            }
        }
    }

    fn end(&self) -> Result<(), Stop> {
        match self.te && !self.chunked {
            true => Err(Stop::Refuse(Refusal::Malformed)),
            false => Ok(()),
        }
    }
}

/// How many times the `transfer-encoding` value `value` names `chunked`, counted up to 2.
fn chunkings(value: &[u8]) -> u8 {
    let named = value
        .split(|&b| b == b',')
        .filter(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .take(2)
        .count();
    named as u8
}

/// Whether a request's `transfer-encoding` lines name `chunked` more than once, over all of
/// them (`chunked, chunked`, or `chunked` on two lines): refused 400 by the lean server
/// ([`Framing`]), and so by the server of a connection hyper took over, whose parser reads it
/// as one `chunked` (RFC 9112 §6.1 allows it once; nginx and HAProxy refuse it). One hashed
/// lookup for a request without the field.
pub fn chunked_twice(headers: &HeaderMap) -> bool {
    let mut n = 0u8;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        n = n.saturating_add(chunkings(v.as_bytes()));
        if n > 1 {
            return true;
        }
    }
    false
}

/// A `content-length` value the lean server takes: decimal digits without a leading zero (or
/// `0` itself), at most [`WHOLE_BODY_MAX`].
fn body_length(value: &[u8]) -> Option<usize> {
    match value {
        b"0" => Some(0),
        [b'1'..=b'9', rest @ ..] if rest.len() < 6 && rest.iter().all(u8::is_ascii_digit) => {
            let n = value
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            (n <= WHOLE_BODY_MAX).then_some(n)
        }
        _ => None,
    }
}

/// Keeps `name`, sent as `spelled`, as the name at place `i` of the next heads (within the
/// bounds on names and on their bytes).
fn keep_name(reuse: &mut Reuse, i: usize, spelled: &[u8], name: &HeaderName, noted: Noted) {
    if reuse.spelled.len() + spelled.len() > SPELLED_MAX {
        // Names that keep changing (a replaced name's bytes stay until now): start again.
        reuse.names.clear();
        reuse.spelled.clear();
    }
    if i >= NAMES_KEPT || i > reuse.names.len() || spelled.len() > SPELLED_MAX {
        return;
    }
    let from = reuse.spelled.len() as u32;
    reuse.spelled.extend_from_slice(spelled);
    let entry = (from, reuse.spelled.len() as u32, name.clone(), noted);
    match reuse.names.get_mut(i) {
        Some(slot) => *slot = entry,
        None => reuse.names.push(entry),
    }
}

/// Puts a head that turned out not to be simple (a target `Uri` refuses, to be refused; a value
/// `HeaderValue` refuses, which hyper reads unchecked, to hand off) back in front of `buf`, as
/// it was. A copy: this happens only to malformed heads.
fn put_back(buf: &mut BytesMut, head: Bytes, reuse: &mut Reuse) {
    reuse.lines.clear();
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.extend_from_slice(&head);
    all.extend_from_slice(buf);
    *buf = all;
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

    /// Reads a simple head off `bytes`; what follows it must stay in the buffer.
    fn simple(bytes: &[u8]) -> Head {
        let mut buf = BytesMut::from(bytes);
        match parse(&mut buf, MAX, &mut Reuse::default()) {
            Parsed::Simple(h) => {
                assert_eq!(&buf[..], &bytes[h.len..], "the bytes after the head stay");
                h
            }
            other => panic!(
                "{:?}: wanted a simple head, got {other:?}",
                bytes.escape_ascii()
            ),
        }
    }

    /// What `parse` makes of `bytes`; a partial head, a body not all here or a hand-off must
    /// leave every byte in the buffer, as it was.
    fn decision(bytes: &[u8]) -> &'static str {
        let mut buf = BytesMut::from(bytes);
        let d = match parse(&mut buf, MAX, &mut Reuse::default()) {
            Parsed::Partial => "partial",
            Parsed::HandOff => "hand-off",
            Parsed::Body(need) => {
                assert!(
                    need > bytes.len(),
                    "{need} bytes needed, {} here",
                    bytes.len()
                );
                "body"
            }
            Parsed::Simple(_) => return "simple",
            Parsed::Refuse(Refusal::Malformed) => "malformed",
            Parsed::Refuse(Refusal::TooLarge) => "too large",
            Parsed::Refuse(Refusal::UriTooLong) => "uri too long",
            Parsed::Refuse(Refusal::PaddedValue) => "padded",
            Parsed::Refuse(Refusal::UntokenedName) => "untokened",
            Parsed::Refuse(Refusal::MisplacedPreface) => "misplaced preface",
        };
        assert_eq!(&buf[..], bytes, "{d}: the buffer as it was");
        d
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
    fn a_small_body_all_here_is_taken_with_its_head() {
        let mut buf = BytesMut::from(
            &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n"[..],
        );
        let Parsed::Simple(h) = parse(&mut buf, MAX, &mut Reuse::default()) else {
            panic!("simple");
        };
        assert_eq!(h.len, 48, "the head alone");
        assert!(matches!(h.req.body(), ClientIn::Whole(Some(b)) if &b[..] == b"abc"));
        assert_eq!(h.req.headers()["content-length"], "3");
        assert_eq!(
            &buf[..],
            b"GET / HTTP/1.1\r\n",
            "the next head starts the buffer"
        );
        let most = WHOLE_BODY_MAX.to_string();
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {most}\r\n\r\n{}",
            "x".repeat(WHOLE_BODY_MAX)
        );
        let Parsed::Simple(h) = parse(
            &mut BytesMut::from(big.as_bytes()),
            MAX,
            &mut Reuse::default(),
        ) else {
            panic!("a body of the most bytes taken");
        };
        assert_eq!(
            http_body::Body::size_hint(h.req.body()).exact(),
            Some(WHOLE_BODY_MAX as u64)
        );
    }

    #[test]
    fn content_lengths_the_lean_server_takes() {
        assert_eq!(body_length(b"0"), Some(0));
        assert_eq!(body_length(b"7"), Some(7));
        assert_eq!(body_length(b"65536"), Some(WHOLE_BODY_MAX));
        for refused in [
            &b""[..],
            b"00",
            b"007",
            b"+7",
            b"-1",
            b"7 ",
            b" 7",
            b"7,7",
            b"0x10",
            b"65537",
            b"100000",
            b"18446744073709551616",
        ] {
            assert_eq!(body_length(refused), None, "{}", refused.escape_ascii());
        }
    }

    #[test]
    fn heads_with_other_bodies_or_a_protocol_switch_go_to_hyper() {
        let over = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
            WHOLE_BODY_MAX + 1,
            "x".repeat(WHOLE_BODY_MAX + 1)
        );
        for bytes in [
            over.as_bytes(),
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
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

    /// A body not all here yet: the server is told how many bytes make the request whole,
    /// and the same bytes with the rest behind them are a simple request.
    #[test]
    fn a_body_not_all_here_asks_for_the_rest() {
        let most =
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {WHOLE_BODY_MAX}\r\n\r\n");
        for (head, body) in [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n",
                "abcd".to_string(),
            ),
            (
                "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
                "z".to_string(),
            ),
            (most.as_str(), "y".repeat(WHOLE_BODY_MAX)),
        ] {
            let whole = format!("{head}{body}");
            for cut in [head.len(), head.len() + body.len() / 2, whole.len() - 1] {
                let mut buf = BytesMut::from(&whole.as_bytes()[..cut]);
                match parse(&mut buf, MAX, &mut Reuse::default()) {
                    Parsed::Body(need) => assert_eq!(need, whole.len(), "{head:?} cut at {cut}"),
                    other => panic!("{head:?} cut at {cut}: {other:?}"),
                }
                assert_eq!(&buf[..], &whole.as_bytes()[..cut], "the buffer as it was");
            }
            let mut buf = BytesMut::from(whole.as_bytes());
            let Parsed::Simple(h) = parse(&mut buf, MAX, &mut Reuse::default()) else {
                panic!("{head:?} whole: simple");
            };
            assert!(matches!(h.req.body(), ClientIn::Whole(Some(b)) if b == body.as_bytes()));
            assert!(buf.is_empty());
        }
        // Part of the next request behind a whole body does not make it wait.
        let mut two = BytesMut::from(
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nokPOST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab"[..],
        );
        assert!(matches!(
            parse(&mut two, MAX, &mut Reuse::default()),
            Parsed::Simple(_)
        ));
        assert_eq!(decision(&two[..]), "body");
    }

    /// What httparse refuses, hyper (which reads with the same settings) would answer 400:
    /// rampart answers it itself.
    #[test]
    fn malformed_heads_are_refused() {
        for bytes in [
            &b"GET /o k HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        ] {
            assert_eq!(decision(bytes), "malformed", "{}", bytes.escape_ascii());
        }
        // What the access log is told of them.
        let req = refused_line(b"GET /o k HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", "/o"));
        let req = refused_line(b"\x16\x03\x01\x02\x00\r\n\r\n");
        assert_eq!(
            (req.method().as_str(), req.uri().to_string().as_str()),
            ("-", "*")
        );
    }

    /// Framing hyper refuses (400; 431 for a length past its largest, 400 here) is refused
    /// as hyper would, so the smuggling attempts are answered and logged like any refusal;
    /// so is `chunked` applied twice, which hyper reads as once (nginx and HAProxy refuse it).
    #[test]
    fn framing_hyper_refuses_is_refused() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(decision(bytes), "malformed", "{}", bytes.escape_ascii());
        }
        let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551614\r\n\r\n";
        assert_eq!(decision(huge), "malformed");
        // A length after a transfer-encoding is not read (hyper ignores it), one before it is
        // dropped: chunked wins, and hyper serves it.
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n";
        assert_eq!(decision(te_first), "hand-off");
    }

    #[test]
    fn partial_heads_wait_until_the_limit() {
        assert_eq!(decision(b""), "partial");
        assert_eq!(decision(b"GET / HTTP/1.1\r\nHo"), "partial");
        // An HTTP/2 preface, or its start, is hyper's to serve (where the lean server lets
        // it: at the start of a cleartext connection).
        assert_eq!(decision(b"PRI * HTTP/2.0\r\n"), "hand-off");
        assert_eq!(decision(b"PRI * HTTP/2"), "hand-off");
        // Past the limit, whole or not, or with more lines than hyper takes: 431.
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX));
        assert_eq!(decision(long.as_bytes()), "too large");
        let whole = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX));
        assert_eq!(decision(whole.as_bytes()), "too large");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(decision(many.as_bytes()), "too large");
        // A request line that does not end within the limit: 414, whole or not.
        let target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX));
        assert_eq!(decision(target.as_bytes()), "uri too long");
        assert_eq!(decision(&target.as_bytes()[..MAX + 10]), "uri too long");
        let after_blank = format!("\r\n\r\nGET /{} HTTP/1.1\r\n", "a".repeat(MAX - 8));
        assert_eq!(decision(after_blank.as_bytes()), "uri too long");
        // A long line that ends within the limit, then long header lines: 431.
        let both = format!(
            "GET /{} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX / 2),
            "b".repeat(MAX)
        );
        assert_eq!(decision(both.as_bytes()), "too large");
    }

    /// A `host` value equal to the last one found valid is taken without the check; any other
    /// is checked, and a bad one is never kept, so it is refused however often it comes.
    #[test]
    fn a_host_checked_once_is_known_and_a_bad_one_is_never_kept() {
        let mut reuse = Reuse::default();
        let mut host = |line: &str| {
            let head = format!("GET / HTTP/1.1\r\nHost: {line}\r\n\r\n");
            let mut buf = BytesMut::from(head.as_bytes());
            let Parsed::Simple(h) = parse(&mut buf, MAX, &mut reuse) else {
                panic!("simple: {line}");
            };
            (h.sent.bad_host, h.sent.hosts, reuse.host.clone())
        };
        assert_eq!(host("app:80"), (false, 1, b"app:80".to_vec()));
        assert_eq!(host("app:80"), (false, 1, b"app:80".to_vec()), "known");
        assert_eq!(
            host("a b"),
            (true, 1, b"app:80".to_vec()),
            "checked, not kept"
        );
        assert_eq!(host("a b"), (true, 1, b"app:80".to_vec()), "refused again");
        assert_eq!(host("other:1"), (false, 1, b"other:1".to_vec()));
    }

    #[test]
    fn the_spare_map_is_reused() {
        let mut map = HeaderMap::with_capacity(32);
        let cap = map.capacity();
        map.insert("x-old", HeaderValue::from_static("v"));
        map.clear();
        let mut reuse = Reuse {
            map: Some(map),
            ..Reuse::default()
        };
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        let Parsed::Simple(h) = parse(&mut buf, MAX, &mut reuse) else {
            panic!("simple");
        };
        assert!(reuse.map.is_none());
        assert_eq!(h.req.headers().capacity(), cap);
        assert_eq!(h.req.headers().len(), 1);
    }

    #[test]
    fn kept_names_are_reused_and_replaced_when_they_differ() {
        let mut reuse = Reuse::default();
        let mut names = |bytes: &[u8]| match parse(&mut BytesMut::from(bytes), MAX, &mut reuse) {
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
        let (from, to, name, _) = &reuse.names[0];
        assert_eq!(name.as_str(), "x-tenant-ie");
        assert_eq!(&reuse.spelled[*from as usize..*to as usize], b"X-Tenant-Ie");
    }

    /// What `Sent` notes of a name is kept with the name: a head that sends the same names
    /// again notes the same of them, and a name replaced at its place is noted afresh.
    #[test]
    fn kept_names_are_noted_as_they_were_first() {
        let mut reuse = Reuse::default();
        let mut sent = |bytes: &[u8]| match parse(&mut BytesMut::from(bytes), MAX, &mut reuse) {
            Parsed::Simple(h) => h.sent,
            other => panic!("{other:?}"),
        };
        let alias =
            b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded-For: 1.2.3.4\r\nx-request-id: r\r\n\r\n";
        for _ in 0..2 {
            let s = sent(alias);
            assert!(s.underscored && s.any_underscore, "{s:?}");
            assert!(s.request_id && !s.forwarded_for && s.hosts == 1, "{s:?}");
        }
        let other = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx_other: r\r\n\r\n";
        for _ in 0..2 {
            let s = sent(other);
            assert!(!s.underscored && s.any_underscore, "{s:?}");
            assert!(!s.request_id && s.forwarded_for && s.hosts == 1, "{s:?}");
        }
        let plain = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-other: r\r\n\r\n";
        let s = sent(plain);
        assert!(
            !s.underscored && !s.any_underscore && s.forwarded_for,
            "{s:?}"
        );
    }

    /// A head is taken off the connection's buffer without a copy, and once the request is
    /// gone the buffer is the connection's alone: more room is made in the same allocation
    /// (kept names are copies of their own and hold none of it).
    #[test]
    fn a_head_is_a_slice_of_the_buffer_and_the_buffer_is_reused() {
        let mut reuse = Reuse::default();
        let mut buf = BytesMut::with_capacity(256);
        let start = buf.as_ptr();
        for round in 0..3 {
            buf.extend_from_slice(b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-Tenant-Id: t1\r\n\r\nGET");
            let Parsed::Simple(h) = parse(&mut buf, MAX, &mut reuse) else {
                panic!("simple");
            };
            let value = &h.req.headers()["x-tenant-id"];
            let at = value.as_bytes().as_ptr() as usize - start as usize;
            assert!(
                at < 256,
                "round {round}: the value is read in place, not copied"
            );
            assert_eq!(&buf[..], b"GET", "the next head's start stays");
            drop(h);
            buf.clear();
            // More than is left after the head read: only a buffer no head holds is reused.
            buf.reserve(250);
            assert_eq!(buf.as_ptr(), start, "round {round}: the same allocation");
        }
        assert_eq!(reuse.names.len(), 2);
    }

    /// A head whose target hyper's `Uri` refuses, found only once the head is split off, is
    /// put back whole, with what followed it, and refused (hyper answers it 400).
    #[test]
    fn a_head_refused_after_the_split_is_put_back_whole() {
        for bytes in [
            &b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\nrest"[..],
            b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a`b HTTP/1.1\r\nX-Tenant-Id: t\r\n\r\nGET / HTTP/1.1\r\n",
        ] {
            let mut reuse = Reuse::default();
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(
                    parse(&mut buf, MAX, &mut reuse),
                    Parsed::Refuse(Refusal::Malformed)
                ),
                "{}",
                bytes.escape_ascii()
            );
            assert_eq!(&buf[..], bytes);
            assert!(reuse.lines.is_empty());
        }
    }

    /// Names that change on every head keep the kept names' bytes within their bound, and
    /// every head still reads right.
    #[test]
    fn kept_name_bytes_stay_bounded() {
        let mut reuse = Reuse::default();
        for i in 0..500 {
            let head = format!(
                "GET / HTTP/1.1\r\nX-Name-{i}-{}: v\r\nHost: a\r\n\r\n",
                "z".repeat(i % 40)
            );
            let Parsed::Simple(h) = parse(&mut BytesMut::from(head.as_bytes()), MAX, &mut reuse)
            else {
                panic!("simple at {i}");
            };
            let name = format!("x-name-{i}-{}", "z".repeat(i % 40));
            assert_eq!(h.req.headers()[name.as_str()], "v");
            assert_eq!(h.req.headers()["host"], "a");
            assert!(
                reuse.spelled.len() <= SPELLED_MAX,
                "{} at {i}",
                reuse.spelled.len()
            );
            assert!(reuse.names.len() <= NAMES_KEPT);
        }
    }

    /// An HTTP/2 request is held to the lean server's count of lines: its `cookie` crumbs as
    /// the one line they make over HTTP/1.1.
    #[test]
    fn an_h2_request_s_fields_are_counted_as_http1_lines() {
        let fields = |n: usize, crumbs: usize| {
            let mut map = HeaderMap::new();
            for i in 0..n {
                map.append(
                    HeaderName::from_bytes(format!("x-{i}").as_bytes()).expect("a name"),
                    HeaderValue::from_static("v"),
                );
            }
            for _ in 0..crumbs {
                map.append(header::COOKIE, HeaderValue::from_static("a=b"));
            }
            map
        };
        assert!(!too_many_fields(&fields(MAX_HEADERS, 0)));
        assert!(too_many_fields(&fields(MAX_HEADERS + 1, 0)));
        assert!(!too_many_fields(&fields(MAX_HEADERS - 1, 1)));
        assert!(!too_many_fields(&fields(MAX_HEADERS - 1, 500)));
        assert!(too_many_fields(&fields(MAX_HEADERS, 2)));
        // The same name repeated is a line each (only cookies are joined).
        let mut same = HeaderMap::new();
        for _ in 0..=MAX_HEADERS {
            same.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        assert!(too_many_fields(&same));
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
