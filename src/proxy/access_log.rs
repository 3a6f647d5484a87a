//! The access log (SPEC §12): one JSON line per request, written off the request path.
//!
//! Why this shape: the request path must never wait for a disk or a pipe, and must pay next to
//! nothing when the log is off. So a listener without `access_log` has no [`AccessLog`] and the
//! path touches nothing here. With one, the path fills a small [`Entry`] (cheap clones: the
//! method, the URI's shared bytes, the tenant id, the request id) and hands it, when the answer
//! ends, to a bounded channel; formatting and writing happen on the destination's writer thread
//! (`writer.rs`). A full channel drops the line and counts it in
//! `rampart_access_log_dropped_total` instead of blocking.
//!
//! When a line is written: an [`Entry`] rides in the request's `Guards` and is sent on drop, so
//! the line is written when the answer's body has ended (or the client went away), with the
//! bytes really sent and the whole duration. `sample_ok` thins lines of 2xx/3xx answers from the
//! upstream only: every answer rampart makes itself, and every 4xx/5xx, is logged.

mod line;
#[cfg(test)]
mod tests;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Request, Uri};
use tokio::time::Instant;

use super::body::FaultCell;
use crate::config::file;
use crate::otel::{TraceParent, TRACEPARENT};
use crate::tenant::TenantId;

pub use self::writer::{Sink, Sinks};

/// One listener's access log: where its lines go and how many 2xx/3xx lines are kept.
#[derive(Debug)]
pub struct AccessLog {
    listener: Arc<str>,
    sink: Arc<Sink>,
    /// A 2xx/3xx line is kept when a random `u32` is below this; `None`: always.
    keep_ok: Option<u32>,
}

/// What one request's line says; formatted by the writer thread.
#[derive(Debug)]
pub struct Record {
    time: SystemTime,
    listener: Arc<str>,
    route: Option<Arc<str>>,
    tenant: Option<TenantId>,
    method: Method,
    uri: Uri,
    status: u16,
    reason: Option<HeaderValue>,
    limit: Option<Box<str>>,
    tries: u32,
    endpoint: Option<SocketAddr>,
    duration: Duration,
    upstream: Option<Duration>,
    bytes_in: u64,
    bytes_out: u64,
    request_id: HeaderValue,
    trace_id: Option<u128>,
}

/// A request's line being filled; sent to the writer when dropped, once armed.
#[derive(Debug)]
pub struct Entry {
    /// Boxed: the entry rides in every upstream answer's body, and the channel moves a pointer.
    rec: Option<Box<Record>>,
    started: Instant,
    received: Option<Arc<FaultCell>>,
    sink: Arc<Sink>,
    keep_ok: Option<u32>,
    armed: bool,
}

/// What the exchange with the upstream leaves for the line (see `ctx::TryLog`).
#[derive(Debug, Default, Clone)]
pub struct TryStats {
    /// Tries sent to an endpoint.
    pub tries: u32,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// How long the last try took, to the answer's head.
    pub upstream: Option<Duration>,
    /// The client body's cell, which counts the bytes received.
    pub received: Option<Arc<FaultCell>>,
}

/// What [`Entry::fill`] takes from the end of the request path.
#[derive(Debug)]
pub struct Outcome<'a> {
    /// The route that matched, if any.
    pub route: Option<&'a Arc<str>>,
    /// The tenant, if known.
    pub tenant: Option<&'a TenantId>,
    /// The answer's status.
    pub status: u16,
    /// `x-rampart-reason`, if rampart answered.
    pub reason: Option<&'a HeaderValue>,
    /// The rate limit that refused, if one did.
    pub limit: Option<&'a str>,
    /// Body bytes known already (synthetic answers); upstream bodies are counted as they go.
    pub bytes_out: u64,
}

// === impl AccessLog ===

impl AccessLog {
    /// The log of `listener`, writing to `sink`.
    pub fn new(listener: Arc<str>, cfg: &file::AccessLog, sink: Arc<Sink>) -> Self {
        let ratio = cfg.sample_ok.0.clamp(0.0, 1.0);
        let keep_ok = (ratio < 1.0).then(|| (ratio * f64::from(u32::MAX)) as u32);
        AccessLog {
            listener,
            sink,
            keep_ok,
        }
    }

    /// Where the lines go.
    pub fn to(&self) -> &file::LogTo {
        self.sink.to()
    }

    /// Starts the line of `req`, whose request id is `request_id`.
    pub fn begin<B>(&self, req: &Request<B>, request_id: &HeaderValue, started: Instant) -> Entry {
        Entry {
            rec: Some(Box::new(Record {
                time: SystemTime::now(),
                listener: self.listener.clone(),
                route: None,
                tenant: None,
                method: req.method().clone(),
                uri: req.uri().clone(),
                status: 0,
                reason: None,
                limit: None,
                tries: 0,
                endpoint: None,
                duration: Duration::ZERO,
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
                request_id: request_id.clone(),
                trace_id: req.headers().get(TRACEPARENT).and_then(trace_id),
            })),
            started,
            received: None,
            sink: self.sink.clone(),
            keep_ok: self.keep_ok,
            armed: false,
        }
    }
}

// === impl Entry ===

impl Entry {
    /// Fills the line from the answer and arms it if it is to be written: always for rampart's
    /// own answers and for 4xx/5xx, else as `sample_ok` says. Returns whether it is armed.
    pub fn fill(&mut self, out: Outcome<'_>, tries: TryStats) -> bool {
        let ok = out.status < 400 && out.reason.is_none();
        self.armed = !ok || self.keep_ok.map_or(true, |k| fastrand::u32(..) < k);
        let Some(r) = self.rec.as_deref_mut().filter(|_| self.armed) else {
            return false;
        };
        r.route = out.route.cloned();
        r.tenant = out.tenant.cloned();
        r.status = out.status;
        r.reason = out.reason.cloned();
        r.limit = out.limit.map(Box::from);
        r.tries = tries.tries;
        r.endpoint = tries.endpoint;
        r.upstream = tries.upstream;
        r.bytes_out = out.bytes_out;
        self.received = tries.received;
        true
    }

    /// Names the request's trace (the one rampart continued or started, when tracing is on).
    pub fn trace(&mut self, trace_id: u128) {
        if let Some(r) = self.rec.as_deref_mut() {
            r.trace_id = Some(trace_id);
        }
    }

    /// Counts `n` body bytes sent to the client.
    pub fn sent(&mut self, n: usize) {
        if let Some(r) = self.rec.as_deref_mut() {
            r.bytes_out += n as u64;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let Some(mut rec) = self.rec.take().filter(|_| self.armed) else {
            return;
        };
        rec.duration = self.started.elapsed();
        rec.bytes_in = self.received.as_ref().map_or(0, |c| c.received());
        self.sink.send(rec);
    }
}

// === impl Record ===

impl Record {
    /// An empty record (tests fill in what they check).
    #[cfg(test)]
    fn placeholder() -> Self {
        Record {
            time: SystemTime::UNIX_EPOCH,
            listener: Arc::from(""),
            route: None,
            tenant: None,
            method: Method::GET,
            uri: Uri::default(),
            status: 0,
            reason: None,
            limit: None,
            tries: 0,
            endpoint: None,
            duration: Duration::ZERO,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            request_id: HeaderValue::from_static(""),
            trace_id: None,
        }
    }
}

/// The trace id of a valid W3C `traceparent` (see [`TraceParent::parse`]); `None` for
/// anything else.
pub fn trace_id(v: &HeaderValue) -> Option<u128> {
    TraceParent::parse(v).map(|tp| tp.trace_id)
}
