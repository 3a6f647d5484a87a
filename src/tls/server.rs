//! TLS termination on a listener: the config, a reloadable acceptor and a bounded handshake.
//!
//! The handshake runs in the connection's own task (never the accept loop) under a timeout,
//! so a client that opens a socket and stalls costs one task until the timeout, not the
//! listener. A reload swaps the [`ReloadableAcceptor`]'s config: each new connection reads the
//! config in force when it is accepted, and connections already open keep the session they
//! negotiated.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

use super::pem::{first, load_roots, CertPair, Problems};
use super::{HandshakeError, TlsFileError};

/// ALPN protocols a TLS listener offers, most preferred first (SPEC §8).
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What the handshake settled that the request path needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client and server agreed on `h2` by ALPN; otherwise the connection speaks HTTP/1.1.
    pub is_h2: bool,
    /// The first subject CN of the client certificate; only set when the listener has a
    /// `client_ca`, so the certificate was verified.
    pub client_cn: Option<String>,
    /// The first URI SAN of the verified client certificate (e.g. a SPIFFE id).
    pub client_uri_san: Option<String>,
}

/// A listener's TLS config that a reload can replace while connections are open.
#[derive(Debug)]
pub struct ReloadableAcceptor {
    config: ArcSwap<ServerConfig>,
}

/// Builds a listener's TLS config from PEM files: ALPN `h2` then `http/1.1`, AES-128-GCM
/// preferred (`tls::server_provider`); with `client_ca`, every client must present a
/// certificate that chains to it (mTLS).
///
/// Fails, naming the file, when a file is missing or unreadable, holds no certificate or key,
/// the key does not match, the leaf certificate is expired or not yet valid, or the CA bundle
/// holds an unusable certificate.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    server_config_all(cert, key, client_ca).map_err(first)
}

/// [`server_config`], telling every problem of the section: each file's own, and the key's
/// mismatch when the cert and key were both read.
pub fn server_config_all(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, Vec<TlsFileError>> {
    server_config_verifying(cert, key, client_ca).map(|(config, _)| config)
}

/// A listener's config and the trust anchors it verifies client certificates against.
pub type Verifying = (Arc<ServerConfig>, Option<Arc<RootCertStore>>);

/// [`server_config_all`], with the trust anchors client certificates are verified against
/// (`client_ca`'s, `None` without it): a reload compares them to tell whether a listener's
/// client-certificate rules changed (`generation.rs`).
pub fn server_config_verifying(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Verifying, Vec<TlsFileError>> {
    let mut errors = Problems::default();
    let pair = errors.take_all(CertPair::load_all(cert, key));
    let roots = client_ca.map(|ca| errors.take(load_roots(ca).map(|r| (ca, r))));
    let (Some(pair), None | Some(Some(_))) = (pair, &roots) else {
        return Err(errors.0);
    };
    let provider = super::server_provider();
    let one = |e| vec![e];
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| one(TlsFileError::refused(cert, &e)))?;
    let anchors = roots.clone().flatten().map(|(_, r)| r);
    let builder = match roots.flatten() {
        Some((ca, roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| one(TlsFileError::invalid(ca, e)))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(pair.chain, pair.key)
        .map_err(|e| one(TlsFileError::refused(key, &e)))?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    // The server's order of suites (`tls::server_provider`: AES-128-GCM first), not the
    // client's.
    config.ignore_client_order = true;
    Ok((Arc::new(config), anchors))
}

/// Whether a client presenting `chain` (its leaf first, as its handshake sent it) is verified
/// now against `roots`, as a listener whose `client_ca` holds them verifies a handshake: a
/// reload that changed a listener's `client_ca` asks it of the tunnels made under the old
/// CAs (`proxy::tunnel`). Builds a verifier: once a tunnel a reload, never per request.
pub fn accepts_client(roots: &Arc<RootCertStore>, chain: &[CertificateDer<'static>]) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let built =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), super::server_provider())
            .build();
    built.is_ok_and(|v| {
        v.verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    })
}

/// Everything [`server_config`] checks, without keeping the result. Validation does not call
/// it: it reads a policy's files through `TlsFiles::load_where`; this serves the file tests.
pub fn check_server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<(), TlsFileError> {
    server_config(cert, key, client_ca).map(drop)
}

/// Runs the server side of a handshake on `tcp`, giving up after `timeout`.
///
/// The caller spawns this inside the connection's task; the timeout is the listener's
/// `header_read_timeout`, since the handshake is part of waiting for the first request.
pub async fn accept<IO>(
    acceptor: TlsAcceptor,
    tcp: IO,
    timeout: Duration,
) -> Result<(TlsStream<IO>, ConnInfo), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Err(_elapsed) => return Err(HandshakeError::Timeout(timeout)),
        Ok(done) => done.map_err(HandshakeError::from_io)?,
    };
    let info = ConnInfo::of(stream.get_ref().1);
    Ok((stream, info))
}

// === impl ConnInfo ===

impl ConnInfo {
    /// Reads the ALPN result and the verified peer certificate of a finished handshake.
    pub fn of(conn: &ServerConnection) -> ConnInfo {
        let is_h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
        let leaf = conn.peer_certificates().and_then(|certs| certs.first());
        let (client_cn, client_uri_san) = leaf.map(peer_names).unwrap_or_default();
        ConnInfo {
            is_h2,
            client_cn,
            client_uri_san,
        }
    }
}

/// The first CN and the first URI SAN of a certificate rustls already verified. A field that
/// is absent or not text is `None`; the tenant rules decide what to do without it.
fn peer_names(leaf: &CertificateDer<'_>) -> (Option<String>, Option<String>) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return (None, None);
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|attr| attr.as_str().ok())
        .map(str::to_owned);
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
        });
    (cn, uri)
}

// === impl ReloadableAcceptor ===

impl ReloadableAcceptor {
    /// An acceptor serving `config` until [`ReloadableAcceptor::replace`].
    pub fn new(config: Arc<ServerConfig>) -> Self {
        ReloadableAcceptor {
            config: ArcSwap::new(config),
        }
    }

    /// The acceptor for one new connection, holding the config in force now. Call it per
    /// connection; a handshake already under way keeps the config it started with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Makes every later [`ReloadableAcceptor::acceptor`] use `config`. Open connections are
    /// untouched.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.config.store(config);
    }

    /// The config in force.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }
}
