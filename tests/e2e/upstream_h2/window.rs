//! An HTTP/2 upstream that takes uploads and never reopens its connection's send window: once
//! the window has stayed shut for its bound, new requests go on a new connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::{h2_frame, h2_ok, proxy};
use crate::support::http;

/// How long rampart lets a connection's send window stay shut before no new stream goes on it
/// (`pool::h2::SHUT_WINDOW`).
const SHUT_WINDOW: Duration = Duration::from_secs(10);

/// A raw HTTP/2 server on 127.0.0.1 that gives each stream a 1 MiB window and never sends a
/// `WINDOW_UPDATE`: each connection takes 65,535 bytes of `DATA` in all (its first window).
/// It answers each request 200 `conn N` (N counted from 1) once the request has ended.
struct Shut {
    addr: SocketAddr,
    /// The `DATA` bytes each connection took, in the order they were made.
    taken: Arc<Mutex<Vec<usize>>>,
    /// The connections rampart closed, by number.
    closed: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shut {
    async fn start() -> Shut {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let taken = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (taken, closed) = (taken.clone(), closed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while let Ok((tcp, _)) = listener.accept().await {
                    n += 1;
                    taken.lock().push(0);
                    tokio::spawn(Self::serve(tcp, n, taken.clone(), closed.clone()));
                }
            })
        };
        Shut {
            addr,
            taken,
            closed,
            task,
        }
    }

    fn taken(&self) -> Vec<usize> {
        self.taken.lock().clone()
    }

    fn closed(&self) -> Vec<u64> {
        self.closed.lock().clone()
    }

    async fn serve(
        tcp: tokio::net::TcpStream,
        n: u64,
        taken: Arc<Mutex<Vec<usize>>>,
        closed: Arc<Mutex<Vec<u64>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rd, mut wr) = tcp.into_split();
        let mut preface = [0u8; 24];
        if rd.read_exact(&mut preface).await.is_ok() {
            // SETTINGS_INITIAL_WINDOW_SIZE = 1 MiB: only the connection's window binds.
            let settings = h2_frame(0x4, 0, 0, &[0, 4, 0, 0x10, 0, 0]);
            if wr.write_all(&settings).await.is_ok() {
                loop {
                    let mut head = [0u8; 9];
                    if rd.read_exact(&mut head).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if rd.read_exact(&mut payload).await.is_err() {
                        break;
                    }
                    let index = usize::try_from(n - 1).expect("small");
                    let out = match kind {
                        0x4 if flags & 0x1 == 0 => h2_frame(0x4, 0x1, 0, &[]),
                        0x6 if flags & 0x1 == 0 => h2_frame(0x6, 0x1, 0, &payload),
                        0x0 | 0x1 => {
                            if kind == 0x0 {
                                taken.lock()[index] += len;
                            }
                            match flags & 0x1 != 0 {
                                true => h2_ok(stream, &format!("conn {n}")),
                                false => continue,
                            }
                        }
                        _ => continue,
                    };
                    if wr.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        }
        closed.lock().push(n);
    }
}

/// An upstream that never reopens a connection's send window stalls every upload on it. Once
/// the window has been shut for its bound (10 s), the next request goes on a new connection
/// and is answered, and the shut one, taking no new request, closes once the upload stalled
/// on it has ended. Before, every new request went on the shut connection: a POST's body
/// never left rampart, and the client got no answer until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_send_window_stays_shut_takes_no_new_request() {
    let up = Shut::start().await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    // An upload larger than the connection's window: it stalls there for good.
    let stalled = tokio::spawn(async move {
        let body = vec![b'x'; 100 * 1024];
        http::post(addr, "/stalled", &[], body).await
    });
    crate::assert_eventually!(up.taken() == [65_535], "{:?}", up.taken());
    tokio::time::sleep(SHUT_WINDOW + Duration::from_millis(500)).await;
    let next = http::post(addr, "/next", &[], "hello");
    let rsp = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .unwrap_or_else(|_| panic!("not answered: {}", proxy.log()));
    assert_eq!(
        (rsp.status, rsp.text()),
        (StatusCode::OK, "conn 2".to_owned())
    );
    assert_eq!(
        up.taken(),
        [65_535, 5],
        "the new request went on a new connection"
    );
    assert!(up.closed().is_empty(), "{:?}", up.closed());
    // The stalled upload's client goes: its stream ends, and the shut connection with it.
    stalled.abort();
    crate::assert_eventually!(up.closed() == [1], "{:?}", up.closed());
}
