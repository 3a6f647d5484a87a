//! `timeout.idle`: how long an upstream may keep rampart waiting for the next bytes of its
//! answer (nginx's `proxy_read_timeout`, Envoy's stream idle timeout).
//!
//! Without it, on a route with no `timeout.request`, an upstream that sent its head (or part
//! of its body) and then stalled held the request for ever: its upstream connection, its pool
//! place, the in-flight counts, and, over HTTP/1.1, a client that had left (nothing reads the
//! client while rampart waits on the upstream, and its half-close is legal, so its EOF is no
//! leave).
//!
//! What counts is only the time rampart is ready for the upstream's bytes and has none: the
//! wait begins when a read of the upstream finds nothing (the request written whole, for the
//! head), and any bytes end it. Time when rampart does not read because its client is slow to
//! take the answer never counts: the answer's body is polled only when the client's side can
//! take more, and bytes the upstream sent meanwhile are waiting in the socket (or the HTTP/2
//! stream), so the next read finds them. A wait that begins there is the upstream's own
//! silence, with the whole receive window open to it.
//!
//! Cost: a body read whole with its head never waits, so it reads no clock and arms no timer.
//! Otherwise one coarse clock reading (`clock::coarse`, a few nanoseconds) when a read finds
//! nothing, and one timer that is never reset per frame: armed for the end of a wait, it is
//! left to fire; when it does, the wait in progress (if any) is measured and the timer armed
//! again for its end. An HTTP/1.1 connection keeps its timer from request to request (one
//! allocation per connection); an HTTP/2 stream keeps one while its answer waits.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::h2::Link;
use crate::clock::coarse;
use crate::proxy::body::FaultCell;

/// A request body that hyper's HTTP/2 client sends on its own task, and the connection it goes
/// on: an idle wait counts only from the body's end, and from no earlier than the connection's
/// send window was last open. rampart reads the body's end when hyper takes its last bytes,
/// which may then wait in h2's send buffer until the upstream reopens the window
/// (`Link::open_since`); an upload the upstream has not let go out is not the upstream's
/// silence. Looked at only when a wait is measured (two loads), never per frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sending<'a> {
    /// The client's streamed body, read as hyper sends it; `None` for a body in memory.
    pub(crate) cell: Option<&'a FaultCell>,
    /// The connection it goes on.
    pub(crate) link: &'a Link,
}

/// One upstream answer's idle timeout: the limit, and the wait in progress.
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    /// `timeout.idle` in milliseconds; 0: off.
    limit: u32,
    /// When the wait in progress began (coarse milliseconds); 0: none.
    since: u64,
    /// When the timer is set to fire (coarse milliseconds); 0: not set, or fired.
    armed: u64,
    /// The worker whose runtime made the timer: a connection taken by another worker
    /// (`Pool::take_idle` steals at the cap) gets a timer of its own runtime.
    worker: usize,
}

// === impl Quiet ===

impl Quiet {
    /// An idle timeout of `limit_ms` milliseconds (0: off).
    pub(crate) fn new(limit_ms: u32) -> Quiet {
        Quiet {
            limit: limit_ms,
            ..Quiet::default()
        }
    }

    /// A new exchange on the connection, with its route's limit; the timer's notes stay with
    /// the timer, which the connection keeps.
    pub(crate) fn restart(&mut self, limit_ms: u32) {
        self.limit = limit_ms;
        self.since = 0;
    }

    /// Whether the timeout is on.
    pub(crate) fn is_on(&self) -> bool {
        self.limit != 0
    }

    /// The limit, as the error of an answer it cut says it.
    pub(crate) fn limit(&self) -> Duration {
        Duration::from_millis(u64::from(self.limit))
    }

    /// Bytes came: the wait, if one was going, ends.
    pub(crate) fn progress(&mut self) {
        self.since = 0;
    }

    /// A read of the upstream found nothing, and rampart is ready for its bytes: whether the
    /// wait has lasted the limit (the answer is then to be cut). Otherwise `timer` holds the
    /// task's waker for the wait's end. `upload`: an HTTP/2 request's body, which hyper's
    /// client sends on its own task ([`Sending`]).
    pub(crate) fn stalled(
        &mut self,
        timer: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
        upload: Option<Sending<'_>>,
    ) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = coarse::millis();
        // Still uploading: no wait yet (the timer looks again at the limit's end).
        let floor = upload.map_or(0, |up| match up.cell.map(FaultCell::ended_at) {
            Some(None) => now,
            Some(Some(end)) => end.max(up.link.open_since(now)),
            None => up.link.open_since(now),
        });
        self.stalled_at(timer, cx, now, floor)
    }

    /// [`Quiet::stalled`] at `now` (coarse milliseconds), the wait counted from `floor` at the
    /// earliest.
    fn stalled_at(
        &mut self,
        mut timer: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
        now: u64,
        floor: u64,
    ) -> bool {
        if self.limit == 0 {
            return false;
        }
        // A wait begins now (after bytes, or at the first look), and never before the upload
        // ended: taken the other way round, a wait after bytes that came long after the
        // upload's end was counted from that end, and cut at once.
        if self.since == 0 {
            self.since = now.max(1);
        }
        self.since = self.since.max(floor);
        let due = self.since + u64::from(self.limit);
        if now >= due {
            return true;
        }
        let here = crate::workers::index();
        loop {
            // A timer set for this wait's end or sooner is left alone: when it fires early (it
            // was set for an earlier wait, or a coarse tick ran behind), it is set anew for
            // this one's end.
            if self.armed == 0 || self.armed > due || self.worker != here || timer.is_none() {
                let at = Instant::now() + Duration::from_millis(due - now);
                match timer.as_mut().as_pin_mut() {
                    Some(t) if self.worker == here => t.reset(at),
                    _ => timer.set(Some(tokio::time::sleep_until(at))),
                }
                self.armed = due;
                self.worker = here;
            }
            let Some(t) = timer.as_mut().as_pin_mut() else {
                return false;
            };
            if t.poll(cx).is_pending() {
                return false;
            }
            self.armed = 0;
        }
    }
}

/// `head`, the wait for an HTTP/2 upstream's answer head, under `quiet` (`upload` as for
/// [`Quiet::stalled`]); `None` if the limit passed first. The timer lives in this future.
pub(crate) async fn within<F: Future>(
    head: F,
    quiet: &mut Quiet,
    upload: Option<Sending<'_>>,
) -> Option<F::Output> {
    let mut head = std::pin::pin!(head);
    let mut timer = std::pin::pin!(None::<Sleep>);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(got) = head.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(got));
        }
        match quiet.stalled(timer.as_mut(), cx, upload) {
            true => std::task::Poll::Ready(None),
            false => std::task::Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    /// A waker that notes it was woken.
    #[derive(Default)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Woken {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// The coarse clock is driven by hand (`now`), tokio's paused one alongside it: 1,000 ms
    /// on the one is the test's start on the other.
    #[tokio::test(start_paused = true)]
    async fn a_wait_is_cut_at_its_limit_and_bytes_end_it() {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut timer = std::pin::pin!(None::<Sleep>);
        let mut quiet = Quiet::new(100);
        tracing::info!("a read finds nothing at 1,000: a wait of 100 ms begins, its timer set");
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_000, 0));
        tracing::info!("bytes at 1,050 end it; the next read finds nothing at 1,060");
        tokio::time::advance(50 * MS).await;
        quiet.progress();
        tokio::time::advance(10 * MS).await;
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_060, 0));
        tracing::info!("the timer, never reset, fires at 1,100 for the first wait: early");
        tokio::time::advance(40 * MS).await;
        assert!(woken.take(), "the timer must wake the task");
        assert!(
            !quiet.stalled_at(timer.as_mut(), &mut cx, 1_100, 0),
            "40 ms into the second wait is not its end"
        );
        tokio::time::advance(59 * MS).await;
        assert!(!woken.take(), "set again for the second wait's end, 1,160");
        tokio::time::advance(MS).await;
        assert!(woken.take(), "woken at the second wait's end");
        assert!(
            quiet.stalled_at(timer.as_mut(), &mut cx, 1_160, 0),
            "a wait of the whole limit must be cut"
        );
    }

    /// An upload still going holds the wait back; one that ended starts it at its end.
    #[tokio::test(start_paused = true)]
    async fn an_upload_in_progress_holds_the_wait_back() {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut timer = std::pin::pin!(None::<Sleep>);
        let mut quiet = Quiet::new(100);
        tracing::info!("uploading: each look counts from now");
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_000, 1_000));
        tokio::time::advance(100 * MS).await;
        assert!(woken.take());
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_100, 1_100));
        tracing::info!("the upload ended at 1,150: the wait runs from there");
        tokio::time::advance(100 * MS).await;
        assert!(woken.take());
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_200, 1_150));
        tokio::time::advance(50 * MS).await;
        assert!(woken.take(), "woken 100 ms after the upload's end");
        assert!(quiet.stalled_at(timer.as_mut(), &mut cx, 1_250, 1_150));
    }

    /// Bytes long after the upload's end start the next wait afresh: it runs from the look
    /// after them, not from the upload's end (which would cut a long streamed answer to a POST
    /// at its first pause).
    #[tokio::test(start_paused = true)]
    async fn a_wait_after_bytes_runs_from_then_not_from_the_uploads_end() {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut timer = std::pin::pin!(None::<Sleep>);
        let mut quiet = Quiet::new(100);
        tracing::info!("the upload ended at 1,000; bytes came until 5,000; a look at 5,010");
        quiet.progress();
        assert!(
            !quiet.stalled_at(timer.as_mut(), &mut cx, 5_010, 1_000),
            "10 ms into a wait is not its end"
        );
        tokio::time::advance(99 * MS).await;
        assert!(!woken.take(), "set for 5,110");
        tokio::time::advance(MS).await;
        assert!(woken.take());
        assert!(quiet.stalled_at(timer.as_mut(), &mut cx, 5_110, 1_000));
    }

    /// `0s` is off: never cut, no timer made; a shorter limit on a connection's timer set for
    /// a longer one sets it sooner.
    #[tokio::test(start_paused = true)]
    async fn off_makes_no_timer_and_a_shorter_limit_sets_it_sooner() {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut timer = std::pin::pin!(None::<Sleep>);
        let mut quiet = Quiet::new(0);
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_000, 0));
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 100_000_000, 0));
        assert!(timer.is_none(), "off arms nothing");
        quiet.restart(1_000);
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_000, 0));
        quiet.restart(100);
        assert!(!quiet.stalled_at(timer.as_mut(), &mut cx, 1_000, 0));
        tokio::time::advance(100 * MS).await;
        assert!(woken.take(), "set for the shorter limit's end");
        assert!(quiet.stalled_at(timer.as_mut(), &mut cx, 1_100, 0));
    }
}
