//! The outcome of one try against an upstream: the one vocabulary every observer shares.
//!
//! Metrics, the adaptive per-try deadline, circuit breakers, outlier detection, EWMA balancing
//! and adaptive concurrency all learn about a try through the same [`Outcome`], recorded once
//! per try by the request path's try guard (`proxy/exchange.rs`). Keeping the vocabulary in one
//! place means they never disagree on what a failure is.
//!
//! Three outcomes are not verdicts on the upstream:
//! - [`Outcome::Cancelled`]: the try was abandoned before its answer because the client went
//!   away. It is no evidence either way, so it trips nothing: a half-open breaker probe that
//!   ends this way gives its permit back for another request to probe with, and in-flight
//!   counts are released.
//! - [`Outcome::ClientFault`]: the client broke the exchange (malformed or stalled request
//!   body). SPEC §14: never an upstream failure, never in upstream metrics.
//! - [`Outcome::Unsent`]: the try's deadline passed while its request waited in rampart for a
//!   place on the endpoint's connections (an HTTP/1.1 connection at `max_connections`, an
//!   HTTP/2 stream at the connection's limit). The upstream never saw it, so it says nothing
//!   of how the upstream serves: it is answered 504 and retried as a timeout (sending it
//!   elsewhere is always safe), and counted in `rampart_upstream_unsent_total`, not as a try.

/// How one try against an upstream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No connection could be established.
    ConnectError,
    /// The connection broke before a full answer head arrived (or, for a gRPC call's answer
    /// that streams, before the status in its trailers).
    Reset,
    /// A deadline (per-try or the request's) passed without an answer.
    Timeout,
    /// The upstream answered with this status code.
    Status(u16),
    /// Abandoned before an answer because the client went away.
    Cancelled,
    /// The client's request body was malformed or stalled.
    ClientFault,
    /// The deadline passed while the request waited in rampart for a connection or a stream
    /// of the endpoint: never sent.
    Unsent,
}

// === impl Outcome ===

impl Outcome {
    /// Whether this outcome is a failure in the SPEC's sense: connect error, reset, timeout or
    /// any 5xx answer. Every other answer, 4xx included, is a success; `Cancelled` and
    /// `ClientFault` are neither (see the module doc).
    pub fn is_failure(&self) -> bool {
        is_failure(self)
    }

    /// Whether the upstream's behaviour is known: false for `Cancelled`, `ClientFault` and
    /// `Unsent`, which observers of upstream health skip.
    pub fn is_verdict(&self) -> bool {
        !matches!(
            self,
            Outcome::Cancelled | Outcome::ClientFault | Outcome::Unsent
        )
    }
}

impl From<http::StatusCode> for Outcome {
    fn from(status: http::StatusCode) -> Self {
        Outcome::Status(status.as_u16())
    }
}

/// Whether `outcome` is a failure in the SPEC's sense: connect error, reset, timeout or any
/// 5xx answer. Every other answer, 4xx included, is a success; a try that never left rampart
/// is neither.
pub fn is_failure(outcome: &Outcome) -> bool {
    match *outcome {
        Outcome::ConnectError | Outcome::Reset | Outcome::Timeout => true,
        Outcome::Status(code) => (500..600).contains(&code),
        Outcome::Cancelled | Outcome::ClientFault | Outcome::Unsent => false,
    }
}
