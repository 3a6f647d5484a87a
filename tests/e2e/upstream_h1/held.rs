//! What an answer head of thousands of header lines leaves behind once it is written: nothing
//! that stays with the client connections it passed through, the buffers their thread keeps
//! for them, or the pooled upstream connections that read it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::proxy;
use crate::support::capture::whole_request;
use crate::support::conn::Conn;

/// Header lines of the long head: `a:` each, 64,000 bytes in all, within the 64 KiB an answer
/// head may take.
const LINES: usize = 16_000;
/// Time between two answers of a round: each is written, and what it needed let go, before
/// the next is read.
const GAP: Duration = Duration::from_millis(20);

/// A raw upstream that answers in rounds of `n` requests: it holds each round until all `n`
/// are in (so that every client connection holds its buffers at once), then answers them one
/// at a time, [`GAP`] apart: `GET /long` with a 204 whose head has [`LINES`] lines, any other
/// request with a bare 204. Its connections stay open for the next request.
struct Rounds {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rounds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rounds {
    async fn start(n: usize) -> Rounds {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let (turns, mut waiting) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let task = tokio::spawn(async move {
            let answering = async {
                let mut round = Vec::with_capacity(n);
                while let Some(turn) = waiting.recv().await {
                    round.push(turn);
                    if round.len() == n {
                        for turn in round.drain(..) {
                            let _ = turn.send(());
                            tokio::time::sleep(GAP).await;
                        }
                    }
                }
            };
            let accepting = async {
                while let Ok((tcp, _)) = tcp.accept().await {
                    tokio::spawn(Self::serve(tcp, turns.clone()));
                }
            };
            tokio::join!(answering, accepting);
        });
        Rounds { addr, task }
    }

    async fn serve(mut tcp: TcpStream, turns: mpsc::UnboundedSender<oneshot::Sender<()>>) {
        let mut long = b"HTTP/1.1 204 No Content\r\n".to_vec();
        long.extend(b"a:\r\n".repeat(LINES));
        long.extend(b"\r\n");
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        loop {
            let len = loop {
                if let Some(len) = whole_request(&buf) {
                    break len;
                }
                match tcp.read(&mut chunk).await {
                    Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            };
            let answer = match buf.starts_with(b"GET /long ") {
                true => &long[..],
                false => &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            };
            buf.drain(..len);
            let (turn, wait) = oneshot::channel();
            if turns.send(turn).is_err() || wait.await.is_err() {
                return;
            }
            if tcp.write_all(answer).await.is_err() {
                return;
            }
        }
    }
}

/// Sends `GET path` on every connection at once, then reads each answer: how many `a` lines
/// each had.
async fn round(conns: &mut [Conn], path: &str) -> Vec<usize> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n");
    for c in conns.iter_mut() {
        c.send(req.as_bytes()).await;
    }
    let mut lines = Vec::with_capacity(conns.len());
    for c in conns.iter_mut() {
        let a = c.answer(false).await;
        assert_eq!(a.status, 204, "{}", a.line);
        lines.push(a.headers.iter().filter(|(n, _)| n == "a").count());
    }
    lines
}

/// Answers of 16,000 header lines (a 204, each a 64 KiB head), to 32 keep-alive connections
/// that then wait, leave rampart's memory about where it was: before, each answer's header
/// map (about a megabyte, emptied but not freed) went on with its connection's buffers, onto
/// the shelf their thread keeps for waiting connections (up to 256 pairs a thread), and each
/// pooled upstream connection kept the room for the lines it read (640 KiB): about 60 MiB
/// more for these 32 (seen failing so before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_thousands_of_header_lines_leave_nothing_with_waiting_connections() {
    const CONNS: usize = 32;
    let up = Rounds::start(CONNS).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        conns.push(Conn::open(addr).await);
    }
    // Every connection, with its buffers, and a pooled upstream connection for each.
    assert_eq!(round(&mut conns, "/short").await, [0; CONNS]);
    let before = proxy.rss_kib();
    assert_eq!(round(&mut conns, "/long").await, [LINES; CONNS]);
    // All of them wait for their next request, their buffers on the shelf.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "{grown} KiB more held by {CONNS} waiting connections after long answers"
    );
    assert_eq!(
        round(&mut conns, "/short").await,
        [0; CONNS],
        "still served"
    );
}
