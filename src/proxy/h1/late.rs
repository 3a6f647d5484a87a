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
//!
//! An upstream's answer to an upload hyper's server streamed (one not read whole with its
//! head) watches the client while its body waits: a client gone then ends the body with
//! [`ClientGone`] (`gone.rs`, [`Uploading`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::gone::{ClientGone, Uploading};
use crate::error::BoxError;
use crate::proxy::body::Body;

/// An answer's body whose error is given one poll late (see the module doc), and which
/// watches the client while it waits if it answers a streamed upload (`gone.rs`'s
/// [`Uploading`]).
#[derive(Debug)]
pub struct Late {
    body: Body,
    /// The body's error, held back for one poll.
    held: Option<BoxError>,
    /// The mark of an answer to a streamed upload, with the connection's watch: a client gone
    /// while the body waits ends it, which lets the upstream's answer go (and an HTTP/2
    /// upstream's stream is reset, `pool/h2/pipe.rs`). `None` for any other answer.
    upload: Option<Uploading>,
}

/// The request path's future, its answer's body made [`Late`].
#[derive(Debug)]
pub struct Answering<F>(pub F);

// === impl Late ===

impl Late {
    /// `body`, its error to be given one poll late, watching the client with `upload` (if
    /// it has a watch).
    pub fn new(body: Body, upload: Option<Uploading>) -> Late {
        Late {
            body,
            held: None,
            upload: upload.filter(Uploading::watched),
        }
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
            // hyper's HTTP/1 server neither reads the client (it read the upload, or its rest
            // waits for the upstream) nor writes to it now: only the watch sees it go.
            Poll::Pending => {
                if let Some(upload) = this.upload.as_mut() {
                    match upload.poll_gone(cx) {
                        Poll::Ready(true) => {
                            this.upload = None;
                            return Poll::Ready(Some(Err(ClientGone.into())));
                        }
                        Poll::Ready(false) => this.upload = None,
                        Poll::Pending => {}
                    }
                }
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
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map(|mut rsp| {
                // (An answer without the mark has no extensions: nothing is looked up.)
                let upload = rsp.extensions_mut().remove::<Uploading>();
                rsp.map(|body| Late::new(body, upload))
            })
        })
    }
}
