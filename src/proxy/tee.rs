//! A body that hands every frame on at once and keeps a copy of it, for answers that must be
//! remembered (fallback's stale answers, idempotency's replays).
//!
//! The copy never delays the client: each data frame is passed on as it comes, and what is kept
//! is a reference-counted handle to the same bytes, not a copy, until the body ends; only then
//! are several frames joined into a buffer of exactly their length, and handed to the
//! [`Keeper`], with the trailers the body ended with, if any (a gRPC answer's status is there).
//! A body of one frame is handed over as it was read ([`ReadBody::view`]): the store that keeps
//! it copies it, and one that does not never pays for the copy. A body over the cap is handed over as
//! [`Ending::TooLarge`]; one that ends in an error, or is dropped before its end (the client
//! went away), as [`Ending::Broken`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};

use super::body::Body;
use crate::error::BoxError;
use crate::policy::held::ReadBody;

/// How a teed body ended.
#[derive(Debug)]
pub enum Ending {
    /// Read to its end; the whole body, and the trailers it ended with.
    Whole(ReadBody, Option<HeaderMap>),
    /// Larger than the cap.
    TooLarge,
    /// Failed, or dropped before its end.
    Broken,
}

/// Told once how a teed body ended.
pub trait Keeper: Send + Sync + std::fmt::Debug + 'static {
    /// How the body ended.
    fn kept(self: Box<Self>, ending: Ending);
}

/// A body that hands every frame on and keeps a copy for a [`Keeper`].
#[derive(Debug)]
pub struct Tee {
    inner: Body,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: usize,
    cap: usize,
    keeper: Option<Box<dyn Keeper>>,
}

// === impl Tee ===

impl Tee {
    /// Tees `inner`, keeping at most `cap` bytes.
    pub fn new(inner: Body, cap: usize, keeper: Box<dyn Keeper>) -> Self {
        Tee {
            inner,
            frames: Vec::new(),
            trailers: None,
            len: 0,
            cap,
            keeper: Some(keeper),
        }
    }

    /// The body it wraps (for guards that ride on an upstream's body).
    pub fn inner_mut(&mut self) -> &mut Body {
        &mut self.inner
    }

    /// The body it wraps.
    pub fn inner(&self) -> &Body {
        &self.inner
    }

    fn keep(&mut self, data: &Bytes) {
        if self.keeper.is_none() {
            return;
        }
        self.len += data.len();
        if self.len > self.cap {
            self.give_up(Ending::TooLarge);
        } else {
            self.frames.push(data.clone());
        }
    }

    fn give_up(&mut self, why: Ending) {
        self.frames = Vec::new();
        if let Some(k) = self.keeper.take() {
            k.kept(why);
        }
    }

    fn finish(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        let frames = std::mem::take(&mut self.frames);
        // A kept body must own exactly its bytes: a frame is often a view into a larger buffer
        // (the connection's read buffer), which a kept handle would hold whole for as long as
        // the answer is kept. Several frames are joined into an exact buffer here; one is
        // handed over as read, for the keeper to copy if it keeps it.
        let body = match frames.len() {
            0 => ReadBody::exact(Bytes::new()),
            1 => ReadBody::view(frames.into_iter().next().unwrap_or_default()),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for f in frames {
                    all.extend_from_slice(&f);
                }
                ReadBody::exact(all.freeze())
            }
        };
        keeper.kept(Ending::Whole(body, self.trailers.take()));
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.keep(data);
                } else if let Some(t) = frame.trailers_ref() {
                    if this.keeper.is_some() {
                        this.trailers = Some(t.clone());
                    }
                }
                // The server stops polling once the body says it has ended, so a known length
                // ends here, not with a last `None`.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.give_up(Ending::Broken),
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if self.keeper.is_some() && self.inner.is_end_stream() {
            // Fully read, but the end was never polled (an empty body).
            self.finish();
        }
        self.give_up(Ending::Broken);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use parking_lot::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Got(Arc<Mutex<Option<Bytes>>>);

    impl Keeper for Got {
        fn kept(self: Box<Self>, ending: Ending) {
            if let Ending::Whole(body, _) = ending {
                *self.0.lock() = Some(body.into_owned());
            }
        }
    }

    /// A keeper that keeps nothing, noting where the body it was handed lies.
    #[derive(Debug, Default)]
    struct Looks(Arc<Mutex<Option<(usize, usize)>>>);

    impl Keeper for Looks {
        fn kept(self: Box<Self>, ending: Ending) {
            if let Ending::Whole(body, _) = ending {
                *self.0.lock() = Some((body.as_ptr() as usize, body.len()));
            }
        }
    }

    /// A body of one frame is handed to its keeper as it was read, not copied: a keeper that
    /// does not keep it (a failed gRPC call, for idempotency) costs no copy. Before, the tee
    /// copied every such body (up to 256 KiB) whether it was kept or not.
    #[tokio::test]
    async fn a_one_frame_body_is_not_copied_for_a_keeper_that_does_not_keep_it() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let view = buffer.slice(100..105);
        let looks = Looks::default();
        let slot = looks.0.clone();
        let passed = Tee::new(Body::full(view.clone()), 1024, Box::new(looks))
            .collect()
            .await
            .expect("readable")
            .to_bytes();
        assert_eq!(passed, view, "passed on whole");
        let (at, len) = slot.lock().take().expect("handed over whole");
        assert_eq!(
            (at, len),
            (view.as_ptr() as usize, 5),
            "the frame itself, not a copy"
        );
    }

    /// A body that is a view into a larger buffer (as a frame read from a connection is) is
    /// kept (by a keeper that owns what it is handed) as a copy of exactly its bytes, not as a handle that holds the whole buffer: before,
    /// a kept 5-byte answer held its 64 KiB buffer for as long as it was kept.
    #[tokio::test]
    async fn a_kept_body_owns_exactly_its_bytes_not_the_buffer_it_was_read_into() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let view = buffer.slice(100..105);
        let got = Got::default();
        let slot = got.0.clone();
        let passed = Tee::new(Body::full(view.clone()), 1024, Box::new(got))
            .collect()
            .await
            .expect("readable")
            .to_bytes();
        assert_eq!(passed, view, "passed on whole");
        let kept = slot.lock().take().expect("kept");
        assert_eq!(kept, view);
        let within = buffer.as_ptr_range();
        assert!(
            !within.contains(&kept.as_ptr()),
            "the kept body must be a copy, not a view into the buffer"
        );
        drop(buffer);
        drop(view);
        assert!(kept.is_unique(), "nothing else shares its allocation");
    }
}
