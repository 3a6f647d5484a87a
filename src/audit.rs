//! The audit trail of policy changes (SPEC §11): one JSON line per start, reload attempt and
//! shutdown, chained by hashes so that an edited, removed or inserted line is detectable.
//!
//! Why a hash chain: a regulated team must show which policy was in force when, and that the
//! record was not touched afterwards. Each line carries `prev`, the sha256 of the previous line's
//! exact bytes (the first line's `prev` is [`GENESIS`], the sha256 of the empty string), and
//! `hash`, the sha256 of the line itself with its closing `,"hash":"…"` member removed. A line
//! edited in place fails its own `hash`; one edited with a recomputed `hash`, removed or
//! inserted breaks the next line's `prev`. There is no secret key: the chain catches accidents
//! and careless edits, not a forger who rewrites every later line.
//!
//! The file is opened for append only and each entry is written with one `write` and fsynced.
//! A write failure is logged and counted in `rampart_audit_write_failures_total`, and never
//! stops the proxy: losing an audit line is bad, refusing traffic over it is worse.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::logfile::Use;

mod verify;

pub use verify::{verify, Broken};

/// `prev` of the first line: the sha256 of the empty string.
pub const GENESIS: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How much of an existing file's end is read to find its last line.
const TAIL_READ: u64 = 64 * 1024;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The process started with a config.
    Start,
    /// A reload was attempted.
    Reload,
    /// Shutdown began.
    Shutdown,
}

/// What triggered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Process start.
    Start,
    /// SIGHUP (and [`crate::Rampart::reload`]).
    Sighup,
    /// `POST /reload` on the admin listener.
    Post,
    /// `--watch` saw the file change.
    Watch,
    /// SIGTERM (and [`crate::Rampart::shutdown`]).
    Sigterm,
    /// SIGINT (not in SPEC §11's list, which names SIGTERM only; kept apart so the record is
    /// true).
    Sigint,
}

/// One audit entry, before it is chained.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What happened.
    pub event: Event,
    /// What triggered it.
    pub source: Source,
    /// sha256 of the config text involved (the new one on a reload), if it could be read.
    pub sha256: Option<String>,
    /// Error messages; empty means the action succeeded.
    pub errors: Vec<String>,
}

// === impl Entry ===

impl Entry {
    /// A start that failed (`errors`), with the sha256 of the config text it tried.
    pub fn failed_start(sha256: String, errors: Vec<String>) -> Entry {
        Entry {
            event: Event::Start,
            source: Source::Start,
            sha256: Some(sha256),
            errors,
        }
    }
}

/// The serialised form; field order is the line's order.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: Event,
    source: Source,
    sha256: Option<&'a str>,
    result: &'static str,
    errors: &'a [String],
    prev: &'a str,
}

/// The audit trail of one rampart instance; the file follows `audit.file` of the config in
/// force at each entry.
#[derive(Debug)]
pub struct AuditLog {
    // A cold path (start, reload, shutdown), never the request path; file I/O under it is fine.
    open: parking_lot::Mutex<Option<Open>>,
    failures: IntCounter,
}

#[derive(Debug)]
struct Open {
    path: PathBuf,
    file: File,
    /// sha256 of the last line written or found.
    last: String,
}

// === impl AuditLog ===

impl AuditLog {
    /// A trail that counts write failures in `failures`.
    pub fn new(failures: IntCounter) -> Self {
        AuditLog {
            open: Default::default(),
            failures,
        }
    }

    /// Appends `entry` to the file at `path` (nothing when `None`). Never fails: a problem is
    /// logged and counted.
    pub fn record(&self, path: Option<&Path>, entry: &Entry) {
        let Some(path) = path else { return };
        let mut open = self.open.lock();
        if let Err(e) = append(&mut open, path, entry, SystemTime::now()) {
            *open = None;
            self.failures.inc();
            tracing::error!(file = %path.display(), error = %e, "cannot write the audit entry; serving on");
        }
    }
}

fn append(
    open: &mut Option<Open>,
    path: &Path,
    entry: &Entry,
    now: SystemTime,
) -> std::io::Result<()> {
    if open.as_ref().map(|o| o.path.as_path()) != Some(path) {
        *open = Some(Open::at(path)?);
    }
    let Some(o) = open.as_mut() else {
        return Ok(());
    };
    let line = chain_line(entry, &o.last, now);
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    o.file.write_all(&bytes)?;
    o.file.sync_data()?;
    o.last = sha256_hex(line.as_bytes());
    Ok(())
}

/// The line for `entry` after the line hashed `prev`, with its own `hash` last.
pub fn chain_line(entry: &Entry, prev: &str, now: SystemTime) -> String {
    let body = Line {
        time: rfc3339(now),
        event: entry.event,
        source: entry.source,
        sha256: entry.sha256.as_deref(),
        result: if entry.errors.is_empty() {
            "ok"
        } else {
            "error"
        },
        errors: &entry.errors,
        prev,
    };
    // Serialising plain strings and enums cannot fail; an empty object would break the chain
    // visibly rather than silently.
    let body = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    let hash = sha256_hex(body.as_bytes());
    let open = &body[..body.len() - 1];
    format!("{open},\"hash\":\"{hash}\"}}")
}

// === impl Open ===

impl Open {
    /// Opens `path` for append (creating it) and finds the hash of its last line. Never waits
    /// and never reads past [`TAIL_READ`] bytes: a FIFO or a device in the file's place is
    /// refused (`crate::logfile`), so a FIFO cannot hold the start and `/dev/zero` cannot be read
    /// for ever.
    fn at(path: &Path) -> std::io::Result<Open> {
        let mut file = crate::logfile::open(path, Use::ReadAppend, true)?;
        let (last, newline_missing) = last_line_hash(&file)?;
        if newline_missing {
            // A torn last line (a crash mid-write): end it, so the next entry starts a line; the
            // torn line stays visible to `verify`.
            file.write_all(b"\n")?;
        }
        Ok(Open {
            path: path.to_path_buf(),
            file,
            last,
        })
    }
}

/// The sha256 of the last non-empty line of `file` ([`GENESIS`] if none), and whether the file
/// lacks its final newline. Reads at most its last [`TAIL_READ`] bytes.
fn last_line_hash(file: &File) -> std::io::Result<(String, bool)> {
    let len = file.metadata()?.len();
    let from = len.saturating_sub(TAIL_READ);
    let mut tail = vec![0; (len - from) as usize];
    let mut got = 0;
    while got < tail.len() {
        match file.read_at(&mut tail[got..], from + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    tail.truncate(got);
    let newline_missing = !tail.is_empty() && !tail.ends_with(b"\n");
    let last = tail
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .map(sha256_hex)
        .unwrap_or_else(|| GENESIS.to_string());
    Ok((last, newline_missing))
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `2026-12-01T06:35:05.123Z` for `t` (UTC, milliseconds).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests;
