//! The policy file: read it, check it, and hand out a typed [`Config`].
//!
//! Two stages, kept apart on purpose. `file.rs` is the serde mirror of the YAML (shape and
//! defaults, unknown keys refused). `validate.rs` checks what serde cannot: references between
//! sections, bounds, and values that only make sense together. Both stages report errors as
//! `FILE:LINE:COLUMN: key.path: what is wrong`, every error of the file at once (SPEC §14),
//! and keys that are accepted but do nothing yet come back as [`Config::warnings`] in the same
//! shape. Nothing here binds a socket or starts a task, so `rampart validate` and tests can call
//! it freely.
//!
//! The text is read once, by saphyr-parser (the maintained successor family of yaml-rust2),
//! into a tree whose every node keeps its line and column (`locate.rs`); the serde mirror is
//! deserialized from that tree by our own small `Deserializer` (`validate/de.rs`). Why not
//! serde_yaml or serde-saphyr: serde_yaml is deprecated and unmaintained, and both stop at the
//! first error and report it as a rendered string, so positions had to come from a second
//! parse and paths had to be scraped out of messages. Over our own tree every serde error
//! arrives structured (`unknown_field`, `missing_field`, ...) with the node it is about, and a
//! bad node can be taken out and the rest deserialized again, which is how every error of a
//! file shows in one pass. saphyr-parser 0.0.8 is the newest that builds with our
//! `rust-version` (1.80); later ones need 1.85.

pub mod file;
mod locate;
pub mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::tenant::jwt::JwksRead;
use crate::tls::{SystemRoots, TlsFiles};

pub use self::file::File;
pub use self::units::{Dur, Rate, Ratio, Size};

/// A policy file that parsed and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The validated file model.
    pub file: File,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Where it was read from, if a file.
    pub path: Option<PathBuf>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Accepted settings worth knowing about (inert keys, a non-loopback admin address), in
    /// file order; shown like errors, `FILE:LINE:COLUMN: key.path: message`.
    pub warnings: Vec<ConfigError>,
    /// The system trust roots of this load, read on first need by a TLS client without a
    /// `ca` and shared by all of them (`tls::roots`): one read per load.
    pub system_roots: Arc<SystemRoots>,
    /// The TLS and JWKS files as validation read and judged them, which start and reload
    /// serve: each file is read once per load, so what runs is what validated, even when a
    /// file is replaced meanwhile.
    pub read: Arc<FilesRead>,
}

/// What one load's validation read from disk, built into what start and reload serve.
#[derive(Debug, Default)]
pub struct FilesRead {
    /// Every TLS config the policy names (listeners, upstreams, collector, store).
    pub tls: TlsFiles,
    /// Per `jwt` source, by its index in `tenants.from`: its JWKS file's bytes, or the client
    /// an `https://` JWKS is fetched with.
    pub jwks: HashMap<usize, JwksRead>,
}

/// One problem in a policy file, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// File name (or other origin) of the text.
    pub origin: String,
    /// 1-based line; 0 when the error is about the whole file (it is then shown without a
    /// place).
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// Dotted key path, e.g. `policies.standard.retry.attempts`; empty for the root.
    pub path: String,
    /// What is wrong, lowercase, with the offending value.
    pub message: String,
}

/// Largest policy file rampart reads: 4 MiB, far past any real policy (the demo's is 12 KiB) and
/// about what the parser's budget of 100,000 values takes to write out. A larger file, or
/// something that is not a file (`/dev/zero`, a FIFO that never ends), would otherwise be read
/// without bound (SPEC §7).
pub const MAX_POLICY_BYTES: u64 = 4 << 20;

/// The bytes of the policy file at `path`: a regular file (symbolic links followed, as a
/// ConfigMap mount's are) of at most [`MAX_POLICY_BYTES`]. What it is is looked at before it
/// is opened (opening a FIFO waits for a writer), and at most one byte past the cap is read
/// (a file that grows, or one whose size the kernel does not tell). The error is a sentence
/// about the policy file, to follow its name.
pub fn read_policy(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read the policy file: {e}");
    let meta = regular_file(path).map_err(|e| match e {
        NotAFile::Unreadable(e) => cannot(e),
        NotAFile::Is(kind) => format!("the policy file is {kind}, not a regular file"),
    })?;
    let too_big = || {
        format!(
            "the policy file is larger than {} MiB, the most rampart reads",
            MAX_POLICY_BYTES >> 20
        )
    };
    if meta.len() > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Why a path is not a file to read.
#[derive(Debug)]
pub enum NotAFile {
    /// Nothing can be learned of it (missing, no permission).
    Unreadable(std::io::Error),
    /// Something other than a regular file is there: what, in words ("a FIFO (named pipe)").
    Is(&'static str),
}

/// What is at `path` (symbolic links followed), when it is a regular file: a FIFO, a device,
/// a socket or a directory is refused without being opened (opening a FIFO waits for a
/// writer, and reading a device may never end). For every file rampart reads whole: the
/// policy file, and the audit files `rampart audit verify` checks.
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata, NotAFile> {
    let meta = std::fs::metadata(path).map_err(NotAFile::Unreadable)?;
    if meta.is_file() {
        Ok(meta)
    } else {
        Err(NotAFile::Is(crate::logfile::kind(&meta)))
    }
}

/// The `admin.listen` a policy text gives, read leniently (`rampart health`): only that key
/// is looked at, so a file that fails validation (a typo a reload refused, while rampart
/// serves the policy before it) still tells where the admin listener is. `Ok(None)` when the
/// text gives none (the default applies); `Err` when the text cannot be read as YAML even
/// around its `admin:` section, holds more than one document (which one rampart serves, if
/// any, cannot be told: it refuses such a file), or the value is not an address.
pub fn admin_listen_of(text: &str) -> Result<Option<std::net::SocketAddr>, String> {
    let path = locate::KeyPath::default().key("admin").key("listen");
    let mut doc = locate::Doc::parse(text);
    if let Some((line, _)) = doc.second_document {
        return Err(format!(
            "line {line}: the file holds more than one YAML document (a second `---`); rampart reads one"
        ));
    }
    if let Some((at, _, m)) = &doc.syntax {
        // The rest of the file may be broken where `admin:` is not: read that section alone
        // (from a line `admin:` to the next line at the left margin).
        let section = admin_section(text);
        let alone = locate::Doc::parse(&section);
        if section.is_empty() || alone.syntax.is_some() {
            return Err(format!("line {}: {m}", at.0));
        }
        doc = alone;
    }
    match doc.scalar(&path) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("admin.listen {v:?} is not an IP:PORT address")),
    }
}

/// The lines of `text` from one that starts `admin:` up to the next that starts at the left
/// margin (a comment or a blank line aside); empty when there is none.
fn admin_section(text: &str) -> String {
    let mut lines = locate::without_bom(text).lines();
    let Some(first) = lines.by_ref().find(|l| l.starts_with("admin:")) else {
        return String::new();
    };
    let mut section = format!("{first}\n");
    for l in lines {
        let margin = !l.is_empty() && !l.starts_with([' ', '\t', '#']);
        if margin {
            break;
        }
        section.push_str(l);
        section.push('\n');
    }
    section
}

/// The `audit.file` a policy text names, read leniently: for a start refused because the text
/// is not a valid config, whose audit section may still be (SPEC §11: every start attempt
/// leaves a line). `None` when it names none, or the text cannot be read as YAML.
pub fn audit_file_of(text: &str) -> Option<PathBuf> {
    let doc = locate::Doc::parse(text);
    let path = locate::KeyPath::default().key("audit").key("file");
    doc.scalar(&path)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// [`Config::error_at`] over `text` (`None`: no place), named `origin`.
fn error_in(text: Option<&str>, origin: String, at: &Section, message: String) -> ConfigError {
    let path = at.key_path();
    let (line, column) = match text {
        Some(text) => {
            let doc = locate::Doc::parse(text);
            doc.locate(&doc.written(&path), at.target())
        }
        None => (0, 0),
    };
    ConfigError {
        origin,
        line,
        column,
        path: path.to_string(),
        message,
    }
}

/// `FILE:LINE:COL: key.path` of `at` in the policy `text` named `origin` (as
/// [`Config::place`] for a config read from a file): for a policy that is not the file a
/// config was read from, such as the demo's built-in one.
pub fn place_in(text: &str, origin: &str, at: &Section) -> String {
    let at = error_in(Some(text), origin.to_owned(), at, String::new()).to_string();
    at.trim_end_matches([' ', ':']).to_owned()
}

/// The index in `listeners` of the listener named `name` in the policy `text`; `None` when
/// the text has none of that name.
pub fn listener_index(text: &str, name: &str) -> Option<usize> {
    // Every listener is named (a validated policy's are), so the names come one per item.
    let doc = locate::Doc::parse(text);
    let names = doc.glob("listeners.[].name");
    names.iter().position(|(_, n)| *n == Some(name))
}

/// A listener or an upstream of the policy file, for errors about its keys found after
/// validation (its TLS files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Section {
    /// `listeners[i]`.
    Listener(usize),
    /// `upstreams.NAME`.
    Upstream(String),
    /// `tracing.otlp`, and which of its file keys (`ca`, `cert`, `key`).
    Tracing(&'static str),
    /// `global_store.redis`.
    Store,
    /// `listeners[i].listen`.
    Listen(usize),
    /// `admin.listen`.
    AdminListen,
}

/// Every problem found in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl Section ===

impl Section {
    /// The key an error about this section is placed at: its `tls` (or, for the collector, the
    /// file key named), or its `listen`.
    fn key_path(&self) -> locate::KeyPath {
        let root = locate::KeyPath::default();
        match self {
            Section::Listener(i) => root.key("listeners").idx(*i).key("tls"),
            Section::Upstream(name) => root.key("upstreams").key(name).key("tls"),
            Section::Tracing(file) => root.key("tracing").key("otlp").key(file),
            Section::Store => root.key("global_store").key("redis").key("tls"),
            Section::Listen(i) => root.key("listeners").idx(*i).key("listen"),
            Section::AdminListen => root.key("admin").key("listen"),
        }
    }

    /// Whether the error is placed on the key (a `tls` section, a file key) or on its value
    /// (an address).
    fn target(&self) -> locate::Target {
        match self {
            Section::Listen(_) | Section::AdminListen => locate::Target::Value,
            _ => locate::Target::Key,
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let whole = |message| {
            ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                line: 0,
                column: 0,
                path: String::new(),
                message,
            }])
        };
        let bytes = read_policy(path).map_err(whole)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| whole("cannot read the policy file: it is not UTF-8 text".to_owned()))?;
        let mut cfg = Config::from_str(&text, &origin)?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates `text`; `origin` names it in error messages.
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        // One read of the system's roots for the whole load, by validation as it builds the
        // client configs start and reload then serve.
        let system_roots = Arc::new(SystemRoots::new());
        let (file, warnings, read) =
            validate::parse(locate::without_bom(text), origin, &system_roots)?;
        let sha256 = hex(&Sha256::digest(text.as_bytes()));
        Ok(Config {
            file,
            sha256,
            path: None,
            loaded_at: SystemTime::now(),
            warnings,
            system_roots,
            read: Arc::new(read),
        })
    }

    /// An error found after validation (a TLS file that cannot be used, an address that
    /// cannot be bound), placed at the key of `at` that names the file (`tls`, or the
    /// collector's `ca`, `cert` or `key`), or at the address (a listener's or the admin
    /// listener's `listen` value), as written in the file this config was read from, read again
    /// for it (only on this error path); without a place when there is no file or it cannot be
    /// read now. A key left unwritten (the collector's `ca` when the default roots failed, the
    /// default `admin.listen`) places it at the section, else where the file starts.
    pub fn error_at(&self, at: &Section, message: String) -> ConfigError {
        let text = self
            .path
            .as_ref()
            .and_then(|p| read_policy(p).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let origin = self
            .path
            .as_ref()
            .map_or_else(|| "<config>".into(), |p| p.display().to_string());
        error_in(text.as_deref(), origin, at, message)
    }

    /// `FILE:LINE:COL: key.path` of `at` ([`Config::error_at`]), to put before a message that
    /// is not a [`ConfigError`] of its own.
    pub fn place(&self, at: &Section) -> String {
        let at = self.error_at(at, String::new()).to_string();
        at.trim_end_matches([' ', ':']).to_owned()
    }

    /// A one-line summary for `rampart validate`.
    pub fn summary(&self) -> String {
        let f = &self.file;
        let routes: usize = f.listeners.iter().map(|l| l.routes.len()).sum();
        format!(
            "ok: {} listener(s), {} route(s), {} upstream(s), {} policy(ies), {} warning(s); sha256 {}",
            f.listeners.len(),
            routes,
            f.upstreams.len(),
            f.policies.len(),
            self.warnings.len(),
            &self.sha256[..12]
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// === impl ConfigError ===

impl ConfigError {
    /// The line `rampart validate` prints for a warning:
    /// `FILE:LINE:COLUMN: key.path: warning: message`.
    pub fn warning_line(&self) -> String {
        let mut w = self.clone();
        w.message = format!("warning: {}", self.message);
        w.to_string()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.origin)?;
        } else {
            write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
