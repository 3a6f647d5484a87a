//! The serde mirror of `policies.NAME.fault`, `.fallback` and `.idempotency` (SPEC §10).
//!
//! Kept apart from `file.rs` only for size; the same rules hold: structure and defaults, no
//! logic, unknown keys refused. Bounds are checked in `validate/resilience.rs`.

use serde::{Deserialize, Serialize};

use super::super::units::{Dur, Ratio, Size};

/// `policies.NAME.fault:` deliberate delays and aborts, for chaos drills.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Only requests carrying this header are eligible; absent: every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Delay a share of eligible requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of eligible requests with an error, without the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// `fault.delay:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of eligible requests delayed.
    pub percent: Ratio,
    /// How long.
    pub duration: Dur,
}

/// `fault.abort:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of eligible requests aborted.
    pub percent: Ratio,
    /// Status of the injected answer.
    pub status: u16,
}

/// `policies.NAME.fallback:` what to answer instead of rampart's own error.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// The reasons replaced.
    pub on: Vec<FallbackOn>,
    /// GET/HEAD: serve the last 2xx answer of the same tenant, method and target up to this age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<Dur>,
    /// Else this answer (for the methods of its `methods`, or every method).
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_answer: Option<StaticAnswer>,
}

/// One entry of `fallback.on`: a reason rampart answers with itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackOn {
    /// The breaker is open.
    CircuitOpen,
    /// No connection, a reset, or no healthy endpoint.
    UpstreamUnavailable,
    /// No answer in time.
    Timeout,
    /// Load shedding refused the request.
    Shed,
}

/// `fallback.static:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAnswer {
    /// Status; 200 when absent.
    #[serde(default = "default_static_status")]
    pub status: u16,
    /// `content-type`; `text/plain` when absent.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The body, as written.
    #[serde(default)]
    pub body: String,
    /// The methods it stands in for (`[GET, HEAD]`: reads only); every method when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// `policies.NAME.idempotency:` replay protection for requests carrying the header.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Idempotency {
    /// The header carrying the key.
    #[serde(default = "default_idempotency_header")]
    pub header: String,
    /// How long a finished answer is kept for replay.
    #[serde(default = "default_idempotency_ttl")]
    pub ttl: Dur,
    /// Larger answers are not kept.
    #[serde(default = "default_idempotency_max_body")]
    pub max_body: Size,
    /// Keys kept in memory at most (oldest out first).
    #[serde(default = "default_idempotency_max_entries")]
    pub max_entries: u64,
    /// Bytes of kept answers in memory at most, per route: past it the oldest answers are
    /// dropped and their keys stay, not replayable.
    #[serde(default = "default_idempotency_max_bytes")]
    pub max_bytes: Size,
}

fn default_static_status() -> u16 {
    200
}

fn default_content_type() -> String {
    "text/plain".into()
}

fn default_idempotency_header() -> String {
    "idempotency-key".into()
}

fn default_idempotency_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(3600))
}

fn default_idempotency_max_body() -> Size {
    Size(1 << 20)
}

fn default_idempotency_max_entries() -> u64 {
    100_000
}

fn default_idempotency_max_bytes() -> Size {
    Size(64 << 20)
}
