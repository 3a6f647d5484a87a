use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

async fn start() -> Sample {
    Sample::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("sample must bind a free port")
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(
    sample: &Sample,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, http::HeaderMap, Bytes), BoxError> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{}", sample.addr(), path))
        .header("content-type", "application/x-test")
        .body(Full::new(body))?;
    let rsp = client().request(req).await?;
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

async fn get(sample: &Sample, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    call(sample, "GET", path, Bytes::new())
        .await
        .expect("request to the sample must succeed")
}

#[tokio::test]
async fn ok_is_counted_and_names_its_address() {
    let sample = start().await;
    let (status, headers, body) = get(&sample, "/ok").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
    assert_eq!(headers[ADDR_HEADER], sample.addr().to_string().as_str());
    get(&sample, "/ok?x=1").await;
    get(&sample, "/").await;
    assert_eq!(
        sample.hits_for("/ok"),
        2,
        "the query must not split counters"
    );
    assert_eq!(sample.hits(), 3);
    sample.reset();
    assert_eq!(sample.hits(), 0);
    assert_eq!(sample.hits_for("/ok"), 0);
}

#[tokio::test]
async fn status_and_fail_first() {
    let sample = start().await;
    let (status, headers, _) = get(&sample, "/status/429?retry_after=3").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "3");

    let codes: Vec<u16> = futures_codes(&sample, "/fail-first/2?key=a", 3).await;
    assert_eq!(codes, [503, 503, 200]);
    // Another key has its own count; reset starts every key over.
    assert_eq!(get(&sample, "/fail-first/1?key=b").await.0, 503);
    sample.reset();
    assert_eq!(get(&sample, "/fail-first/2?key=a").await.0, 503);
}

async fn futures_codes(sample: &Sample, path: &str, n: usize) -> Vec<u16> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(get(sample, path).await.0.as_u16());
    }
    codes
}

#[tokio::test]
async fn echo_streams_ten_mebibytes_back() {
    let sample = start().await;
    let payload: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let payload = Bytes::from(payload);
    let (status, headers, body) = call(&sample, "POST", "/echo", payload.clone())
        .await
        .expect("echo must answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-test");
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "echoed body must equal the request body");
}

#[tokio::test]
async fn headers_bytes_drip_and_hits() {
    let sample = start().await;
    let (_, _, body) = get(&sample, "/headers").await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("headers must be JSON");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/headers");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["content-type"], "application/x-test");

    let (status, _, body) = get(&sample, "/bytes/200000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 200_000);

    let (_, _, body) = get(&sample, "/drip?chunks=3&ms=10").await;
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");

    let (_, _, body) = get(&sample, "/hits").await;
    let v: serde_json::Value = serde_json::from_slice(&body).expect("hits must be JSON");
    assert_eq!(v["total"], 4);
    assert_eq!(v["by_path"]["/bytes/200000"], 1);
}

#[tokio::test]
async fn healthz_follows_switch_and_abort_drops() {
    let sample = start().await;
    assert_eq!(get(&sample, "/healthz").await.0, StatusCode::OK);
    sample.set_healthy(false);
    assert_eq!(
        get(&sample, "/healthz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    sample.set_healthy(true);
    assert_eq!(get(&sample, "/healthz").await.0, StatusCode::OK);

    let err = call(&sample, "GET", "/abort", Bytes::new()).await;
    assert!(err.is_err(), "/abort must not produce an answer");
    assert_eq!(sample.hits_for("/abort"), 1);
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let sample = start().await;
    let tcp = tokio::net::TcpStream::connect(sample.addr())
        .await
        .expect("connect must succeed");
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake must succeed");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/headers", sample.addr()))
        .body(Full::new(Bytes::new()))
        .expect("request must build");
    let rsp = send
        .send_request(req)
        .await
        .expect("h2 request must succeed");
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("headers must be JSON");
    assert_eq!(v["version"], "HTTP/2.0");
}

#[tokio::test]
async fn flaky_and_slow() {
    let sample = start().await;
    assert_eq!(get(&sample, "/flaky?fail=100").await.0, 503);
    assert_eq!(get(&sample, "/flaky?fail=0").await.0, 200);
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&sample, "/slow?ms=60").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn stop_closes_the_listener_and_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sample = start().await;
    let addr = sample.addr();
    let mut open = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect must succeed");
    open.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write must succeed");
    let mut buf = vec![0u8; 4096];
    let n = open.read(&mut buf).await.expect("an answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "keep-alive answer first"
    );
    sample.stop();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("the open connection must be closed within 5 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "EOF or reset, not data");
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a stopped sample must refuse connections");
}
