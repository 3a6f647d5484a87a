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
//!
//! One trail may span files. Before each entry the path is looked at again: when it no longer
//! names the file written last (renamed for rotation, removed, cut short, replaced), it is
//! opened anew. A file found empty then continues the trail: its first line's `prev` is the
//! hash of the last entry this process wrote (elsewhere) and `prev_file` names the path that
//! entry went to, so `rampart audit verify --file OLD --file NEW` checks both as one sequence.
//! A reload that moves the trail to another `audit.file` records itself in the old file first
//! (with `next_file`), one that removes `audit:` records itself in the file it leaves (with
//! `auditing: "off"`): no change goes unrecorded in the trail in force before it.
//!
//! A hash chain cannot show lines cut from its end. Each entry written is therefore logged
//! with the file's head (the sha256 of its last line, what the next `prev` will be) and its
//! number of entries, and `/state` shows them ([`AuditLog::head`]); recorded elsewhere, they are
//! what `rampart audit verify --expect-head` checks the file against.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::logfile::Use;

mod scan;
mod verify;

use scan::{count_lines, read_tail};

pub use verify::{check, verify, verify_files, Broken, Checked};

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
    /// On a file's first line whose `prev` is the last entry of another file (or of the file
    /// this path named before a rotation): the path that entry was written to.
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_file: Option<&'a str>,
    /// On the last entry of a file a reload moved the trail away from: the new `audit.file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_file: Option<&'a str>,
    /// `"off"` on the entry of the reload that removed `audit:` (the trail's last until
    /// auditing comes back).
    #[serde(skip_serializing_if = "Option::is_none")]
    auditing: Option<&'static str>,
}

/// Where an entry's neighbours are, when not in its own file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Links<'a> {
    /// On a file's first line: the path of the entry its `prev` names, written elsewhere.
    pub prev_file: Option<&'a str>,
    /// The `audit.file` the trail moves to after this entry.
    pub next_file: Option<&'a str>,
    /// The entry turns auditing off.
    pub off: bool,
}

/// The head of a trail file: what an operator records outside it to check later that no entry
/// was cut from its end (`rampart audit verify --expect-head HASH --expect-count N`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Head {
    /// The file last written.
    pub file: PathBuf,
    /// sha256 of its last line (the `prev` of the entry after it).
    pub head: String,
    /// Entries in it (torn lines not counted).
    pub entries: u64,
    /// Torn lines in it: lines that are not whole entries, left by writes cut short.
    pub torn: u64,
}

/// The audit trail of one rampart instance; the file follows `audit.file` of the config in
/// force at each entry.
#[derive(Debug)]
pub struct AuditLog {
    // A cold path (start, reload, shutdown), never the request path; file I/O under it is fine.
    state: parking_lot::Mutex<State>,
    failures: IntCounter,
}

#[derive(Debug, Default)]
struct State {
    open: Option<Open>,
    /// The last entry this process wrote, wherever.
    written: Option<Head>,
}

#[derive(Debug)]
struct Open {
    path: PathBuf,
    file: File,
    /// Device and inode of `file`, to tell whether `path` still names it.
    id: (u64, u64),
    /// Its length after the last write (or when opened); another length means someone else
    /// wrote or cut it.
    end: u64,
    /// sha256 of the last line written or found; `None` for an empty file.
    last: Option<String>,
    /// Entries in it.
    entries: u64,
    /// Torn lines in it.
    torn: u64,
    /// The file was found ending with a line without its newline (torn, or a whole entry)
    /// right after the entry this process wrote last to it (its own write cut short): the next
    /// entry chains to that line, as one written after a restart would, so that `verify` sees
    /// it named.
    unended_after_written: bool,
}

// === impl AuditLog ===

impl AuditLog {
    /// A trail that counts write failures in `failures`.
    pub fn new(failures: IntCounter) -> Self {
        AuditLog {
            state: Default::default(),
            failures,
        }
    }

    /// Appends `entry` to the file at `path` (nothing when `None`). Never fails: a problem is
    /// logged and counted.
    pub fn record(&self, path: Option<&Path>, entry: &Entry) {
        let Some(path) = path else { return };
        self.write(path, entry, Links::default(), true);
    }

    /// Records `entry`, a change of config that moved the trail from `from` (the `audit.file`
    /// in force before) to `to` (the new one's): in `from` first, naming `to` (`next_file`) or
    /// saying auditing stops (`auditing: "off"`), then in `to`. When both name the same file
    /// (the same path, or another spelling of it: relative, through a symlink) it is
    /// [`AuditLog::record`]. A `from` that no longer exists (removed since) is not made again
    /// for its closing entry: that is warned of, and the entry goes to `to` only.
    pub fn record_change(&self, from: Option<&Path>, to: Option<&Path>, entry: &Entry) {
        if let Some(from) = from.filter(|f| !to.is_some_and(|t| same_file(f, t))) {
            let next = to.map(|t| t.to_string_lossy());
            let links = Links {
                next_file: next.as_deref(),
                off: to.is_none(),
                ..Links::default()
            };
            self.write(from, entry, links, false);
        }
        self.record(to, entry);
    }

    /// The file last written, its head and its number of entries; `None` before the first
    /// entry.
    pub fn head(&self) -> Option<Head> {
        self.state.lock().written.clone()
    }

    /// Appends `entry` to `path`, creating the file if `create`.
    fn write(&self, path: &Path, entry: &Entry, links: Links<'_>, create: bool) {
        let mut state = self.state.lock();
        match append(&mut state, path, entry, links, create, SystemTime::now()) {
            Ok(head) => tracing::info!(
                file = %path.display(),
                head = %head.head,
                entries = head.entries,
                torn = head.torn,
                "audit entry written"
            ),
            // The trail leaves a file someone removed: making an empty one only to close it
            // would leave a file that continues nothing and that nothing continues.
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => {
                state.open = None;
                tracing::warn!(
                    file = %path.display(),
                    next_file = links.next_file.unwrap_or_default(),
                    auditing_off = links.off,
                    "the audit file the trail leaves is gone (removed since it was written): its closing entry is not written and the file is not made again"
                );
            }
            Err(e) => {
                state.open = None;
                self.failures.inc();
                tracing::error!(file = %path.display(), error = %e, "cannot write the audit entry; serving on");
            }
        }
    }
}

/// Whether `a` and `b` name one file: the same path, or two that exist with the same device
/// and inode. A path that does not exist names no file yet, so it is not the same as another.
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    id(a).is_some_and(|a| Some(a) == id(b))
}

fn append(
    state: &mut State,
    path: &Path,
    entry: &Entry,
    links: Links<'_>,
    create: bool,
    now: SystemTime,
) -> std::io::Result<Head> {
    let current = state
        .open
        .as_ref()
        .is_some_and(|o| o.path == path && o.still_at_path());
    if !current {
        state.open = None;
        state.open = Some(Open::at(path, state.written.as_ref(), create)?);
    }
    let Some(o) = state.open.as_mut() else {
        return Err(std::io::Error::other("no audit file open"));
    };
    // An empty file continues the trail this process wrote last, if any (a rotation, a new
    // `audit.file`): its first `prev` is that entry's hash, and `prev_file` says where it is.
    // A file at the same path that does not end with the entry written last to it was cut
    // or replaced: the next `prev` still names that entry, so `verify` shows the break there.
    // A line without its newline (torn, or a whole entry) left by this process's own write
    // cut short is chained to (its bytes are the next `prev`), as after a restart.
    let (prev, prev_file) = match (&o.last, &state.written) {
        (Some(_), Some(w)) if w.file == path && !o.unended_after_written => (w.head.clone(), None),
        (Some(last), _) => (last.clone(), None),
        (None, Some(w)) => (w.head.clone(), Some(w.file.to_string_lossy().into_owned())),
        (None, None) => (GENESIS.to_string(), None),
    };
    let links = Links {
        prev_file: prev_file.as_deref(),
        ..links
    };
    let line = chain_line_linked(entry, &prev, links, now);
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    o.file.write_all(&bytes)?;
    o.file.sync_data()?;
    let hash = sha256_hex(line.as_bytes());
    o.end += bytes.len() as u64;
    o.entries += 1;
    o.last = Some(hash.clone());
    o.unended_after_written = false;
    let head = Head {
        file: path.to_path_buf(),
        head: hash,
        entries: o.entries,
        torn: o.torn,
    };
    state.written = Some(head.clone());
    Ok(head)
}

/// Most of an entry's errors one line keeps, in bytes: with the rest of the line, well within
/// the [`TAIL_READ`] a restart reads back to chain on. A longer last line would be hashed in
/// part, and the next process's first entry would name a `prev` no line has.
const ERRORS_KEPT: usize = TAIL_READ as usize / 2;
/// Most of one error a line keeps, in bytes.
const ERROR_KEPT: usize = 2048;

/// The length of `s` written as a JSON string's contents: a quote or a backslash takes two
/// bytes, a control character up to six (`\u0001`).
fn json_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// `errors` as a line keeps them: each at most [`ERROR_KEPT`] bytes of text, as many as fit
/// in [`ERRORS_KEPT`] bytes as the line writes them (escaped), then one saying how many more
/// the log has.
fn kept_errors(errors: &[String]) -> std::borrow::Cow<'_, [String]> {
    let fits = |e: &String| e.len() <= ERROR_KEPT;
    if errors.iter().all(fits) && errors.iter().map(|e| json_len(e)).sum::<usize>() <= ERRORS_KEPT {
        return std::borrow::Cow::Borrowed(errors);
    }
    let mut kept = Vec::new();
    let mut used = 0;
    for e in errors {
        let mut cut = e.len().min(ERROR_KEPT);
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        let written = json_len(&e[..cut]);
        if used + written > ERRORS_KEPT {
            break;
        }
        used += written;
        kept.push(if cut < e.len() {
            format!("{}… (cut)", &e[..cut])
        } else {
            e.clone()
        });
    }
    let more = errors.len() - kept.len();
    if more > 0 {
        kept.push(format!(
            "… and {more} more error(s), not kept here: rampart's log has them all"
        ));
    }
    std::borrow::Cow::Owned(kept)
}

/// The line for `entry` after the line hashed `prev`, with its own `hash` last.
pub fn chain_line(entry: &Entry, prev: &str, now: SystemTime) -> String {
    chain_line_linked(entry, prev, Links::default(), now)
}

/// [`chain_line`] with the links to other files of `links`.
pub fn chain_line_linked(entry: &Entry, prev: &str, links: Links<'_>, now: SystemTime) -> String {
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
        errors: &kept_errors(&entry.errors),
        prev,
        prev_file: links.prev_file,
        next_file: links.next_file,
        auditing: links.off.then_some("off"),
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
    /// Opens `path` for append (creating it if `create`), counts its entries and torn lines and finds the
    /// hash of its last line. Never waits: a FIFO or a device in the file's place is refused
    /// (`crate::logfile`), so a FIFO cannot hold the start and `/dev/zero` cannot be read for
    /// ever. `written` is the last entry this process wrote, to say how the file continues it.
    fn at(path: &Path, written: Option<&Head>, create: bool) -> std::io::Result<Open> {
        let mut file = crate::logfile::open(path, Use::ReadAppend, create)?;
        let meta = file.metadata()?;
        let tail = read_tail(&file, meta.len())?;
        let mut end = meta.len();
        match tail.unended_at {
            // A whole last entry without its newline (the write stopped just before it, or an
            // editor dropped it): nothing is lost, and `verify` counts it as an entry, as
            // `count_lines` does. Ending it keeps the next entry on a line of its own.
            Some(at) if tail.unended_whole => tracing::info!(
                file = %path.display(),
                offset = at,
                length = end - at,
                "the audit trail's last entry is whole but lacks its newline: ending it with one; it counts as an entry (not a torn line), and the next entry starts a line of its own"
            ),
            // A torn last line (a crash mid-write): ended too, and it stays visible to
            // `verify`.
            Some(at) => tracing::warn!(
                file = %path.display(),
                offset = at,
                length = end - at,
                "the audit trail's last line is incomplete (a write cut short?): ending it with a newline; the next entry starts a line of its own, and `rampart audit verify` names the torn line"
            ),
            None => {}
        }
        if tail.unended_at.is_some() {
            file.write_all(b"\n")?;
            end += 1;
        }
        let (entries, torn) = count_lines(&file, end)?;
        let unended_after_written = tail.unended_at.is_some()
            && written
                .is_some_and(|w| w.file == path && tail.before_unended.as_ref() == Some(&w.head));
        match (written, &tail.last) {
            (Some(w), None) => tracing::info!(
                file = %path.display(),
                prev_file = %w.file.display(),
                prev = %w.head,
                "the audit file is empty: its first entry continues the trail last written to prev_file"
            ),
            (Some(w), Some(last))
                if w.file == path && *last != w.head && !unended_after_written =>
            {
                tracing::warn!(
                    file = %path.display(),
                    expected = %w.head,
                    found = %last,
                    "the audit file does not end with the entry rampart wrote last to it: entries were cut or the file replaced; the next entry's prev still names that entry, and `rampart audit verify` shows the break there"
                )
            }
            _ => {}
        }
        Ok(Open {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
            end,
            last: tail.last,
            entries,
            torn,
            unended_after_written,
            file,
        })
    }

    /// Whether `self.path` still names the file open, at the length last written.
    fn still_at_path(&self) -> bool {
        std::fs::metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.id && m.len() == self.end)
    }
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
