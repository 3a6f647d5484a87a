//! HTTP/2 answers whose client keeps its stream's flow-control window shut.
//!
//! hyper's HTTP/2 server runs each stream in a task of its own, spawned through the server's
//! executor, and pipes the answer's body into the stream there (`PipeToSendStream` in hyper's
//! `proto/h2`). Once it holds a frame the stream has no window for, it waits on h2's
//! `poll_capacity` (and `poll_reset`) and does not poll the body again until the client opens
//! the window. Nothing of rampart's then runs: not the answer's deadline (`pool::EndBy`), which
//! is looked at when the body is polled, and not the kernel's `TCP_USER_TIMEOUT`
//! ([`SEND_STALL`] on the listening sockets), since the connection itself goes on moving (other
//! streams, PINGs, the part of the answer the window let through was acknowledged). A client
//! that kept one stream's window shut held that request's upstream connection, its pool slot,
//! load-shed place and in-flight counts for ever.
//!
//! So the HTTP/2 server's executor is rampart's ([`Exec`]), and each stream's task runs inside
//! [`watch`], which bounds how long its answer may wait for the window (as Envoy's stream idle
//! timeout and nginx's `send_timeout` do): [`SEND_STALL`] from the moment it waits, or the
//! request's deadline when that is sooner. Past it the stream's task is dropped: h2 resets the
//! stream (`RST_STREAM(CANCEL)`), and the answer's body goes as it goes when a client resets
//! its stream: its upstream connection closed (its body was not read to the end), its try
//! cancelled (not the upstream's doing: no breaker, no outlier detection, no upstream metric),
//! its guards let go, its access log line written with the status sent and the bytes that
//! went. A cut at the request's deadline counts `rampart_timeouts_total{kind="request"}`, as a
//! body cut there when polled does.
//!
//! How the watch knows the stream waits for the window, with nothing shared or allocated per
//! stream: the answer's body ([`Answer`], the body of every answer the HTTP/2 server sends)
//! notes on its thread what its last poll gave ([`NOTE`]): a data frame (with the request's
//! deadline), or nothing yet (it waits for its upstream). The stream's task polls the body
//! inside the watch's poll, on the same thread, so the watch clears the note, polls the task,
//! and reads it: a task still pending whose body last gave a frame holds that frame for want of
//! window (hyper polls the body again as soon as a frame is sent); one whose body has nothing
//! yet waits for the upstream, which its own timeouts bound; a poll that did not reach the body
//! (a wake-up by the watch's timer, by a window too small) changes nothing. Each frame given is
//! progress, so a slow reader whose window keeps opening is never cut; one that takes nothing
//! for the bound is.
//!
//! Cost: a thread-local store per frame of an HTTP/2 answer, a clock reading per poll in which
//! the stream ends up waiting for its window, and one timer, made the first time it waits and
//! moved on lazily (when it fires early), inline in the stream's task. HTTP/1.1 is not touched:
//! the lean server and hyper's HTTP/1 server keep their bodies and their executor.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub use super::bind::SEND_STALL;
use super::body::{for_head, Body};
use crate::error::BoxError;

/// What an [`Answer`]'s last poll on this thread gave (see the module doc).
#[derive(Clone, Copy, Debug)]
enum Note {
    /// No answer body was polled.
    Quiet,
    /// A data frame, for an answer that must end by this deadline, if any.
    Handed(Option<Instant>),
    /// Nothing yet: the body waits for its upstream.
    Waiting,
}

thread_local! {
    /// See [`Note`]: written by an [`Answer`] as it is polled, read by [`watch`] around its
    /// stream's poll.
    static NOTE: Cell<Note> = const { Cell::new(Note::Quiet) };
    /// Set while [`watch`] drops a stream's task whose answer stalled: its [`Answer`] counts
    /// the request's timeout if the deadline was the bound.
    static CUTTING: Cell<bool> = const { Cell::new(false) };
}

/// The executor of rampart's HTTP/2 server: spawns each stream's task inside [`watch`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(watch(fut));
    }
}

/// `stream`, an HTTP/2 stream's task, dropped (its stream reset) once its answer has waited
/// for the client's window for [`SEND_STALL`] or until the request's deadline (see the module
/// doc).
pub async fn watch<F: Future<Output = ()>>(stream: F) {
    // Declared first, dropped last: the mark set for the stream's drop ends after it.
    let _end = CutEnd;
    let mut stream = std::pin::pin!(stream);
    let mut timer = std::pin::pin!(None::<Sleep>);
    // When the answer, waiting for the window, is cut; whether that is its deadline.
    let mut cut: Option<(Instant, bool)> = None;
    let stalled = std::future::poll_fn(|cx| {
        NOTE.set(Note::Quiet);
        if stream.as_mut().poll(cx).is_ready() {
            NOTE.set(Note::Quiet);
            return Poll::Ready(None);
        }
        match NOTE.replace(Note::Quiet) {
            Note::Handed(deadline) => {
                let stall = Instant::now() + SEND_STALL;
                cut = Some(match deadline {
                    Some(d) if d <= stall => (d, true),
                    _ => (stall, false),
                });
            }
            Note::Waiting => cut = None,
            Note::Quiet => {}
        }
        let Some((at, deadline)) = cut else {
            return Poll::Pending;
        };
        loop {
            let Some(mut t) = timer.as_mut().as_pin_mut() else {
                timer.set(Some(tokio::time::sleep_until(at)));
                continue;
            };
            if t.deadline() > at {
                t.as_mut().reset(at);
            }
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= at {
                return Poll::Ready(Some(deadline));
            }
            // Fired for an earlier wait: on to this one's end.
            t.as_mut().reset(at);
        }
    })
    .await;
    if let Some(deadline) = stalled {
        let bound = match deadline {
            true => "the request's deadline",
            false => "SEND_STALL",
        };
        tracing::debug!(
            bound,
            "an HTTP/2 answer waited for its client's flow-control window too long: stream reset"
        );
        CUTTING.set(true);
    }
    // The stream's task is dropped here, marked if it stalled, then the mark ends.
}

/// Ends [`CUTTING`]'s mark, dropped after the stream's task it was set for.
struct CutEnd;

impl Drop for CutEnd {
    fn drop(&mut self) {
        CUTTING.set(false);
    }
}

/// The body of an answer rampart's HTTP/2 server sends: the answer's own, noting what each
/// poll gave for the stream's [`watch`].
#[derive(Debug)]
pub struct Answer(pub Body);

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = &mut self.get_mut().0;
        let polled = Pin::new(&mut *body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) if f.is_data() => NOTE.set(Note::Handed(body.deadline())),
            Poll::Pending => NOTE.set(Note::Waiting),
            // Trailers, the end, an error: hyper's pipe ends on them.
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if CUTTING.get() {
            // Cut while it waited for the window: at the request's deadline, the timeout is
            // counted as the body would have counted it at its next poll.
            self.0.count_if_late();
        }
    }
}

/// A request's future on rampart's HTTP/2 server, its answer given an [`Answer`] body.
/// `head`: the request is HEAD, whose answer goes without its content ([`for_head`]): hyper's
/// HTTP/2 server, unlike its HTTP/1 one and the lean server, sends whatever body it is given.
#[derive(Debug)]
pub struct Answering<F> {
    /// The request path's future.
    pub call: F,
    /// The request is HEAD.
    pub head: bool,
}

impl<F, E> Future for Answering<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = Result<http::Response<Answer>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let head = self.head;
        Pin::new(&mut self.call).poll(cx).map(|r| {
            r.map(|mut rsp| {
                if head {
                    for_head(&mut rsp);
                }
                rsp.map(Answer)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A stand-in for a stream's task: what hyper's pipe leaves in [`NOTE`] at each poll,
    /// as the script says, woken by its own sleeps; notes at drop whether the cut mark was
    /// set, and counts its polls.
    struct Stream {
        /// Per step: how long after it the next one comes, and what the poll notes at it (the
        /// first at once).
        script: Vec<(Duration, Note)>,
        next: usize,
        sleep: Pin<Box<Sleep>>,
        polls: Arc<AtomicU32>,
        cut: Arc<AtomicBool>,
    }

    impl Stream {
        fn new(script: Vec<(Duration, Note)>) -> (Self, Arc<AtomicU32>, Arc<AtomicBool>) {
            let polls = Arc::new(AtomicU32::new(0));
            let cut = Arc::new(AtomicBool::new(false));
            let s = Stream {
                script,
                next: 0,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                polls: polls.clone(),
                cut: cut.clone(),
            };
            (s, polls, cut)
        }
    }

    impl Future for Stream {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(&(wait, note)) = self.script.get(self.next) else {
                return Poll::Ready(());
            };
            self.next += 1;
            NOTE.set(note);
            let at = Instant::now() + wait;
            self.sleep.as_mut().reset(at);
            // Registers the waker for the next step (at once, for a step no time away).
            if self.sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    impl Drop for Stream {
        fn drop(&mut self) {
            self.cut.store(CUTTING.get(), Ordering::Relaxed);
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    /// How long `watch` ran the script for, and whether it cut the stream (the mark seen at
    /// its drop).
    async fn run(script: Vec<(Duration, Note)>) -> (Duration, bool) {
        let (s, _, cut) = Stream::new(script);
        let t0 = Instant::now();
        watch(s).await;
        assert!(!CUTTING.get(), "the mark ends with the stream's drop");
        (t0.elapsed(), cut.load(Ordering::Relaxed))
    }

    /// A stream whose answer gave a frame and then waits (for the window) longer than
    /// SEND_STALL is cut at SEND_STALL after it began to wait, its drop marked; a wake-up in
    /// between that reaches no body (the window opened too little) changes nothing.
    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_the_window_is_cut_at_the_send_stall() {
        let (took, cut) = run(vec![
            (Duration::from_secs(5), Note::Handed(None)),
            (DAY, Note::Quiet),
        ])
        .await;
        assert!(cut, "cut, marked");
        assert_eq!(took, SEND_STALL);
    }

    /// The request's deadline, when sooner, is the bound.
    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_the_window_is_cut_at_its_deadline_when_sooner() {
        let deadline = Instant::now() + Duration::from_secs(12);
        let (took, cut) = run(vec![
            (Duration::from_secs(1), Note::Handed(Some(deadline))),
            (DAY, Note::Quiet),
        ])
        .await;
        assert!(cut);
        assert_eq!(took, Duration::from_secs(12));
        // A deadline later than the stall's bound leaves the stall's bound.
        let deadline = Instant::now() + 2 * SEND_STALL;
        let (took, cut) = run(vec![
            (Duration::ZERO, Note::Handed(Some(deadline))),
            (DAY, Note::Quiet),
        ])
        .await;
        assert!(cut);
        assert_eq!(took, SEND_STALL);
    }

    /// A slow reader whose window keeps opening (a frame given every 50 s, each a wait shorter
    /// than SEND_STALL, for 20 minutes, wake-ups in between that reach no body) is never cut;
    /// nor is an answer that waits for its upstream for a day.
    #[tokio::test(start_paused = true)]
    async fn progress_or_a_wait_for_the_upstream_is_never_cut() {
        let mut script = Vec::new();
        for _ in 0..24 {
            script.push((Duration::from_secs(25), Note::Handed(None)));
            script.push((Duration::from_secs(25), Note::Quiet));
        }
        let (took, cut) = run(script).await;
        assert!(!cut, "a reader that keeps taking is not cut");
        assert_eq!(took, Duration::from_secs(50 * 24));

        let (took, cut) = run(vec![
            (Duration::ZERO, Note::Handed(None)),
            (DAY, Note::Waiting),
            (Duration::ZERO, Note::Quiet),
        ])
        .await;
        assert!(!cut, "waiting for the upstream is not the client's stall");
        assert_eq!(took, DAY);
    }

    /// A stream waiting for its window is cut at SEND_STALL after its last frame, not its
    /// first: the timer made at the first wait is moved on, and the wait measured afresh.
    #[tokio::test(start_paused = true)]
    async fn the_bound_runs_from_the_last_frame() {
        let (took, cut) = run(vec![
            (Duration::from_secs(40), Note::Handed(None)),
            (Duration::from_secs(40), Note::Handed(None)),
            (DAY, Note::Quiet),
        ])
        .await;
        assert!(cut);
        assert_eq!(took, Duration::from_secs(40) + SEND_STALL);
    }

    /// A stream that ends is not cut, and neither the mark nor a note outlives it.
    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_is_left_alone() {
        let (s, polls, cut) = Stream::new(vec![(Duration::from_secs(1), Note::Handed(None))]);
        watch(s).await;
        assert!(!cut.load(Ordering::Relaxed));
        assert!(polls.load(Ordering::Relaxed) >= 2);
        assert!(matches!(NOTE.get(), Note::Quiet));
    }
}
