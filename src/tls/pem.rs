//! PEM files in, DER values out, with errors that name the file.
//!
//! Files are read whole with `std::fs`, at most [`MAX_FILE`] bytes and without waiting on a
//! file that has no data yet (a missing file and an unreadable one are told apart)
//! and then parsed by rustls-pki-types' `PemObject`, which skips sections of other types: a
//! combined cert+key file works for both the cert and the key path.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::TlsFileError;

/// A certificate chain and the private key that matches its leaf.
#[derive(Debug)]
pub struct CertPair {
    /// Leaf first, then intermediates, as in the file.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

// === impl CertPair ===

impl CertPair {
    /// Loads `cert` and `key` and checks them: every certificate of the chain is valid now
    /// (not expired, not before its notBefore) and the key matches the leaf's public key.
    pub fn load(cert: &Path, key: &Path) -> Result<CertPair, TlsFileError> {
        Self::load_at(cert, key, SystemTime::now())
    }

    /// [`CertPair::load`] with "now" given, so the validity check can be tested at a boundary.
    pub fn load_at(cert: &Path, key: &Path, now: SystemTime) -> Result<CertPair, TlsFileError> {
        Self::load_all_at(cert, key, now).map_err(first)
    }

    /// [`CertPair::load`], telling every problem of the pair: each file's own (the cert's
    /// content or dates, the key's content), and the mismatch when both were read.
    pub fn load_all(cert: &Path, key: &Path) -> Result<CertPair, Vec<TlsFileError>> {
        Self::load_all_at(cert, key, SystemTime::now())
    }

    /// [`CertPair::load_all`] with "now" given.
    pub fn load_all_at(
        cert: &Path,
        key: &Path,
        now: SystemTime,
    ) -> Result<CertPair, Vec<TlsFileError>> {
        let mut errors = Problems::default();
        let chain = errors.take(load_certs(cert));
        if let Some(chain) = &chain {
            errors.take(check_validity(cert, chain, now));
        }
        let der = errors.take(load_key(key));
        if let (Some(chain), Some(key_der)) = (chain, der) {
            let pair = CertPair {
                chain,
                key: key_der,
            };
            errors.take(pair.check_match(cert, key));
            if errors.0.is_empty() {
                return Ok(pair);
            }
        }
        Err(errors.0)
    }

    /// A copy of the key (rustls builders take it by value).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Compares the key's public key with the leaf's SubjectPublicKeyInfo. A key type whose
    /// public key the provider cannot derive is not refused here (the handshake would show it).
    fn check_match(&self, cert: &Path, key: &Path) -> Result<(), TlsFileError> {
        use rustls::{Error, InconsistentKeys};
        let signer = super::provider()
            .key_provider
            .load_private_key(self.key())
            .map_err(|e| TlsFileError::refused(key, &e))?;
        match CertifiedKey::new(self.chain.clone(), signer).keys_match() {
            Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
            Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                Err(TlsFileError::KeyMismatch {
                    key: key.to_path_buf(),
                    cert: cert.to_path_buf(),
                })
            }
            Err(e) => Err(TlsFileError::refused(cert, &e)),
        }
    }
}

/// Every certificate in `path`, in file order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(path, e))?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The certificate chain in `path`, each certificate valid now: what [`CertPair::load_all`]
/// checks of the cert file alone, for validation to judge it when its key cannot be read.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let chain = load_certs(path)?;
    check_validity(path, &chain, SystemTime::now())?;
    Ok(chain)
}

/// The first private key in `path`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        // An encrypted key is a key all the same: say why it cannot be used.
        pem::Error::NoItemsFound if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            TlsFileError::invalid(
                path,
                "the private key is encrypted; rampart reads unencrypted keys only (decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`)",
            )
        }
        pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_path_buf(),
        },
        e => malformed(path, e),
    })
}

/// The problems of one `tls` section, in the order found; one said twice (a combined cert and
/// key file that is missing) is kept once.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<TlsFileError>);

impl Problems {
    /// The value of `result`, or `None` with its error kept.
    pub(crate) fn take<T>(&mut self, result: Result<T, TlsFileError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// [`Problems::take`] for a step that tells several.
    pub(crate) fn take_all<T>(&mut self, result: Result<T, Vec<TlsFileError>>) -> Option<T> {
        result
            .map_err(|es| es.into_iter().for_each(|e| self.push(e)))
            .ok()
    }

    fn push(&mut self, e: TlsFileError) {
        let said = e.to_string();
        if !self.0.iter().any(|o| o.to_string() == said) {
            self.0.push(e);
        }
    }
}

/// The first of a non-empty list of problems, for callers that tell one.
pub(crate) fn first(mut errors: Vec<TlsFileError>) -> TlsFileError {
    errors.swap_remove(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A CA bundle as trust anchors. Every certificate in it must be usable as one: a bundle
/// that silently loses a CA would show up only as refused handshakes later.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| {
            let why = super::words::rustls_error(&e);
            TlsFileError::invalid(path, format!("unusable CA certificate: {why}"))
        })?;
    }
    Ok(Arc::new(roots))
}

/// Refuses a chain (leaf first, then intermediates, as in the file at `path`) with a
/// certificate that is expired or not yet valid at `now`, naming which one: a peer refuses a
/// chain whose intermediate has expired as surely as one whose leaf has.
///
/// CA bundles (`client_ca`, `ca`) are not checked: rustls takes a trust anchor's name and key
/// only, never its validity, so an expired CA certificate there still verifies.
fn check_validity(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), TlsFileError> {
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| TlsFileError::invalid(path, format!("not an X.509 certificate: {e}")))?;
        let which = || which(i, chain.len(), &cert.subject().to_string());
        let validity = cert.validity();
        if validity.not_after.timestamp() < now {
            return Err(TlsFileError::Expired {
                path: path.to_path_buf(),
                which: which(),
                not_after: validity.not_after.to_string(),
            });
        }
        if validity.not_before.timestamp() > now {
            return Err(TlsFileError::NotYetValid {
                path: path.to_path_buf(),
                which: which(),
                not_before: validity.not_before.to_string(),
            });
        }
    }
    Ok(())
}

/// Certificate `i` (from 0) of a chain of `n`, for an error: "certificate 2 of 3 (an
/// intermediate, subject CN=Issuing CA)"; a lone certificate is "certificate".
fn which(i: usize, n: usize, subject: &str) -> String {
    if n == 1 {
        return "certificate".to_owned();
    }
    let role = if i == 0 {
        "the leaf"
    } else {
        "an intermediate"
    };
    match subject {
        "" => format!("certificate {} of {n} ({role})", i + 1),
        s => format!("certificate {} of {n} ({role}, subject {s})", i + 1),
    }
}

/// The largest certificate, key or CA file read, in bytes. A PEM bundle of every public CA is
/// about 200 KiB; a file past this is a mistake (a disk image, a log), and reading it whole
/// would take the time and memory its size says.
pub const MAX_FILE: u64 = 1024 * 1024;

/// Reads `path` whole, refusing a file over [`MAX_FILE`] (by its size, and by reading at most
/// one byte past the cap, for files whose size says nothing, as in /proc). Opened non-blocking:
/// a file that would wait for data (a FIFO, /proc/kmsg) is an error, never a hang.
fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    read_capped(path, MAX_FILE, "a certificate, key or CA file")
}

/// What is said of `path`, a file of kind `what` (`"JWKS file"`, with or without its
/// article), when it is no regular file: the same words from `rampart validate` and from a
/// read at start, reload or a JWKS refresh.
pub(crate) fn not_regular(what: &str, path: &Path) -> String {
    let kind = what
        .strip_prefix("a ")
        .or_else(|| what.strip_prefix("an "))
        .unwrap_or(what);
    format!(
        "{kind} {:?} is not a regular file",
        path.display().to_string()
    )
}

/// Reads `path` whole as [`read`] does, with `cap` its bound and `what` naming the kind of
/// file in the message of one past it (`"a JWKS file"`): the other small files rampart reads
/// at start and reload take the same guards. Only a regular file is read: a FIFO is opened
/// (non-blocking, so that never waits) and refused by what it is, not read as empty.
pub(crate) fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |source: std::io::Error| {
        match source.kind() {
        std::io::ErrorKind::NotFound => TlsFileError::Missing {
            path: path.to_path_buf(),
        },
        std::io::ErrorKind::WouldBlock => TlsFileError::invalid(
            path,
            "the file has nothing to read yet and reading it would wait for data (as a FIFO, a terminal or /proc/kmsg does); name a PEM file",
        ),
        _ => TlsFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    }
    };
    let too_big = |size: String| {
        TlsFileError::invalid(
            path,
            format!("the file is {size} bytes; {what} may be at most {cap} bytes"),
        )
    };
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(TlsFileError::NotRegular {
            path: path.to_path_buf(),
            message: not_regular(what, path),
        });
    }
    let size = meta.len();
    if size > cap {
        return Err(too_big(size.to_string()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > cap {
        return Err(too_big(format!("more than {cap}")));
    }
    Ok(bytes)
}

fn malformed(path: &Path, e: pem::Error) -> TlsFileError {
    TlsFileError::Malformed {
        path: path.to_path_buf(),
        detail: super::words::pem(&e),
    }
}
