//! TLS origination to an upstream: the client config and one connect.
//!
//! ALPN offers one protocol, the one the upstream is spoken to in: `http/1.1` ([`CLIENT_ALPN`])
//! for the HTTP/1.1 pool, `h2` alone for `protocol: http2` (`files.rs`). Offering both would
//! let a server pick the one the pool does not speak; rustls refuses a server that picks one
//! not offered, and the pool refuses an HTTP/2 connection whose server picked none.
//!
//! A failed handshake is told in words ([`super::words::refusal`]): what the server's alert
//! most likely means, by the alert's RFC name, and the setting to look at.
//!
//! Without a `ca`, servers are verified against the system roots of the config load
//! ([`SystemRoots`]; Mozilla's compiled-in list where the system has none).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ProtocolVersion, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::pem::{first, load_roots, CertPair, Problems};
use super::{SystemRoots, TlsFileError};

/// ALPN protocols an HTTP/1.1 upstream connection offers (see the module doc).
pub const CLIENT_ALPN: [&[u8]; 1] = [b"http/1.1"];

/// ALPN protocols an HTTP/2 upstream connection (`protocol: http2`) offers: `h2` alone, the
/// protocol an HTTP/2 connection over TLS must agree on (RFC 9113 §3.2).
pub const H2_ALPN: [&[u8]; 1] = [b"h2"];

/// Builds an upstream's TLS config: trust `ca` (or `system`, the system roots of this config
/// load, when `None`), present `cert`+`key` as a client certificate when both are given, offer
/// ALPN [`CLIENT_ALPN`].
///
/// Fails, naming the file, for the same reasons as [`super::server_config`], and when only one
/// of `cert` and `key` is given.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    system: &SystemRoots,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    client_config_offering(ca, cert, key, &CLIENT_ALPN, system)
}

/// [`client_config`], offering the ALPN protocols `alpn` (none when empty: a Redis store, or a
/// connector that sets its own, as the OTLP exporter's does).
pub fn client_config_offering(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[&[u8]],
    system: &SystemRoots,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    client_config_all(ca, cert, key, alpn, system).map_err(first)
}

/// [`client_config_offering`], telling every problem of the section: each file's own, and the
/// key's mismatch when the cert and key were both read.
pub fn client_config_all(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[&[u8]],
    system: &SystemRoots,
) -> Result<Arc<ClientConfig>, Vec<TlsFileError>> {
    let mut errors = Problems::default();
    let roots = match ca {
        Some(ca) => errors.take(load_roots(ca)),
        None => Some(system.get()),
    };
    let pair = match (cert, key) {
        (Some(cert), Some(key)) => errors
            .take_all(CertPair::load_all(cert, key))
            .map(|p| Some((p, key))),
        (None, None) => Some(None),
        (Some(given), None) => errors
            .take::<()>(Err(incomplete(given, "key")))
            .map(|()| None),
        (None, Some(given)) => errors
            .take::<()>(Err(incomplete(given, "cert")))
            .map(|()| None),
    };
    let (Some(roots), Some(pair)) = (roots, pair) else {
        return Err(errors.0);
    };
    let one = |e| vec![e];
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| one(TlsFileError::refused(Path::new("<crypto provider>"), &e)))?
        .with_root_certificates(roots);
    let mut config = match pair {
        Some((pair, key)) => builder
            .with_client_auth_cert(pair.chain, pair.key)
            .map_err(|e| one(TlsFileError::refused(key, &e)))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.client_auth_cert_resolver = Arc::new(Noting(config.client_auth_cert_resolver.clone()));
    Ok(Arc::new(config))
}

/// Everything [`client_config`] checks, without keeping the result (reading the system roots
/// afresh when `ca` is `None`). Validation does not call it: it reads a policy's files through
/// `TlsFiles::load_where`, with its load's one `SystemRoots`; this serves the file tests.
pub fn check_client(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(), TlsFileError> {
    client_config(ca, cert, key, &SystemRoots::new()).map(drop)
}

/// Runs a client handshake on `tcp`, sending `server_name` as SNI and verifying the server's
/// certificate for that name. An IP address is accepted and checked against IP SANs (no SNI
/// is sent for it). The caller bounds the time (the upstream connect timeout).
pub async fn connect<IO>(
    cfg: Arc<ClientConfig>,
    server_name: &str,
    tcp: IO,
) -> Result<TlsStream<IO>, io::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid tls server name {server_name:?}: {e}"),
        )
    })?;
    TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| in_words(e, &cfg))
}

/// The error a new connection's first read or write met, told as the handshake's refusal
/// when it is the server's alert: in TLS 1.3 the client's side of the handshake ends before
/// the server has checked the client's certificate, so a server that wants one (and got none,
/// or one it does not trust) says so with an alert that arrives after [`connect`] returned,
/// at the first read (`certificate_required`, `unknown_ca`, ...). `None` for any other
/// error: it is the connection's, not the handshake's.
pub fn refused_after_handshake(err: &io::Error, cfg: &ClientConfig) -> Option<io::Error> {
    match rustls_error(err)? {
        alert @ rustls::Error::AlertReceived(_) => {
            let said = super::words::refusal(alert, cfg)?;
            Some(io::Error::new(err.kind(), said))
        }
        _ => None,
    }
}

tokio::task_local! {
    /// Whether the server of the handshake polled under [`asking`] asked for a client
    /// certificate: set by [`Noting`], which rustls consults only then.
    static ASKED: Cell<bool>;
}

/// The client certificate resolver of a [`client_config_all`] config: the one rustls made (the
/// configured certificate, or none), noting for [`asking`] that the server asked. rustls calls
/// it only when a server's `CertificateRequest` came, during that connection's handshake, in
/// the task that polls it; nothing else changes (a handshake outside [`asking`] notes nothing).
#[derive(Debug)]
struct Noting(Arc<dyn ResolvesClientCert>);

impl ResolvesClientCert for Noting {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let _ = ASKED.try_with(|asked| asked.set(true));
        self.0.resolve(root_hint_subjects, sigschemes)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.0.has_certs()
    }
}

/// Runs `dial`, a connect whose TLS handshake (if any) uses a [`client_config_all`] config,
/// and says whether its server asked for a client certificate: then, in TLS 1.3, its verdict
/// on the one rampart sent (or on none) is still to come ([`verdict`]). rustls tells no
/// connection whether it was asked; its certificate resolver, shared by every connection of
/// the config, is consulted within the asking handshake, so a task-local flag says it.
pub async fn asking<F: Future>(dial: F) -> (F::Output, bool) {
    ASKED
        .scope(Cell::new(false), async move {
            let dialed = dial.await;
            (dialed, ASKED.with(Cell::get))
        })
        .await
}

/// How much [`verdict`] reads of what the server sends first (the rest stays in the session).
const VERDICT_READ: usize = 8 * 1024;

/// Waits, until `until` at most, for a TLS 1.3 server that asked for a client certificate
/// ([`asking`]) to judge the one `tls` presented, or its absence, for a connection whose first
/// bytes rampart does not write (a CONNECT tunnel's: its client may wait for the server to
/// speak first, so no first exchange would show the refusal, as it does for a request's
/// connection). The server judges after the client's side of the handshake has ended
/// ([`refused_after_handshake`]): it says no with an alert (`certificate_required` when
/// rampart presented none, as the server demanded one), and yes by going on, most often with
/// session tickets, which end the wait at once (one round trip after the handshake), as does
/// anything it sends first: `Some` of it, to be read before the rest (empty for tickets).
/// `None`: nothing was said by `until` (the session is taken as accepted), or nothing is to
/// come in TLS 1.2, whose handshake ends after the server's verdict.
///
/// A server that closes the connection before it said anything (`close_notify`, or TCP's end
/// without one) does not take the session: an error ([`closed_at_once`]). TLS 1.3 lets a
/// side close its writing half and still read, but a server that does so before its client
/// has said a word has nothing to answer it with: the tunnel is dead at its 200.
///
/// An error is returned as read: [`refused_after_handshake`] tells whether it is the refusal.
pub async fn verdict<IO>(tls: &mut TlsStream<IO>, until: Instant) -> io::Result<Option<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if tls.get_ref().1.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        return Ok(None);
    }
    let mut buf = vec![0; VERDICT_READ];
    let first = std::future::poll_fn(|cx| {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *tls).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Err(closed_at_once(
                "with close_notify",
                io::ErrorKind::ConnectionAborted,
            ))),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Err(
                closed_at_once("without close_notify", io::ErrorKind::UnexpectedEof),
            )),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Tickets (read and taken in by the poll): the server went on, accepting.
            Poll::Pending if tls.get_ref().1.tls13_tickets_received() > 0 => Poll::Ready(Ok(0)),
            Poll::Pending => Poll::Pending,
        }
    });
    match tokio::time::timeout_at(until, first).await {
        // A copy: the buffer is let go now, not when the tunnel has read it.
        Ok(Ok(n)) => Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

/// A server's close, `how`, seen while [`verdict`] waited, before the server said anything.
fn closed_at_once(how: &str, kind: io::ErrorKind) -> io::Error {
    io::Error::new(
        kind,
        format!(
            "the server closed the connection {how} right after the TLS handshake, before \
             sending anything (it may not accept rampart's client certificate, or its absence, \
             and say so without an alert)"
        ),
    )
}

/// A failed handshake told in words ([`super::words::refusal`]): a refused server
/// certificate ("invalid peer certificate: certificate is not signed by a trusted CA (unknown
/// issuer)", where rustls would print `UnknownIssuer`), the server's alert by its name and
/// what it most likely means (`certificate_required`: it wants a client certificate), an ALPN
/// disagreement, a server that does not speak TLS.
fn in_words(err: io::Error, cfg: &ClientConfig) -> io::Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        // tokio-rustls says "tls handshake eof".
        return io::Error::new(
            err.kind(),
            "the server closed the connection during the TLS handshake (a plaintext server, or \
             one that refused rampart's hello without an alert)",
        );
    }
    match rustls_error(&err).and_then(|e| super::words::refusal(e, cfg)) {
        Some(said) => io::Error::new(err.kind(), said),
        None => err,
    }
}

/// The rustls error `err` carries, if any (tokio-rustls wraps them in an `io::Error`).
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

fn incomplete(given: &Path, missing: &'static str) -> TlsFileError {
    TlsFileError::Incomplete {
        given: given.to_path_buf(),
        missing,
    }
}
