//! The two TLS error types: a bad file (validate, start, reload) and a failed handshake (metric).

use std::io;
use std::path::{Path, PathBuf};

/// A certificate, key or CA file that cannot be used. The message names the path first, so
/// `rampart validate` and a refused reload point at the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file does not exist.
    #[error("{}: file not found", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{}: malformed PEM: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// The file holds no PEM `CERTIFICATE` section.
    #[error("{}: no certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM expected)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("{}: key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A certificate of the chain (the leaf or an intermediate) has its notAfter in the past.
    #[error("{}: {which} expired at {not_after}", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Which certificate of the file: its place in the chain, its role and subject.
        which: String,
        /// notAfter, as written in the certificate (RFC 2822-like text).
        not_after: String,
    },
    /// A certificate of the chain has its notBefore in the future.
    #[error("{}: {which} not valid before {not_before}", path.display())]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Which certificate of the file (as for [`TlsFileError::Expired`]).
        which: String,
        /// notBefore, as written in the certificate.
        not_before: String,
    },
    /// The file parsed as PEM but its content was refused (bad DER, unsupported key type,
    /// unusable CA).
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The path names no regular file (a FIFO, a device, a directory): every file rampart
    /// reads is one, and reading another may wait for data that never comes. `message` is
    /// worded as `rampart validate` words it ([`super::pem::not_regular`]).
    #[error("{message}")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What is said of it.
        message: String,
    },
    /// A client certificate was given without its key, or a key without its certificate.
    #[error("{}: {missing} not set; a client certificate needs both cert and key", given.display())]
    Incomplete {
        /// The file that was given.
        given: PathBuf,
        /// Which of `cert` / `key` is missing.
        missing: &'static str,
    },
}

/// Why a TLS handshake on a listener failed. [`HandshakeError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake did not finish within the allowed time.
    #[error("tls handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The listener requires a client certificate and the client sent none.
    #[error("tls handshake: client sent no certificate")]
    NoClientCert,
    /// The client's certificate did not verify against the listener's `client_ca`.
    #[error("tls handshake: bad client certificate: {}", super::words::rustls_error(.0))]
    BadClientCert(rustls::Error),
    /// Any other TLS failure (no common version or cipher, bad message, alert from the peer).
    #[error("tls handshake: {0}")]
    Protocol(rustls::Error),
    /// The socket failed or closed during the handshake.
    #[error("tls handshake: {0}")]
    Io(io::Error),
}

// === impl TlsFileError ===

impl TlsFileError {
    /// The file the error is about (for a key that does not match: the key; for a pair given
    /// half: the half given).
    pub fn file(&self) -> &Path {
        match self {
            TlsFileError::Missing { path }
            | TlsFileError::Unreadable { path, .. }
            | TlsFileError::Malformed { path, .. }
            | TlsFileError::NoCertificate { path }
            | TlsFileError::NoKey { path }
            | TlsFileError::Expired { path, .. }
            | TlsFileError::NotYetValid { path, .. }
            | TlsFileError::Invalid { path, .. }
            | TlsFileError::NotRegular { path, .. } => path,
            TlsFileError::KeyMismatch { key, .. } => key,
            TlsFileError::Incomplete { given, .. } => given,
        }
    }

    /// A file whose content was refused, with the reason.
    pub(crate) fn invalid(path: &Path, detail: impl std::fmt::Display) -> Self {
        TlsFileError::Invalid {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    /// A file whose content rustls refused, with rustls's reason in words
    /// ([`super::words::rustls_error`]).
    pub(crate) fn refused(path: &Path, err: &rustls::Error) -> Self {
        Self::invalid(path, super::words::rustls_error(err))
    }
}

// === impl HandshakeError ===

impl HandshakeError {
    /// Every value [`HandshakeError::reason`] can return, for pre-registering metric labels.
    pub const REASONS: [&'static str; 5] = [
        "timeout",
        "no_client_cert",
        "bad_client_cert",
        "protocol",
        "io",
    ];

    /// A label from a closed set: `timeout`, `no_client_cert`, `bad_client_cert`, `protocol`,
    /// `io`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::NoClientCert => "no_client_cert",
            HandshakeError::BadClientCert(_) => "bad_client_cert",
            HandshakeError::Protocol(_) => "protocol",
            HandshakeError::Io(_) => "io",
        }
    }

    /// Sorts an error from `TlsAcceptor::accept`: tokio-rustls wraps rustls errors in an
    /// `io::Error` of kind `InvalidData`.
    pub(crate) fn from_io(err: io::Error) -> Self {
        let Some(tls) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeError::Io(err);
        };
        match tls {
            rustls::Error::NoCertificatesPresented => HandshakeError::NoClientCert,
            rustls::Error::InvalidCertificate(_) => HandshakeError::BadClientCert(tls.clone()),
            _ => HandshakeError::Protocol(tls.clone()),
        }
    }
}
