//! The roots a TLS client trusts when its section names no `ca` (SPEC §8: "the system roots").
//!
//! One rule for every outbound TLS user: an upstream's `tls`, an `https://` JWKS, an `https://`
//! OTLP collector and a `rediss://` store. Without a `ca`, each verifies against the system's
//! trust store as `rustls-native-certs` reads it: the PEM file in `SSL_CERT_FILE` and the
//! directories in `SSL_CERT_DIR` when either is set, else the OS bundle (`/etc/ssl/certs` and
//! the other paths OpenSSL looks in). That is the store `curl` and OpenSSL trust on the same
//! host, so a private CA installed there (or named by `SSL_CERT_FILE`) is trusted by rampart too.
//!
//! A store that yields no usable certificate (a slim or `scratch` image without
//! ca-certificates, an `SSL_CERT_FILE` that is missing or holds none) would make every such
//! handshake fail. rampart then trusts Mozilla's roots compiled in by `webpki-roots`, and the
//! load's validation says so as one of its warnings, with the reason
//! ([`SystemRoots::fallback`]): `validate` counts it, start and each reload log it with the
//! others. A public upstream still verifies, and the operator learns why a private CA does not.
//!
//! Each config load (start, `validate`, each reload) has one [`SystemRoots`], carried by its
//! `Config`: the store is read at most once for it, on first need (validation builds every
//! client config of the load, and start and reload serve those), and every client config of
//! that load shares the result. Never per connection, and never when every client names its
//! `ca`. A reload reads it again, so a CA added to the system store is trusted from the next
//! reload on.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_native_certs::CertificateResult;

/// The system roots of one config load, read on first use, and why the compiled-in web roots
/// stand in for them, if they do.
#[derive(Default)]
pub struct SystemRoots(OnceLock<(Arc<RootCertStore>, Option<String>)>);

/// What one read of the system store gave.
#[derive(Debug)]
pub(super) enum Found {
    /// At least one usable root; `problems` names what could not be read or used, if anything.
    System {
        store: RootCertStore,
        problems: Option<String>,
    },
    /// None usable, for `reason`: the compiled-in web roots instead.
    Fallback { reason: String },
}

// === impl SystemRoots ===

impl SystemRoots {
    /// Roots not read yet: the first [`SystemRoots::get`] reads them.
    pub fn new() -> Self {
        Self::default()
    }

    /// The system's roots (or the compiled-in web roots when it has none), read on the first
    /// call and shared afterwards.
    pub fn get(&self) -> Arc<RootCertStore> {
        self.0.get_or_init(read).0.clone()
    }

    /// Why the system store gave no usable root, when it was read and the compiled-in web
    /// roots stand in; `None` when it has not been read, or gave roots. Not logged here: the
    /// load's validation makes it one of its warnings.
    pub fn fallback(&self) -> Option<&str> {
        self.0.get().and_then(|(_, reason)| reason.as_deref())
    }
}

/// How many roots, not each of them: a `Config` printed with `{:?}` stays readable.
impl fmt::Debug for SystemRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get() {
            Some((store, _)) => write!(f, "SystemRoots({} roots)", store.len()),
            None => f.write_str("SystemRoots(unread)"),
        }
    }
}

/// Reads the system store; a store read in part is warned of here, a fallback is returned for
/// validation to warn of ([`SystemRoots::fallback`]).
fn read() -> (Arc<RootCertStore>, Option<String>) {
    let (found, unread) = load();
    match choose(found, unread, &looked_in()) {
        Found::System { store, problems } => {
            if let Some(problems) = problems {
                tracing::warn!(
                    roots = store.len(),
                    problems = %problems,
                    "part of the system trust store could not be read or used; TLS clients \
                     without a ca trust the rest"
                );
            } else {
                tracing::debug!(
                    roots = store.len(),
                    "TLS clients without a ca trust the system roots"
                );
            }
            (Arc::new(store), None)
        }
        Found::Fallback { reason } => (Arc::new(web_roots()), Some(reason)),
    }
}

/// The most an `SSL_CERT_FILE` may hold to be read: Debian's whole bundle is about 220 KiB, and a
/// file larger than this is no trust store (a log, a disk image named by mistake).
pub(super) const STORE_FILE_CAP: u64 = 16 << 20;

/// Reads the store as `load_native_certs` does (`SSL_CERT_FILE` and `SSL_CERT_DIR` when either is
/// set, else the OS bundle), but never reads an `SSL_CERT_FILE` that is not a regular file or is
/// larger than [`STORE_FILE_CAP`]: a FIFO would hold the load (a start, before its signals are
/// taken) until a writer comes, and `/dev/zero` would grow it without bound. Returns what was
/// read, and the problems of the files not read, or read and holding no certificate.
fn load() -> (CertificateResult, Vec<String>) {
    load_with(
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("SSL_CERT_DIR"),
        os_bundle,
    )
}

/// [`load`] given the values of `SSL_CERT_FILE` and `SSL_CERT_DIR`, and the reader of the OS
/// bundle. A variable set empty counts as unset, as OpenSSL reads it: with both so, the OS bundle.
pub(super) fn load_with(
    file: Option<OsString>,
    dir: Option<OsString>,
    os_bundle: impl FnOnce() -> CertificateResult,
) -> (CertificateResult, Vec<String>) {
    let file = file.filter(|v| !v.is_empty());
    let dirs: Vec<PathBuf> = dir.map_or_else(Vec::new, |d| {
        std::env::split_paths(&d)
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    });
    match file {
        Some(file) => load_from(Path::new(&file), &dirs),
        None if dirs.is_empty() => (os_bundle(), Vec::new()),
        None => (
            read_dirs(CertificateResult::default(), None, &dirs),
            Vec::new(),
        ),
    }
}

/// The OS bundle: the file and directories OpenSSL looks in (found as `load_native_certs` finds
/// them, but without its reading of the environment, which takes an empty `SSL_CERT_FILE` for
/// the path '').
#[cfg(all(unix, not(target_os = "macos")))]
fn os_bundle() -> CertificateResult {
    // The variables are unset or empty here, so the probe's own look at them (only at paths
    // that exist) adds nothing.
    let probed = openssl_probe::probe();
    read_paths(probed.cert_file.as_deref(), &probed.cert_dir)
}

/// The certificates of `file` and of the directories `dirs` (see [`read_dirs`]).
pub(super) fn read_paths(file: Option<&Path>, dirs: &[PathBuf]) -> CertificateResult {
    let out = rustls_native_certs::load_certs_from_paths(file, None);
    read_dirs(out, file, dirs)
}

/// The OS store of the platform (its own API, not files).
#[cfg(not(all(unix, not(target_os = "macos"))))]
fn os_bundle() -> CertificateResult {
    rustls_native_certs::load_native_certs()
}

/// `out` (what `file` gave, read already) with the certificates of the regular files in the
/// directories `dirs` added (links followed, not recursing), each file read once and each
/// certificate kept once. A trust-store file usually lies in a directory read beside it
/// (Debian's `/etc/ssl/certs/ca-certificates.crt` in `/etc/ssl/certs`, and `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` set to those): read by `rustls-native-certs` one directory at a time, apart
/// from the file, the whole bundle was read twice per load. So the directories are walked
/// here, and an entry that is a file read already (by its device and inode: the bundle, the
/// links `openssl rehash` makes, a directory named twice) is skipped; each file left is read
/// by `rustls-native-certs`, which names its problems as it did. A directory that cannot be
/// listed is handed to it whole, for the same reason.
fn read_dirs(
    mut out: CertificateResult,
    file: Option<&Path>,
    dirs: &[PathBuf],
) -> CertificateResult {
    let mut seen = std::collections::HashSet::new();
    if let Some(id) = file
        .and_then(|f| std::fs::metadata(f).ok())
        .and_then(|m| identity(&m))
    {
        seen.insert(id);
    }
    let mut add = |read: CertificateResult| {
        out.certs.extend(read.certs);
        out.errors.extend(read.errors);
    };
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            add(rustls_native_certs::load_certs_from_paths(None, Some(dir)));
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let new = match std::fs::metadata(&path) {
                Ok(m) => m.is_file() && identity(&m).is_none_or(|id| seen.insert(id)),
                // A dangling link: nothing to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                // The reader names the problem.
                Err(_) => true,
            };
            if new {
                add(rustls_native_certs::load_certs_from_paths(
                    Some(&path),
                    None,
                ));
            }
        }
    }
    out.certs
        .sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    out.certs.dedup();
    out
}

/// A file's identity (device, inode), where the platform gives one.
#[cfg(unix)]
fn identity(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

/// A file's identity: none given here, so every entry is read.
#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// [`load`] apart from the environment: the trust-store file `file`, if fit to read, and the
/// directories `dirs` (whose entries `rustls-native-certs` reads only when regular files).
pub(super) fn load_from(file: &Path, dirs: &[PathBuf]) -> (CertificateResult, Vec<String>) {
    let named = format!("SSL_CERT_FILE={}", file.display());
    let mut problems = Vec::new();
    // Whether it was read: a directory beside it that holds it does not read it again.
    let (out, read) = match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => {
            problems.push(format!("{named} is not a regular file; not read"));
            (CertificateResult::default(), false)
        }
        Ok(m) if m.len() > STORE_FILE_CAP => {
            problems.push(format!(
                "{named} is {} bytes, more than the {} MiB a trust store is read up to; not read",
                m.len(),
                STORE_FILE_CAP >> 20
            ));
            (CertificateResult::default(), false)
        }
        // Missing or unreadable: the reader says so, as it would have.
        _ => {
            let read = rustls_native_certs::load_certs_from_paths(Some(file), None);
            if read.certs.is_empty() && read.errors.is_empty() {
                problems.push(format!("{named} holds no PEM certificate"));
            }
            (read, true)
        }
    };
    (read_dirs(out, Some(file).filter(|_| read), dirs), problems)
}

/// The warning of a load whose system store gave no usable root, for `reason`.
pub fn fallback_warning(reason: &str) -> String {
    format!(
        "no usable system trust roots ({reason}): TLS clients without a ca trust the \
         compiled-in web roots (Mozilla's list) instead; install ca-certificates or set \
         SSL_CERT_FILE to trust others"
    )
}

/// Where `load_native_certs` looks, for a warning: the variables when either is set (it then
/// reads only those), else the OS bundle.
fn looked_in() -> String {
    let vars: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .filter_map(|v| Some((v, std::env::var_os(v)?)))
        .filter(|(_, value)| !value.is_empty())
        .map(|(v, value)| format!("{v}={}", value.to_string_lossy()))
        .collect();
    if vars.is_empty() {
        "the OS bundle paths (SSL_CERT_FILE and SSL_CERT_DIR unset or empty)".to_owned()
    } else {
        vars.join(", ")
    }
}

/// Mozilla's roots, compiled in.
fn web_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The decision, apart from the reading: the certificates read when any is usable, else the
/// reason there are none (`unread`: files [`load`] did not read, or found empty; `looked` says
/// where the reader looked, for when it found nothing and no problem).
pub(super) fn choose(found: CertificateResult, unread: Vec<String>, looked: &str) -> Found {
    let read = found.certs.len();
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(found.certs);
    let mut problems = unread;
    problems.extend(found.errors.iter().map(ToString::to_string));
    if unusable > 0 {
        problems.push(format!(
            "{unusable} of {read} certificates are not usable as roots"
        ));
    }
    if !store.is_empty() {
        let problems = (!problems.is_empty()).then(|| problems.join("; "));
        return Found::System { store, problems };
    }
    let reason = if problems.is_empty() {
        format!("no certificate found in {looked}")
    } else {
        problems.join("; ")
    };
    Found::Fallback { reason }
}
