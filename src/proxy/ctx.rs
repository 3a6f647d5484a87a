//! The per-request context: what the admission steps learned, handed down the whole path.
//!
//! Built once the route and tenant are known (`stack.rs`), read by everything below: the
//! exchange (deadline, retries), each try (breakers scoped per tenant, the outcome hook) and the
//! metrics. Passing one struct down keeps the signatures of the path stable as policies are
//! added: a new policy reads what it needs here instead of growing every function's arguments.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::access_log::TryStats;
use super::body::FaultCell;
use super::forward::{Peer, Sent};
use crate::generation::{ListenerRt, RouteRt};
use crate::otel::SpanParent;
use crate::policy::load_shed::ShedSlot;
use crate::tenant::{Labels, TenantId, Written};

/// What one request carries down the path after admission.
#[derive(Debug)]
pub struct RequestCtx<'a> {
    /// The listener it came in on.
    pub listener: &'a ListenerRt,
    /// The route it matched (its identity is `route.key`).
    pub route: &'a RouteRt,
    /// Who it is for.
    pub tenant: &'a TenantId,
    /// When the request timeout fires: the policy's, or a gRPC call's own deadline
    /// (`grpc-timeout`) when that is sooner.
    pub deadline: Option<Instant>,
    /// The request timeout `deadline` keeps (named in the timeout's answer).
    pub limit: Option<Duration>,
    /// Whether the request is a gRPC call (its tries' outcomes read `grpc-status`).
    pub grpc: bool,
    /// Whether the request is an HTTP/2 one whose head announces trailers (`trailer`): an
    /// HTTP/1.1 upstream gets its body chunked, whatever its length, so they can follow it.
    pub sends_trailers: bool,
    /// The client end of the connection.
    pub peer: &'a Peer,
    /// Which of the lines rampart sets the client's head carried.
    pub sent: Sent,
    /// The names of the lines rampart wrote into the request (the identity a verified token
    /// gave, `Identify::vouch`): the hop-by-hop removal spares them. Empty for most requests.
    pub spare: &'a Written,
    /// The request's id (the client's, or the one rampart made), written upstream by the
    /// writer if the request's map has none.
    pub request_id: &'a HeaderValue,
    /// Longest stall allowed between request body frames.
    pub body_idle: Duration,
    /// Tenant label folding (for per-tenant breakers' metric series).
    pub labels: &'a Labels,
    /// The load-shed slot the request holds, if its route sheds (its adaptive limit learns
    /// from every try).
    pub slot: Option<&'a ShedSlot>,
    /// What the tries did, for the access log.
    pub tries: &'a TryLog,
    /// The SERVER span, when the request's trace is sampled: each try gets a child span.
    pub trace: Option<SpanParent<'a>>,
}

/// What the tries of one request did: filled by `exchange.rs`, read once at the end.
#[derive(Debug, Default)]
pub struct TryLog {
    stats: parking_lot::Mutex<TryStats>,
    /// A try has been started (never reset: see [`TryLog::started`]).
    started: AtomicBool,
}

// === impl TryLog ===

impl TryLog {
    /// Notes the client body's cell (which counts the bytes received).
    pub fn body(&self, cell: &Arc<FaultCell>) {
        self.stats.lock().received = Some(cell.clone());
    }

    /// Notes the length of a body read whole with its head (received, all of it).
    pub fn whole(&self, len: u64) {
        self.stats.lock().whole = len;
    }

    /// Notes a try sent to `endpoint`; returns its number (from 1).
    pub fn start(&self, endpoint: SocketAddr) -> u32 {
        self.started.store(true, Ordering::Relaxed);
        let mut s = self.stats.lock();
        s.tries += 1;
        s.endpoint = Some(endpoint);
        s.tries
    }

    /// Whether a try has been started (it may have sent bytes upstream).
    /// Not reset by [`TryLog::take`]: a request dropped unanswered has its tries taken for
    /// its log line, maybe before the idempotency claim asks.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Notes how long the try took, and when it ended.
    pub fn ended(&self, took: Duration, at: Instant) {
        let mut s = self.stats.lock();
        s.upstream = Some(took);
        s.ended = Some(at);
    }

    /// What was noted.
    pub fn take(&self) -> TryStats {
        std::mem::take(&mut *self.stats.lock())
    }
}
