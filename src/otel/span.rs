//! The spans of one request: a SERVER span for the request, a CLIENT span for each try.
//!
//! A span is a boxed [`SpanRecord`] filled from values the request path holds anyway (shared
//! names are `Arc` clones, numbers are copied); it is turned into OTLP messages by the exporter
//! task, off the request path. Each span is sent when it ends: the SERVER span when the answer's
//! body has ended (it rides in the request's guards, like the access log line), a CLIENT span
//! when its try's outcome is recorded (the answer's head, or the try's end without one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request};
use tokio::time::Instant;

use super::{Exporter, Trace};
use crate::policy::outcome::Outcome;
use crate::tenant::TenantId;

/// OTLP span kinds rampart records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Server,
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Val {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    Int(i64),
}

/// Attributes, by their OpenTelemetry names.
pub(super) type Attrs = Vec<(&'static str, Val)>;

/// Something that happened during a span.
#[derive(Debug)]
pub(super) struct Event {
    pub(super) name: &'static str,
    pub(super) at: SystemTime,
    pub(super) attrs: Attrs,
}

/// One finished (or finishing) span, as the exporter encodes it.
#[derive(Debug)]
pub(super) struct SpanRecord {
    pub(super) trace_id: u128,
    pub(super) span_id: u64,
    pub(super) parent_id: Option<u64>,
    /// Whether the parent is the client's span (another process).
    pub(super) remote_parent: bool,
    /// The W3C `tracestate` that travels with the span's context: the client's, when its
    /// `traceparent` was continued (the upstream is passed it too).
    pub(super) trace_state: Option<Arc<str>>,
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) start: SystemTime,
    pub(super) end: SystemTime,
    pub(super) attrs: Attrs,
    pub(super) events: Vec<Event>,
    /// `Some(message)`: the span's status is Error.
    pub(super) error: Option<String>,
}

/// The SERVER span of a sampled request; sent to the exporter when dropped.
///
/// One pointer wide: it rides in every request's guards (as `None` when not sampled).
#[derive(Debug)]
pub struct ServerSpan(Box<Live>);

#[derive(Debug)]
struct Live {
    /// Taken when sent.
    rec: Option<Box<SpanRecord>>,
    mono: Instant,
    exporter: Arc<Exporter>,
}

/// What a try's span needs of its request's trace: the SERVER span is its parent.
#[derive(Clone, Debug)]
pub struct SpanParent<'a> {
    trace_id: u128,
    span_id: u64,
    /// The SERVER span's `tracestate`, which the tries pass on with their `traceparent`.
    trace_state: Option<Arc<str>>,
    /// The SERVER span's start, wall clock and monotonic: children are placed on the same time
    /// line, so a try never appears to start before its request.
    wall: SystemTime,
    mono: Instant,
    exporter: &'a Exporter,
}

/// The CLIENT span of one try.
#[derive(Debug)]
pub struct ClientSpan<'a> {
    parent: SpanParent<'a>,
    span_id: u64,
    start: SystemTime,
    method: Method,
    try_n: u32,
}

/// Where a try went.
#[derive(Clone, Copy, Debug)]
pub struct TryTarget<'a> {
    /// The upstream's name.
    pub upstream: &'a Arc<str>,
    /// The endpoint's label (`ip:port`).
    pub endpoint: &'a Arc<str>,
    /// The DNS name the endpoint was resolved from, if any.
    pub host: Option<&'a Arc<str>>,
    /// Its address.
    pub addr: SocketAddr,
}

/// How a request was answered, for its SERVER span.
#[derive(Debug)]
pub struct Answered<'a> {
    /// The answer's status.
    pub status: u16,
    /// The route that matched, and its upstream.
    pub route: Option<(&'a Arc<str>, &'a Arc<str>)>,
    /// The tenant, once known.
    pub tenant: Option<&'a TenantId>,
    /// `x-rampart-reason`, when rampart answered itself.
    pub reason: Option<&'a HeaderValue>,
    /// The rate limit that refused, if one did.
    pub limit: Option<&'a str>,
    /// Tries sent to the upstream.
    pub tries: u32,
    /// The last try's endpoint.
    pub endpoint: Option<SocketAddr>,
}

// === impl SpanRecord ===

impl SpanRecord {
    /// The bytes this span holds, as the export queue's budget counts them
    /// ([`QUEUE_BYTES`](super::export::QUEUE_BYTES)): its record, its attribute and event
    /// vectors, the strings it owns and its `tracestate` (names shared with the config are
    /// not its own). The same for as long as the span is queued: it is not changed once
    /// pushed.
    pub(super) fn weight(&self) -> usize {
        fn attrs(a: &Attrs) -> usize {
            let owned = a.iter().map(|(_, v)| match v {
                Val::Owned(s) => s.capacity(),
                Val::Static(_) | Val::Shared(_) | Val::Int(_) => 0,
            });
            a.capacity() * std::mem::size_of::<(&str, Val)>() + owned.sum::<usize>()
        }
        let events = self.events.capacity() * std::mem::size_of::<Event>()
            + self.events.iter().map(|e| attrs(&e.attrs)).sum::<usize>();
        std::mem::size_of::<Self>()
            + self.name.capacity()
            + attrs(&self.attrs)
            + events
            + self.trace_state.as_deref().map_or(0, str::len)
            + self.error.as_ref().map_or(0, String::capacity)
    }
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Starts the SERVER span of `req` (trace `trace`, sampled), which arrived at `mono` on
    /// listener `listener`.
    pub fn begin<B>(
        trace: &Trace,
        exporter: &Arc<Exporter>,
        req: &Request<B>,
        mono: Instant,
        listener: &Arc<str>,
    ) -> ServerSpan {
        let wall = SystemTime::now()
            .checked_sub(mono.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut attrs = Attrs::with_capacity(12);
        attrs.push(("http.request.method", method_val(req.method())));
        attrs.push(("url.path", Val::Owned(req.uri().path().to_owned())));
        if let Some((host, port)) = server_address(req) {
            attrs.push(("server.address", Val::Owned(host.to_owned())));
            if let Some(p) = port {
                attrs.push(("server.port", Val::Int(i64::from(p))));
            }
        }
        attrs.push(("rampart.listener", Val::Shared(listener.clone())));
        // A continued trace keeps the client's state (`Tracer::start` dropped it otherwise).
        let trace_state = trace.remote_parent.and_then(|_| trace_state(req.headers()));
        ServerSpan(Box::new(Live {
            rec: Some(Box::new(SpanRecord {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_id: trace.remote_parent,
                remote_parent: trace.remote_parent.is_some(),
                trace_state,
                kind: Kind::Server,
                name: method_name(req.method()).to_owned(),
                start: wall,
                end: wall,
                attrs,
                events: Vec::new(),
                error: None,
            })),
            mono,
            exporter: exporter.clone(),
        }))
    }

    /// The parent of this request's try spans, whose spans go to `exporter` (this span's
    /// own, borrowed for as long as the caller holds it rather than from the span).
    pub fn parent<'a>(&self, exporter: &'a Exporter) -> Option<SpanParent<'a>> {
        let rec = self.0.rec.as_deref()?;
        Some(SpanParent {
            trace_id: rec.trace_id,
            span_id: rec.span_id,
            trace_state: rec.trace_state.clone(),
            wall: rec.start,
            mono: self.0.mono,
            exporter,
        })
    }

    /// Records how the request was answered; an answer rampart made itself adds an event
    /// (`rampart.refused` before any try, `rampart.failed` after tries) naming the reason.
    pub fn answered(&mut self, a: Answered<'_>) {
        let live = &mut *self.0;
        let Some(r) = live.rec.as_deref_mut() else {
            return;
        };
        let at = r.start + live.mono.elapsed();
        r.attrs
            .push(("http.response.status_code", Val::Int(i64::from(a.status))));
        if let Some((route, upstream)) = a.route {
            r.name = format!("{} {route}", r.name);
            r.attrs.push(("rampart.route", Val::Shared(route.clone())));
            r.attrs
                .push(("rampart.upstream", Val::Shared(upstream.clone())));
        }
        if let Some(t) = a.tenant {
            r.attrs
                .push(("rampart.tenant", Val::Owned(t.as_str().to_owned())));
        }
        r.attrs.push(("rampart.try", Val::Int(i64::from(a.tries))));
        if let Some(ep) = a.endpoint {
            r.attrs
                .push(("rampart.endpoint", Val::Owned(ep.to_string())));
        }
        let reason = a.reason.and_then(|v| v.to_str().ok());
        if let Some(reason) = reason {
            r.attrs
                .push(("rampart.reason", Val::Owned(reason.to_owned())));
            let mut attrs = vec![
                ("rampart.reason", Val::Owned(reason.to_owned())),
                ("http.response.status_code", Val::Int(i64::from(a.status))),
            ];
            if let Some(l) = a.limit {
                attrs.push(("rampart.limit", Val::Owned(l.to_owned())));
                r.attrs.push(("rampart.limit", Val::Owned(l.to_owned())));
            }
            let name = if a.tries == 0 {
                "rampart.refused"
            } else {
                "rampart.failed"
            };
            r.events.push(Event { name, at, attrs });
        }
        if a.status >= 500 {
            // Server spans: only 5xx are errors (4xx are the client's).
            r.attrs
                .push(("error.type", Val::Owned(a.status.to_string())));
            r.error = Some(reason.unwrap_or("server error").to_owned());
        }
    }

    /// The gRPC status a gRPC call's answer gave (its head's, or its trailers' once the stream
    /// ends): `rpc.grpc.status_code`, once, and the span's status Error for the codes
    /// OpenTelemetry's gRPC conventions count as a server's errors (UNKNOWN, DEADLINE_EXCEEDED,
    /// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
    pub fn grpc_status(&mut self, code: u8) {
        const KEY: &str = "rpc.grpc.status_code";
        let Some(r) = self.0.rec.as_deref_mut() else {
            return;
        };
        if r.attrs.iter().any(|(k, _)| *k == KEY) {
            return;
        }
        r.attrs.push((KEY, Val::Int(i64::from(code))));
        if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) && r.error.is_none() {
            r.error = Some(format!("grpc-status {code}"));
        }
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        let live = &mut *self.0;
        if let Some(mut rec) = live.rec.take() {
            rec.end = rec.start + live.mono.elapsed();
            live.exporter.push(rec);
        }
    }
}

// === impl ClientSpan ===

impl<'a> ClientSpan<'a> {
    /// Starts the span of try number `try_n` (from 1) of a `method` request, begun at `at`:
    /// the instant its `took` is measured from ([`ClientSpan::end`]), placed on the SERVER
    /// span's clock, so a try that ends before its request ends before its SERVER span (two
    /// readings of the wall clock could put it a few microseconds after).
    pub fn begin(parent: SpanParent<'a>, method: &Method, try_n: u32, at: Instant) -> Self {
        ClientSpan {
            span_id: super::context::span_id(),
            start: parent.wall + at.saturating_duration_since(parent.mono),
            parent,
            method: method.clone(),
            try_n,
        }
    }

    /// The `traceparent` the upstream gets for this try: this span is its parent.
    pub fn traceparent(&self) -> HeaderValue {
        super::TraceParent {
            trace_id: self.parent.trace_id,
            parent_id: self.span_id,
            flags: 1,
        }
        .to_header()
    }

    /// Ends the span: the try to `to` ended with `outcome` after `took`.
    pub fn end(self, to: TryTarget<'_>, outcome: Outcome, took: Duration) {
        let mut attrs = Attrs::with_capacity(10);
        attrs.push(("http.request.method", method_val(&self.method)));
        let server = match to.host {
            Some(h) => Val::Shared(h.clone()),
            None => Val::Owned(to.addr.ip().to_string()),
        };
        attrs.push(("server.address", server));
        attrs.push(("server.port", Val::Int(i64::from(to.addr.port()))));
        attrs.push(("rampart.upstream", Val::Shared(to.upstream.clone())));
        attrs.push(("rampart.endpoint", Val::Shared(to.endpoint.clone())));
        attrs.push(("rampart.try", Val::Int(i64::from(self.try_n))));
        let (error, reason) = match outcome {
            Outcome::Status(code) => {
                attrs.push(("http.response.status_code", Val::Int(i64::from(code))));
                // Client spans: 4xx and 5xx are errors (OpenTelemetry HTTP conventions).
                ((code >= 400).then(|| code.to_string()), None)
            }
            Outcome::ConnectError => (Some("connect_error".into()), Some("upstream_unavailable")),
            Outcome::Reset => (Some("reset".into()), Some("upstream_unavailable")),
            Outcome::Timeout => (Some("timeout".into()), Some("timeout")),
            Outcome::Cancelled => (Some("cancelled".into()), None),
            Outcome::ClientFault => (Some("client_fault".into()), None),
            Outcome::Unsent => (Some("unsent".into()), Some("timeout")),
        };
        if let Some(r) = reason {
            attrs.push(("rampart.reason", Val::Static(r)));
        }
        if let Some(e) = &error {
            attrs.push(("error.type", Val::Owned(e.clone())));
        }
        let rec = SpanRecord {
            trace_id: self.parent.trace_id,
            span_id: self.span_id,
            parent_id: Some(self.parent.span_id),
            remote_parent: false,
            trace_state: self.parent.trace_state,
            kind: Kind::Client,
            name: format!("{} {}", method_name(&self.method), to.upstream),
            start: self.start,
            end: self.start + took,
            attrs,
            events: Vec::new(),
            error,
        };
        self.parent.exporter.push(Box::new(rec));
    }
}

/// `http.request.method`: the standard methods by name, any other as `_OTHER` (the
/// conventions' rule, which also keeps a client's made-up methods out of span attributes).
fn method_val(m: &Method) -> Val {
    match known_method(m) {
        Some(k) => Val::Static(k),
        None => Val::Static("_OTHER"),
    }
}

/// A span's name starts with its method, or `HTTP` for a method outside the standard ones.
fn method_name(m: &Method) -> &'static str {
    known_method(m).unwrap_or("HTTP")
}

/// The methods of RFC 9110 §9, and PATCH (RFC 5789), as written.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The standard method `m` is, if it is one.
fn known_method(m: &Method) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|k| *k == m.as_str())
}

/// The `tracestate` of `headers` for a span: its lines joined as one list (W3C trace context
/// §3.3.1.1: several lines are one list, in order), if any is text and not empty, and only when
/// the list is valid ([`valid_trace_state`]): an invalid or oversized one is dropped, as the
/// OpenTelemetry SDKs drop it, so a client cannot put kilobytes or junk into every span. The
/// request's own lines pass to the upstream as sent either way (W3C: a vendor passes on what it
/// received).
pub(super) fn trace_state(headers: &http::HeaderMap) -> Option<Arc<str>> {
    let mut lines = headers
        .get_all(super::TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return valid_trace_state(first).then(|| Arc::from(first));
    };
    let mut list = format!("{first},{second}");
    for v in lines {
        if list.len() > MAX_TRACE_STATE {
            return None;
        }
        list.push(',');
        list.push_str(v);
    }
    valid_trace_state(&list).then(|| Arc::from(list))
}

/// W3C trace context's bound on a `tracestate` a vendor must keep: characters of the list.
const MAX_TRACE_STATE: usize = 512;
/// ... and its list members.
const MAX_TRACE_STATE_MEMBERS: usize = 32;

/// Whether `list` is a `tracestate` W3C trace context (§3.3.1.3) calls valid: at most 512
/// characters and 32 members, each `key=value` (empty members, only spaces between commas,
/// are allowed and not counted), no key twice. A key is `lcalpha *(lcalpha / DIGIT / "_" /
/// "-" / "*" / "/")` of up to 256 characters, or `tenant@system`: a tenant of up to 241
/// starting with a lowercase letter or digit, a system of up to 14 starting with a letter. A
/// value is up to 256 printable ASCII characters but `,` and `=`, spaces allowed inside but
/// not at its end.
pub(super) fn valid_trace_state(list: &str) -> bool {
    if list.len() > MAX_TRACE_STATE {
        return false;
    }
    let mut keys: [&str; MAX_TRACE_STATE_MEMBERS] = [""; MAX_TRACE_STATE_MEMBERS];
    let mut n = 0;
    for member in list.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, value)) = member.split_once('=') else {
            return false;
        };
        if n == MAX_TRACE_STATE_MEMBERS
            || !valid_key(key)
            || !valid_value(value)
            || keys[..n].contains(&key)
        {
            return false;
        }
        keys[n] = key;
        n += 1;
    }
    true
}

/// A `tracestate` key (see [`valid_trace_state`]).
fn valid_key(key: &str) -> bool {
    let rest = |s: &[u8]| {
        s.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
        })
    };
    match key.split_once('@') {
        None => match key.as_bytes() {
            [first, tail @ ..] => first.is_ascii_lowercase() && tail.len() < 256 && rest(tail),
            [] => false,
        },
        Some((tenant, system)) => {
            let tenant_ok = match tenant.as_bytes() {
                [first, tail @ ..] => {
                    (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && tail.len() <= 240
                        && rest(tail)
                }
                [] => false,
            };
            let system_ok = match system.as_bytes() {
                [first, tail @ ..] => first.is_ascii_lowercase() && tail.len() <= 13 && rest(tail),
                [] => false,
            };
            tenant_ok && system_ok
        }
    }
}

/// A `tracestate` value (see [`valid_trace_state`]): 1 to 256 characters of `%x20-7E` but `,`
/// and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    (1..=256).contains(&b.len())
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b.last() != Some(&b' ')
}

/// The host (and port) the client addressed: the target's authority, else `host`.
fn server_address<B>(req: &Request<B>) -> Option<(&str, Option<u16>)> {
    if let Some(a) = req.uri().authority() {
        return Some((a.host(), a.port_u16()));
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let a: http::uri::Authority = host.parse().ok()?;
    let port = a.port_u16();
    // `a` is parsed from `host`, so its host is a prefix of it.
    Some((&host[..a.host().len()], port))
}
