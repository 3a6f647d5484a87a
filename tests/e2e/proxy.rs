//! The plain proxy path: bodies and protocols pass intact, forwarding headers are added and
//! hop-by-hop ones removed, routing by authority and path, and rampart's own answers when
//! there is no route, no upstream, or no answer in time.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{http, one_route, raw, sample, Proxy};

async fn inbound(app: SocketAddr) -> Proxy {
    Proxy::builder(&one_route("")).var("APP", app).spawn().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_streamed_post_round_trip_intact() {
    let app = sample().await;
    let proxy = inbound(app.addr()).await;
    let addr = proxy.listener("inbound");

    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "ok\n");
    assert_eq!(rsp.served_by(), Some(app.addr()));
    assert_eq!(app.hits_for("/ok"), 1);

    const LEN: usize = 10 * 1024 * 1024;
    let ct = ("content-type", "application/x-rampart-test");
    let rsp = http::post_stream(addr, "/echo", &[ct], LEN).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("content-type"), Some(ct.1));
    assert_eq!(rsp.body.len(), LEN, "the whole body must come back");
    assert!(
        rsp.body == http::pattern(LEN),
        "the body must come back unchanged"
    );
    assert_eq!(app.hits_for("/echo"), 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let app = sample().await;
    let proxy = inbound(app.addr()).await;
    let rsp = http::h2_get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eq!(rsp.version, ::http::Version::HTTP_2);
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "ok\n");
    assert_eq!(rsp.served_by(), Some(app.addr()));
    assert_eq!(app.hits_for("/ok"), 1);
}

/// Routes for [`head_over_h2_is_answered_without_content`]: one rate limited (one request an
/// hour), one to a dead endpoint, one to the sample; any other path has no route.
const HEAD_ROUTES: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
  dead: { endpoints: [$DEAD] }
policies:
  limited:
    rate_limit:
      total: { rate: 1/h, burst: 1 }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - { match: { path_prefix: /ok }, upstream: app, policy: limited }
      - { match: { path_prefix: /dead }, upstream: dead }
      - { match: { path_prefix: /bytes }, upstream: app }
"#;

/// An answer to HEAD over HTTP/2 has no content (RFC 9110 §9.3.2): rampart's own (429, 502,
/// 404) end the stream with their HEADERS, which still say the length a GET's body would
/// have; an HTTP/2 client (h2, nghttp2) resets a stream that carries data and sees no status.
/// An upstream's answer to HEAD keeps the upstream's length.
#[tokio::test]
async fn head_over_h2_is_answered_without_content() {
    let app = sample().await;
    let dead = crate::support::Closed::new();
    let proxy = Proxy::builder(HEAD_ROUTES)
        .var("APP", app.addr())
        .var("DEAD", dead.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    let fine = http::h2_head(addr, "/bytes/1000", &[]).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(fine.headers["content-length"], "1000", "{fine:?}");
    assert!(fine.ended_at_head, "{fine:?}");
    assert!(fine.body.as_ref().is_ok_and(|b| b.is_empty()), "{fine:?}");

    let first = http::h2_head(addr, "/ok", &[]).await;
    assert_eq!(first.status, 200, "the burst's one request: {first:?}");
    for (path, status, reason) in [
        ("/ok", 429, "rate_limited"),
        ("/dead", 502, "upstream_unavailable"),
        ("/nowhere", 404, "no_route"),
    ] {
        let own = http::h2_head(addr, path, &[]).await;
        assert_eq!(own.status, status, "{path}: {own:?}");
        assert_eq!(own.headers["x-rampart-reason"], reason, "{path}: {own:?}");
        let len: u64 = own.headers["content-length"]
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{path}: a GET's length: {own:?}"));
        assert!(
            len > 0,
            "{path}: the length of the JSON a GET gets: {own:?}"
        );
        assert!(own.ended_at_head, "{path}: HEADERS end the stream: {own:?}");
        assert!(
            own.body.as_ref().is_ok_and(|b| b.is_empty()),
            "{path}: no content, no stream error: {own:?}"
        );
    }
    // The length a HEAD is told is the one a GET gets.
    let got = http::h2_get(addr, "/nowhere", &[]).await;
    let told = http::h2_head(addr, "/nowhere", &[]).await;
    assert_eq!(
        got.headers.get("content-length"),
        told.headers.get("content-length")
    );
}

#[tokio::test]
async fn forwarding_headers_added_when_absent_request_id_kept() {
    let app = sample().await;
    let proxy = inbound(app.addr()).await;
    let addr = proxy.listener("inbound");

    let seen = http::get(addr, "/headers", &[]).await.json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "http", "{seen}");
    let id = h["x-request-id"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "x-request-id must be added: {seen}");

    let seen = http::get(addr, "/headers", &[("x-request-id", "req-abc-123")])
        .await
        .json();
    assert_eq!(seen["headers"]["x-request-id"], "req-abc-123", "{seen}");

    // Two requests get two ids.
    let other = http::get(addr, "/headers", &[]).await.json();
    assert_ne!(other["headers"]["x-request-id"].as_str(), Some(id));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let app = sample().await;
    let proxy = inbound(app.addr()).await;
    let addr = proxy.listener("inbound");

    let req = "GET /headers HTTP/1.1\r\nHost: app.local\r\n\
               Connection: close, x-hop-custom\r\nKeep-Alive: timeout=5\r\n\
               TE: gzip\r\nUpgrade: foo/1\r\nProxy-Authorization: Basic dTpw\r\n\
               X-Hop-Custom: 1\r\nX-End-To-End: kept\r\n\r\n";
    let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let body = rsp.text();
    let json = &body[body.find('{').expect("a JSON body")..body.rfind('}').expect("end") + 1];
    let seen: serde_json::Value = serde_json::from_str(json).expect("JSON from /headers");
    let h = &seen["headers"];
    for name in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-hop-custom",
    ] {
        assert!(
            h.get(name).is_none(),
            "{name} must not be forwarded: {seen}"
        );
    }
    assert_eq!(h["x-end-to-end"], "kept", "{seen}");

    // A chunked request: the upstream may see rampart's own framing, never the client's copy.
    let req = "POST /headers HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\
               Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let rsp = raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
    let body = rsp.text();
    let json = &body[body.find('{').expect("a JSON body")..body.rfind('}').expect("end") + 1];
    let seen: serde_json::Value = serde_json::from_str(json).expect("JSON from /headers");
    let te = seen["headers"]["transfer-encoding"].as_str();
    assert!(matches!(te, None | Some("chunked")), "te: {te:?}");
    let framed = te.is_some() || seen["headers"]["content-length"] == "5";
    assert!(framed, "the body must be framed once: {seen}");
}

/// An outbound listener routing on authority, wildcard and path prefix.
const OUTBOUND: &str = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  a: { endpoints: [$A] }
  b: { endpoints: [$B] }
  dead: { endpoints: [$DEAD], connect_timeout: 500ms }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - match: { host: sample.local }
        upstream: a
      - match: { host: "*.example.com" }
        upstream: b
      - match: { host: dead.local }
        upstream: dead
      - match: { host: "[0:0::1]" }
        upstream: a
      - match: { host: app.internal. }
        upstream: a
      - match: { path_prefix: /status }
        upstream: b
"#;

#[tokio::test]
async fn outbound_routes_by_authority_wildcard_and_path() {
    let (a, b) = (sample().await, sample().await);
    let proxy = Proxy::builder(OUTBOUND)
        .var("A", a.addr())
        .var("B", b.addr())
        .closed("DEAD")
        .spawn()
        .await;
    let out = proxy.listener("outbound");
    let via = |host: &'static str| async move {
        http::get(out, "/ok", &[("host", host)]).await.served_by()
    };
    assert_eq!(via("sample.local").await, Some(a.addr()));
    assert_eq!(
        via("sample.local:8080").await,
        Some(a.addr()),
        "port ignored"
    );
    assert_eq!(via("api.example.com").await, Some(b.addr()));
    assert_eq!(via("a.b.example.com").await, Some(b.addr()));

    // Absolute form, as sent by an app whose HTTP_PROXY points at the listener.
    for (host, want) in [("sample.local", a.addr()), ("api.example.com", b.addr())] {
        let req =
            format!("GET http://{host}/ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let rsp = raw::exchange(out, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(rsp.status(), Some(200), "{}", rsp.text());
        assert_eq!(rsp.header("x-sample-addr"), Some(want.to_string()));
    }

    // An IPv6 literal is written in brackets, a name may end in the root's dot: each is
    // matched as the request names its host, not left to a later route. Before, `[::1]` and
    // `app.internal.` never matched. An IPv6 literal matches the address it names, however
    // either side writes it (`[0:0::1]` is `[::1]`); before, they were compared as text.
    for ip in ["[::1]", "[0000:0:0:0:0:0:0:1]"] {
        let req = format!(
            "GET http://{ip}:{0}/status/202 HTTP/1.1\r\nHost: {ip}:{0}\r\nConnection: close\r\n\r\n",
            out.port()
        );
        let rsp = raw::exchange(out, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(rsp.status(), Some(202), "{ip}: {}", rsp.text());
        assert_eq!(
            rsp.header("x-sample-addr"),
            Some(a.addr().to_string()),
            "{ip}"
        );
    }
    let rsp = http::get(out, "/status/202", &[("host", "app.internal")]).await;
    assert_eq!(rsp.status, 202);
    assert_eq!(rsp.served_by(), Some(a.addr()));

    // Path prefix for any host; other paths of an unknown host have no route.
    let rsp = http::get(out, "/status/201", &[("host", "other.local")]).await;
    assert_eq!(rsp.status, 201);
    assert_eq!(rsp.served_by(), Some(b.addr()));
    for host in ["other.local", "example.com"] {
        let rsp = http::get(out, "/ok", &[("host", host)]).await;
        rsp.assert_rampart(404, "no_route");
    }
    assert_eq!(a.hits_for("/ok"), 3);
    assert_eq!(b.hits_for("/ok"), 3);
}

#[tokio::test]
async fn upstream_down_is_502_upstream_unavailable() {
    let (a, b) = (sample().await, sample().await);
    let proxy = Proxy::builder(OUTBOUND)
        .var("A", a.addr())
        .var("B", b.addr())
        .closed("DEAD")
        .spawn()
        .await;
    let started = tokio::time::Instant::now();
    let rsp = http::get(proxy.listener("outbound"), "/ok", &[("host", "dead.local")]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// An upstream whose only endpoint is a DNS name that never resolved (`.invalid` never does,
/// RFC 6761) answers 502 saying so, not only "no healthy endpoint", which would send one to
/// look at health checks; and the failed lookup is logged as finding no addresses yet, not as
/// "keeping last addresses" it never had.
#[tokio::test]
async fn an_upstream_whose_name_never_resolved_says_so() {
    let template = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  dep: { endpoints: ["nonexistent.invalid:80"] }
listeners:
  - name: outbound
    direction: outbound
    listen: $LISTEN_outbound
    routes:
      - upstream: dep
"#;
    // Outbound: an inbound upstream with no endpoint would hold /readyz at 503.
    let proxy = Proxy::builder(template).spawn().await;
    let rsp = http::get(proxy.listener("outbound"), "/ok", &[("host", "dep.local")]).await;
    rsp.assert_rampart(502, "upstream_unavailable");
    assert_eq!(
        rsp.json()["message"],
        "upstream dep has no healthy endpoint; nonexistent.invalid:80 has not resolved to any \
         address (DNS)",
        "{}",
        rsp.text()
    );
    crate::assert_eventually!(
        proxy.log().contains("dns lookup failed; no addresses yet"),
        "{}",
        proxy.log()
    );
    assert!(
        !proxy.log().contains("keeping last addresses"),
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn request_timeout_is_504_well_before_the_upstream_answers() {
    let app = sample().await;
    let template = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$APP] }
policies:
  quick:
    timeout: { request: 200ms }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: quick
"#;
    let proxy = Proxy::builder(template)
        .var("APP", app.addr())
        .spawn()
        .await;
    let started = tokio::time::Instant::now();
    let rsp = http::get(proxy.listener("inbound"), "/slow?ms=2000", &[]).await;
    let took = started.elapsed();
    rsp.assert_rampart(504, "timeout");
    assert!(
        took >= Duration::from_millis(180),
        "answered too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "answered too late: {took:?}"
    );
    assert_eq!(
        app.hits_for("/slow"),
        1,
        "a policy without retry makes one try"
    );
}

#[tokio::test]
async fn round_robin_spreads_over_two_endpoints() {
    let (a, b) = (sample().await, sample().await);
    let template = r#"
version: 1
admin: { listen: $ADMIN }
upstreams:
  app: { endpoints: [$A, $B], balance: round_robin }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
"#;
    let proxy = Proxy::builder(template)
        .var("A", a.addr())
        .var("B", b.addr())
        .spawn()
        .await;
    for _ in 0..20 {
        assert_eq!(
            http::get(proxy.listener("inbound"), "/ok", &[])
                .await
                .status,
            200
        );
    }
    let (ha, hb) = (a.hits_for("/ok"), b.hits_for("/ok"));
    assert_eq!(ha + hb, 20);
    assert!(
        (9..=11).contains(&ha),
        "round robin must alternate: a={ha} b={hb}"
    );
}

/// An upstream that answers 413 as soon as it has a request head, then reads and discards the
/// body (as a well-behaved server lingers), and answers anything without a body 200.
async fn early_answering_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let answer: &[u8] = if len > 0 {
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    buf.drain(..end + 4);
                    let mut left = len;
                    while left > 0 {
                        if buf.is_empty() {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let take = left.min(buf.len());
                        buf.drain(..take);
                        left -= take;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_whole_upload_leaves_both_connections_usable() {
    let upstream = early_answering_upstream().await;
    let proxy = Proxy::builder(&one_route(""))
        .var("APP", upstream)
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    // One client connection, reused; the upstream answers before reading 1 MiB of body.
    let client = http::client();
    let big = vec![b'x'; 1 << 20];
    for round in 0..3 {
        let rsp = http::send(
            &client,
            addr,
            ::http::Method::POST,
            "/upload",
            &[],
            http::full(big.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: the early answer must arrive: {e}"));
        assert_eq!(rsp.status, 413, "round {round}");
        let rsp = http::send(
            &client,
            addr,
            ::http::Method::GET,
            "/ok",
            &[],
            http::empty(),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: the next request must be served: {e}"));
        assert_eq!(rsp.status, 200, "round {round}");
    }
}

/// After an answer that came whole before the client's upload ended, the rest of the upload
/// is written only until the request's deadline (`timeout.request`, 1 s here): then the
/// upstream connection is closed, not kept writing. Before, only `pool_idle_timeout` (90 s by
/// default) of no progress bounded it, so an upstream that read slowly took an endless upload
/// long after the request's time was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_an_upload_after_its_answer_ends_at_the_request_deadline() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    // Answers at once, takes no byte of the body for 1.5 s, then reads what comes: the number
    // of seconds until the connection ends (None: it did not end within 6 s of reading).
    let ended = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.expect("head");
            assert!(n > 0, "the head must come");
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
            .await
            .expect("answer");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = tokio::time::Instant::now();
        let drain = async { while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {} };
        tokio::time::timeout(Duration::from_secs(6), drain)
            .await
            .ok()
            .map(|()| t.elapsed())
    });
    let config = one_route("policies:\n  p: { timeout: { request: 1s } }").replace(
        "      - upstream: app\n",
        "      - upstream: app\n        policy: p\n",
    );
    let proxy = Proxy::builder(&config).var("APP", upstream).spawn().await;
    let addr = proxy.listener("inbound");

    // An upload that never ends, sent as fast as it is taken.
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 100000000000\r\n\r\n")
        .await
        .expect("head");
    let (mut rd, mut wr) = client.into_split();
    let writer = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        while wr.write_all(&block).await.is_ok() {}
    });
    let mut head = [0u8; 64];
    let n = rd.read(&mut head).await.expect("the answer must come");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    let took = ended.await.expect("upstream task");
    writer.abort();
    assert!(
        took.is_some(),
        "the upload must stop at the request deadline, not run on while the upstream reads"
    );
}

/// SPEC §14: `upstreams.*.max_connections` caps the connections to one endpoint; requests
/// beyond it wait for a free connection instead of opening more. Before the cap, one h2 client
/// with 40 streams opened 40 upstream connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_h2_streams_share_at_most_max_connections_upstream() {
    let app = sample().await;
    let policy = one_route("").replace(
        "app: { endpoints: [$APP] }",
        "app: { endpoints: [$APP], max_connections: 4 }",
    );
    let proxy = Proxy::builder(&policy).var("APP", app.addr()).spawn().await;
    let addr = proxy.listener("inbound");

    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the listener must accept");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("the h2c handshake must succeed");
    tokio::spawn(conn);
    let calls = (0..40).map(|_| {
        let mut send = send.clone();
        async move {
            let req = hyper::Request::builder()
                .uri(format!("http://{addr}/slow?ms=100"))
                .body(http::empty())
                .expect("request");
            let rsp = send
                .send_request(req)
                .await
                .expect("every stream must be answered");
            rsp.status().as_u16()
        }
    });
    let statuses = futures_join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.hits_for("/slow"), 40);
    let peak = app.peak_connections();
    assert!(
        (1..=4).contains(&peak),
        "the upstream saw {peak} connections at once; the cap is 4"
    );
}

async fn futures_join_all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("the task must not panic"));
    }
    out
}
