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
