//! An early read of a JWKS, for a token that names a key (`kid`) the keys in force lack.
//!
//! Why: an identity provider that rotates its keys signs with the new one at once, often long
//! before rampart's next scheduled read (`jwks_refresh`, 5 minutes by default). Without an
//! early read every token of the new key is refused 401 until then, and a 401 tells many
//! clients to throw a good token away. So a token whose `kid` names no key in force asks the
//! refresh task (`refresh.rs`) to read the JWKS (URL or file) now, and its request waits for
//! that read, at most [`WAIT`] and never past its own deadline, then is judged again against
//! what the read brought (SPEC §13 `jwks_refresh`). Refusing that request and reading in the
//! background would serve only the requests after the read: the first one of each client, the
//! one that carries the new key, would still be told its token is bad.
//!
//! Any client can name any `kid`, so an unknown one proves nothing, and a flood of them must
//! not become a flood of fetches at the issuer: at most one early read per [`EARLY_EVERY`]
//! (30 s, or per `jwks_refresh` when that is shorter), one at a time. A token that comes while one
//! is under way waits for it; one that comes after it within the interval asks nothing and is
//! refused at once, as before. The scheduled reads go on as they were. The whole state is one
//! atomic word (when the last early read was asked, and whether it is under way): no lock, and
//! nothing held across an await but the store a waiter waits on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::keys::KeyStore;
use crate::clock::SharedClock;

/// Least time between two early reads, unless `jwks_refresh` is shorter.
pub(crate) const EARLY_EVERY: Duration = Duration::from_secs(30);
/// Longest a request waits for an early read: no fetch is given longer.
pub(crate) const WAIT: Duration = super::refresh::FETCH_TIMEOUT;
/// Bit 0 of [`Early::state`]: an early read was asked and is not done yet.
const UNDER_WAY: u64 = 1;
/// Most requests that wait for one store's early read at once. The wait comes before the
/// rate limit and load shedding (the tenant is not known yet), and any client can name an
/// unknown `kid`: past this, a token is refused at once, as without an early read.
pub(crate) const MAX_WAITING: usize = 256;

/// The early reads of one key store.
pub(crate) struct Early {
    clock: SharedClock,
    /// Least nanoseconds between two early reads.
    every: u64,
    /// Whether a refresh task reads the store (none runs without a tokio runtime, as in
    /// `rampart validate`, or without a TLS client for an https JWKS): no early read is asked
    /// of a store nothing reads.
    served: AtomicBool,
    /// Bit 0: [`UNDER_WAY`]. Bits 1 and up: 1 + the clock's nanoseconds when the last early
    /// read was asked; 0 when none was.
    state: AtomicU64,
    /// Wakes the refresh task for an early read (a permit is kept if it is busy reading).
    kick: Arc<Notify>,
    /// Wakes the requests waiting for the early read under way when it is done.
    done: Notify,
    /// Requests waiting now (at most [`MAX_WAITING`]).
    waiting: AtomicUsize,
}

/// What asking for an early read gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// One is under way, asked by this request or another: wait for it.
    UnderWay,
    /// None: the last one was asked less than the interval ago, or nothing reads the store.
    Refused,
}

/// Early reads a refused request may wait for before it is judged again
/// (`Identify::unknown_key`).
#[derive(Debug, Default)]
pub(crate) struct Reread {
    /// The stores with an early read under way, each with the epoch of its keys when the
    /// token's `kid` was found missing from them.
    waits: Vec<(Waiting, u64)>,
}

/// A request's place among a store's waiters ([`MAX_WAITING`]), given back when its wait ends
/// or is dropped.
#[derive(Debug)]
struct Waiting(Arc<KeyStore>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.early.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Early ===

impl Early {
    /// Early reads timed on `clock`, at most one per [`EARLY_EVERY`] or `refresh` (the
    /// source's `jwks_refresh`), whichever is shorter.
    pub(crate) fn new(clock: SharedClock, refresh: Duration) -> Self {
        let every = refresh.min(EARLY_EVERY);
        Early {
            clock,
            every: u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
            served: AtomicBool::new(false),
            state: AtomicU64::new(0),
            kick: Arc::new(Notify::new()),
            done: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Marks the store as read by a refresh task; gives the task what wakes it early.
    pub(crate) fn serve(&self) -> Arc<Notify> {
        self.served.store(true, Ordering::Release);
        self.kick.clone()
    }

    /// Asks for an early read: begins one when none is under way and the last was asked the
    /// interval ago or more (or never).
    pub(crate) fn ask(&self) -> Asked {
        if !self.served.load(Ordering::Acquire) {
            return Asked::Refused;
        }
        let now = self.clock.now_nanos();
        // 62 bits of nanoseconds are 146 years of a clock that starts near 0.
        let next = (now.saturating_add(1).min(u64::MAX >> 2) << 1) | UNDER_WAY;
        let mut seen = self.state.load(Ordering::Acquire);
        loop {
            if seen & UNDER_WAY != 0 {
                return Asked::UnderWay;
            }
            let last = seen >> 1;
            if last != 0 && now.saturating_sub(last - 1) < self.every {
                return Asked::Refused;
            }
            match self
                .state
                .compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.kick.notify_one();
                    return Asked::UnderWay;
                }
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    /// Whether an early read was asked and is not done yet (the refresh task asks as it
    /// begins a read: that read is the one asked for, its keys what the waiters wait for).
    pub(crate) fn is_asked(&self) -> bool {
        self.state.load(Ordering::Acquire) & UNDER_WAY != 0
    }

    /// Ends the early read under way, its keys (if it read any) in force; wakes its waiters.
    pub(crate) fn done(&self) {
        self.state.fetch_and(!UNDER_WAY, Ordering::AcqRel);
        self.done.notify_waiters();
    }

    /// Waits until no early read is under way, or until `until`.
    async fn settled(&self, until: Instant) {
        let done = self.done.notified();
        tokio::pin!(done);
        // Registered before the look below: a read done in between still wakes this one.
        done.as_mut().enable();
        if !self.is_asked() {
            return;
        }
        let _ = tokio::time::timeout_at(until, done).await;
    }
}

// === impl Reread ===

impl Reread {
    /// Notes that `keys` has an early read under way, asked for a `kid` its keys of `epoch`
    /// lack.
    /// Not noted when [`MAX_WAITING`] requests wait for that read already: the token is
    /// then refused at once.
    pub(crate) fn wait_for(&mut self, keys: &Arc<KeyStore>, epoch: u64) {
        let waiting = &keys.early.waiting;
        let mut seen = waiting.load(Ordering::Acquire);
        loop {
            if seen >= MAX_WAITING {
                return;
            }
            match waiting.compare_exchange_weak(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        self.waits.push((Waiting(keys.clone()), epoch));
    }

    /// Whether an early read is under way for the token.
    pub(crate) fn is_due(&self) -> bool {
        !self.waits.is_empty()
    }

    /// Waits for the early reads under way, at most [`WAIT`] and never past `deadline` (the
    /// request's); whether the keys of any of their stores changed meanwhile: only then can
    /// the token be judged otherwise, and only then is it judged again.
    async fn settled(self, deadline: Option<Instant>) -> bool {
        let bound = Instant::now() + WAIT;
        let until = deadline.map_or(bound, |d| d.min(bound));
        let mut changed = false;
        for (Waiting(keys), epoch) in &self.waits {
            keys.early.settled(until).await;
            changed |= keys.epoch() != *epoch;
        }
        changed
    }
}

/// The wait of a request whose token was refused for a `kid` no key in force has: when an
/// early read is under way for it, a future of whether the keys changed by the end of that
/// read (then judge the token again); otherwise nothing to wait for. One pointer: it is in
/// every request's future (`proxy/stack.rs`), and the wait itself is boxed.
pub struct Rejudge(Option<Pin<Box<dyn Future<Output = bool> + Send>>>);

// === impl Rejudge ===

impl Rejudge {
    /// Nothing to wait for: the refusal stands.
    pub(crate) fn none() -> Self {
        Rejudge(None)
    }

    /// The wait for `reread`'s early reads, at most [`WAIT`] and never past `deadline`.
    pub(crate) fn new(reread: Reread, deadline: Option<Instant>) -> Self {
        if !reread.is_due() {
            return Self::none();
        }
        Rejudge(Some(Box::pin(reread.settled(deadline))))
    }

    /// Whether an early read is under way for the token: await this, then judge it again
    /// if it gives `true`.
    pub fn is_due(&self) -> bool {
        self.0.is_some()
    }
}

impl Future for Rejudge {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match self.0.as_mut() {
            Some(wait) => wait.as_mut().poll(cx),
            None => Poll::Ready(false),
        }
    }
}

impl std::fmt::Debug for Rejudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Rejudge").field(&self.is_due()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn early(refresh: Duration) -> (Early, ManualClock) {
        let clock = ManualClock::new();
        (Early::new(Arc::new(clock.clone()), refresh), clock)
    }

    /// At most [`MAX_WAITING`] requests wait for one store's early read; a place is given
    /// back when a wait is dropped.
    #[test]
    fn at_most_max_waiting_requests_wait_for_one_read() {
        let (e, _clock) = early(Duration::from_secs(300));
        let keys = Arc::new(KeyStore::empty(e));
        let mut waits: Vec<Reread> = Vec::new();
        for _ in 0..MAX_WAITING {
            let mut r = Reread::default();
            r.wait_for(&keys, 0);
            assert!(r.is_due());
            waits.push(r);
        }
        let mut over = Reread::default();
        over.wait_for(&keys, 0);
        assert!(!over.is_due(), "one more is refused at once");
        waits.pop();
        let mut again = Reread::default();
        again.wait_for(&keys, 0);
        assert!(again.is_due(), "a place given back is taken");
        drop(waits);
        drop(again);
        assert_eq!(keys.early.waiting.load(Ordering::Acquire), 0);
    }

    /// One early read at a time, at most one per interval: a flood of asks begins one read,
    /// asks while it is under way wait for it, and asks after it are refused until the
    /// interval has passed since it was asked.
    #[test]
    fn one_early_read_at_a_time_and_one_per_interval() {
        let (e, clock) = early(Duration::from_secs(300));
        let _kick = e.serve();
        assert_eq!(e.ask(), Asked::UnderWay);
        for _ in 0..100 {
            assert_eq!(e.ask(), Asked::UnderWay, "under way: wait for it");
        }
        assert!(e.is_asked());
        e.done();
        assert!(!e.is_asked());
        clock.advance(EARLY_EVERY - Duration::from_nanos(1));
        for _ in 0..100 {
            assert_eq!(e.ask(), Asked::Refused, "asked too lately");
        }
        assert!(!e.is_asked());
        clock.advance(Duration::from_nanos(1));
        assert_eq!(e.ask(), Asked::UnderWay);
        assert!(e.is_asked());
    }

    /// A short `jwks_refresh` makes the interval shorter; the first ask at clock 0 is not
    /// taken for one asked just now.
    #[test]
    fn the_interval_is_jwks_refresh_when_shorter() {
        let (e, clock) = early(Duration::from_secs(2));
        let _kick = e.serve();
        assert_eq!(e.ask(), Asked::UnderWay);
        e.done();
        clock.advance(Duration::from_secs(1));
        assert_eq!(e.ask(), Asked::Refused);
        clock.advance(Duration::from_secs(1));
        assert_eq!(e.ask(), Asked::UnderWay);
    }

    /// No refresh task reads the store: nothing is asked, nobody waits.
    #[test]
    fn a_store_nothing_reads_asks_nothing() {
        let (e, _) = early(Duration::from_secs(300));
        assert_eq!(e.ask(), Asked::Refused);
        assert!(!e.is_asked());
    }

    /// The refresh task is woken by an ask, and a waiter by the read's end, even one that
    /// began waiting after the read was done (it does not wait at all).
    #[tokio::test]
    async fn an_ask_wakes_the_task_and_the_end_of_the_read_its_waiters() {
        let (e, _) = early(Duration::from_secs(300));
        let kick = e.serve();
        let woken = kick.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        assert_eq!(e.ask(), Asked::UnderWay);
        // The permit of `notify_one` went to the registered waiter: ready at once.
        woken.await;
        let far = Instant::now() + Duration::from_secs(3600);
        let settled = e.settled(far);
        tokio::pin!(settled);
        assert!(poll_once(settled.as_mut()).is_pending());
        e.done();
        assert!(poll_once(settled.as_mut()).is_ready());
        assert!(poll_once(std::pin::pin!(e.settled(far))).is_ready());
    }

    /// Polls `f` once.
    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }
}
