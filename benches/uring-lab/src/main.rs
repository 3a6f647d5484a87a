//! An experiment for issue 22, not part of rampart: does io_uring lower the kernel's share of
//! a proxied request enough to choose it?
//!
//! One minimal HTTP/1.1 keep-alive relay, the same logic on three I/O models:
//!
//! - `tokio`: tokio's current-thread runtime (epoll, readiness), as rampart runs today;
//! - `epoll`: monoio's legacy driver (epoll, readiness);
//! - `uring`: monoio's io_uring driver (completions: each read and write is a submission, and
//!   the submissions of one turn of the loop enter the kernel in one `io_uring_enter`).
//!
//! Each client connection gets one upstream connection of its own, opened at its first
//! request. A request is a head without a body (the load benchmark's `GET /`): read until its
//! empty line, written to the upstream as it came; the answer is read until its head and
//! `content-length` bytes are in, and written back as it came. No header is parsed beyond
//! that, none is changed: the floor under any proxy's user-space work, so that what differs
//! between the three is the I/O model. `benches/uring-lab/run.sh` measures them side by side.
//!
//! Usage: `uring-lab tokio|epoll|uring LISTEN UPSTREAM`.

use std::net::SocketAddr;

/// Room for one head (the relay serves small heads and answers only).
const BUF: usize = 16 * 1024;

/// Where the head at the front of `buf` ends (just past its empty line).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The `content-length` of an answer head (0 when it has none).
fn content_length(head: &[u8]) -> usize {
    const NAME: &[u8] = b"content-length:";
    head.split(|&b| b == b'\n')
        .find(|line| line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
        .and_then(|line| std::str::from_utf8(&line[NAME.len()..]).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whole length of the answer at the front of `buf`, once its head is in.
fn answer_len(buf: &[u8]) -> Option<usize> {
    head_end(buf).map(|h| h + content_length(&buf[..h]))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, listen, upstream] = &args[..] else {
        eprintln!("usage: uring-lab tokio|epoll|uring LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN: an address");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM: an address");
    match mode.as_str() {
        "tokio" => on_tokio::run(listen, upstream),
        "epoll" => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("monoio legacy runtime")
            .block_on(on_monoio::serve(listen, upstream)),
        "uring" => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(uring_setup())
            .build()
            .expect("monoio io_uring runtime (is io_uring enabled?)")
            .block_on(on_monoio::serve(listen, upstream)),
        other => {
            eprintln!("unknown mode {other}: tokio, epoll or uring");
            std::process::exit(2);
        }
    }
}

/// The ring's setup flags, from `URING_FLAGS` (comma-separated): `coop` (completions' task
/// work runs when the thread next enters the kernel, not by interrupting it), `single` (one
/// thread submits), `defer` (task work runs only when the thread waits for completions; needs
/// `single`). None by default, as monoio sets up its ring.
fn uring_setup() -> io_uring::Builder {
    let flags = std::env::var("URING_FLAGS").unwrap_or_default();
    let mut b = io_uring::IoUring::builder();
    for f in flags.split(',').filter(|f| !f.is_empty()) {
        match f {
            "coop" => {
                b.setup_coop_taskrun();
            }
            "single" => {
                b.setup_single_issuer();
            }
            "defer" => {
                b.setup_defer_taskrun();
            }
            other => {
                eprintln!("unknown URING_FLAGS entry {other}: coop, single or defer");
                std::process::exit(2);
            }
        }
    }
    b
}

mod on_tokio {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{answer_len, head_end, BUF};

    pub fn run(listen: SocketAddr, upstream: SocketAddr) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let l = TcpListener::bind(listen).await.expect("bind");
            loop {
                let Ok((c, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = relay(c, upstream).await;
                });
            }
        });
    }

    async fn relay(mut c: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
        c.set_nodelay(true)?;
        let mut up: Option<TcpStream> = None;
        let (mut cb, mut ub) = (vec![0u8; BUF], vec![0u8; BUF]);
        let mut filled = 0;
        loop {
            let end = loop {
                if let Some(e) = head_end(&cb[..filled]) {
                    break e;
                }
                let n = c.read(&mut cb[filled..]).await?;
                if n == 0 {
                    return Ok(());
                }
                filled += n;
            };
            if up.is_none() {
                let s = TcpStream::connect(upstream).await?;
                s.set_nodelay(true)?;
                up = Some(s);
            }
            let u = up.as_mut().expect("connected");
            u.write_all(&cb[..end]).await?;
            cb.copy_within(end..filled, 0);
            filled -= end;
            let mut got = 0;
            let len = loop {
                let n = u.read(&mut ub[got..]).await?;
                if n == 0 {
                    return Ok(());
                }
                got += n;
                if let Some(len) = answer_len(&ub[..got]).filter(|&l| l <= got) {
                    break len;
                }
            };
            c.write_all(&ub[..len]).await?;
        }
    }
}

mod on_monoio {
    use std::net::SocketAddr;

    use monoio::buf::{IoBuf, IoBufMut, SliceMut};
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use monoio::net::{TcpListener, TcpStream};

    use super::{answer_len, head_end, BUF};

    pub async fn serve(listen: SocketAddr, upstream: SocketAddr) {
        let l = TcpListener::bind(listen).expect("bind");
        loop {
            let Ok((c, _)) = l.accept().await else {
                continue;
            };
            monoio::spawn(async move {
                let _ = relay(c, upstream).await;
            });
        }
    }

    /// Reads more into the unfilled end of `buf`; `Ok(0)` at end of stream.
    async fn read_more(s: &mut TcpStream, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (r, slice): (_, SliceMut<Vec<u8>>) = s.read(buf.slice_mut(len..)).await;
        (r, slice.into_inner())
    }

    async fn relay(mut c: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
        c.set_nodelay(true)?;
        let mut up: Option<TcpStream> = None;
        let (mut cb, mut ub) = (Vec::with_capacity(BUF), Vec::with_capacity(BUF));
        loop {
            let end = loop {
                if let Some(e) = head_end(&cb) {
                    break e;
                }
                let (r, b) = read_more(&mut c, cb).await;
                cb = b;
                if r? == 0 {
                    return Ok(());
                }
            };
            if up.is_none() {
                let s = TcpStream::connect(upstream).await?;
                s.set_nodelay(true)?;
                up = Some(s);
            }
            let u = up.as_mut().expect("connected");
            let (r, slice) = u.write_all(cb.slice(..end)).await;
            r?;
            cb = slice.into_inner();
            cb.drain(..end);
            ub.clear();
            let len = loop {
                let (r, b) = read_more(u, ub).await;
                ub = b;
                if r? == 0 {
                    return Ok(());
                }
                if let Some(len) = answer_len(&ub).filter(|&l| l <= ub.len()) {
                    break len;
                }
            };
            let (r, slice) = c.write_all(ub.slice(..len)).await;
            r?;
            ub = slice.into_inner();
        }
    }
}
