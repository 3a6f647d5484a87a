//! What a proxy changes on the way through: hop-by-hop headers out, forwarding headers in.
//!
//! Hop-by-hop headers describe one connection, not the message, so they are removed in both
//! directions (RFC 9110 §7.6.1), including any the `connection` header names. Of
//! `transfer-encoding` only `chunked` is the hop's own framing: other codings (`gzip`) are kept
//! and a stale `content-length` beside them is dropped (RFC 9112 §6.3).
//!
//! The forwarding headers tell the truth of the client's connection (SPEC §12, §14):
//! `x-forwarded-proto` is replaced by the protocol the client really used, the client's address
//! is appended to `x-forwarded-for`, and `x-request-id` is added when absent; a client's
//! lines of these names spelled with `_` for any `-` go, which CGI-style upstreams would read
//! as the same ([`cgi_alias`]). One authority
//! decides the route and is forwarded: an absolute-form target (HTTP/1.1) or `:authority`
//! (HTTP/2) becomes the upstream's `host`.
//!
//! What rampart adds is not put into the request's header map: the upstream writer writes it
//! from [`Added`] after the map's lines (`x-forwarded-proto` always, in place of any the client
//! sent; `host`, `x-request-id` and `x-forwarded-for` when the map holds none). Only a client's
//! own `x-forwarded-for` list is extended in the map. Which of these lines the client sent is
//! noted once, as its head is read ([`Sent`]), so the request path looks none of them up.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri, Version};

use super::authority;
use super::listener::Held;
use crate::generation::ConnsStop;
use crate::tenant::CertIds;
use rustls::pki_types::CertificateDer;

/// The hop-by-hop headers (RFC 9110 §7.6.1) and `upgrade`, in the order of their bits in
/// [`strip_hop_by_hop`]'s masks (see [`hop_index`]). `trailer` is not among them: it announces
/// the message's trailer fields end to end (RFC 9110 §6.6.2), and hyper's HTTP/1.1 server sends
/// an answer's trailers only to a client that asked (`TE: trailers`) and only the fields the
/// answer's `trailer` names.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
/// Bits of [`HOP_BY_HOP`] entries in a mask.
const CONNECTION_BIT: u16 = 1 << 0;
const TE_BIT: u16 = 1 << 5;
const TRANSFER_ENCODING_BIT: u16 = 1 << 6;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The request id header, added when absent.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The forwarding lines rampart writes. CGI-style upstreams fold `_` into `-` (and case):
/// `x_forwarded_for`, `x-forwarded_for` and `x_forwarded-for` are all `HTTP_X_FORWARDED_FOR`
/// there, the same as rampart's `x-forwarded-for`, so a client's line of any such spelling
/// ([`cgi_alias`]) would stand for the truth rampart wrote. Removed from a request's head when
/// [`Sent::underscored`] says it has one, and from its trailers ([`strip_request_trailers`]), as
/// the tenant and plan names' spellings are (`tenant::Identify::vouch`).
const FORWARDING: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];

/// Whether a line named `name` is read as one named `protected` by an upstream that folds `_`
/// and `-` into one (CGI's `HTTP_X_FORWARDED_FOR`), without being it: the same length, and at
/// each byte the same byte or `_` against `-` (either way round, for a configured name spelled
/// with `_`). A name of another length, the common case, is told by one comparison. Header
/// names are lowercase already.
pub fn cgi_alias(name: &str, protected: &str) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b };
    name.len() == protected.len()
        && name != protected
        && name
            .bytes()
            .zip(protected.bytes())
            .all(|(a, b)| fold(a) == fold(b))
}

/// Whether `name` is a [`cgi_alias`] of one of `protected`.
fn alias_of<P: AsRef<str>>(name: &HeaderName, protected: &[P]) -> bool {
    protected
        .iter()
        .any(|p| cgi_alias(name.as_str(), p.as_ref()))
}

/// Removes from `headers` every line whose name is a [`cgi_alias`] of one of `protected` (not
/// the protected names' own lines). One pass over the names when there is none.
pub fn remove_aliases<P: AsRef<str>>(headers: &mut HeaderMap, protected: &[P]) {
    while let Some(name) = headers.keys().find(|n| alias_of(n, protected)).cloned() {
        headers.remove(&name);
    }
}

/// `ip` as text. Made for every connection: an IPv4 address is written on the stack
/// ([`wire::ipv4`](super::wire::ipv4)) and copied once into the value (through `Display` and
/// a `String`, it cost a tenth more per connection, counted by callgrind).
pub(crate) fn ip_text(ip: IpAddr) -> HeaderValue {
    let made = match ip {
        IpAddr::V4(v4) => HeaderValue::from_bytes(super::wire::ipv4(v4, &mut [0; 15])),
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()),
    };
    made.unwrap_or(HeaderValue::from_static("unknown"))
}

/// The client end of a connection, with its forwarding values made once per connection.
///
/// Shared (in an `Arc`) by everything that serves the connection: its task, its requests, and
/// the tunnel it may become (a CONNECT, or an upgrade after its 101), each of which outlives
/// the others in some case. What it holds for the listener ([`Held`]) is given back when the
/// last of them is done, so when the client's socket closes. Not `Clone`: there is one per
/// connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the client's connection is TLS.
    pub tls: bool,
    /// What the client's verified certificate says (mTLS listeners).
    pub cert: Option<CertIds>,
    /// The TLS rules its handshake was made under (`ListenerRt::tls_epoch`; 0: plaintext).
    pub tls_epoch: u64,
    /// The client's IP address as text, for `x-forwarded-for`.
    forwarded_for: HeaderValue,
    /// Its listener's tunnel stop (`ListenerRt::tunnels_stop`): told when a reload removes
    /// the listener or changes the TLS rules the connection was made under, not when it moves.
    /// A tunnel the connection becomes follows it ([`Peer::closing`]); `None` outside a
    /// listener (tests).
    pub(super) closing: Option<tokio::sync::watch::Receiver<bool>>,
    /// What tells `closing` (its listener's `tunnels_stop`), with the rules of the listener
    /// that took its place once a reload removed it or changed its rules; `None` outside a
    /// listener.
    pub(super) rules: Option<Arc<ConnsStop>>,
    /// The certificate chain the client presented, leaf first (mutual-TLS listeners only).
    pub(super) chain: Option<Arc<[CertificateDer<'static>]>>,
    /// The connection's place among its listener's `max_connections`, and its count for the
    /// worker serving it; `None` outside a listener (tests).
    _held: Option<Held>,
}

impl Peer {
    /// The peer at `addr`; `tls` says whether its connection is TLS.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        Peer {
            addr,
            tls,
            cert: None,
            tls_epoch: 0,
            // An IPv4 client of a dual-stack listener comes as `::ffff:a.b.c.d`: written as
            // the IPv4 address it is.
            forwarded_for: ip_text(addr.ip().to_canonical()),
            closing: None,
            rules: None,
            chain: None,
            _held: None,
        }
    }

    /// The peer of a connection accepted at `addr`, holding `held` for as long as it lives.
    pub(super) fn holding(addr: SocketAddr, held: Held) -> Self {
        Peer {
            _held: Some(held),
            ..Peer::new(addr, false)
        }
    }

    /// Its listener's tunnel stop, for a tunnel the connection becomes (CONNECT, or an
    /// upgrade), which the connection's task no longer serves: it is cut at the end of the
    /// shutdown grace of the reload that told the stop ([`Peer::cut_at`]).
    pub fn closing(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.closing.clone()
    }

    /// When a tunnel the connection became is cut, once `closing` is told: the end of the
    /// grace of the reload that told it ([`ConnsStop::tell`]), however late the tunnel opened
    /// (a connection a removed listener's old socket still serves while it drains). `None`
    /// before it is told, and outside a listener.
    pub fn cut_at(&self) -> Option<tokio::time::Instant> {
        self.rules.as_ref().and_then(|r| r.until())
    }

    /// Whether the TLS rules a reload put in the place of those the connection was made under
    /// refuse it: its listener now has `tls` and the connection is plaintext, or a `client_ca`
    /// that does not verify the certificate it presented (or it presented none). A tunnel it
    /// became is then cut at once, not given the shutdown grace: a client the listener no
    /// longer trusts is not served for that long. `false` before any reload told it, for a
    /// drain, a listener removed with no listener renamed in its place, and rules that dropped
    /// `tls` or `client_ca`.
    pub fn refused_now(&self) -> bool {
        let Some(next) = self.rules.as_ref().and_then(|r| r.next.load_full()) else {
            return false;
        };
        if !self.tls {
            return true;
        }
        match &next.client_ca {
            None => false,
            Some(roots) => !self
                .chain
                .as_deref()
                .is_some_and(|chain| crate::tls::accepts_client(roots, chain)),
        }
    }

    /// What the connection says about its client, for tenant identification.
    pub fn conn(&self) -> crate::tenant::Conn<'_> {
        crate::tenant::Conn {
            cert: self.cert.as_ref(),
            ip: Some(&self.forwarded_for),
            addr: Some(self.addr.ip().to_canonical()),
        }
    }

    /// What the upstream writer adds to a try's request to `host` (an endpoint's authority,
    /// for a request without `host`), whose id is `request_id`.
    pub fn added<'a>(&'a self, host: &'a str, request_id: &'a HeaderValue) -> Added<'a> {
        Added {
            host,
            request_id,
            forwarded_for: &self.forwarded_for,
            https: self.tls,
            trailers: false,
            idle_ms: 0,
            deadline: None,
            waiting: None,
        }
    }
}

/// The lines of a client's request head that the request path would otherwise look up by
/// name: how many `host` lines and whether one is not `host[:port]`, whether it has
/// `x-request-id` and `x-forwarded-for`, and whether it has a forwarding name spelled with `_`
/// for some `-` ([`cgi_alias`]). The lean server notes them as it reads the head (a
/// comparison per line, no hashing); a request from hyper's server has its map read once
/// ([`Sent::of`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// `host` lines, counted up to 2 (two or more are refused alike).
    pub hosts: u8,
    /// A `host` line whose value is not `uri-host [":" port]` ([`authority::valid`]).
    pub bad_host: bool,
    /// An `x-request-id` line.
    pub request_id: bool,
    /// An `x-forwarded-for` line.
    pub forwarded_for: bool,
    /// A line named as one of rampart's forwarding lines with `_` for some `-` (`x_forwarded-for`):
    /// [`prepare_request`] removes it. Rare, so the request path then pays the lookups.
    pub underscored: bool,
    /// A line whose name has `_`, whatever the name. Without one the head holds no spelling
    /// with `_` of a name that has none ([`cgi_alias`]), and `tenant::Identify::vouch` walks
    /// no names to find one.
    pub any_underscore: bool,
}

impl Sent {
    /// What the map `headers` holds: one pass over its lines, as the lean server notes them
    /// (a request's few lines cost less to compare than three hashed lookups).
    pub fn of(headers: &HeaderMap) -> Self {
        let mut sent = Sent::default();
        for (name, value) in headers {
            sent.note(name, value.as_bytes());
        }
        sent
    }

    /// Notes a `host` line whose value is known to be `host[:port]` (checked before).
    pub fn note_valid_host(&mut self) {
        self.hosts = (self.hosts + 1).min(2);
    }

    /// Notes a line named `name` whose value is `value` (read only for `host`).
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) {
        self.note_as(Noted::of(name), value);
    }

    /// Notes a line whose name is `noted` ([`Noted::of`] its name) and whose value is `value`.
    pub fn note_as(&mut self, noted: Noted, value: &[u8]) {
        match noted {
            Noted::Host => {
                self.hosts = (self.hosts + 1).min(2);
                self.bad_host |= !authority::valid(value);
            }
            Noted::RequestId => self.request_id = true,
            Noted::ForwardedFor => self.forwarded_for = true,
            Noted::ForwardingAlias => {
                self.underscored = true;
                self.any_underscore = true;
            }
            Noted::Underscored => self.any_underscore = true,
            Noted::Other => {}
        }
    }
}

/// What [`Sent`] notes of a line by its name alone: decided once per name, so the lean server
/// keeps it with each name it keeps for a connection (`h1::parse::Reuse`) and a name sent again
/// is neither compared with these names nor scanned for `_` again (for a browser's head of
/// nine lines, 560 instructions a request less, 2.4 %, counted by callgrind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// `host`.
    Host,
    /// `x-request-id`.
    RequestId,
    /// `x-forwarded-for`.
    ForwardedFor,
    /// One of rampart's forwarding names spelled with `_` for some `-` ([`cgi_alias`]).
    ForwardingAlias,
    /// Any other name with `_`.
    Underscored,
    /// Any other name.
    Other,
}

impl Noted {
    /// What [`Sent`] notes of a line named `name`.
    pub fn of(name: &HeaderName) -> Self {
        if *name == header::HOST {
            Noted::Host
        } else if *name == X_REQUEST_ID {
            Noted::RequestId
        } else if *name == X_FORWARDED_FOR {
            Noted::ForwardedFor
        } else if name.as_str().as_bytes().contains(&b'_') {
            // A scan of the name's few bytes for `_` first: the names are compared only for one
            // that has it, which next to no request has.
            match alias_of(name, &FORWARDING) {
                true => Noted::ForwardingAlias,
                false => Noted::Underscored,
            }
        } else {
            Noted::Other
        }
    }
}

/// The lines the upstream writer adds to a request head after its map's lines, from what the
/// request path knows rather than from the map (which would be grown, hashed into and read
/// back for them on every request).
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    /// `host`, for a request whose map has none (HTTP/1.0): the endpoint's authority.
    pub host: &'a str,
    /// `x-request-id`, for a request whose map has none: the id the request path settled.
    pub request_id: &'a HeaderValue,
    /// `x-forwarded-for`, for a request whose map has none: the client's address.
    pub forwarded_for: &'a HeaderValue,
    /// `x-forwarded-proto`, always: whether the client used `https` (else `http`; a line the
    /// client sent is not written). A flag, not the word: with [`Added::deadline`] a
    /// reference, the try's future keeps its size.
    pub https: bool,
    /// The request may end in trailers that an HTTP/1.1 upstream would lose to a
    /// `content-length` (an HTTP/2 request whose head announces them in `trailer`): its body
    /// goes chunked whatever its length (`pool::h1::BodyKind::Trailed`).
    pub trailers: bool,
    /// The route's `timeout.idle` in milliseconds (0: off): not a line of the request either,
    /// but how long the upstream may keep rampart waiting for the next bytes of its answer
    /// (`pool::quiet`). A `u32` beside the flags, in what would be padding: the try's future
    /// keeps its size.
    pub idle_ms: u32,
    /// The request's deadline, if it has one: not a line of the request, but the bound on
    /// writing the rest of its upload once its answer has ended (see `pool::finish_upload`).
    pub deadline: Option<&'a tokio::time::Instant>,
    /// What the try waits for before its request is sent (`pool::WAIT_*`): a connection of
    /// the endpoint's HTTP/1.1 pool (`max_connections` in use), a stream of its HTTP/2
    /// connection (its `SETTINGS_MAX_CONCURRENT_STREAMS` reached), or a connection being made,
    /// so that a timeout can say the request was never sent, and count it as no try
    /// (`exchange::try_once`). `None`: not told.
    pub waiting: Option<&'a std::sync::atomic::AtomicU8>,
}

impl Added<'_> {
    /// The value of `x-forwarded-proto`.
    pub fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

/// Whether a field named `name` has no place in trailers (RFC 9110 §6.5.1): one a recipient
/// needs before the content, or that describes the connection, as RFC 7230 §4.1.2 listed them:
/// framing (`content-length`, `transfer-encoding`, `trailer`), routing (`host`), the hop
/// (`connection`, `keep-alive`, `proxy-connection`, `te`, `upgrade`), request modifiers
/// (controls and conditionals), authentication, response controls and content format. No
/// definition of these permits them in trailers, and a recipient that merged one into the head
/// (RFC 9110 §6.5.2 forbids it, some do) would read the message another way than rampart did.
pub fn forbidden_in_trailers(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "trailer"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "upgrade"
            | "cache-control"
            | "expect"
            | "max-forwards"
            | "pragma"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "if-range"
            | "authorization"
            | "proxy-authorization"
            | "www-authenticate"
            | "proxy-authenticate"
            | "cookie"
            | "set-cookie"
            | "age"
            | "date"
            | "expires"
            | "location"
            | "retry-after"
            | "vary"
            | "warning"
            | "content-encoding"
            | "content-type"
            | "content-range"
    )
}

/// Takes the fields that have no place in trailers ([`forbidden_in_trailers`]) out of
/// `trailers`, a message's trailer section, whichever way it goes (a client's upload's
/// trailers to the upstream, an upstream's answer's to the client). Called only for a body's
/// trailers, so a message without trailers costs nothing; one pass over their names when none
/// is forbidden.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    while let Some(name) = trailers.keys().find(|n| forbidden_in_trailers(n)).cloned() {
        trailers.remove(&name);
    }
}

/// The one place that decides what a client's request trailers lose: the fields that have no
/// place in trailers ([`strip_trailers`]), the forwarding lines rampart writes in the head
/// (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`), and `identity`, the names the
/// request's identity was read from (`tenant::Written::identity`: the tenant `header` sources',
/// `plan_header`); each also under any name a CGI-style upstream reads as it ([`cgi_alias`]:
/// `x_forwarded-for`, `x-tenant_id`). In the trailers, the client's own would reach the
/// upstream beside the lines rampart wrote or read, for one that merges trailers into the head
/// to read as the client's address, protocol, id or tenant. One pass over the names when none
/// goes.
pub fn strip_request_trailers(trailers: &mut HeaderMap, identity: &[HeaderName]) {
    let goes = |n: &HeaderName| {
        forbidden_in_trailers(n)
            || FORWARDING.contains(&n.as_str())
            || identity.contains(n)
            || alias_of(n, &FORWARDING)
            || alias_of(n, identity)
    };
    while let Some(name) = trailers.keys().find(|n| goes(n)).cloned() {
        trailers.remove(&name);
    }
}

/// Whether an answer of `status` goes to the client without `content-length`, whatever its
/// upstream said: RFC 9110 §8.6, a server must not send one in a 1xx or 204 answer (an HTTP/2
/// client may reset a stream that has one). The one rule for both upstream protocols: the
/// HTTP/1.1 reader never keeps the line (`pool::h1`), [`answer_length`] takes it out of an
/// HTTP/2 upstream's answer.
pub fn lengthless(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT || status.is_informational()
}

/// An HTTP/2 upstream's `content-length` as a client gets it: none in an answer that must not
/// have one ([`lengthless`]), else one field ([`one_length`]), as from an HTTP/1.1 upstream.
pub fn answer_length(status: StatusCode, headers: &mut HeaderMap) {
    if lengthless(status) {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        one_length(headers);
    }
}

/// Makes a repeated `content-length` one field. A sender may repeat it with the same value
/// (RFC 9110 §8.6), and the h2 library takes such an HTTP/2 message (it refuses values that
/// differ, or that are not digits); passed on as it came, an HTTP/1.1 upstream (nginx) reads
/// two `Content-Length` lines as a malformed request and an HTTP/2 client resets the stream.
/// hyper's HTTP/1.1 server already keeps one of them, so this is for what comes over HTTP/2
/// (a client's request, an HTTP/2 upstream's answer): one lookup when the field is not
/// repeated, nothing allocated.
pub fn one_length(headers: &mut HeaderMap) {
    let first = {
        let mut all = headers.get_all(header::CONTENT_LENGTH).iter();
        match (all.next(), all.next()) {
            (Some(first), Some(_)) => first.clone(),
            _ => return,
        }
    };
    headers.insert(header::CONTENT_LENGTH, first);
}

/// Removes hop-by-hop headers, including those named by `connection`; keeps transfer codings
/// other than `chunked`, and drops a `content-length` that a `transfer-encoding` overrides.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_sparing(headers, &[], false);
}

/// As [`strip_hop_by_hop`], but a `connection` list naming one of `spare` does not remove its
/// lines: they are rampart's own (the identity `tenant::Identify::vouch` wrote), not the
/// client's hop-by-hop ones. An empty `spare` costs nothing; a full one is looked at only for
/// a listed name that is not hop-by-hop already.
///
/// `te_trailers`: a request's `te` that lists `trailers` goes on as `te: trailers` (that token
/// alone): rampart relays an answer's trailers, and an upstream that sends them only to a
/// client that asks (hyper's server) is asked. Looked at only when a `te` line is there.
fn strip_sparing(headers: &mut HeaderMap, spare: &[HeaderName], te_trailers: bool) {
    // One pass over the names finds the hop-by-hop headers present. Most messages carry none,
    // and most others only `connection` (nginx answers `connection: keep-alive`): only those
    // present are then removed, each by one hashed lookup, instead of every name in the list.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Framing first, from the message as it came (a `connection` list naming
    // `transfer-encoding` does not make a stale length valid again).
    let mut codings = None;
    if present & TRANSFER_ENCODING_BIT != 0 {
        codings = end_to_end_codings(headers);
        // RFC 9112 §6.3: transfer-encoding wins; the length is stale.
        headers.remove(header::CONTENT_LENGTH);
    }
    if present & CONNECTION_BIT != 0 {
        // The names `connection` lists go too. Hop-by-hop ones go below with the rest; any
        // other is looked for among the names first (most lists name only `keep-alive` or
        // `close`, and no header is called `close`), so nothing is allocated or hashed unless
        // a listed header is really there.
        let mut others: Vec<HeaderName> = Vec::new();
        // Read as bytes: a line with a byte that is not ASCII still names the others it lists.
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if hop_index_any_case(t).is_some() || never_hop(t) || spared(spare, t) {
                    continue;
                }
                let here = headers
                    .keys()
                    .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(t));
                if let (true, Ok(n)) = (here, HeaderName::from_bytes(t)) {
                    others.push(n);
                }
            }
        }
        for n in others {
            headers.remove(n);
        }
    }
    let trailers = te_trailers && present & TE_BIT != 0 && super::grpc::reads_trailers(headers);
    remove_marked(headers, present);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(v) = codings {
        // The next hop adds its own `chunked` framing after these.
        headers.insert(header::TRANSFER_ENCODING, v);
    }
}

/// Gives a message whose hop-by-hop headers were removed the two that carry an upgrade
/// (`proxy::upgrade`) across this hop: `upgrade` with `protocols`, and `connection: upgrade`.
pub fn keep_upgrade(headers: &mut HeaderMap, protocols: HeaderValue) {
    headers.insert(header::UPGRADE, protocols);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Whether `token`, named by a `connection` list, is one of the names `spare` (any case).
fn spared(spare: &[HeaderName], token: &[u8]) -> bool {
    spare
        .iter()
        .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(token))
}

/// Whether `token`, named by a `connection` list, is a header no list may remove: `host` is
/// the message's authority, which chose the route and which the upstream must receive (SPEC
/// §14; RFC 9110 §7.2: it names the target, not the hop), and `content-length` its framing
/// (a HEAD answer's length is the resource's). Neither describes a connection, so such a
/// token is ignored rather than the request refused: a client gains nothing by it, and the
/// rest of its list is honoured.
fn never_hop(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"host") || token.eq_ignore_ascii_case(b"content-length")
}

/// Removes the [`HOP_BY_HOP`] headers whose bits are set in `mask`.
fn remove_marked(headers: &mut HeaderMap, mask: u16) {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if mask & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The place in [`HOP_BY_HOP`] of the lower-case header name `name`, if it is one. Called for
/// every header of every message: a match on the text (its length is compared first) is
/// cheaper than eight `HeaderName` comparisons.
pub(super) fn hop_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"connection" => 0,
        b"keep-alive" => 1,
        b"proxy-connection" => 2,
        b"proxy-authenticate" => 3,
        b"proxy-authorization" => 4,
        b"te" => 5,
        b"transfer-encoding" => 6,
        b"upgrade" => 7,
        _ => return None,
    })
}

/// [`hop_index`] of a name in any case (a token of a `connection` list: `Keep-Alive`).
fn hop_index_any_case(token: &[u8]) -> Option<usize> {
    let mut lower = [0u8; 20]; // the longest hop-by-hop name is 19 bytes
    let lower = lower.get_mut(..token.len())?;
    for (l, b) in lower.iter_mut().zip(token) {
        *l = b.to_ascii_lowercase();
    }
    hop_index(lower)
}

/// The transfer codings other than `chunked` (e.g. `gzip`), which describe the content the
/// next hop must decode, not this hop's framing.
fn end_to_end_codings(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut kept = String::new();
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        for c in v.to_str().ok()?.split(',').map(str::trim) {
            if !c.is_empty() && !c.eq_ignore_ascii_case("chunked") {
                if !kept.is_empty() {
                    kept.push_str(", ");
                }
                kept.push_str(c);
            }
        }
    }
    (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept).ok())
        .flatten()
}

/// Why a request's target or authority is refused (400 `bad_request`), if it is; `sent` says
/// what its head holds. Both servers' requests (and HTTP/2's) come through here.
///
/// The target is origin-form (`/path`) or absolute-form (`http://host/path`, as every HTTP/2
/// request with `:authority` is; the scheme http or https, and the path `/...`, or `*` for
/// OPTIONS); authority-form (`host:port`) is CONNECT's alone and `*`
/// OPTIONS' alone (RFC 9112 §3.2). `http::Uri` reads `echo` and `host:80` as authority-form,
/// which would otherwise be routed by it and forwarded as `GET /`. An origin-form request
/// costs a look at its path's first byte.
///
/// The target's authority (absolute-form, CONNECT's, HTTP/2's `:authority`) and every `host`
/// line must be `host[:port]` ([`authority::valid`], RFC 9112 §3.2), the authority without
/// userinfo: what is not would be routed one way and read another by the upstream.
pub fn authority_problem<B>(req: &Request<B>, sent: Sent) -> Option<&'static str> {
    let uri = req.uri();
    if req.method() == http::Method::CONNECT {
        // RFC 9110 §9.3.6: the target is exactly `host:port` (no userinfo, no path).
        let a = uri.authority();
        let well_formed = a
            .is_some_and(|a| authority::valid(a.as_str().as_bytes()) && a.port_u16().is_some())
            && uri
                .path_and_query()
                .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
        if !well_formed {
            return Some("a CONNECT target must be host:port");
        }
    } else if let Some(a) = uri.authority() {
        let Some(scheme) = uri.scheme_str() else {
            return Some("a host:port target is for CONNECT only: send a path or an absolute URI");
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            // `ftp://a/s` or HTTP/2's `:scheme gopher` would be forwarded as plain HTTP.
            return Some("the target's scheme must be http or https");
        }
        if a.as_str().contains('@') {
            // RFC 9110 §4.2.4 (RFC 9113 §8.3.1 for `:authority`): userinfo is deprecated, and
            // would reach the upstream in `host`, credentials and all.
            return Some("the target's authority must not carry userinfo (user:password@)");
        }
        if !authority::valid(a.as_str().as_bytes()) {
            return Some("the target's authority is not host[:port]");
        }
        // An absolute-form target's path always starts with `/` (`http::Uri` makes an empty one
        // `/`); HTTP/2's `:path` may be `*` (the `http` crate takes no other path without `/`),
        // and `GET *` would reach an HTTP/1.1 upstream as a request line no server reads (RFC
        // 9112 §3.2.4).
        let path = uri.path().as_bytes();
        if path.first() != Some(&b'/') && !(path == b"*" && req.method() == http::Method::OPTIONS) {
            return Some("the request's path must start with / (* is for OPTIONS only)");
        }
    } else if uri.path().as_bytes().first() != Some(&b'/') && req.method() != http::Method::OPTIONS
    {
        // `*`, the one target without an authority that is no path, is OPTIONS' alone.
        return Some("the request target must be a path (/...) or an absolute URI");
    }
    if sent.bad_host {
        return Some("the host header is not host[:port]");
    }
    if sent.hosts > 1 {
        return Some("the request carries more than one host header");
    }
    // RFC 9112 §3.2: a server MUST answer 400 to any HTTP/1.1 request without one, whatever
    // its target: neither an absolute-form target's authority (the one used when both are
    // sent) nor CONNECT's `host:port` stands in for it. HTTP/1.0 needs none. An HTTP/2 request
    // (http and https have an authority) needs `:authority` or `host` (RFC 9113 §8.3.1); the
    // h2 library leaves the target without an authority when `:authority` is missing.
    if sent.hosts == 0 {
        match req.version() {
            Version::HTTP_11 => return Some("an HTTP/1.1 request must carry a host header"),
            Version::HTTP_2 if uri.authority().is_none() => {
                return Some("an HTTP/2 request must carry :authority or a host header")
            }
            _ => {}
        }
    }
    None
}

/// Whether a request asks, by its target, to be carried over TLS past its client's own
/// connection: an HTTP/1.1 absolute-form `https://` target (the form clients send a proxy,
/// `HTTP_PROXY`), or HTTP/2's `:scheme https` on a cleartext (h2c) connection. HTTP/2 has no
/// proxy form: every request names a `:scheme`, and over TLS it is `https` whatever the
/// client wants of the hops behind, as an origin-form request over TLS names none; that one
/// asks nothing more. Checked by outbound listeners only (`stack::handle`).
pub fn asks_https<B>(req: &Request<B>, client_tls: bool) -> bool {
    let https = req
        .uri()
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    https && (req.version() < Version::HTTP_2 || !client_tls)
}

/// Marks an `OPTIONS` whose target was an absolute URI with no path and no query
/// (`OPTIONS http://x`), which goes to the upstream as `OPTIONS *` (RFC 9112 §3.2.4). Set by
/// the lean HTTP/1.1 server, which reads the target as sent; hyper's server hands rampart a
/// `Uri` whose empty path is already `/`, so a request it serves goes as `OPTIONS /`.
#[derive(Debug, Clone, Copy)]
pub struct AsteriskForm;

/// Prepares a client request for the upstream, once, before any try; `sent` says what its head
/// held, `spare` the names of the lines rampart wrote into it (`RequestCtx::spare`), which a
/// `connection` list does not remove. What rampart adds is written beside the map by the
/// upstream writer ([`Added`]). A `te` listing `trailers` goes on as `te: trailers` alone
/// (not an HTTP/1.0 client's, which could not be given them); any other `te` goes.
pub fn prepare_request<B>(req: &mut Request<B>, peer: &Peer, sent: Sent, spare: &[HeaderName]) {
    // One authority: the one the route was chosen by. An absolute-form target or h2
    // `:authority` overrides whatever `host` the client also sent.
    if let Some(a) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    // An HTTP/1.0 client cannot be given trailers (no chunks): its `te` goes.
    let te_trailers = req.version() != Version::HTTP_10;
    let h = req.headers_mut();
    strip_sparing(h, spare, te_trailers);
    if sent.underscored {
        remove_aliases(h, &FORWARDING);
    }
    if sent.forwarded_for {
        // The client's list (if a `connection` line did not name it) with the peer appended.
        append_forwarded_for(h, peer);
    }
    *req.version_mut() = Version::HTTP_11;
    // Upstream requests are origin-form; the authority travels in `host`.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = match req.uri().path_and_query() {
            // RFC 9112 §3.2.4: an OPTIONS of an absolute URI with an empty path and no query
            // asks about the server itself, and the last proxy (rampart: its upstream is the
            // origin) sends it as `OPTIONS *`; `http://x/` asks about `/` and stays so. `Uri`
            // makes both `/`: the lean server notes the first ([`AsteriskForm`]).
            _ if req.extensions().get::<AsteriskForm>().is_some() => PathAndQuery::from_static("*"),
            Some(pq) => pq.clone(),
            None => PathAndQuery::from_static("/"),
        };
        *req.uri_mut() = Uri::from(pq);
    }
}

/// `x-forwarded-for`: the client's list with the peer appended (as nginx's
/// `$proxy_add_x_forwarded_for`), or the peer alone.
fn append_forwarded_for(h: &mut HeaderMap, peer: &Peer) {
    let mut given = match h.entry(X_FORWARDED_FOR) {
        http::header::Entry::Vacant(v) => {
            v.insert(peer.forwarded_for.clone());
            return;
        }
        http::header::Entry::Occupied(o) => o,
    };
    let mut list = String::new();
    for v in given.iter() {
        if let Ok(v) = v.to_str() {
            list.push_str(v);
            list.push_str(", ");
        }
    }
    list.push_str(peer.forwarded_for.to_str().unwrap_or("unknown"));
    if let Ok(v) = HeaderValue::from_str(&list) {
        given.insert(v);
    }
}

/// Request ids cut per block of memory: a block is one allocation, shared by the ids cut from
/// it and freed when the last of them is (or used again, if this thread still holds it then).
const IDS_PER_BLOCK: usize = 32;

thread_local! {
    /// What is left of this thread's current block of request ids.
    static ID_BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A random 128-bit request id, as 32 hex digits.
///
/// Its bytes are cut from a block shared with the next ids made on this thread: the request
/// path clones an id twice (into the request and the answer), and a value of its own would cost
/// an allocation for its bytes and another for its shared count at the first clone.
pub fn new_request_id() -> HeaderValue {
    let mut hex = [0u8; 32];
    super::wire::put_hex(&mut hex, fastrand::u128(..));
    let bytes = ID_BLOCK
        .try_with(|b| {
            let mut b = b.borrow_mut();
            if b.capacity() < hex.len() {
                // The block is used up: taken back whole when every id cut from it is gone
                // (no allocation), else left to them and a new one taken.
                b.reserve(hex.len() * IDS_PER_BLOCK);
            }
            b.extend_from_slice(&hex);
            b.split().freeze()
        })
        .unwrap_or_else(|_| Bytes::copy_from_slice(&hex));
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| super::new_request_id().to_str().expect("ascii").to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        let mut seen = [false; 16];
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            for c in id.bytes() {
                let d = (c as char).to_digit(16).unwrap_or_else(|| panic!("{id}"));
                assert!(!c.is_ascii_uppercase(), "{id}");
                seen[d as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "every digit appears: {seen:?}");
    }

    #[test]
    fn request_ids_cut_from_shared_blocks_keep_their_bytes() {
        let kept: Vec<_> = (0..100).map(|_| super::new_request_id()).collect();
        let text: Vec<_> = kept.iter().map(|v| v.as_bytes().to_vec()).collect();
        let clones: Vec<_> = kept.iter().map(Clone::clone).collect();
        drop(kept);
        let later: Vec<_> = (0..100).map(|_| super::new_request_id()).collect();
        for (c, t) in clones.iter().zip(&text) {
            assert_eq!(c.as_bytes(), t.as_slice());
            assert_eq!(c.len(), 32);
        }
        assert!(later
            .iter()
            .all(|l| !text.iter().any(|t| l.as_bytes() == t.as_slice())));
    }

    #[test]
    fn a_used_up_block_whose_ids_are_all_gone_is_used_again() {
        let first = super::new_request_id();
        let start = first.as_bytes().as_ptr();
        drop(first);
        let again = (0..2 * super::IDS_PER_BLOCK)
            .any(|_| super::new_request_id().as_bytes().as_ptr() == start);
        assert!(again, "no id was cut from the first block's start again");
        // While an id lives, its bytes are never cut over.
        let held = super::new_request_id();
        let text = held.as_bytes().to_vec();
        for _ in 0..2 * super::IDS_PER_BLOCK {
            let id = super::new_request_id();
            assert_ne!(id.as_bytes().as_ptr(), held.as_bytes().as_ptr());
        }
        assert_eq!(held.as_bytes(), text.as_slice());
    }

    #[test]
    fn the_fast_check_knows_every_hop_by_hop_name() {
        for (i, n) in super::HOP_BY_HOP.iter().enumerate() {
            assert_eq!(super::hop_index(n.as_str().as_bytes()), Some(i), "{n}");
            let upper = n.as_str().to_ascii_uppercase();
            assert_eq!(super::hop_index_any_case(upper.as_bytes()), Some(i), "{n}");
        }
        for n in [
            "x-keep",
            "content-length",
            "host",
            "teapot",
            "t",
            "close",
            "",
        ] {
            assert_eq!(super::hop_index(n.as_bytes()), None, "{n}");
        }
        assert_eq!(super::hop_index_any_case(&[b'a'; 64]), None);
        assert_eq!(
            super::hop_index(b"Connection"),
            None,
            "names are lower case"
        );
    }

    use super::*;
    use crate::proxy::pool::h1::{encode_head, BodyKind};

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn names_listed_by_connection_go_in_any_case_and_only_when_present() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Close, X-Secret"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive,,"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-keep", "content-length"]);
        // Only `connection: keep-alive`, as nginx answers: the rest stays as it was.
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        assert_eq!(h[header::SERVER], "nginx");
    }

    /// The lines rampart wrote (a verified tenant, its plan) are spared by a `connection` list
    /// naming them, in any case; the list's other names still go, and without `spare` the same
    /// list removes them all.
    #[test]
    fn a_connection_list_does_not_remove_the_lines_rampart_wrote() {
        let spare = [
            HeaderName::from_static("x-tenant-id"),
            HeaderName::from_static("x-tenant-plan"),
        ];
        let head = || {
            let mut req = Request::new(());
            let h = req.headers_mut();
            h.insert(header::HOST, HeaderValue::from_static("svc"));
            let list = "keep-alive, X-Tenant-Id, x-gone,X-TENANT-PLAN";
            h.insert(header::CONNECTION, HeaderValue::from_static(list));
            h.insert("x-tenant-id", HeaderValue::from_static("acme"));
            h.insert("x-tenant-plan", HeaderValue::from_static("gold"));
            h.insert("x-gone", HeaderValue::from_static("1"));
            req
        };
        let peer = Peer::new("10.1.2.3:5555".parse().expect("addr"), false);
        let mut req = head();
        let sent = Sent::of(req.headers());
        prepare_request(&mut req, &peer, sent, &spare);
        let mut left: Vec<&str> = req.headers().keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-tenant-id", "x-tenant-plan"]);
        assert_eq!(req.headers()["x-tenant-id"], "acme");
        let mut req = head();
        let sent = Sent::of(req.headers());
        prepare_request(&mut req, &peer, sent, &[]);
        let left: Vec<&str> = req.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host"], "nothing to spare");
    }

    #[test]
    fn a_repeated_content_length_becomes_one_field() {
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        one_length(&mut h);
        let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["5"]);
        assert_eq!(h.len(), 2);
        // One, or none: nothing changes.
        for n in [0, 1] {
            let mut h = HeaderMap::new();
            if n == 1 {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
            }
            let before = h.clone();
            one_length(&mut h);
            assert_eq!(h, before);
        }
    }

    #[test]
    fn a_connection_line_with_a_byte_that_is_not_ascii_still_names_its_headers() {
        let mut h = HeaderMap::new();
        let hostile = HeaderValue::from_bytes(b"x-secret, \xffkeep-alive,, \tX-Other\t")
            .expect("obs-text is a valid value");
        h.insert(header::CONNECTION, hostile);
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn a_connection_list_naming_transfer_encoding_does_not_keep_a_stale_length() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("transfer-encoding"),
        );
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(h[header::TRANSFER_ENCODING], "gzip");
        assert_eq!(h.len(), 1);
    }

    /// The peer's address as `x-forwarded-for` and `client_ip: peer` read it: as the standard
    /// library writes it, an IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) as IPv4.
    #[test]
    fn a_peer_s_address_is_written_as_the_standard_library_writes_it() {
        for addr in [
            "10.1.2.3:5555",
            "255.255.255.255:1",
            "0.0.0.0:2",
            "100.10.99.9:3",
            "127.0.0.1:4",
            "[::1]:80",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:443",
            "[::ffff:255.255.255.255]:8080",
            "[fe80::1:2:3:4]:9",
        ] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let peer = Peer::new(addr, false);
            assert_eq!(
                peer.forwarded_for,
                addr.ip().to_canonical().to_string(),
                "{addr}"
            );
            assert_eq!(peer.conn().ip, Some(&peer.forwarded_for));
        }
        let mapped = Peer::new("[::ffff:198.51.100.1]:1".parse().expect("addr"), false);
        assert_eq!(mapped.forwarded_for, "198.51.100.1");
    }

    /// The head the upstream writer sends for `req`, prepared for a client at 10.1.2.3 (over
    /// TLS if `tls`) to an endpoint at `svc:8080`, whose id rampart made as "made".
    fn upstream_head(mut req: Request<()>, tls: bool) -> String {
        let peer = Peer::new("10.1.2.3:5555".parse().expect("addr"), tls);
        let sent = Sent::of(req.headers());
        prepare_request(&mut req, &peer, sent, &[]);
        let id = HeaderValue::from_static("made");
        let added = peer.added("svc:8080", &id);
        let mut dst = Vec::new();
        let (m, u, h) = (req.method(), req.uri(), req.headers());
        encode_head(&mut dst, m, u, h, Some(&added), BodyKind::Empty);
        String::from_utf8(dst).expect("ascii")
    }

    #[test]
    fn adds_forwarding_headers_when_absent() {
        let req = Request::builder()
            .uri("/a")
            .header("host", "given.example")
            .header("x-request-id", "given")
            .body(())
            .expect("request");
        assert_eq!(
            upstream_head(req, false),
            "GET /a HTTP/1.1\r\nhost: given.example\r\nx-request-id: given\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let req = Request::builder()
            .uri("http://svc:81/a?b=1")
            .body(())
            .expect("request");
        assert_eq!(
            upstream_head(req, true),
            "GET /a?b=1 HTTP/1.1\r\nhost: svc:81\r\nx-request-id: made\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: https\r\n\r\n",
            "the target's authority is the host; the id made is sent"
        );
        let req = Request::builder()
            .uri("/")
            .version(Version::HTTP_10)
            .body(())
            .expect("request");
        assert!(
            upstream_head(req, false).contains("\r\nhost: svc:8080\r\n"),
            "a request without any authority names the endpoint"
        );
    }

    #[test]
    fn the_truth_of_the_connection_replaces_what_the_client_claims() {
        let req = Request::builder()
            .uri("http://real.example/x")
            .header("host", "other.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "192.0.2.7")
            .header("X-Forwarded-Proto", "https, wss")
            .body(())
            .expect("request");
        let head = upstream_head(req, false);
        assert_eq!(
            head,
            "GET /x HTTP/1.1\r\nhost: real.example\r\n\
             x-forwarded-for: 192.0.2.7, 10.1.2.3\r\nx-request-id: made\r\n\
             x-forwarded-proto: http\r\n\r\n",
            "the routed authority is forwarded, the list extended, every claimed protocol replaced"
        );
    }

    /// A client's forwarding names spelled with `_` for `-`, which CGI-style upstreams read as
    /// rampart's own (`HTTP_X_FORWARDED_FOR`), never reach the upstream; a name that merely
    /// starts `x_` passes.
    #[test]
    fn underscore_spellings_of_the_forwarding_names_go() {
        let req = Request::builder()
            .uri("/")
            .header("host", "given.example")
            .header("X_Forwarded_For", "192.0.2.66")
            .header("x_forwarded_proto", "https")
            .header("x_request_id", "forged")
            .header("x_other", "kept")
            .body(())
            .expect("request");
        assert_eq!(
            upstream_head(req, false),
            "GET / HTTP/1.1\r\nhost: given.example\r\nx_other: kept\r\nx-request-id: made\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let mut plain = HeaderMap::new();
        plain.insert("x_other", HeaderValue::from_static("kept"));
        assert!(
            !Sent::of(&plain).underscored,
            "no lookups for a name only starting x_"
        );
        let mut trailers = HeaderMap::new();
        for n in [
            "x_forwarded_for",
            "x_forwarded_proto",
            "x_request_id",
            "x_other",
        ] {
            trailers.insert(n, HeaderValue::from_static("v"));
        }
        strip_request_trailers(&mut trailers, &[]);
        let left: Vec<&str> = trailers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x_other"]);
    }

    /// A CGI-style upstream's reading: `_` and `-` are one, so any mix of them in a protected
    /// name's place is that name; the name itself, another length or another letter is not.
    #[test]
    fn a_cgi_alias_is_any_mix_of_underscore_and_dash() {
        for alias in ["x_forwarded_for", "x-forwarded_for", "x_forwarded-for"] {
            assert!(cgi_alias(alias, "x-forwarded-for"), "{alias}");
        }
        for other in [
            "x-forwarded-for",
            "x-forwarded_fo",
            "x-forwarded_fox",
            "x_forwarded",
        ] {
            assert!(!cgi_alias(other, "x-forwarded-for"), "{other}");
        }
        // A configured name spelled with `_` has its `-` spellings too.
        assert!(cgi_alias("x-tenant", "x_tenant"));
        assert!(!cgi_alias("x_tenant", "x_tenant"));
        let mut h = HeaderMap::new();
        for n in ["x-tenant-id", "x-tenant_id", "x_tenant-id", "x_tenant_idx"] {
            h.append(n, HeaderValue::from_static("v"));
        }
        remove_aliases(&mut h, &["x-tenant-id"]);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-tenant-id", "x_tenant_idx"]);
    }

    #[test]
    fn a_forwarding_line_the_connection_list_names_is_the_peer_s_alone() {
        // `connection` makes the client's `x-forwarded-for` hop-by-hop: it goes, and the writer
        // gives the request what it would give one that never had it. `host` it cannot name:
        // the routed authority stays (before, the endpoint's address replaced it).
        let req = Request::builder()
            .uri("/")
            .header("host", "given.example")
            .header("connection", "x-forwarded-for, Host")
            .header("x-forwarded-for", "192.0.2.7")
            .body(())
            .expect("request");
        assert_eq!(
            upstream_head(req, false),
            "GET / HTTP/1.1\r\nhost: given.example\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-request-id: made\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let req = Request::builder()
            .uri("http://routed.example/x")
            .header("connection", "host")
            .body(())
            .expect("request");
        assert!(
            upstream_head(req, false).contains("\r\nhost: routed.example\r\n"),
            "the absolute-form target's authority stays"
        );
    }

    #[test]
    fn a_connection_list_naming_host_or_content_length_leaves_them() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("HOST, Content-Length, x-other"),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "content-length"]);
    }

    #[test]
    fn sent_counts_hosts_and_notes_the_forwarding_lines_in_any_spelling() {
        let mut by_line = Sent::default();
        for n in ["Host", "X-Request-Id", "user-agent", "HOST", "HOST"] {
            by_line.note(&HeaderName::from_bytes(n.as_bytes()).expect("name"), b"a:1");
        }
        assert_eq!(
            by_line,
            Sent {
                hosts: 2,
                bad_host: false,
                request_id: true,
                forwarded_for: false,
                underscored: false,
                any_underscore: false,
            }
        );
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.7"));
        assert_eq!(
            Sent::of(&h),
            Sent {
                hosts: 1,
                bad_host: false,
                request_id: false,
                forwarded_for: true,
                underscored: false,
                any_underscore: false,
            }
        );
        // A name's every line counts, as the lean server counts them.
        h.append(header::HOST, HeaderValue::from_static("b"));
        h.append(X_REQUEST_ID, HeaderValue::from_static("r"));
        assert_eq!(
            Sent::of(&h),
            Sent {
                hosts: 2,
                bad_host: false,
                request_id: true,
                forwarded_for: true,
                underscored: false,
                any_underscore: false,
            }
        );
    }

    #[test]
    fn transfer_codings_other_than_chunked_survive_and_a_stale_length_goes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::TRANSFER_ENCODING], "gzip");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.is_empty(),
            "chunked is the hop's own framing; the length is stale"
        );
    }

    #[test]
    fn a_host_or_target_authority_that_is_not_host_and_port_is_refused() {
        let with_host = |host: &'static str| {
            let req = Request::builder()
                .uri("/")
                .header("host", host)
                .body(())
                .expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        assert_eq!(with_host("a.example:80"), None);
        for bad in [
            "evil.com/x?@a.example",
            "a b",
            "a, b",
            "a:abc",
            "a:99999999",
        ] {
            assert_eq!(
                with_host(bad),
                Some("the host header is not host[:port]"),
                "{bad}"
            );
        }
        let target = |uri: &'static str| {
            let req = Request::builder()
                .uri(uri)
                .header("host", "a.example")
                .body(())
                .expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        assert_eq!(target("http://a.example:8080/x"), None);
        assert!(target("http://user:pw@a.example/x").is_some_and(|m| m.contains("userinfo")));
        assert!(target("http://u@a.example/x").is_some_and(|m| m.contains("userinfo")));
        assert!(target("http://a.example:abc/x").is_some());
        let connect = |uri: &'static str| {
            let req = Request::builder()
                .method(http::Method::CONNECT)
                .uri(uri)
                .header("host", uri)
                .body(())
                .expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        assert_eq!(connect("a.example:443"), None);
        assert!(connect("a.example:99999").is_some());
        assert!(connect("u@a.example:443").is_some());
    }

    #[test]
    fn a_target_is_a_path_or_an_absolute_uri_and_the_other_forms_have_their_methods() {
        let problem = |method: &str, target: &'static str| {
            let req = Request::builder()
                .method(method)
                .uri(target)
                .header("host", "a.example")
                .body(())
                .expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        for (method, target) in [
            ("GET", "/"),
            ("GET", "/x?y"),
            ("GET", "http://a.example/x"),
            ("GET", "http://a.example"),
            ("OPTIONS", "*"),
            ("OPTIONS", "/x"),
            ("CONNECT", "a.example:443"),
        ] {
            assert_eq!(problem(method, target), None, "{method} {target}");
        }
        for (method, target) in [
            ("GET", "echo"),
            ("GET", "a.example:80"),
            ("OPTIONS", "a.example:80"),
            ("GET", "*"),
            ("POST", "*"),
            ("CONNECT", "*"),
            ("CONNECT", "/x"),
            ("GET", "ftp://a.example/s"),
            ("GET", "gopher://a.example/"),
        ] {
            assert!(problem(method, target).is_some(), "{method} {target}");
        }
        assert_eq!(problem("GET", "HTTPS://a.example/x"), None);
        // HTTP/2's `:path` as sent, beside its `:scheme` and `:authority`.
        let h2 = |method: &str, path: &'static str| {
            let uri = Uri::from_parts({
                let mut p = http::uri::Parts::default();
                p.scheme = Some(http::uri::Scheme::HTTP);
                p.authority = Some(http::uri::Authority::from_static("a.example"));
                p.path_and_query = Some(http::uri::PathAndQuery::try_from(path).expect(path));
                p
            })
            .expect("uri");
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .version(Version::HTTP_2)
                .body(())
                .expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        assert_eq!(h2("GET", "/x"), None);
        assert_eq!(h2("OPTIONS", "*"), None);
        for (method, path) in [("GET", "*"), ("POST", "*")] {
            assert!(h2(method, path).is_some(), "{method} {path}");
        }
    }

    #[test]
    fn duplicate_or_missing_host_is_refused() {
        let two = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .expect("request");
        assert!(authority_problem(&two, Sent::of(two.headers())).is_some());
        for target in ["/", "http://a.example/x"] {
            let none = Request::builder().uri(target).body(()).expect("request");
            let sent = Sent::of(none.headers());
            assert!(authority_problem(&none, sent).is_some(), "{target}");
            let h10 = Request::builder()
                .uri(target)
                .version(Version::HTTP_10)
                .body(())
                .expect("request");
            let sent = Sent::of(h10.headers());
            assert!(
                authority_problem(&h10, sent).is_none(),
                "HTTP/1.0 needs no host: {target}"
            );
        }
        let connect = |version| {
            Request::builder()
                .method(http::Method::CONNECT)
                .uri("app.internal:80")
                .version(version)
                .body(())
                .expect("request")
        };
        // HTTP/2 without `:authority` (a target of a path alone) needs a `host` line.
        let bare = |host: Option<&str>| {
            let mut b = Request::builder().uri("/").version(Version::HTTP_2);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            let req = b.body(()).expect("request");
            authority_problem(&req, Sent::of(req.headers()))
        };
        assert!(bare(None).is_some());
        assert_eq!(bare(Some("a.example")), None);
        let c11 = connect(Version::HTTP_11);
        assert!(authority_problem(&c11, Sent::of(c11.headers())).is_some());
        for v in [Version::HTTP_10, Version::HTTP_2] {
            let c = connect(v);
            assert!(
                authority_problem(&c, Sent::of(c.headers())).is_none(),
                "{v:?}"
            );
        }
    }
}
