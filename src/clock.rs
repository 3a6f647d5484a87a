//! Time for the policies: a monotonic nanosecond counter that tests can drive by hand.
//!
//! The deciding code (token buckets, breakers, budgets) takes "now" from a [`Clock`] instead of
//! asking the OS, so unit tests step time exactly and never sleep. Production uses
//! [`MonotonicClock`], anchored to tokio's `Instant` so paused-time tests work too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of monotonic time in nanoseconds since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since this clock's origin; never decreases.
    fn now_nanos(&self) -> u64;
}

/// The process clock: tokio's monotonic `Instant`, counted from when the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

/// A clock that only moves when told to; for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

/// A shared handle to whichever clock is in use.
pub type SharedClock = Arc<dyn Clock>;

// === impl MonotonicClock ===

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        // Offset by one second so that "zero" never means "now" for state initialised at 0.
        self.origin.elapsed().as_nanos() as u64 + 1_000_000_000
    }
}

// === impl ManualClock ===

impl ManualClock {
    /// A clock at one second past its origin.
    pub fn new() -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}
