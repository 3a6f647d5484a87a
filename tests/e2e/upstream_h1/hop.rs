//! What belongs to the client's hop and still decides what crosses to the upstream and back:
//! `te: trailers`, which asks an upstream for its trailers, and an HTTP/1.0 client's wish to
//! keep its connection when its answer can only end with the connection.

use super::{proxy, Scripted, Then};
use crate::support::conn::Conn;

/// An HTTP/1.0 client that asks to keep its connection (`Connection: keep-alive`) and gets an
/// answer of no length (here chunked from the upstream: HTTP/1.0 has no chunks, so the body
/// ends with the connection) is told `connection: close`, from the lean server and from
/// hyper's (a request with `TE` is hyper's). Before, it was told `keep-alive` and the
/// connection closed anyway: the request it sent behind was lost without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_client_is_told_close_when_the_close_ends_its_answer() {
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    let up = Scripted::start(vec![(CHUNKED, Then::Stay)]).await;
    let proxy = proxy(up.addr).await;
    let addr = proxy.listener("inbound");
    for (server, req) in [
        (
            "lean",
            &b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"[..],
        ),
        (
            "hyper",
            &b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\nTE: gzip\r\n\r\nGET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"[..],
        ),
    ] {
        let mut c = Conn::open(addr).await;
        c.send(req).await;
        let a = c.answer(false).await;
        assert_eq!(a.line, "HTTP/1.0 200 OK", "{server}: {a:?}");
        assert_eq!(a.header("connection"), Some("close"), "{server}: {a:?}");
        assert_eq!(a.header("transfer-encoding"), None, "{server}: {a:?}");
        assert_eq!(a.body, b"hi", "{server}: {a:?}");
    }
}
