//! Real handshakes over loopback: ALPN, mTLS, peer names, upstream CA checks, reload.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use super::support::{serial_of, Ca, Files, Leaf};
use crate::tls::client::{asking, refused_after_handshake, verdict};
use crate::tls::{
    accept, client_config, connect, server_config, ConnInfo, HandshakeError, ReloadableAcceptor,
    SystemRoots,
};

type Outcome = Result<ConnInfo, HandshakeError>;

/// Serves TLS on a loopback port: each connection takes the acceptor in force when it is
/// accepted, reports its handshake, then echoes.
async fn serve(
    acceptor: Arc<ReloadableAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Outcome>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, tx) = (acceptor.acceptor(), tx.clone());
            tokio::spawn(async move {
                match accept(tls, tcp, Duration::from_secs(10)).await {
                    Ok((stream, info)) => {
                        let _ = tx.send(Ok(info));
                        let (mut r, mut w) = tokio::io::split(stream);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn dial(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connect(cfg, name, tcp).await
}

/// One echo round trip; fails if the server closed or refused the session.
async fn ping(stream: &mut TlsStream<TcpStream>) -> io::Result<()> {
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping", "echo must return what was sent");
    Ok(())
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Outcome>) -> Outcome {
    rx.recv().await.expect("server must report every handshake")
}

fn with_alpn(cfg: &Arc<ClientConfig>, protos: &[&[u8]]) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::clone(cfg);
    cfg.alpn_protocols = protos.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A server for `localhost` signed by a fresh CA, optionally requiring client certs from
/// `client_ca`; returns the CA file the client should trust.
struct Setup {
    files: Files,
    ca: Ca,
    acceptor: Arc<ReloadableAcceptor>,
}

fn setup(client_ca: Option<&Ca>) -> Setup {
    let (ca, files) = (Ca::new("server ca"), Files::new());
    let (cert, key) = files.pair("server", &ca.server(1));
    let client_ca = client_ca.map(|c| files.ca("client-ca", c));
    let cfg = server_config(&cert, &key, client_ca.as_deref()).expect("server config");
    Setup {
        acceptor: Arc::new(ReloadableAcceptor::new(cfg)),
        files,
        ca,
    }
}

#[tokio::test]
async fn alpn_picks_h2_when_offered_and_http1_otherwise() {
    let s = setup(None);
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let base = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        None,
        None,
        &SystemRoots::new(),
    )
    .expect("client config");

    let h2 = with_alpn(&base, &[b"h2", b"http/1.1"]);
    let mut conn = dial(addr, h2, "localhost")
        .await
        .expect("h2 client connects");
    ping(&mut conn).await.expect("h2 session works");
    let info = next(&mut rx).await.expect("handshake ok");
    assert!(info.is_h2, "a client offering h2 must get h2");
    assert_eq!(info.client_cn, None, "no client_ca: no peer names");
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));

    let mut conn = dial(addr, base, "localhost")
        .await
        .expect("default client connects");
    ping(&mut conn).await.expect("http/1.1 session works");
    assert!(
        !next(&mut rx).await.expect("ok").is_h2,
        "upstream config offers http/1.1 only"
    );
    assert_eq!(
        conn.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
}

/// A client trusting the CA in `ca` that offers ring's cipher suites that `keep` keeps, in
/// ring's order (AES-256-GCM first); only TLS 1.2 if those are all TLS 1.2 suites.
fn offering(
    ca: &std::path::Path,
    keep: fn(&rustls::SupportedCipherSuite) -> bool,
) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(keep);
    let tls12 = provider
        .cipher_suites
        .iter()
        .all(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)));
    let versions: &[&rustls::SupportedProtocolVersion] = match tls12 {
        true => &[&rustls::version::TLS12],
        false => rustls::DEFAULT_VERSIONS,
    };
    let roots = crate::tls::pem::load_roots(ca).expect("the CA file");
    let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("the versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// The server picks AES-128-GCM by its own order (cheaper keys on most CPUs: see
/// `tls::server_provider`) where the client would rather have AES-256, over TLS 1.3 and 1.2,
/// and still serves a client that offers AES-256 alone.
#[tokio::test]
async fn the_server_prefers_aes_128_gcm_and_serves_a_client_that_offers_only_aes_256() {
    use rustls::{CipherSuite as S, SupportedCipherSuite as Suite};
    let s = setup(None);
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let ca = s.files.ca("ca", &s.ca);
    // What the client offers: its name, which of ring's suites, and the suite it must get.
    type Case = (&'static str, fn(&Suite) -> bool, S);
    let cases: [Case; 4] = [
        ("every suite", |_| true, S::TLS13_AES_128_GCM_SHA256),
        (
            "TLS 1.2's suites",
            |s| matches!(s, Suite::Tls12(_)),
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "AES-256 alone",
            |s| s.suite() == S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_AES_256_GCM_SHA384,
        ),
        (
            "TLS 1.2's AES-256 alone",
            |s| s.suite() == S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (offered, keep, expected) in cases {
        let cfg = offering(&ca, keep);
        let mut conn = dial(addr, cfg, "localhost")
            .await
            .unwrap_or_else(|e| panic!("a client offering {offered} connects: {e}"));
        ping(&mut conn).await.expect("the session works");
        next(&mut rx).await.expect("handshake ok");
        let got = conn
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite());
        assert_eq!(got, Some(expected), "offered {offered}");
    }
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let client_ca = Ca::new("client ca");
    let s = setup(Some(&client_ca));
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let cfg = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        None,
        None,
        &SystemRoots::new(),
    )
    .expect("client config");
    // TLS 1.3: the client's side finishes first; the refusal shows on the server and on use.
    let refused = match dial(addr, cfg, "localhost").await {
        Ok(mut conn) => ping(&mut conn).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a session without a client cert must not carry data"
    );
    let err = next(&mut rx).await.expect_err("server must refuse");
    assert_eq!(err.reason(), "no_client_cert", "{err}");
}

#[tokio::test]
async fn mtls_refuses_a_certificate_from_another_ca() {
    let (client_ca, stranger) = (Ca::new("client ca"), Ca::new("stranger"));
    let s = setup(Some(&client_ca));
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let (cert, key) = s.files.pair(
        "client",
        &stranger.issue(Leaf {
            cn: Some("x"),
            ..Leaf::default()
        }),
    );
    let cfg = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        Some(&cert),
        Some(&key),
        &SystemRoots::new(),
    )
    .expect("cfg");
    if let Ok(mut conn) = dial(addr, cfg, "localhost").await {
        assert!(
            ping(&mut conn).await.is_err(),
            "an unverified client must not carry data"
        );
    }
    let err = next(&mut rx).await.expect_err("server must refuse");
    assert_eq!(err.reason(), "bad_client_cert", "{err}");
}

/// In TLS 1.3 the client's side of the handshake ends before the server has judged its
/// certificate; [`asking`] tells that the server asked for one, and [`verdict`] waits for the
/// judgement: the server's tickets (it went on) end the wait long before its end, and leave
/// the session to use; its alert is the refusal in words, on a certificate it does not trust
/// as on none at all. A server that asks for none is not waited for.
#[tokio::test]
async fn the_verdict_on_a_client_certificate_is_the_server_s_tickets_or_its_alert() {
    let (client_ca, stranger) = (Ca::new("client ca"), Ca::new("stranger"));
    let s = setup(Some(&client_ca));
    let (addr, _rx) = serve(s.acceptor.clone()).await;
    let ca = s.files.ca("ca", &s.ca);
    let client = |issuer: &Ca, name: &str| {
        let leaf = Leaf {
            cn: Some("rampart"),
            ..Leaf::default()
        };
        let (cert, key) = s.files.pair(name, &issuer.issue(leaf));
        client_config(Some(&ca), Some(&cert), Some(&key), &SystemRoots::new()).expect("cfg")
    };
    let far = || tokio::time::Instant::now() + Duration::from_secs(60);
    let within = Duration::from_secs(10);

    let trusted = client(&client_ca, "trusted");
    let (conn, asked) = asking(dial(addr, trusted.clone(), "localhost")).await;
    let mut conn = conn.expect("connects");
    assert!(asked, "the server asks for a client certificate");
    let said = tokio::time::timeout(within, verdict(&mut conn, far()))
        .await
        .expect("the server's tickets end the wait");
    assert_eq!(said.expect("accepted"), Some(bytes::Bytes::new()));
    ping(&mut conn).await.expect("the session goes on");

    let anonymous = client_config(Some(&ca), None, None, &SystemRoots::new()).expect("cfg");
    for (cfg, why) in [
        (
            client(&stranger, "untrusted"),
            "the server refused rampart's client certificate",
        ),
        (
            anonymous,
            "the server requires a client certificate and rampart presented none",
        ),
    ] {
        let (conn, asked) = asking(dial(addr, cfg.clone(), "localhost")).await;
        let mut conn = conn.expect("TLS 1.3: the client's side ends first");
        assert!(asked, "{why}");
        let said = tokio::time::timeout(within, verdict(&mut conn, far()))
            .await
            .expect("the server's alert ends the wait");
        let e = said.expect_err("refused");
        let refusal = refused_after_handshake(&e, &cfg).expect("an alert");
        assert!(refusal.to_string().contains(why), "{refusal}");
    }

    let plain = setup(None);
    let (addr, _rx) = serve(plain.acceptor.clone()).await;
    let cfg = client_config(
        Some(&plain.files.ca("ca", &plain.ca)),
        None,
        None,
        &SystemRoots::new(),
    );
    let (conn, asked) = asking(dial(addr, cfg.expect("cfg"), "localhost")).await;
    conn.expect("connects");
    assert!(
        !asked,
        "a server that asks for no client certificate has no verdict to give"
    );
}

#[tokio::test]
async fn mtls_reports_the_client_cn_and_first_uri_san() {
    let client_ca = Ca::new("client ca");
    let s = setup(Some(&client_ca));
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let spiffe = "spiffe://example.org/ns/prod/sa/billing";
    let leaf = Leaf {
        cn: Some("billing"),
        uri: Some(spiffe),
        serial: 7,
        ..Leaf::default()
    };
    let (cert, key) = s.files.pair("client", &client_ca.issue(leaf));
    let cfg = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        Some(&cert),
        Some(&key),
        &SystemRoots::new(),
    )
    .expect("cfg");
    let mut conn = dial(addr, cfg, "localhost")
        .await
        .expect("verified client connects");
    ping(&mut conn).await.expect("mTLS session works");
    let info = next(&mut rx).await.expect("handshake ok");
    assert_eq!(info.client_cn.as_deref(), Some("billing"));
    assert_eq!(info.client_uri_san.as_deref(), Some(spiffe));
    assert!(crate::tls::is_valid_cert_tenant(spiffe));
}

#[tokio::test]
async fn an_upstream_with_the_private_ca_connects_and_a_wrong_ca_fails() {
    let s = setup(None);
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let good = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        None,
        None,
        &SystemRoots::new(),
    )
    .expect("cfg");
    let mut conn = dial(addr, good.clone(), "localhost")
        .await
        .expect("private CA verifies");
    ping(&mut conn).await.expect("session works");
    next(&mut rx).await.expect("server side ok");

    let mut by_ip = dial(addr, good.clone(), "127.0.0.1")
        .await
        .expect("IP SAN verifies");
    ping(&mut by_ip).await.expect("session by IP works");
    next(&mut rx).await.expect("server side ok");

    let err = dial(addr, good, "other.example")
        .await
        .expect_err("wrong name must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
    next(&mut rx)
        .await
        .expect_err("server sees the client's alert");

    let wrong = client_config(
        Some(&s.files.ca("wrong", &Ca::new("wrong"))),
        None,
        None,
        &SystemRoots::new(),
    )
    .expect("cfg");
    let err = dial(addr, wrong, "localhost")
        .await
        .expect_err("wrong CA must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
    let server_err = next(&mut rx)
        .await
        .expect_err("server sees the client's alert");
    assert_eq!(server_err.reason(), "protocol", "{server_err}");
}

#[tokio::test]
async fn a_client_that_never_speaks_times_out() {
    let s = setup(None);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let _silent = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (tcp, _) = listener.accept().await.expect("accept");
    let err = accept(s.acceptor.acceptor(), tcp, Duration::from_millis(50))
        .await
        .expect_err("a silent client must time out");
    assert_eq!(err.reason(), "timeout");
    assert!(HandshakeError::REASONS.contains(&err.reason()));
}

#[tokio::test]
async fn a_plaintext_request_on_a_tls_listener_is_a_protocol_failure() {
    let s = setup(None);
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    let err = next(&mut rx).await.expect_err("plaintext must not pass");
    assert_eq!(err.reason(), "protocol", "{err}");
}

#[tokio::test]
async fn after_replace_new_handshakes_use_the_new_cert_and_old_connections_keep_working() {
    let s = setup(None);
    let (addr, mut rx) = serve(s.acceptor.clone()).await;
    let cfg = client_config(
        Some(&s.files.ca("ca", &s.ca)),
        None,
        None,
        &SystemRoots::new(),
    )
    .expect("cfg");
    let peer_serial = |c: &TlsStream<TcpStream>| {
        serial_of(&c.get_ref().1.peer_certificates().expect("server cert")[0])
    };

    let mut old = dial(addr, cfg.clone(), "localhost")
        .await
        .expect("first connection");
    ping(&mut old).await.expect("first session works");
    next(&mut rx).await.expect("ok");
    assert_eq!(peer_serial(&old), 1);

    let (cert, key) = s.files.pair("rotated", &s.ca.server(2));
    s.acceptor
        .replace(server_config(&cert, &key, None).expect("rotated config"));

    let mut new = dial(addr, cfg, "localhost")
        .await
        .expect("connection after reload");
    ping(&mut new).await.expect("new session works");
    next(&mut rx).await.expect("ok");
    assert_eq!(
        peer_serial(&new),
        2,
        "a new handshake must see the new certificate"
    );
    ping(&mut old)
        .await
        .expect("the old connection must keep working");
    assert_eq!(peer_serial(&old), 1);
}
