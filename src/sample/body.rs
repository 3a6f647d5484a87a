//! Response bodies the sample service streams: fixed-size and dripped.
//!
//! They are hand-written `Body` impls rather than buffered `Full`s because the point of the
//! endpoints that use them is to exercise the proxy's streaming path: a buffered body would
//! hide a proxy that waits for the whole answer before forwarding it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Size of one chunk of `/bytes/N`.
pub(super) const CHUNK: usize = 64 * 1024;

static FILL: [u8; CHUNK] = [b'x'; CHUNK];

/// `N` bytes of `x`, produced in chunks of [`CHUNK`] as the reader asks for them.
#[derive(Debug)]
pub(super) struct Repeat {
    remaining: u64,
}

/// Frames handed over by a task through a channel; the end of the channel ends the body.
#[derive(Debug)]
pub(super) struct Channel {
    rx: mpsc::Receiver<Bytes>,
}

// === impl Repeat ===

impl Repeat {
    pub(super) fn new(len: u64) -> Repeat {
        Repeat { remaining: len }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// === impl Channel ===

impl Channel {
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> Channel {
        Channel { rx }
    }
}

impl Body for Channel {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
