//! TLS for the end-to-end tests: a throwaway PKI written as PEM files, TLS clients that speak
//! HTTP/1.1 or h2 (chosen by ALPN), a TLS upstream, and a plaintext server that records bytes.
//!
//! Certificates are made at test time with rcgen, so no key is ever committed for a test and
//! every test gets its own CA: a test that trusts the wrong CA proves verification happens.
//! The servers are in `tls/servers.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::http::{empty, ReqBody, Resp};
use super::BoxError;

mod servers;

pub use self::servers::{Recorder, TlsScript, TlsUpstream};

/// Longest a TLS call may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A certificate authority with its own key.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// What to put in a leaf certificate.
#[derive(Debug, Default)]
pub struct Leaf {
    pub cn: Option<&'static str>,
    pub dns: Vec<&'static str>,
    pub ip: Option<IpAddr>,
    pub uri: Option<&'static str>,
    pub serial: u64,
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// A temp dir that PEM files are written into; removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

/// An HTTP/1.1 connection over TLS that stays open (keep-alive) between requests.
#[derive(Debug)]
pub struct H1Conn {
    send: http1::SendRequest<ReqBody>,
    /// Serial number of the certificate the server presented.
    pub serial: u64,
}

// === impl Ca ===

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        let pem = params.self_signed(&key).expect("ca self-signs").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// An intermediate CA called `name`, signed by this one, that expired on 2020-01-01.
    pub fn lapsed_intermediate(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let key = KeyPair::generate().expect("intermediate key");
        let pem = params
            .signed_by(&key, &self.issuer)
            .expect("ca signs")
            .pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf signed by this CA.
    pub fn issue(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        if let Some(cn) = leaf.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for dns in leaf.dns {
            let name = dns.try_into().expect("dns name is ia5");
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        if let Some(ip) = leaf.ip {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        if let Some(uri) = leaf.uri {
            let uri = uri.try_into().expect("uri is ia5");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("ca signs leaf");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server leaf for `localhost` and 127.0.0.1 with serial `serial`.
    pub fn server(&self, serial: u64) -> Issued {
        self.issue(Leaf {
            cn: Some("localhost"),
            dns: vec!["localhost"],
            ip: Some([127, 0, 0, 1].into()),
            serial,
            ..Leaf::default()
        })
    }

    /// A client leaf with subject CN `cn` and, if given, URI SAN `uri`.
    pub fn client(&self, cn: &'static str, uri: Option<&'static str>) -> Issued {
        self.issue(Leaf {
            cn: Some(cn),
            uri,
            serial: 100,
            ..Leaf::default()
        })
    }
}

// === impl Pki ===

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes (or replaces, by rename) `name` with `content`.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, content).expect("write test file");
        std::fs::rename(&tmp, &path).expect("replace test file");
        path
    }

    /// Writes `issued` as `<name>.pem` and `<name>-key.pem`.
    pub fn pair(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &issued.cert),
            self.write(&format!("{name}-key.pem"), &issued.key),
        )
    }

    /// Writes the CA certificate as `<name>.pem`.
    pub fn ca(&self, name: &str, ca: &Ca) -> PathBuf {
        self.write(&format!("{name}.pem"), &ca.pem)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// === clients ===

/// A client config trusting `ca_pem`, offering `alpn`, presenting `identity` if given.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem) {
        roots.add(cert).expect("the CA certificate is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(certs(&id.cert), key(&id.key))
            .expect("the client identity is usable"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` and runs a TLS handshake for `localhost`.
pub async fn connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let shake = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost")?;
        Ok::<_, BoxError>(TlsConnector::from(cfg).connect(name, tcp).await?)
    };
    tokio::time::timeout(CALL_TIMEOUT, shake).await?
}

/// The serial number of the certificate the server presented on `tls`.
pub fn peer_serial(tls: &TlsStream<TcpStream>) -> u64 {
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate");
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).expect("peer cert parses");
    parsed
        .raw_serial()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// The ALPN protocol the handshake on `tls` settled on.
pub fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One GET over h2 on an already-negotiated TLS connection.
pub async fn h2_get(tls: TlsStream<TcpStream>, path: &str) -> Result<Resp, BoxError> {
    let call = async {
        let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(empty())?;
        read(send.send_request(req).await?).await
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await?
}

/// One GET over HTTP/1.1 on a fresh TLS connection to `addr`.
pub async fn get(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, BoxError> {
    H1Conn::open(addr, cfg).await?.get(path, headers).await
}

async fn read(rsp: Response<hyper::body::Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

// === impl H1Conn ===

impl H1Conn {
    /// Opens a TLS connection to `addr` and an HTTP/1.1 session on it.
    pub async fn open(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<H1Conn, BoxError> {
        let tls = connect(addr, cfg).await?;
        let serial = peer_serial(&tls);
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(H1Conn { send, serial })
    }

    /// One GET on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Resp, BoxError> {
        let call = async {
            self.send.ready().await?;
            let mut req = Request::builder().uri(path).header("host", "localhost");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            read(self.send.send_request(req.body(empty())?).await?).await
        };
        tokio::time::timeout(CALL_TIMEOUT, call).await?
    }
}

/// A test server's TLS config: `chain` and `key` as its identity, ALPN `alpn`, and with
/// `client_ca_pem` every client must show a certificate that CA signed (mutual TLS).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_pem: Option<&str>,
    alpn: &[&[u8]],
) -> rustls::ServerConfig {
    server_config_versions(chain, key, client_ca_pem, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`server_config`] speaking only the TLS versions `versions` (`&[&rustls::version::TLS12]`:
/// a server whose refusals come during the handshake, as TLS 1.2 sends them).
pub fn server_config_versions(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_pem: Option<&str>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("supported versions");
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(pem) {
                roots.add(cert).expect("the client CA is usable");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("the server identity is usable");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The certificates of `pem`.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// The private key of `pem`.
pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a PEM private key")
}
