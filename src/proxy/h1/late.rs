//! The answers of hyper's HTTP/1 server (a connection the lean server handed over) get their
//! head out before their body's error closes the connection.
//!
//! Why: hyper's HTTP/1 server writes an answer's head into its buffer and polls the body at
//! once, in the same turn, before it flushes. A body whose first poll fails (an upstream that
//! sent a chunked head and then closed or reset before any data) ended the connection there,
//! with the head still in the buffer: the client got a bare end of stream, no status line, and
//! could not tell an answer cut short from a request never served. The same held for frames
//! given just before the error, in the same turn. The lean server writes the head first and
//! then cuts the body short (no last chunk, or fewer bytes than `content-length`, then the
//! close); this makes hyper's server do the same.
//!
//! How: [`Late`] holds a body's error back for one poll. It keeps the error, wakes its task
//! and says `Pending`, so hyper flushes what it has buffered (the head, any frames before),
//! then gives the error at the next poll, which ends the connection as before. Nothing more
//! is paid by an answer whose body does not fail: no allocation, one branch per frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::BoxError;
use crate::proxy::body::Body;

/// An answer's body whose error is given one poll late (see the module doc).
#[derive(Debug)]
pub struct Late {
    body: Body,
    /// The body's error, held back for one poll.
    held: Option<BoxError>,
}

/// The request path's future, its answer's body made [`Late`].
#[derive(Debug)]
pub struct Answering<F>(pub F);

// === impl Late ===

impl Late {
    /// `body`, its error to be given one poll late.
    pub fn new(body: Body) -> Late {
        Late { body, held: None }
    }
}

impl http_body::Body for Late {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.held = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Answering ===

impl<F, E> Future for Answering<F>
where
    F: Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = Result<http::Response<Late>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map(|rsp| rsp.map(Late::new)))
    }
}
