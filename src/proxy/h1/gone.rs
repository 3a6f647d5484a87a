//! The client-gone watch for a connection the lean server handed to hyper's HTTP/1 server.
//!
//! Why: the lean server watches the client while an answer is awaited (`answer_unless_gone`),
//! but hyper's HTTP/1 server, run with `half_close` (a client may shut its side once its
//! request is sent), reads nothing of a connection whose answer it awaits. A client that sent
//! a chunked upload (or `Expect: 100-continue`, or anything else handed over) and then reset
//! or closed its connection went unnoticed: the try ran on, held its slot, and the request was
//! logged as the upstream's answer when it came.
//!
//! So each request hyper's HTTP/1 server hands to rampart's service is awaited through
//! [`unless_gone`], with the same rule as the lean path ([`super::gone_after`]): a reset, or an
//! end of stream more than `HALF_CLOSE_GRACE_MS` after the client's last bytes were read and
//! after the answer began to be awaited, with no whole later request unread behind it, ends
//! the request (its future is dropped: the try cancelled, its slot freed, a 499 counted and
//! logged by `finish.rs`), and the connection with it (the service's error closes it, with no
//! answer). Any other end of stream is a half-close, and the answer is written, as are those
//! of the requests the client pipelined before it.
//!
//! hyper owns the stream, so the watch looks at the socket through a second descriptor of its
//! own ([`Watch`], made once per handed-off connection: one more descriptor while hyper serves
//! it), and reads nothing from it: it waits for the socket to be readable and asks the kernel,
//! with a zero-timeout `poll`, whether the client reset it or shut its side. A TLS client's
//! `close_notify` before its end of stream is seen the same way (the end of stream is the
//! socket's). When hyper last read bytes of the client's is kept by [`Watched`], the stream
//! given to hyper. The lean path pays nothing for any of this.
//!
//! The watch ends with the answer's head, but for the answer to an upload hyper's server
//! streams (an upstream may answer as the upload comes: a streaming call, an early answer):
//! hyper's server then reads the upload only as rampart sends it on, and writes only what the
//! answer's body gives, so while an upstream takes none of the upload (its send window shut)
//! and sends nothing, a client that closed its connection went unnoticed again, and the
//! upstream's answer (an HTTP/2 upstream's stream, the upload stalled on it) was held for ever
//! on a route without `timeout.request`. `finish.rs` marks such an answer ([`Uploading`]),
//! [`unless_gone`] hands the mark the watch, and the answer's body (`late.rs`) looks at the
//! client whenever it waits: a client gone ends the body, and hyper the connection; the
//! answer is let go. Any other answer carries no mark and pays nothing more.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::clock::coarse;

/// A second look at the client's socket of a connection hyper's HTTP/1 server serves, and
/// when hyper last read bytes from it.
#[derive(Debug)]
pub struct Watch {
    /// The same socket through a descriptor of its own, registered with the I/O driver apart
    /// from hyper's: nothing is ever read from it.
    sock: TcpStream,
    /// When hyper last read bytes from the client (coarse milliseconds).
    last_read: AtomicU64,
}

impl Watch {
    /// A watch on `sock`, or `None` if its descriptor could not be duplicated or registered
    /// (the connection is then served unwatched, as before).
    pub fn new(sock: &TcpStream) -> Option<Arc<Watch>> {
        let made = rustix::io::fcntl_dupfd_cloexec(sock, 0)
            .map_err(io::Error::from)
            .and_then(|fd| TcpStream::from_std(std::net::TcpStream::from(fd)));
        match made {
            Ok(sock) => Some(Arc::new(Watch {
                sock,
                last_read: AtomicU64::new(coarse::millis()),
            })),
            Err(e) => {
                tracing::debug!(error = %e, "no client-gone watch for a handed-off connection");
                None
            }
        }
    }

    /// Whether the client has gone: `Ready(true)` if it reset the connection or ended its
    /// stream past the grace, `Ready(false)` if it ended it within the grace (a half-close: no
    /// need to look again), `Pending` while it has done neither (the task is woken when the
    /// socket changes).
    ///
    /// The grace runs from the later of hyper's last read and `since`, when this request's
    /// answer began to be awaited: an end of stream that came before then was seen now
    /// only because hyper took the request from what it had read already (pipelined behind
    /// the one before, whose answer it awaited without reading), so the client sent its last
    /// request and shut its side, which is a half-close however long that answer took.
    fn poll_gone(&self, cx: &mut Context<'_>, since: u64) -> Poll<bool> {
        self.poll_end(cx).map(|end| match end {
            End::Reset => true,
            End::Shut => {
                let began = self.last_read.load(Ordering::Relaxed).max(since);
                super::gone_after(began, coarse::millis()) && !self.later_unread()
            }
        })
    }

    /// Whether the client reset the connection or ended its stream; `Pending` while it has
    /// done neither (the task is woken when the socket changes).
    fn poll_end(&self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            match self.sock.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(End::Reset),
                Poll::Ready(Ok(())) => {}
            }
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN | PollFlags::RDHUP)];
            let polled = rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default()));
            let seen = fds[0].revents();
            if polled.is_err() || seen.intersects(PollFlags::ERR | PollFlags::HUP) {
                return Poll::Ready(End::Reset);
            }
            if seen.contains(PollFlags::RDHUP) {
                return Poll::Ready(End::Shut);
            }
            // Bytes hyper has not read (the rest of a body, a pipelined request): not an end.
            // The readiness is forgotten, and the next change of the socket wakes the task.
            let _ = self.sock.try_io(Interest::READABLE, || -> io::Result<()> {
                Err(io::ErrorKind::WouldBlock.into())
            });
        }
    }

    /// Whether the bytes hyper has not read yet begin with a whole request head: a later
    /// request, pipelined while this one's answer was awaited, which makes the end of stream
    /// behind it a half-close whenever it came (RFC 9112 §9.6), as on the lean path. Read with
    /// `MSG_PEEK`, so hyper still reads them; only once an end of stream past the grace is
    /// seen. (Over TLS the bytes are records, never a head: there a later request read by
    /// neither is not known.)
    fn later_unread(&self) -> bool {
        let mut peeked = vec![0u8; super::READ_KEEP_MAX];
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match rustix::net::recv(&self.sock, &mut peeked[..], flags) {
            Ok((n, _)) => super::parse::whole_head(&peeked[..n]),
            Err(_) => false,
        }
    }
}

/// What the client did to its stream, as far as the watch sees without reading it.
enum End {
    /// Reset the connection (or the socket failed).
    Reset,
    /// Ended its stream (FIN): gone, or a half-close.
    Shut,
}

/// The mark `finish.rs` leaves on an upstream's answer to an upload hyper's HTTP/1 server
/// streams (one the lean server did not read whole with its head). [`unless_gone`] hands it
/// the connection's watch, and the answer's body (`late::Late`) watches the client with it
/// whenever the body waits ([`Uploading::poll_gone`]).
#[derive(Clone, Debug, Default)]
pub struct Uploading {
    /// The connection's watch; `None` for an unwatched connection, or one whose client
    /// half-closed while the answer was awaited.
    watch: Option<Arc<Watch>>,
    /// Whether the body looked at the client already.
    looked: bool,
    /// When the answer began to be awaited (coarse milliseconds), for the first look's grace
    /// ([`Watch::poll_gone`]).
    since: u64,
}

impl Uploading {
    /// The mark, without a watch yet.
    pub fn new() -> Uploading {
        Uploading::default()
    }

    /// Whether there is a client to watch (a watched connection, no half-close seen).
    pub fn watched(&self) -> bool {
        self.watch.is_some()
    }

    /// Whether the client has gone while its answer's body waits: `Ready(true)` if it reset
    /// the connection or ended its stream, `Ready(false)` if it half-closed as its answer's
    /// head went (no need to look again), `Pending` while it has done neither (the task is
    /// woken when the socket changes).
    ///
    /// The first look, as the head goes, keeps the rule of the wait before it (an end of
    /// stream within the grace of the client's last bytes read is a half-close). After it, an
    /// end of stream is the client's going: the client has its answer's head, and the watch
    /// cannot tell a half-close from a close (hyper's server writes nothing while the body
    /// waits, and a closed client's reset would come only when it writes), so a closed
    /// client's answer would wait for ever, its upstream stream (or connection) held with it,
    /// and an upload stalled behind a shut send window with them. (nginx takes a client's end
    /// of stream while it proxies the same way.)
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(watch) = self.watch.as_ref() else {
            return Poll::Ready(false);
        };
        let first = !std::mem::replace(&mut self.looked, true);
        if first {
            return watch.poll_gone(cx, self.since);
        }
        // A whole later request unread behind the end of stream still makes it a half-close
        // (RFC 9112 §9.6): the client pipelined it and shut its side, and waits for both.
        watch.poll_end(cx).map(|end| match end {
            End::Reset => true,
            End::Shut => !watch.later_unread(),
        })
    }
}

/// The client gave up on its request while its answer was awaited: the service's error, which
/// has hyper close the connection without an answer. (Or, its upload unfinished, while its
/// answer's body waited: that body's error, which has hyper close the connection.)
#[derive(Debug)]
pub struct ClientGone;

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client went away while its answer was awaited")
    }
}

impl std::error::Error for ClientGone {}

/// `handling`, a request's answer, awaited while `watch` (if any) watches the client: when the
/// client has gone, `handling` is dropped (its try cancelled, a 499 counted and logged) and
/// the answer is [`ClientGone`].
pub fn unless_gone<F, R>(handling: Pin<Box<F>>, watch: Option<Arc<Watch>>) -> UnlessGone<F>
where
    F: std::future::Future<Output = R>,
{
    UnlessGone {
        handling: Some(handling),
        watch,
        since: 0,
    }
}

/// See [`unless_gone`].
pub struct UnlessGone<F> {
    handling: Option<Pin<Box<F>>>,
    /// `None` for an unwatched connection, and once a half-close was seen.
    watch: Option<Arc<Watch>>,
    /// When the answer was first found not ready (coarse milliseconds; 0: not yet), as on the
    /// lean path ([`Watch::poll_gone`]).
    since: u64,
}

impl<F, B, E> std::future::Future for UnlessGone<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, ClientGone>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(handling) = this.handling.as_mut() else {
            return Poll::Ready(Err(ClientGone));
        };
        if let Poll::Ready(r) = handling.as_mut().poll(cx) {
            let mut r = r.map_err(|_| ClientGone);
            // The answer to a streamed upload watches on with its body ([`Uploading`]).
            if let (Ok(rsp), Some(watch)) = (&mut r, this.watch.take()) {
                if let Some(mark) = rsp.extensions_mut().get_mut::<Uploading>() {
                    mark.watch = Some(watch);
                    mark.since = match this.since {
                        0 => coarse::millis(),
                        since => since,
                    };
                }
            }
            return Poll::Ready(r);
        }
        if let Some(watch) = &this.watch {
            if this.since == 0 {
                this.since = coarse::millis().max(1);
            }
            match watch.poll_gone(cx, this.since) {
                Poll::Ready(true) => {
                    // Dropped here, before hyper closes the connection: counted and logged
                    // as a 499 by `finish.rs`.
                    this.handling = None;
                    return Poll::Ready(Err(ClientGone));
                }
                Poll::Ready(false) => this.watch = None,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// The stream given to hyper's HTTP/1 server, which notes when hyper last read bytes of the
/// client's ([`Watch`]).
#[derive(Debug)]
pub struct Watched<I> {
    /// The stream.
    pub io: I,
    /// The connection's watch, if it has one.
    pub watch: Option<Arc<Watch>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Some(w), Poll::Ready(Ok(()))) = (&this.watch, &read) {
            if buf.filled().len() > before {
                w.last_read.store(coarse::millis(), Ordering::Relaxed);
            }
        }
        read
    }
}

write_through!(Watched);
