//! `rampart audit verify`: walks the chain and names the first broken line.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{sha256_hex, GENESIS};

/// The suffix every line ends with: `,"hash":"` + 64 hex digits + `"}`.
const HASH_OPEN: &str = ",\"hash\":\"";
const HASH_LEN: usize = 64;

/// The first line whose chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct Broken {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// What an intact trail file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its entries.
    pub entries: usize,
    /// sha256 of its last line ([`GENESIS`] when it has none): what `/state` and the log
    /// show as the trail's head when this file was written last.
    pub head: String,
    /// The hash of every line, in order (to say where an expected head is, if not last).
    pub hashes: Vec<String>,
    /// When its first line continues a trail from another file: that line's `prev` (the
    /// other file's head) and its `prev_file`.
    pub continues: Option<(String, String)>,
}

/// Checks the whole trail in `text`; returns the number of entries, or the first broken line.
///
/// A final newline is expected and not an entry; an empty line anywhere else is broken.
pub fn verify(text: &str) -> Result<usize, Broken> {
    check(text).map(|c| c.entries)
}

/// [`verify`], saying also the file's head and whether it continues another file.
///
/// The first line's `prev` must be [`GENESIS`], unless the line carries `prev_file`: then it
/// continues a trail whose previous entry is in that file, and its `prev` is taken as given
/// (checking it needs that file: `verify --file OLD --file NEW`).
pub fn check(text: &str) -> Result<Checked, Broken> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut checked = Checked {
        entries: 0,
        head: GENESIS.to_string(),
        hashes: Vec::new(),
        continues: None,
    };
    if body.is_empty() {
        return Ok(checked);
    }
    for (i, line) in body.split('\n').enumerate() {
        let broken = |problem: String| Broken {
            line: i + 1,
            problem,
        };
        let link = check_line(line).map_err(broken)?;
        match (i, link.prev_file) {
            (0, Some(file)) => checked.continues = Some((link.prev, file)),
            _ if link.prev != checked.head => {
                return Err(broken(if i == 0 {
                    "its prev is not the start of a trail, and it names no prev_file it continues: lines before it were removed".into()
                } else {
                    "its prev does not match the line before: a line before it was edited, removed or inserted".into()
                }))
            }
            _ => {}
        }
        checked.head = sha256_hex(line.as_bytes());
        checked.hashes.push(checked.head.clone());
        checked.entries += 1;
    }
    Ok(checked)
}

/// `rampart audit verify`: checks `files`, oldest first, as one trail, then the last one's
/// count and head against `expect_count` and `expect_head`. Says what it found on `out` (the
/// count and head of each file) and what does not hold on `err`. `true` when all holds (exit
/// 0); `false` at the first broken line, the first link between two files that does not
/// hold, or an expected head or count that differs (exit 1).
pub fn verify_files(
    files: &[PathBuf],
    expect_head: Option<&str>,
    expect_count: Option<u64>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> bool {
    // The head of the file before, to check the next file's first line against.
    let mut before: Option<(&Path, String)> = None;
    let mut last = None;
    for file in files {
        let Some(checked) = check_file(file, out, err) else {
            return false;
        };
        if !links_to(file, &checked, before.as_ref(), out, err) {
            return false;
        }
        if checked.entries > 0 || before.is_none() {
            before = Some((file.as_path(), checked.head.clone()));
        }
        last = Some((file.as_path(), checked));
    }
    let Some((file, checked)) = last else {
        return false;
    };
    // Both are said when both differ.
    let count = count_is(file, &checked, expect_count, err);
    let head = head_is(file, &checked, expect_head, err);
    count && head
}

/// Reads and checks one file; says its count and head, or why it is not a trail.
fn check_file(file: &Path, out: &mut dyn Write, err: &mut dyn Write) -> Option<Checked> {
    // A FIFO would hold the read until a writer came, a device might never end it.
    if let Err(crate::config::NotAFile::Is(kind)) = crate::config::regular_file(file) {
        let _ = writeln!(
            err,
            "{}: is {kind}, not a regular file: an audit trail is a file rampart appended to",
            file.display()
        );
        return None;
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{}: cannot read: {e}", file.display());
            return None;
        }
    };
    let checked = match check(&text) {
        Ok(c) => c,
        Err(broken) => {
            let _ = writeln!(err, "{}: chain broken at {broken}", file.display());
            return None;
        }
    };
    let _ = writeln!(
        out,
        "{}: ok, {} entries, chain intact, head {}",
        file.display(),
        checked.entries,
        checked.head
    );
    Some(checked)
}

/// Whether `file`'s first line continues `before` (the path and head of the file given before
/// it, if any); with none, says which head the file continues, when it continues one.
fn links_to(
    file: &Path,
    checked: &Checked,
    before: Option<&(&Path, String)>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> bool {
    if let Some((prev_file, head)) = before {
        let first = match &checked.continues {
            Some((prev, _)) => prev.as_str(),
            None if checked.entries == 0 => head.as_str(),
            None => GENESIS,
        };
        if first != head {
            let _ = writeln!(
                err,
                "{}: line 1 does not continue {} (its prev is {first}, that file's head is {head}): entries between them are missing, or the files are not of one trail",
                file.display(),
                prev_file.display()
            );
            return false;
        }
    } else if let Some((prev, prev_file)) = &checked.continues {
        let _ = writeln!(
            out,
            "{}: line 1 continues the trail last written to {prev_file}, whose head was {prev}; give that file first (--file OLD --file {}) to check the link",
            file.display(),
            file.display()
        );
    }
    true
}

/// Whether the last file holds `want` entries (when given); says why not.
fn count_is(file: &Path, checked: &Checked, want: Option<u64>, err: &mut dyn Write) -> bool {
    let Some(want) = want else { return true };
    let n = checked.entries as u64;
    if n == want {
        return true;
    }
    let why = if n < want {
        "entries were cut from its end (or it is another file)"
    } else {
        "entries were added since the count was recorded"
    };
    let _ = writeln!(
        err,
        "{}: {} entries, {want} expected: {why}",
        file.display(),
        checked.entries
    );
    false
}

/// Whether the last file's head is `want` (when given); says where `want` is if not last.
fn head_is(file: &Path, checked: &Checked, want: Option<&str>, err: &mut dyn Write) -> bool {
    let Some(want) = want else { return true };
    let lower = want.to_ascii_lowercase();
    if checked.head == lower {
        return true;
    }
    let why = match checked.hashes.iter().position(|h| *h == lower) {
        Some(i) => format!(
            "the expected head is line {}, and {} entries follow it (written since it was recorded)",
            i + 1,
            checked.entries - i - 1
        ),
        None => "the expected head is not in the file: entries were cut from its end, or it is another trail".into(),
    };
    let _ = writeln!(
        err,
        "{}: head is {}, {want} expected: {why}",
        file.display(),
        checked.head
    );
    false
}

/// What a line says of the line before it.
struct Link {
    prev: String,
    prev_file: Option<String>,
}

/// One line: its own hash, then what it says of the line before.
fn check_line(line: &str) -> Result<Link, String> {
    let tail = HASH_OPEN.len() + HASH_LEN + 2;
    if line.len() < tail + 2 || !line.is_char_boundary(line.len() - tail) {
        return Err("not an audit entry (no hash)".into());
    }
    let (head, suffix) = line.split_at(line.len() - tail);
    let hash = suffix
        .strip_prefix(HASH_OPEN)
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| h.len() == HASH_LEN)
        .ok_or("not an audit entry (no hash at its end)")?;
    let unhashed = format!("{head}}}");
    if sha256_hex(unhashed.as_bytes()) != hash {
        return Err("its content does not match its hash: the line was edited".into());
    }
    let v: serde_json::Value =
        serde_json::from_str(&unhashed).map_err(|e| format!("not JSON: {e}"))?;
    let prev = v
        .get("prev")
        .and_then(|p| p.as_str())
        .ok_or("no prev field")?;
    Ok(Link {
        prev: prev.to_string(),
        prev_file: v
            .get("prev_file")
            .and_then(|p| p.as_str())
            .map(str::to_string),
    })
}
