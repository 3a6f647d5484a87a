//! One client connection's watchdog: nothing sent since accept, or idle between requests.
//!
//! hyper times a request head only once it has started reading one, and the HTTP/1-or-2 sniffing
//! of the auto server reads before that, so a socket that sends nothing (or half an h2 preface)
//! would otherwise be held for ever — and with `max_connections` a thousand such sockets lock a
//! listener. The watchdog runs beside each connection (in the same task, no extra spawn) and
//! says when to close it (SPEC §14):
//! - no request has started within `header_read_timeout` of accept: close at once;
//! - no request in flight for `idle_timeout` (keep-alive or h2 with no open stream): close
//!   gracefully (h2 GOAWAY, or h1 close between requests).
//!
//! The request path tells it what happens through [`ConnActive`], held in the request's guards
//! until its answer ends.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What the watchdog knows of one connection.
///
/// Two counters and no wake-ups: the request path only counts (no timer, no clock read, no
/// notification per request), and the watchdog looks at the counts when its own timer fires.
/// The price is precision: an idle connection is closed between one and two `idle_timeout`s
/// after its last answer ended.
#[derive(Debug, Default)]
pub struct ConnState {
    active: AtomicU32,
    /// Requests begun plus answers ended so far (non-zero: a request has started).
    events: AtomicU64,
}

/// One request in progress on a connection; dropped when its answer ends.
#[derive(Debug)]
pub struct ConnActive(Arc<ConnState>);

/// Why the watchdog asks to close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Nothing (or no whole request head) within the head timeout of accept: drop it.
    Silent,
    /// No request in flight for the idle timeout: close gracefully.
    Idle,
}

// === impl ConnState ===

impl ConnState {
    /// A new connection's state.
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState::default())
    }

    /// Notes that a request started; hold the result until its answer ends.
    pub fn begin(self: &Arc<Self>) -> ConnActive {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.events.fetch_add(1, Ordering::AcqRel);
        ConnActive(self.clone())
    }

    /// Resolves when the connection should be closed, and says how.
    pub async fn watch(&self, head_timeout: Duration, idle_timeout: Duration) -> Close {
        // Until a request starts: look every idle period (or at the head deadline, if sooner).
        let head_deadline = Instant::now() + head_timeout;
        let mut seen = loop {
            let at = (Instant::now() + idle_timeout).min(head_deadline);
            tokio::time::sleep_until(at).await;
            let events = self.events.load(Ordering::Acquire);
            if events > 0 {
                break events;
            }
            if at >= head_deadline {
                return Close::Silent;
            }
        };
        loop {
            tokio::time::sleep(idle_timeout).await;
            let now = self.events.load(Ordering::Acquire);
            // Idle for a whole period: nothing in flight now, and nothing begun or ended since
            // the last look.
            if self.active.load(Ordering::Acquire) == 0 && now == seen {
                return Close::Idle;
            }
            seen = now;
        }
    }
}

impl Drop for ConnActive {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.events.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_head_timeout() {
        let s = ConnState::new();
        let t0 = Instant::now();
        let close = s
            .watch(Duration::from_secs(10), Duration::from_secs(60))
            .await;
        assert_eq!(close, Close::Silent);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_end_of_the_last_answer() {
        let s = ConnState::new();
        let req = s.begin();
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let close = s
                    .watch(Duration::from_secs(1), Duration::from_secs(5))
                    .await;
                (close, t0.elapsed())
            })
        };
        // A long answer: the connection is busy, never idle, for 30 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(req);
        let (close, took) = watcher.await.expect("the watcher must not panic");
        assert_eq!(close, Close::Idle);
        // Closed between one and two idle periods after the answer's end (at 30 s).
        assert!(
            took >= Duration::from_secs(35) && took <= Duration::from_secs(40),
            "idle must count from the answer's end: {took:?}"
        );
    }
}
