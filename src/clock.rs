//! Time for the policies: a monotonic nanosecond counter that tests can drive by hand.
//!
//! The deciding code (token buckets, breakers, budgets) takes "now" from a [`Clock`] instead of
//! asking the OS, so unit tests step time exactly and never sleep. Production uses
//! [`MonotonicClock`], anchored to tokio's `Instant` so paused-time tests work too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of monotonic time in nanoseconds since an arbitrary origin.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Nanoseconds since this clock's origin; never decreases.
    fn now_nanos(&self) -> u64;

    /// This clock's reading at `t`, an instant the caller has just read: the request path
    /// reads the time once and gives it to each policy rather than having each read it again.
    /// A clock that is not the process's (a test's) ignores `t` and reads itself.
    fn nanos_at(&self, t: tokio::time::Instant) -> u64 {
        let _ = t;
        self.now_nanos()
    }
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

    fn nanos_at(&self, t: tokio::time::Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64 + 1_000_000_000
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

/// Wall time (seconds since the Unix epoch) read through a [`Clock`]: an anchor taken once,
/// plus the clock's monotonic time since. Token expiry and calendar windows need a date, and
/// deciding code still takes its time from the injected clock, so tests step it by hand and a
/// wall-clock jump (NTP) moves nothing until the anchor is taken again (at process start).
#[derive(Debug, Clone)]
pub struct WallClock {
    /// Unix nanoseconds at the clock's origin (its `now_nanos() == 0`).
    origin_unix_nanos: u64,
    clock: SharedClock,
}

// === impl WallClock ===

impl WallClock {
    /// Anchors `clock` to the system's wall clock now.
    pub fn system(clock: SharedClock) -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::anchored(clock.clone(), unix)
    }

    /// Anchors `clock` so that its current reading is `unix_nanos` (for tests).
    pub fn anchored(clock: SharedClock, unix_nanos: u64) -> Self {
        let origin_unix_nanos = unix_nanos.saturating_sub(clock.now_nanos());
        WallClock {
            origin_unix_nanos,
            clock,
        }
    }

    /// Unix time now, in nanoseconds.
    pub fn unix_nanos(&self) -> u64 {
        self.origin_unix_nanos + self.clock.now_nanos()
    }

    /// Unix time now, in whole seconds.
    pub fn unix_secs(&self) -> u64 {
        self.unix_nanos() / 1_000_000_000
    }

    /// Unix nanoseconds at the monotonic clock's origin.
    pub fn origin_unix_nanos(&self) -> u64 {
        self.origin_unix_nanos
    }

    /// The monotonic clock behind it.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
}

/// Coarse clocks: the kernel's time as of its last tick (at most a few milliseconds old),
/// for stamps that need no precision, read on the request path.
///
/// A precise reading (`Instant::now`, `SystemTime::now`) costs 23–33 ns here, a coarse one
/// about 3 ns: both come from the vDSO, but the coarse clocks skip reading the CPU's time
/// counter. Used for the `date` header (whole seconds) and the age of idle pooled connections
/// (timeouts of seconds); never for durations that are reported or bound a request.
pub mod coarse {
    /// Milliseconds of the monotonic clock (an arbitrary origin; only differences mean
    /// anything).
    pub fn millis() -> u64 {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{clock_gettime, ClockId};
            let t = clock_gettime(ClockId::MonotonicCoarse);
            let secs = u64::try_from(t.tv_sec).unwrap_or(0);
            let ms = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
            secs.saturating_mul(1000).saturating_add(ms)
        }
        #[cfg(not(target_os = "linux"))]
        {
            static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            let origin = *ORIGIN.get_or_init(std::time::Instant::now);
            u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
        }
    }

    /// A precise instant and the coarse clock's reading with it: later instants are had from
    /// the coarse clock alone, within a tick (a few milliseconds) of a precise reading.
    #[derive(Debug, Clone, Copy)]
    pub struct Anchor {
        at: tokio::time::Instant,
        millis: u64,
    }

    impl Anchor {
        /// Anchored at `at`, an instant just read.
        pub fn new(at: tokio::time::Instant) -> Self {
            Anchor {
                at,
                millis: millis(),
            }
        }

        /// About now: the anchor plus the coarse clock's milliseconds since. For deadlines of
        /// seconds (a keep-alive connection's wait for its next head).
        pub fn now(&self) -> tokio::time::Instant {
            self.at + std::time::Duration::from_millis(millis().saturating_sub(self.millis))
        }
    }

    /// Whole seconds since the Unix epoch (0 before it).
    pub fn unix_secs() -> u64 {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{clock_gettime, ClockId};
            u64::try_from(clock_gettime(ClockId::RealtimeCoarse).tv_sec).unwrap_or(0)
        }
        #[cfg(not(target_os = "linux"))]
        {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Clock, ManualClock, MonotonicClock};

    /// The process clock read at an instant is what reading it then gives: same origin, same
    /// one-second offset, and later instants read later. (Paused tokio time: exact.)
    #[tokio::test(start_paused = true)]
    async fn the_process_clock_at_an_instant_is_its_reading_then() {
        let clock = MonotonicClock::new();
        let t0 = tokio::time::Instant::now();
        assert_eq!(clock.nanos_at(t0), clock.now_nanos());
        assert_eq!(clock.nanos_at(t0), 1_000_000_000);
        tokio::time::advance(Duration::from_millis(1500)).await;
        let t1 = tokio::time::Instant::now();
        assert_eq!(clock.nanos_at(t1), clock.now_nanos());
        assert_eq!(clock.nanos_at(t1) - clock.nanos_at(t0), 1_500_000_000);
        // An instant before the clock's origin reads as the origin, never wraps.
        let before = t0 - Duration::from_secs(5);
        assert_eq!(clock.nanos_at(before), 1_000_000_000);
    }

    /// A test's clock moves only when told to: the instant given is ignored.
    #[tokio::test(start_paused = true)]
    async fn a_manual_clock_ignores_the_instant_given() {
        let clock = ManualClock::new();
        let later = tokio::time::Instant::now() + Duration::from_secs(60);
        assert_eq!(clock.nanos_at(later), 1_000_000_000);
        clock.advance(Duration::from_millis(7));
        assert_eq!(clock.nanos_at(later), clock.now_nanos());
        assert_eq!(clock.now_nanos(), 1_007_000_000);
    }

    /// The coarse clocks agree with the precise ones to within a tick, and the monotonic one
    /// never goes back.
    #[test]
    fn the_coarse_clocks_follow_the_precise_ones() {
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let coarse = super::coarse::unix_secs();
        assert!(
            coarse + 1 >= precise && coarse <= precise + 1,
            "coarse {coarse} s, precise {precise} s"
        );
        let a = super::coarse::millis();
        let b = super::coarse::millis();
        assert!(b >= a, "{b} < {a}");
    }
}
