//! `rampart audit verify`: walks the chain and names the first broken line.

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
