//! Uploads a client sends in one-byte chunks, to an HTTP/2 upstream built on the h2 library
//! (hyper, tonic, axum). h2 (0.4.16 on) closes a connection whose peer has sent it too many
//! small DATA frames its application has not read yet (`GOAWAY ENHANCE_YOUR_CALM`,
//! "too_many_data_frames"): each frame under 256 bytes costs 256 less its length, against half
//! the connection window. rampart carries every client's upload to an endpoint on one
//! connection, so clients that each send tiny chunks share that budget.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{proxy, H2Server};
use crate::support::metrics;

/// A chunked POST of `path`, sent one-byte chunk by one-byte chunk (a write each, a pause of a
/// millisecond after every 16) until the answer has come and gone (the peer closes) or `for_`
/// has passed; the answer read to its close.
async fn one_byte_chunks(addr: SocketAddr, path: &str, for_: Duration) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: grpc.internal\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await.expect("the head");
        let until = tokio::time::Instant::now() + for_;
        'sending: while tokio::time::Instant::now() < until {
            for _ in 0..16 {
                if wr.write_all(b"1\r\nx\r\n").await.is_err() {
                    break 'sending;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        wr
    });
    let mut answer = Vec::new();
    let read = rd.read_to_end(&mut answer);
    let _ = tokio::time::timeout(for_ + Duration::from_secs(10), read).await;
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Eight clients upload in one-byte chunks at once to an upstream that reads no request body
/// before it answers (`/slow`, a second later): each gets the upstream's answer, on the one
/// connection rampart opened. Before, rampart sent each chunk upstream as a DATA frame of its
/// own, thousands of one-byte frames nobody read, and the upstream closed the connection
/// (`GOAWAY ENHANCE_YOUR_CALM` "too_many_data_frames"): all eight got 502 "connection lost
/// to upstream".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_one_byte_chunks_reach_an_h2_upstream_that_reads_them_late() {
    let up = H2Server::start(None).await;
    let proxy = proxy(up.addr, "").await;
    let addr = proxy.listener("inbound");
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(one_byte_chunks(addr, "/slow", Duration::from_millis(1500))))
        .collect();
    for call in calls {
        let answer = call.await.expect("a client");
        let status = answer.lines().next().unwrap_or_default();
        assert_eq!(status, "HTTP/1.1 200 OK", "{answer}\n{}", proxy.log());
        assert!(
            answer.ends_with("slow\r\n0\r\n\r\n") || answer.ends_with("slow"),
            "{answer}"
        );
    }
    assert_eq!(up.seen().len(), 8);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection carried them all"
    );
    let text = metrics(proxy.admin()).await;
    let codes =
        crate::support::metrics::label_values(&text, "rampart_upstream_requests_total", "code");
    assert_eq!(codes, ["200"], "no failure counted");
}
