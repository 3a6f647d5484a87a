//! Servers for the TLS tests: a TLS upstream (optionally requiring a client certificate), one
//! that runs a test's script on each session, and a server that only records what it is sent
//! (plain, or over TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{certs, key, Issued};

/// A TLS upstream on 127.0.0.1 that answers every request 200 with the SNI it was reached by
/// as the body. Stops on drop.
#[derive(Debug)]
pub struct TlsUpstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// A TLS server on 127.0.0.1 that hands each session, once its handshake is done, to a
/// script: what a test's upstream says and does on it. Stops on drop.
#[derive(Debug)]
pub struct TlsScript {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

/// A TCP server that never answers: it records the first bytes of each connection (up to 1 s
/// of waiting; over TLS, the first after the handshake), then closes it. Stops on drop.
#[derive(Debug)]
pub struct Recorder {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    task: JoinHandle<()>,
}

// === impl TlsUpstream ===

impl TlsUpstream {
    /// Serves TLS with `identity` on a free loopback port.
    pub async fn start(identity: &Issued) -> TlsUpstream {
        TlsUpstream::serve(identity, None).await
    }

    /// Like [`TlsUpstream::start`], but every client must present a certificate that
    /// `client_ca_pem` signed (mTLS to the upstream).
    pub async fn start_mtls(identity: &Issued, client_ca_pem: &str) -> TlsUpstream {
        TlsUpstream::serve(identity, Some(client_ca_pem)).await
    }

    async fn serve(identity: &Issued, client_ca_pem: Option<&str>) -> TlsUpstream {
        let config = super::server_config(
            certs(&identity.cert),
            key(&identity.key),
            client_ca_pem,
            &[b"http/1.1"],
        );
        TlsUpstream::with_config(config).await
    }

    /// Serves TLS as `config` says (its versions, ALPN, client certificates).
    pub async fn with_config(config: rustls::ServerConfig) -> TlsUpstream {
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve_tls(listener, acceptor, hits.clone()));
        TlsUpstream { addr, hits, task }
    }

    /// Stops listening, then serves `identity` at the same address: the server restarted
    /// with a new certificate (connections already accepted go on).
    pub async fn restart(&mut self, identity: &Issued) {
        self.task.abort();
        // The listener is closed once the aborted task is.
        let _ = (&mut self.task).await;
        let config = super::server_config(
            certs(&identity.cert),
            key(&identity.key),
            None,
            &[b"http/1.1"],
        );
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.task = tokio::spawn(serve_tls(listener, acceptor, self.hits.clone()));
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, hits: Arc<AtomicU64>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, hits) = (acceptor.clone(), hits.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
            let svc = hyper::service::service_fn(move |_req| {
                hits.fetch_add(1, Ordering::SeqCst);
                let rsp = Response::builder()
                    .status(StatusCode::OK)
                    .body(Full::new(Bytes::from(sni.clone())));
                async move { rsp }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

// === impl TlsScript ===

impl TlsScript {
    /// Serves TLS as `config` says, running `script` on each session whose handshake succeeds.
    pub async fn start<F, Fut>(config: rustls::ServerConfig, script: F) -> TlsScript
    where
        F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, script) = (acceptor.clone(), script.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        script(tls).await;
                    }
                });
            }
        });
        TlsScript { addr, task }
    }
}

impl Drop for TlsScript {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Recorder ===

impl Recorder {
    /// Listens on a free loopback port.
    pub async fn start() -> Recorder {
        Recorder::serve(None).await
    }

    /// Listens on a free loopback port and serves TLS as `config` says: what it records is
    /// what came after the handshake (connections whose handshake failed are not recorded).
    pub async fn start_tls(config: rustls::ServerConfig) -> Recorder {
        Recorder::serve(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<TlsAcceptor>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let bytes = match tls {
                        None => first_bytes(tcp).await,
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => first_bytes(stream).await,
                            Err(_) => return,
                        },
                    };
                    let _ = tx.send(bytes);
                });
            }
        });
        Recorder { addr, rx, task }
    }

    /// The first bytes of every connection recorded so far.
    pub fn connections(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.rx.try_recv() {
            out.push(bytes);
        }
        out
    }
}

/// The first bytes read from `io` within 1 s (none if it closes or says nothing).
async fn first_bytes(mut io: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = match tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    buf.truncate(n);
    buf
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
