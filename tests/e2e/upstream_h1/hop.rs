//! What belongs to the client's hop and still decides what crosses to the upstream and back:
//! `te: trailers`, which asks an upstream for its trailers, and an HTTP/1.0 client's wish to
//! keep its connection when its answer can only end with the connection.

use std::time::Duration;

use super::{proxy, Scripted, Then};
use crate::support::capture::Capture;
use crate::support::conn::Conn;
use crate::support::{http, raw};

/// A client's `te` that lists `trailers` reaches an HTTP/1.1 upstream as `te: trailers`, that
/// token alone, from an HTTP/1.1 client (hyper's server: the lean one serves no request with
/// `TE`) and an HTTP/2 one; `te` without `trailers`, and an HTTP/1.0 client's (which cannot be
/// given trailers), do not. Before, no `te` ever went on, so an upstream that sends trailers
/// only when asked (hyper's server) never sent any, though rampart relays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_alone_reaches_an_http1_upstream() {
    let app = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy(app.addr()).await;
    let addr = proxy.listener("inbound");
    let wait = Duration::from_secs(10);
    let h1 = b"GET /h1 HTTP/1.1\r\nhost: app\r\nTE: deflate;q=0.5, Trailers\r\nconnection: close\r\n\r\n";
    assert_eq!(raw::exchange(addr, h1, wait).await.status(), Some(200));
    let h2 = http::h2_get(addr, "/h2", &[("te", "trailers")]).await;
    assert_eq!(h2.status, 200);
    let gzip = b"GET /gzip HTTP/1.1\r\nhost: app\r\nTE: gzip\r\nconnection: close\r\n\r\n";
    assert_eq!(raw::exchange(addr, gzip, wait).await.status(), Some(200));
    let h10 = b"GET /h10 HTTP/1.0\r\nTE: trailers\r\n\r\n";
    assert_eq!(raw::exchange(addr, h10, wait).await.status(), Some(200));
    let got = app.requests();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(app.header(0, "te"), ["trailers"], "{}", got[0]);
    assert_eq!(app.header(1, "te"), ["trailers"], "{}", got[1]);
    assert!(app.header(2, "te").is_empty(), "{}", got[2]);
    assert!(app.header(3, "te").is_empty(), "{}", got[3]);
    // RFC 9110 §10.1.4: a sender of `te` names it in `connection` too; none without it.
    assert_eq!(app.header(0, "connection"), ["te"], "{}", got[0]);
    assert_eq!(app.header(1, "connection"), ["te"], "{}", got[1]);
    assert!(app.header(2, "connection").is_empty(), "{}", got[2]);
    assert!(app.header(3, "connection").is_empty(), "{}", got[3]);
}

/// An upgrade request with `te: trailers` reaches the upstream with one `connection` line
/// naming both: `upgrade`, which rampart writes for the upgrade, and `te` (RFC 9110 §10.1.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_is_named_in_the_connection_line_an_upgrade_request_carries() {
    let app = Capture::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let proxy = proxy(app.addr()).await;
    let addr = proxy.listener("inbound");
    let req = b"GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
                te: trailers\r\n\r\n";
    let rsp = raw::exchange(addr, req, Duration::from_millis(500)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let got = app.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(app.header(0, "te"), ["trailers"], "{}", got[0]);
    assert_eq!(app.header(0, "upgrade"), ["websocket"], "{}", got[0]);
    assert_eq!(app.header(0, "connection"), ["upgrade, te"], "{}", got[0]);
}

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
