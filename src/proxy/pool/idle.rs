//! One worker's idle connections to one endpoint: a stack, newest on top.
//!
//! Why last in, first out: the connection used last is the one most likely still open at the
//! upstream (an upstream closes a keep-alive connection after its own idle timeout, and the
//! oldest is the nearest to it), and its buffers are the ones still in the cache. And a load
//! that needs fewer connections than it once did leaves the surplus at the bottom, untouched,
//! until `pool_idle_timeout` closes them; taken in turn, every connection would look busy and
//! none would ever be closed.
//!
//! The stack is ordered by age (each one pushed is the newest; two threads pushing at once
//! may put them a clock tick out of order, which moves a timeout by that tick), so what has
//! been idle too long is a run at the bottom: [`Stack::expire`] takes it off without looking
//! at the rest.
//!
//! Why a mutex on the request path, where the rest of it keeps to atomics: a bounded stack
//! that many threads may push and pop is not lock-free without `unsafe` (the queue it
//! replaces, crossbeam's `ArrayQueue`, can only be first in, first out). Uncontended, the
//! lock costs what that queue did: one compare-and-swap to take it, one swap to give it back.
//! And it is hardly ever contended: each worker has its own stack, which only its own requests
//! use, except when a worker at its endpoint's connection cap takes another's idle connection,
//! and when the sweep (a few times per `pool_idle_timeout`) looks at the bottom. It is held
//! for a push or a pop of a pointer-sized entry, never across an await; the connections it
//! gives back are dropped (their sockets closed) by the caller, outside it.

use std::collections::VecDeque;
#[allow(clippy::disallowed_types)] // see the module doc
use std::sync::Mutex;
use std::sync::{MutexGuard, PoisonError};

/// Up to `cap` idle `T`s with the time each went idle (milliseconds of a monotonic clock).
#[derive(Debug)]
pub(super) struct Stack<T> {
    #[allow(clippy::disallowed_types)] // see the module doc
    items: Mutex<VecDeque<(T, u64)>>,
    cap: usize,
}

impl<T> Stack<T> {
    /// An empty stack holding at most `cap` (none: `pool_max_idle: 0` keeps no connection).
    #[allow(clippy::disallowed_types)] // see the module doc
    pub(super) fn new(cap: usize) -> Stack<T> {
        Stack {
            // Grown as connections go idle: `cap` may be far more than ever are.
            items: Mutex::new(VecDeque::with_capacity(cap.min(16))),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(T, u64)>> {
        // Nothing between a lock and its unlock can panic half way through a change.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `item`, idle since `now`, on top. A full stack gives back its oldest, for the
    /// caller to drop: a fresh connection is worth more than one near its timeout.
    pub(super) fn push(&self, item: T, now: u64) -> Option<T> {
        if self.cap == 0 {
            return Some(item);
        }
        let mut items = self.lock();
        let evicted = if items.len() >= self.cap {
            items.pop_front().map(|(old, _)| old)
        } else {
            None
        };
        items.push_back((item, now));
        evicted
    }

    /// The newest entry idle for at most `max_age` ms at `now`. If the newest is older, all
    /// are: they are moved to `expired`, for the caller to drop, and the answer is `None`.
    pub(super) fn pop(&self, now: u64, max_age: u64, expired: &mut Vec<T>) -> Option<T> {
        let mut items = self.lock();
        let (item, since) = items.pop_back()?;
        if now.saturating_sub(since) <= max_age {
            return Some(item);
        }
        expired.push(item);
        expired.extend(items.drain(..).map(|(old, _)| old));
        None
    }

    /// Moves every entry idle for more than `max_age` ms at `now` to `expired`.
    pub(super) fn expire(&self, now: u64, max_age: u64, expired: &mut Vec<T>) {
        let mut items = self.lock();
        let stale = items
            .iter()
            .take_while(|(_, since)| now.saturating_sub(*since) > max_age)
            .count();
        expired.extend(items.drain(..stale).map(|(old, _)| old));
    }

    /// Whether it holds nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::Stack;

    #[test]
    fn a_huge_cap_takes_no_room_up_front() {
        // `pool_max_idle: 4294967295` once asked for 64 GiB at start, and aborted.
        let s = Stack::new(u32::MAX as usize);
        for i in 0..100 {
            assert!(s.push(i, 0).is_none());
        }
        assert_eq!(s.lock().len(), 100);
    }

    fn pop(
        s: &Stack<&'static str>,
        now: u64,
        max_age: u64,
    ) -> (Option<&'static str>, Vec<&'static str>) {
        let mut expired = Vec::new();
        let got = s.pop(now, max_age, &mut expired);
        (got, expired)
    }

    #[test]
    fn the_newest_is_taken_first() {
        let s = Stack::new(4);
        assert_eq!(s.push("a", 10), None);
        assert_eq!(s.push("b", 20), None);
        assert_eq!(s.push("c", 30), None);
        assert_eq!(pop(&s, 40, 100), (Some("c"), vec![]));
        assert_eq!(pop(&s, 40, 100), (Some("b"), vec![]));
        assert_eq!(s.push("d", 50), None);
        assert_eq!(pop(&s, 60, 100), (Some("d"), vec![]));
        assert_eq!(pop(&s, 60, 100), (Some("a"), vec![]));
        assert_eq!(pop(&s, 60, 100), (None, vec![]));
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_stack_gives_back_its_oldest() {
        let s = Stack::new(2);
        assert_eq!(s.push("a", 1), None);
        assert_eq!(s.push("b", 2), None);
        assert_eq!(s.push("c", 3), Some("a"));
        assert_eq!(s.len(), 2);
        assert_eq!(pop(&s, 3, 10), (Some("c"), vec![]));
        assert_eq!(pop(&s, 3, 10), (Some("b"), vec![]));
    }

    #[test]
    fn a_cap_of_zero_holds_nothing() {
        let s = Stack::new(0);
        assert_eq!(s.push("a", 1), Some("a"));
        assert!(s.is_empty());
        assert_eq!(pop(&s, 1, 10), (None, vec![]));
    }

    #[test]
    fn an_entry_exactly_max_age_old_is_still_taken() {
        let s = Stack::new(2);
        s.push("a", 100);
        assert_eq!(pop(&s, 150, 50), (Some("a"), vec![]));
        s.push("b", 100);
        assert_eq!(pop(&s, 151, 50), (None, vec!["b"]));
    }

    #[test]
    fn when_the_newest_is_too_old_all_are_given_back() {
        let s = Stack::new(4);
        s.push("a", 10);
        s.push("b", 20);
        s.push("c", 30);
        let (got, mut expired) = pop(&s, 200, 100);
        expired.sort_unstable();
        assert_eq!((got, expired), (None, vec!["a", "b", "c"]));
        assert!(s.is_empty());
    }

    #[test]
    fn expire_takes_only_the_stale_run_at_the_bottom() {
        let s = Stack::new(8);
        for (name, since) in [("a", 0), ("b", 10), ("c", 50), ("d", 90)] {
            s.push(name, since);
        }
        let mut expired = Vec::new();
        s.expire(100, 60, &mut expired);
        assert_eq!(expired, vec!["a", "b"]);
        assert_eq!(s.len(), 2);
        expired.clear();
        s.expire(100, 60, &mut expired);
        assert!(expired.is_empty(), "nothing more is stale: {expired:?}");
        assert_eq!(pop(&s, 100, 60), (Some("d"), vec![]));
        assert_eq!(pop(&s, 100, 60), (Some("c"), vec![]));
    }

    #[test]
    fn a_clock_reading_behind_an_entry_counts_as_no_age() {
        let s = Stack::new(2);
        s.push("a", 500);
        let mut expired = Vec::new();
        s.expire(400, 10, &mut expired);
        assert!(expired.is_empty());
        assert_eq!(pop(&s, 400, 10), (Some("a"), vec![]));
    }
}
