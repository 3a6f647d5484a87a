//! Retries: the pure deciding parts, kept apart from the request machinery.
//!
//! A retry decision has three independent questions, and each has its own module so that each
//! can be tested on its own with an injected clock or injected randomness:
//!
//! - [`classify`] says **what** may be retried: whether one try failed (SPEC: connect error,
//!   reset, timeout or any 5xx), whether the policy's `retry.on` list names that outcome, and
//!   whether the request is safe to send twice (idempotent method or `idempotency-key`).
//! - [`budget`] says **how much** retrying the upstream may receive: a sliding-window budget
//!   that caps retries at a share of the original requests, so a struggling upstream is not
//!   buried under a multiple of its normal load.
//! - [`backoff`] says **when** the next try goes out: exponential backoff with full jitter,
//!   with the randomness supplied by the caller.
//!
//! The request path (owned by the proxy stack) asks them in that order: a try failed and is
//! retryable, the request is idempotent and its body was buffered, attempts remain, the budget
//! grants a withdrawal, and the delay (or the upstream's `Retry-After`, see
//! [`classify::parse_retry_after`]) still fits in the request's remaining time.

pub mod backoff;
pub mod budget;
pub mod classify;

pub use self::backoff::{wait_before_retry, Backoff};
pub use self::budget::RetryBudget;
pub use self::classify::{is_failure, is_idempotent, parse_retry_after, Outcome, RetryOn};

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::file;

/// A route's `retry` section in force, with its budget and its carry-over rule.
#[derive(Debug)]
pub struct RouteRetry {
    /// The section as written.
    pub cfg: file::Retry,
    /// Outcomes that are retried.
    pub on: RetryOn,
    /// Backoff between tries.
    pub backoff: Backoff,
    /// The route's retry budget.
    pub budget: Arc<RetryBudget>,
}

// === impl RouteRetry ===

impl RouteRetry {
    /// The state for `cfg`; the budget's window of counts survives a reload that keeps
    /// `retry.budget` as it was, so a reload cannot hand a struggling upstream a fresh budget.
    pub fn build(cfg: &file::Retry, old: Option<&RouteRetry>, clock: &SharedClock) -> Self {
        let budget = old
            .filter(|o| o.cfg.budget == cfg.budget)
            .map(|o| o.budget.clone())
            .unwrap_or_else(|| Arc::new(RetryBudget::from_config(&cfg.budget, clock.clone())));
        RouteRetry {
            cfg: cfg.clone(),
            on: RetryOn::new(&cfg.on),
            backoff: Backoff::new(cfg.backoff.base.0, cfg.backoff.max.0),
            budget,
        }
    }
}
