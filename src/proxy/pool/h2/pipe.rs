//! An upload's stream reset when rampart lets its answer go, though hyper's task holds it.
//!
//! **Why.** hyper sends a request's body to an HTTP/2 upstream in a task of its own
//! (`PipeToSendStream`, hyper 1.x `proto/h2/mod.rs`), which owns the stream's h2 `SendStream`.
//! Once it has taken a chunk from the body and the stream has no send window, it waits for
//! window (`poll_capacity`) and for a reset from the upstream (`poll_reset`), and polls nothing
//! else: not the body, whose error (its client gone) would end it. hyper's own cancel reaches
//! that task only until the answer's head comes (`PipeMap`'s `cancel_rx`, dropped with the
//! head, `proto/h2/client.rs`). h2 resets a stream (`RST_STREAM(CANCEL)`) once every handle to
//! it is dropped before its end; so an upload whose answer's head came and whose window the
//! upstream then kept shut stayed open on the upstream (a stream of its limit, its memory)
//! after rampart let the answer go (its client gone, its deadline passed), until the upstream
//! gave up.
//!
//! **How.** rampart gives hyper its own executor for HTTP/2 connections ([`Exec`]: tokio's),
//! and tells the task that sends an upload from the others by where it starts. hyper polls the
//! body once inside its dispatch task, then spawns the task that sends the rest (if that poll
//! did not send it whole), then the one that waits for the answer's head: nothing else is
//! polled or spawned in between (`ClientTask::poll_pipe`). So an upload's body ([`Sent`])
//! leaves its [`Pipe`] on the thread at its first poll when that poll is inside a dispatch
//! ([`dispatch`]), and the executor binds the next task it spawns there to it. An answer let go
//! before its end ([`Pipe::cut`]) aborts that task: its `SendStream`, the stream's last
//! handle, is dropped, and h2 resets that stream alone; the connection and its other streams go
//! on. (If the first poll sent the body whole, the task bound is the one that waits for the
//! head, which has ended by the time there is an answer to let go: aborting it does nothing.)
//! A request without a body has no [`Pipe`] and costs nothing more.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::AbortHandle;

use crate::error::BoxError;
use crate::proxy::body::Body;

thread_local! {
    /// `None` outside a [`dispatch`]'s poll; inside one, the [`Pipe`] an upload left on its
    /// first poll, for the executor's next spawn.
    static LEFT: Cell<Option<Option<Arc<Pipe>>>> = const { Cell::new(None) };
}

/// hyper's task sending one upload, once spawned, and whether its answer was let go.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// The task (bound by [`Exec`]), and whether it is to end.
    task: parking_lot::Mutex<(Option<AbortHandle>, bool)>,
}

/// A request's body as it goes to an HTTP/2 upstream, with its [`Pipe`] if it is an upload.
#[derive(Debug)]
pub(crate) struct Sent {
    body: Body,
    /// Left on the thread at the first poll (see the module's doc).
    pipe: Option<Arc<Pipe>>,
}

/// The executor of rampart's HTTP/2 upstream connections: tokio's, binding the task spawned
/// after an upload's first poll to its [`Pipe`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Exec;

/// Ends a [`dispatch`] poll's scope on the thread, even if the poll panics.
struct Scope;

// === impl Pipe ===

impl Pipe {
    /// The answer's stream was let go before its end: the upload's task ends (now, or when it
    /// is bound), and h2 resets the stream.
    pub(crate) fn cut(&self) {
        let mut task = self.task.lock();
        task.1 = true;
        if let Some(t) = &task.0 {
            t.abort();
        }
    }

    fn bind(&self, handle: AbortHandle) {
        let mut task = self.task.lock();
        if task.1 {
            handle.abort();
        }
        task.0 = Some(handle);
    }
}

// === impl Sent ===

impl Sent {
    /// `body`, with `pipe` if it is an upload.
    pub(crate) fn new(body: Body, pipe: Option<Arc<Pipe>>) -> Self {
        Sent { body, pipe }
    }

    /// The body (a request hyper gave back unsent).
    pub(crate) fn into_inner(self) -> Body {
        self.body
    }
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(pipe) = this.pipe.take() {
            LEFT.with(|left| {
                // Outside a dispatch (never, with hyper 1.x) nothing is left: unbound.
                if left.take().is_some() {
                    left.set(Some(Some(pipe)));
                }
            });
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Exec ===

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let task = tokio::spawn(fut);
        let left = LEFT.with(|left| match left.take() {
            Some(pipe) => {
                left.set(Some(None));
                pipe
            }
            None => None,
        });
        if let Some(pipe) = left {
            pipe.bind(task.abort_handle());
        }
    }
}

/// hyper's dispatch task of an HTTP/2 connection (`conn`), each poll a scope in which an
/// upload's first poll leaves its [`Pipe`] for the executor (see the module's doc).
pub(crate) async fn dispatch<F: Future>(conn: F) -> F::Output {
    let mut conn = std::pin::pin!(conn);
    std::future::poll_fn(|cx| {
        LEFT.with(|left| left.set(Some(None)));
        let _scope = Scope;
        conn.as_mut().poll(cx)
    })
    .await
}

impl Drop for Scope {
    fn drop(&mut self) {
        LEFT.with(|left| left.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;

    /// A task that waits for ever, counting its drops.
    fn forever(dropped: &Arc<std::sync::atomic::AtomicUsize>) -> impl Future<Output = ()> {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = Count(dropped.clone());
        async move {
            let _count = count;
            std::future::pending::<()>().await;
        }
    }

    /// Inside a dispatch's poll, the task spawned after an upload's first poll is bound to its
    /// pipe and ends when cut; the one spawned after it, and one spawned outside a dispatch
    /// after an upload's first poll there, are bound to nothing.
    #[tokio::test]
    async fn the_task_spawned_after_an_uploads_first_poll_is_the_one_cut() {
        use http_body_util::BodyExt as _;
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pipe = Arc::new(Pipe::default());
        let mut sent = Sent::new(Body::full("x"), Some(pipe.clone()));
        let d = dropped.clone();
        dispatch(async {
            let _ = sent.frame().await;
            Exec.execute(forever(&d));
            Exec.execute(forever(&d));
        })
        .await;
        let outside = Arc::new(Pipe::default());
        let mut unbound = Sent::new(Body::full("y"), Some(outside.clone()));
        let _ = unbound.frame().await;
        Exec.execute(forever(&dropped));
        assert!(pipe.task.lock().0.is_some());
        assert!(outside.task.lock().0.is_none());
        pipe.cut();
        outside.cut();
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
