//! What may be retried: the outcome of one try, the policy's `retry.on` set, idempotency, and
//! the upstream's `Retry-After`.
//!
//! Two different questions are kept apart on purpose. [`is_failure`] is the SPEC's single
//! definition of failure (connect error, reset, timeout, any 5xx; 4xx are successes), shared by
//! breakers, outlier detection and retries so they never disagree about a try. [`RetryOn`] is
//! the narrower, per-policy choice of which outcomes are worth another try: a 501 is a failure
//! but retrying it is pointless, and an operator may want `timeout` retried on one route only.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, RETRY_AFTER};
use http::Method;

use crate::config::file;
pub use crate::policy::outcome::{is_failure, Outcome};

/// The set of outcomes a policy retries (`retry.on`); checking it is a few bit operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    kinds: u8,
    /// One bit per status code `0..640`; codes outside are never in the set.
    statuses: [u64; STATUS_WORDS],
}

const CONNECT_ERROR: u8 = 1;
const RESET: u8 = 1 << 1;
const TIMEOUT: u8 = 1 << 2;
const STATUS_WORDS: usize = 10;

/// The `idempotency-key` header that makes any method retryable.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

// === impl RetryOn ===

impl RetryOn {
    /// The set named by a policy's `retry.on` list.
    pub fn new(on: &[file::RetryOn]) -> Self {
        let mut set = RetryOn::default();
        for entry in on {
            match *entry {
                file::RetryOn::ConnectError => set.kinds |= CONNECT_ERROR,
                file::RetryOn::Reset => set.kinds |= RESET,
                file::RetryOn::Timeout => set.kinds |= TIMEOUT,
                file::RetryOn::Status(code) => {
                    if let Some(word) = set.statuses.get_mut(usize::from(code / 64)) {
                        *word |= 1 << (code % 64);
                    }
                }
            }
        }
        set
    }

    /// Whether the policy retries a try that ended with `outcome`.
    pub fn should_retry(&self, outcome: &Outcome) -> bool {
        match *outcome {
            Outcome::ConnectError => self.kinds & CONNECT_ERROR != 0,
            Outcome::Reset => self.kinds & RESET != 0,
            // A try whose deadline passed before it could be sent is answered as a timeout, and
            // retried as one: sending it elsewhere is safe, it never reached the upstream.
            Outcome::Timeout | Outcome::Unsent => self.kinds & TIMEOUT != 0,
            Outcome::Status(code) => self
                .statuses
                .get(usize::from(code / 64))
                .is_some_and(|word| word & (1 << (code % 64)) != 0),
            // Nobody is waiting for a cancelled try; a client's fault is not the upstream's.
            Outcome::Cancelled | Outcome::ClientFault => false,
        }
    }
}

impl From<&[file::RetryOn]> for RetryOn {
    fn from(on: &[file::RetryOn]) -> Self {
        RetryOn::new(on)
    }
}

/// Whether a request may be sent more than once: its method is GET, HEAD, OPTIONS, PUT or
/// DELETE, or it carries an `idempotency-key` header with a value (an empty one names no key:
/// the upstream cannot tell two sends apart by it).
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    ) || headers
        .get(IDEMPOTENCY_KEY)
        .is_some_and(|k| !k.as_bytes().trim_ascii().is_empty())
}

/// The wait an upstream asks for in its `Retry-After` header, measured from `now`.
///
/// Accepts delta-seconds (`120`) and an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`, and the
/// obsolete forms `httpdate` reads). A date in the past means no wait (`Duration::ZERO`).
/// Returns `None` when the header is absent or unreadable; only the first header is read.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time", not garbage.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;
