//! An OTLP trace receiver: what a collector on `:4318` (HTTP) and `:4317` (gRPC) does, as far
//! as tests need.
//!
//! It accepts `POST /v1/traces`, decodes the body with `opentelemetry-proto`'s types
//! (protobuf, or JSON when the content type says so) and keeps every span with its resource's
//! `service.name`. It takes gRPC's `TraceService/Export` too (HTTP/2, one length-prefixed
//! message) and answers it with a gRPC status in trailers: 0, or the one a test sets. Anything
//! it cannot decode is kept as a failure for the test to see.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use tokio::net::TcpListener;

/// A received span and the resource it came with.
#[derive(Clone, Debug)]
pub struct Got {
    pub service_name: String,
    pub content_type: String,
    pub span: Span,
}

#[derive(Debug, Default)]
struct State {
    spans: Vec<Got>,
    failures: Vec<String>,
    posts: usize,
    /// The `grpc-status` gRPC exports are answered with (0 unless a test sets it; `None`: no
    /// status at all).
    grpc_status: Option<u32>,
    /// gRPC exports received with the `te: trailers` gRPC asks for.
    grpc_te: usize,
    /// Every export's `authorization` header, if it had one.
    authorization: Vec<Option<String>>,
    /// Exports received gzipped (`content-encoding`, or `grpc-encoding` with the flag set).
    gzipped: usize,
}

/// The gRPC method OTLP exports spans to.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What the receiver answers: a body, and trailers for gRPC.
type Answer = Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;

/// A running receiver; stops accepting when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Collector ===

impl Collector {
    /// Listens on a free loopback port.
    pub async fn start() -> Collector {
        Collector::listen(None).await
    }

    /// Listens on a free loopback port behind TLS, with a self-signed certificate for
    /// `localhost` (ALPN h2 and http/1.1), written as a PEM file into `dir`; returns that
    /// file too (the `ca` to trust).
    pub async fn start_tls(dir: &std::path::Path) -> (Collector, std::path::PathBuf) {
        Collector::start_tls_asking(dir, None).await
    }

    /// [`Collector::start_tls`], and with `client_ca` (PEM) it asks every client for a
    /// certificate of that CA (mutual TLS): a client without one is refused in the handshake.
    pub async fn start_tls_asking(
        dir: &std::path::Path,
        client_ca: Option<&str>,
    ) -> (Collector, std::path::PathBuf) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        let ca = dir.join("collector.pem");
        std::fs::write(&ca, ck.cert.pem()).expect("the certificate must be writable");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let config = super::tls::server_config(
            vec![ck.cert.der().clone()],
            key,
            client_ca,
            &[b"h2", b"http/1.1"],
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Collector::listen(Some(acceptor)).await, ca)
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Collector {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 must work");
        let addr = tcp.local_addr().expect("a bound socket has an address");
        let state = Arc::new(Mutex::new(State {
            grpc_status: Some(0),
            ..State::default()
        }));
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = tcp.accept().await {
                    let (state, tls) = (state.clone(), tls.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| receive(req, state.clone()));
                        let server = auto::Builder::new(TokioExecutor::new());
                        let _ = match tls {
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(io) => server.serve_connection(TokioIo::new(io), svc).await,
                                Err(_) => return,
                            },
                            None => server.serve_connection(TokioIo::new(stream), svc).await,
                        };
                    });
                }
            })
        };
        Collector { addr, state, task }
    }

    /// Where it listens (the `endpoint` is `http://{addr}`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Got> {
        let s = self.state.lock();
        assert!(
            s.failures.is_empty(),
            "the receiver could not decode: {:?}",
            s.failures
        );
        s.spans.clone()
    }

    /// Spans received so far of the trace `trace_id` (32 hex digits).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .map(|g| g.span)
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    }

    /// Export requests received so far.
    pub fn posts(&self) -> usize {
        self.state.lock().posts
    }

    /// Exports received gzipped so far.
    pub fn gzipped(&self) -> usize {
        self.state.lock().gzipped
    }

    /// The `authorization` header of every export received so far (`None`: it had none).
    pub fn authorization(&self) -> Vec<Option<String>> {
        self.state.lock().authorization.clone()
    }

    /// gRPC exports received so far with `te: trailers`.
    pub fn grpc_te(&self) -> usize {
        self.state.lock().grpc_te
    }

    /// Answers gRPC exports from now on with `grpc-status: code` (14: unavailable), or with
    /// no status at all (`None`: a broken or hostile collector).
    pub fn answer_grpc_status(&self, code: Option<u32>) {
        self.state.lock().grpc_status = code;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Answer, hyper::Error> {
    let path = req.uri().path().to_owned();
    let te = req.headers().get("te").is_some_and(|v| v == "trailers");
    let encoding = |name: &str| req.headers().get(name).is_some_and(|v| v == "gzip");
    let gzip = encoding("content-encoding") || encoding("grpc-encoding");
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    // Over HTTP the whole body is gzipped; over gRPC, the message (see `grpc_message`).
    let body = if gzip && content_type != "application/grpc" {
        Bytes::from(gunzip(&body))
    } else {
        body
    };
    let grpc = content_type == "application/grpc";
    let decoded = if grpc {
        if path != GRPC_EXPORT {
            Err(format!("gRPC call to {path}, not {GRPC_EXPORT}"))
        } else {
            grpc_message(&body, gzip).and_then(|m| {
                ExportTraceServiceRequest::decode(m.as_slice()).map_err(|e| e.to_string())
            })
        }
    } else if path != "/v1/traces" {
        Err(format!("posted to {path}, not /v1/traces"))
    } else if content_type == "application/json" {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
    } else if content_type == "application/x-protobuf" {
        ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
    } else {
        Err(format!("unexpected content type {content_type:?}"))
    };
    let mut s = state.lock();
    s.posts += 1;
    s.authorization.push(authorization);
    s.gzipped += usize::from(gzip);
    match decoded {
        Ok(msg) => {
            for rs in msg.resource_spans {
                let service_name = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        s.spans.push(Got {
                            service_name: service_name.clone(),
                            content_type: content_type.clone(),
                            span,
                        });
                    }
                }
            }
        }
        Err(e) => s.failures.push(e),
    }
    if !grpc {
        return Ok(Response::new(Full::new(Bytes::new()).boxed()));
    }
    s.grpc_te += usize::from(te);
    // An empty ExportTraceServiceResponse, then the status in trailers.
    let mut trailers = ::http::HeaderMap::new();
    if let Some(code) = s.grpc_status {
        trailers.insert("grpc-status", code.into());
    }
    if s.grpc_status.is_some_and(|c| c != 0) {
        trailers.insert(
            "grpc-message",
            ::http::HeaderValue::from_static("test says no"),
        );
    }
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut rsp = Response::new(body);
    rsp.headers_mut().insert(
        "content-type",
        ::http::HeaderValue::from_static("application/grpc"),
    );
    Ok(rsp)
}

/// The one message of a gRPC request body: a flag byte (1: compressed, as `grpc-encoding`
/// says, `gzip` here), a 4-byte length, and that many bytes.
fn grpc_message(body: &[u8], gzip: bool) -> Result<Vec<u8>, String> {
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err(format!("a gRPC body of {} bytes", body.len()));
    };
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if *flag != u8::from(gzip) || rest.len() != len {
        return Err(format!(
            "gRPC frame: flag {flag} (gzip: {gzip}), length {len}, {} bytes follow",
            rest.len()
        ));
    }
    Ok(if gzip { gunzip(rest) } else { rest.to_vec() })
}

/// `bytes` gunzipped (empty when they are not gzip: the decode then fails, and says so).
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(bytes).read_to_end(&mut out);
    out
}

/// Lowercase hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The attribute `key` of `attrs` as text (strings as they are, integers in decimal).
pub fn attr(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}
