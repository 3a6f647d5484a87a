//! Reads and writes of plain TCP sockets made with the kernel's calls directly (through rustix),
//! not through the C library.
//!
//! Why: once a process has a second thread (a second worker, the access log's writer, the
//! blocking thread a reload reads its file on), glibc treats it as multi-threaded for good, and wraps every `recv`, `send`
//! and `writev` as a cancellation point: two atomic updates of the calling thread's
//! cancellation state around each call. rampart never cancels a thread, so that is pure cost,
//! four times a proxied request (a read and a write on each side). rustix makes the same
//! system calls without the wrappers. What tokio's own `TcpStream` does around the call is
//! kept: wait for readiness, and take a short read or write as the end of what the socket has
//! (or has room for), so that the next attempt waits for the kernel's word instead of making a
//! call that would find nothing.
//!
//! [`Sock`] is a `TcpStream` that reads and writes this way: the client's connections and the
//! upstream pool's, plain or under TLS.

// The crate's only `unsafe`: a read fills the unfilled part of tokio's `ReadBuf` (memory it
// may not have initialised) and says how much it filled, as tokio's own `TcpStream` does. A
// safe read would zero the 4-8 KiB of room before every call, which costs more than the
// wrappers this module exists to skip.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// One call on `s` that moves bytes, made as tokio's own `TcpStream` makes it: only while tokio
/// has seen the socket ready for `interest` (else the task of `cx` waits for it, through
/// `ready`; without a `cx` nothing waits and the answer is `Pending`), and
/// a call that would block forgets that readiness. So does a call that moved fewer bytes than
/// it could (`call` returns how many it moved and how many it could have): the socket has no
/// more (or no more room) until the kernel says so again, and the next attempt waits for that
/// instead of making a call that would find nothing. Both forget the readiness as it was before
/// the call: a word from the kernel that came during it (another thread may run the driver)
/// is kept.
fn attempt(
    s: &TcpStream,
    mut cx: Option<&mut Context<'_>>,
    interest: Interest,
    ready: fn(&TcpStream, &mut Context<'_>) -> Poll<io::Result<()>>,
    mut call: impl FnMut() -> io::Result<(usize, usize)>,
) -> Poll<io::Result<usize>> {
    loop {
        let mut short = None;
        let moved = s.try_io(interest, || {
            let (n, could) = call()?;
            if 0 < n && n < could {
                // Reported as a call that would block, so that tokio forgets the readiness.
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (moved, short) {
            (_, Some(n)) | (Ok(n), None) => return Poll::Ready(Ok(n)),
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => match cx.as_deref_mut() {
                Some(cx) => ready!(ready(s, cx))?,
                None => return Poll::Pending,
            },
            (Err(e), None) => return Poll::Ready(Err(e)),
        }
    }
}

/// Reads what `s` has into the unfilled part of `buf`, as `AsyncRead::poll_read` does (without
/// a `cx`: only what tokio has seen come, see [`Sock::read_now`]).
fn poll_read(
    s: &TcpStream,
    cx: Option<&mut Context<'_>>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    // SAFETY: `recv` only writes bytes into the slice (it never de-initialises any), and
    // `assume_init` below covers exactly the bytes it returned as written.
    let room = unsafe { buf.unfilled_mut() };
    let len = room.len();
    let n = ready!(attempt(
        s,
        cx,
        Interest::READABLE,
        TcpStream::poll_read_ready,
        || {
            let ((read, _), _) = rustix::net::recv(s, &mut *room, RecvFlags::empty())?;
            Ok((read.len(), len))
        }
    ))?;
    // SAFETY: the first `n` bytes of the unfilled part were written by `recv`.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Poll::Ready(Ok(()))
}

/// Writes what it can of `data` to `s`, as `AsyncWrite::poll_write` does.
fn poll_write(s: &TcpStream, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    attempt(
        s,
        Some(cx),
        Interest::WRITABLE,
        TcpStream::poll_write_ready,
        || Ok((rustix::net::send(s, data, SendFlags::NOSIGNAL)?, data.len())),
    )
}

/// Writes what it can of `bufs` to `s`, as `AsyncWrite::poll_write_vectored` does.
fn poll_write_vectored(
    s: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    attempt(
        s,
        Some(cx),
        Interest::WRITABLE,
        TcpStream::poll_write_ready,
        || {
            let n = rustix::io::writev(s, bufs)?;
            Ok((n, bufs.iter().map(|b| b.len()).sum()))
        },
    )
}

/// A new TCP connection to an upstream endpoint, with the options every one has (a pooled
/// HTTP/1.1 one, an HTTP/2 one, a health probe's, a CONNECT tunnel's): `TCP_NODELAY`,
/// keepalive probes ([`KEEPALIVE`]: a silent peer found out while the connection is idle), and
/// `TCP_USER_TIMEOUT` of [`SEND_STALL`](super::bind::SEND_STALL), as a client's connection has:
/// bytes sent and not taken for so long (a peer gone with a request on its way, its packets
/// dropped by a network that forgot the connection, or an upstream that stopped reading) abort
/// the connection, where the kernel's retransmissions alone would take about 15 minutes, and
/// an HTTP/2 connection's PINGs (at most every 5 minutes) would not see it sooner.
pub(crate) async fn connect_upstream(addr: std::net::SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    // As `TCP_NODELAY`: a connection the options cannot be set on still carries requests.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.set_tcp_keepalive(&KEEPALIVE.probes());
    let _ = sock.set_tcp_user_timeout(Some(super::bind::SEND_STALL));
    Ok(stream)
}

impl Keepalive {
    /// These times as socket options (`SO_KEEPALIVE` is set with them).
    pub(crate) fn probes(&self) -> socket2::TcpKeepalive {
        socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.probes)
    }
}

/// When the kernel probes an upstream connection on which nothing has come for a while: first
/// after `idle` of silence, then every `interval`, and after `probes` unanswered probes the
/// connection is reset (its next read or write fails, an idle pooled one is closed). Without
/// them a peer gone silently (a NAT or a load balancer that dropped its state of the
/// connection, a host powered off) was never noticed on an idle pooled connection or a quiet
/// tunnel: the kernel sends nothing on a connection with nothing to send. Found out within
/// about a minute (30 s + 3 × 10 s), and the probes keep a NAT's or a load balancer's state of
/// the connection alive (their idle timeouts are minutes: 350 s for AWS's NLB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    /// Silence before the first probe.
    pub idle: std::time::Duration,
    /// Between probes.
    pub interval: std::time::Duration,
    /// Unanswered probes before the connection is reset.
    pub probes: u32,
}

/// The keepalive probes of every upstream connection, and of every client's (set on the
/// listening sockets, which their accepted ones inherit them from).
pub(crate) const KEEPALIVE: Keepalive = Keepalive {
    idle: std::time::Duration::from_secs(30),
    interval: std::time::Duration::from_secs(10),
    probes: 3,
};

/// A TCP connection read and written with the kernel's calls directly.
#[derive(Debug)]
pub struct Sock(pub TcpStream);

impl Sock {
    /// Reads what the socket has into `buf` if tokio has seen it readable since the last read
    /// that drained it, else `Pending` at once: no system call then, and, unlike a poll, no
    /// waker left with the socket (which would take its lock, and put out the waker of the task
    /// that reads it next). For a look at an idle pooled connection, whose next reader is
    /// another request's task.
    pub fn read_now(&self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        poll_read(&self.0, None, buf)
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.0, Some(cx), buf)
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(&self.0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    /// A connected pair on 127.0.0.1: the accepted end as a [`Sock`], and its peer.
    async fn pair() -> (Sock, TcpStream) {
        let lst = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = TcpStream::connect(lst.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = lst.accept().await.expect("accept");
        // Small writes go out at once, not held back for the last one's ACK.
        peer.set_nodelay(true).expect("nodelay");
        accepted.set_nodelay(true).expect("nodelay");
        (Sock(accepted), peer)
    }

    /// Whether a read of `sock` would wait now (polled once, nothing taken).
    async fn waits(sock: &mut Sock) -> bool {
        let mut buf = [0u8; 8];
        tokio::select! {
            biased;
            r = sock.read(&mut buf) => panic!("read {r:?} with nothing sent"),
            () = std::future::ready(()) => true,
        }
    }

    /// A connection to an upstream has `TCP_NODELAY` and keepalive probes on, with
    /// [`KEEPALIVE`]'s times: a peer gone silently (behind a NAT or a load balancer that
    /// forgot the connection) is found out on an idle pooled connection or a quiet tunnel; and
    /// what it sends and the peer never takes aborts it after `SEND_STALL`.
    #[tokio::test]
    async fn an_upstream_connection_has_keepalive_probes() {
        let lst = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ours = connect_upstream(lst.local_addr().expect("addr"))
            .await
            .expect("connect");
        let sock = socket2::SockRef::from(&ours);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
        assert!(sock.keepalive().expect("SO_KEEPALIVE"), "no keepalive");
        #[cfg(target_os = "linux")]
        assert_eq!(
            (
                sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            ),
            (KEEPALIVE.idle, KEEPALIVE.interval, KEEPALIVE.probes)
        );
        assert_eq!(
            sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(crate::proxy::bind::SEND_STALL)
        );
    }

    #[tokio::test]
    async fn a_short_read_waits_for_the_next_bytes_and_a_full_one_reads_on() {
        let (mut sock, mut peer) = pair().await;
        let mut buf = [0u8; 16];

        // Fewer bytes than the buffer holds: all of them, then a wait that still wakes.
        peer.write_all(b"abc").await.expect("write");
        let n = timeout(BOUND, sock.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf[..n], b"abc");
        assert!(waits(&mut sock).await);
        peer.write_all(b"de").await.expect("write");
        let n = timeout(BOUND, sock.read(&mut buf))
            .await
            .expect("woken")
            .expect("read");
        assert_eq!(&buf[..n], b"de");

        // More than the buffer holds: each full read leaves the socket readable, so the rest
        // is read without any new word from the kernel.
        let sent: Vec<u8> = (0..40u8).collect();
        peer.write_all(&sent).await.expect("write");
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let n = timeout(BOUND, sock.read(&mut buf))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent);
        assert!(waits(&mut sock).await);

        // The peer's end: a read of nothing.
        drop(peer);
        let n = timeout(BOUND, sock.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn writes_larger_than_the_socket_holds_wait_for_room_and_arrive_whole() {
        let (mut sock, mut peer) = pair().await;
        // 8 MiB, more than loopback's socket buffers: writes fall short and then wait.
        let a: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 241) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        });
        let written = timeout(BOUND, async {
            // Vectored first, then what is left of `b` plainly.
            let mut done = 0;
            while done < a.len() {
                let slices = [IoSlice::new(&a[done..]), IoSlice::new(&b)];
                done += sock.write_vectored(&slices).await.expect("writev");
            }
            let rest = done - a.len();
            sock.write_all(&b[rest..]).await.expect("write");
            sock.shutdown().await.expect("shutdown");
        })
        .await;
        assert!(written.is_ok(), "the writes did not finish in time");
        let got = timeout(BOUND, reader)
            .await
            .expect("in time")
            .expect("reader");
        assert_eq!(got.len(), a.len() + b.len());
        assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
    }

    #[tokio::test]
    async fn a_reset_is_an_error_to_read_and_to_write() {
        let (mut sock, peer) = pair().await;
        peer.set_zero_linger().expect("linger");
        drop(peer);
        let mut buf = [0u8; 8];
        let err = timeout(BOUND, sock.read(&mut buf))
            .await
            .expect("in time")
            .expect_err("read after a reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let err = timeout(BOUND, sock.write_all(b"late"))
            .await
            .expect("in time")
            .expect_err("write after a reset");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
    }
}
