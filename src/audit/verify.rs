//! `rampart audit verify`: walks the chain and names the first broken line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::{sha256_hex, GENESIS};

/// The suffix every entry ends with: `,"hash":"` + 64 hex digits + `"}`.
const HASH_OPEN: &str = ",\"hash\":\"";
const HASH_LEN: usize = 64;
/// The length of that suffix.
pub(super) const SUFFIX_LEN: usize = HASH_OPEN.len() + HASH_LEN + 2;

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
    /// Its entries (torn lines not counted).
    pub entries: usize,
    /// sha256 of its last line ([`GENESIS`] when it has none): what `/state` and the log
    /// show as the trail's head when this file was written last.
    pub head: String,
    /// The hash of every line, torn ones too, in order (to say where an expected head is, if
    /// not last).
    pub hashes: Vec<String>,
    /// When its first line continues a trail from another file: that line's `prev` (the
    /// other file's head) and its `prev_file`.
    pub continues: Option<(String, String)>,
    /// The 1-based numbers of its torn lines: lines that are not whole entries (a write cut
    /// short), each followed by a line whose `prev` is its hash.
    pub torn: Vec<usize>,
    /// Its last line lacks its newline. That line is a whole entry (a torn one with nothing
    /// after it is broken): only the newline was not written, and rampart adds it before its
    /// next entry.
    pub unended: bool,
}

/// Checks the whole trail in `text`; returns the number of entries, or the first broken line.
///
/// A final newline is expected and not an entry; an empty line anywhere else is broken. A
/// whole last entry without it is an entry ([`Checked::unended`]).
pub fn verify(text: &str) -> Result<usize, Broken> {
    check(text).map(|c| c.entries)
}

/// [`verify`], saying also the file's head, whether it continues another file and which of
/// its lines are torn.
///
/// The first line's `prev` must be [`GENESIS`], unless the line carries `prev_file`: then it
/// continues a trail whose previous entry is in that file, and its `prev` is taken as given
/// (checking it needs that file: `verify --file OLD --file NEW`).
///
/// A line without an entry's shape (it does not end with `,"hash":"` and 64 characters and
/// `"}`) is torn: what a write cut short leaves (a crash, a full disk), ended by the newline
/// rampart adds before its next entry. rampart chains that next entry to the torn line as to
/// any line (its `prev` is the sha256 of the torn line's bytes), so a torn line is accepted,
/// and listed in [`Checked::torn`], when the line after it names it so: nothing was inserted
/// or removed there. Where the cut left the torn line's own `prev` whole, that must name the
/// line before it, as an entry's does (when the cut came before it, nothing links the torn
/// line to the line before: lines removed just before it are not seen). A torn line that the line after it does not name (a
/// line inserted, or one replaced by junk), or with no line after it, is broken. An empty
/// line is broken too: rampart writes none, and chains past them.
pub fn check(text: &str) -> Result<Checked, Broken> {
    check_bytes(text.as_bytes())
}

/// [`check`] on bytes: a torn line may end inside a character.
pub(super) fn check_bytes(bytes: &[u8]) -> Result<Checked, Broken> {
    match check_reader(bytes) {
        Ok(checked) => checked,
        // Reading a slice cannot fail.
        Err(e) => Err(Broken {
            line: 0,
            problem: e.to_string(),
        }),
    }
}

/// [`check`] on what `r` reads, a line at a time: memory holds one line, not the file.
pub(super) fn check_reader(mut r: impl BufRead) -> std::io::Result<Result<Checked, Broken>> {
    let mut walk = Walk::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let ended = line.last() == Some(&b'\n');
        if ended {
            line.pop();
        }
        // A file that is one newline holds no line, as an empty one holds none.
        if walk.lines == 0 && ended && line.is_empty() && r.fill_buf()?.is_empty() {
            break;
        }
        if let Err(broken) = walk.line(&line) {
            return Ok(Err(broken));
        }
        walk.checked.unended = !ended;
    }
    Ok(walk.end())
}

/// The chain walked so far: [`check`] one line at a time.
#[derive(Debug)]
struct Walk {
    /// Lines seen.
    lines: usize,
    checked: Checked,
    /// A torn line no line after it has named yet.
    unnamed: Option<usize>,
}

// === impl Walk ===

impl Default for Walk {
    fn default() -> Self {
        Walk {
            lines: 0,
            checked: Checked {
                entries: 0,
                head: GENESIS.to_string(),
                hashes: Vec::new(),
                continues: None,
                torn: Vec::new(),
                unended: false,
            },
            unnamed: None,
        }
    }
}

impl Walk {
    /// Checks the next line (without its newline).
    fn line(&mut self, line: &[u8]) -> Result<(), Broken> {
        self.lines += 1;
        let n = self.lines;
        let broken = |problem: String| Broken { line: n, problem };
        if line.is_empty() {
            return Err(broken("not an audit entry (no hash)".into()));
        }
        let whole = entry_shaped(line.len(), line);
        let link = if whole {
            Some(check_line(line).map_err(broken)?)
        } else {
            torn_link(line)
        };
        match link {
            Some(Link {
                prev,
                prev_file: Some(file),
            }) if n == 1 => self.checked.continues = Some((prev, file)),
            Some(link) if link.prev != self.checked.head => {
                return Err(match self.unnamed {
                    Some(t) => unnamed(t, n),
                    None if n == 1 => broken("its prev is not the start of a trail, and it names no prev_file it continues: lines before it were removed".into()),
                    None => broken("its prev does not match the line before: a line before it was edited, removed or inserted".into()),
                });
            }
            // A torn line cut before its `prev`: it cannot name the line before it.
            None => {
                if let Some(t) = self.unnamed {
                    return Err(unnamed(t, n));
                }
            }
            Some(_) => {}
        }
        self.unnamed = None;
        self.checked.head = sha256_hex(line);
        self.checked.hashes.push(self.checked.head.clone());
        if whole {
            self.checked.entries += 1;
        } else {
            self.checked.torn.push(n);
            self.unnamed = Some(n);
        }
        Ok(())
    }

    /// The file's end: a torn last line is broken (no line names it yet).
    fn end(self) -> Result<Checked, Broken> {
        match self.unnamed {
            Some(t) => Err(Broken {
                line: t,
                problem: "not a whole audit entry (a write cut short?), and no line after it names its hash in prev: it is not part of the chain (yet: the next entry rampart writes continues from it)".into(),
            }),
            None => Ok(self.checked),
        }
    }
}

/// Torn line `t` whose next line, `n`, does not name it.
fn unnamed(t: usize, n: usize) -> Broken {
    Broken {
        line: t,
        problem: format!("not a whole audit entry, and line {n} does not name it (its prev is not this line's hash): it was inserted or replaced, not left by a write cut short"),
    }
}

/// Whether a line `len` bytes long that ends with `end` (its last [`SUFFIX_LEN`] bytes or
/// more) has the shape of an entry: `,"hash":"`, 64 characters and `"}` at its end, after at
/// least two bytes. A line cut short has not: the only `,"hash":"` of an entry is its last
/// member (a quote inside a value is escaped).
pub(super) fn entry_shaped(len: usize, end: &[u8]) -> bool {
    let Some(suffix) = end.len().checked_sub(SUFFIX_LEN).map(|at| &end[at..]) else {
        return false;
    };
    len >= SUFFIX_LEN + 2 && suffix.starts_with(HASH_OPEN.as_bytes()) && suffix.ends_with(b"\"}")
}

/// `n entries`, or `1 entry`.
fn entries(n: usize) -> String {
    match n {
        1 => "1 entry".into(),
        n => format!("{n} entries"),
    }
}

/// `rampart audit verify`: checks `files`, oldest first, as one trail, then the last one's
/// count and head against `expect_count` and `expect_head`. Says what it found on `out` (the
/// count and head of each file, "ok" only for a file that holds all that was asked of it) and
/// what does not hold on `err`. `true` when all holds (exit 0); `false` at the first broken
/// line, the first link between two files that does not hold, or an expected head or count
/// that differs (exit 1).
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
    let expecting = expect_head.is_some() || expect_count.is_some();
    for (i, file) in files.iter().enumerate() {
        let Some(checked) = check_file(file, err) else {
            return false;
        };
        // The last file's expectations are judged below: its "ok" waits for them.
        if !(expecting && i + 1 == files.len()) {
            say(file, &checked, true, out);
        }
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
    if !expecting {
        return true;
    }
    // Both are said when both differ, after what the file holds.
    let mut why = Vec::new();
    let count = count_is(file, &checked, expect_count, &mut why);
    let head = head_is(file, &checked, expect_head, &mut why);
    say(file, &checked, count && head, out);
    let _ = err.write_all(&why);
    count && head
}

/// Reads and checks one file; says why it is not a trail, or warns of its torn lines.
fn check_file(file: &Path, err: &mut dyn Write) -> Option<Checked> {
    // A FIFO would hold the read until a writer came, a device might never end it.
    if let Err(crate::config::NotAFile::Is(kind)) = crate::config::regular_file(file) {
        let _ = writeln!(
            err,
            "{}: is {kind}, not a regular file: an audit trail is a file rampart appended to",
            file.display()
        );
        return None;
    }
    let read = std::fs::File::open(file).and_then(|f| check_reader(std::io::BufReader::new(f)));
    let checked = match read {
        Ok(Ok(c)) => c,
        Err(e) => {
            let _ = writeln!(err, "{}: cannot read: {e}", file.display());
            return None;
        }
        Ok(Err(broken)) => {
            let _ = writeln!(err, "{}: chain broken at {broken}", file.display());
            return None;
        }
    };
    for t in &checked.torn {
        let _ = writeln!(
            err,
            "{}: warning: line {t} is torn (not a whole entry: a write cut short), not counted as an entry; line {} names its hash in prev, so the chain is intact around it",
            file.display(),
            t + 1
        );
    }
    Some(checked)
}

/// Says the count and head of a file whose chain is intact, "ok" when `ok` (nothing asked of
/// it failed).
fn say(file: &Path, checked: &Checked, ok: bool, out: &mut dyn Write) {
    let torn = match checked.torn.len() {
        0 => String::new(),
        1 => " and 1 torn line".into(),
        n => format!(" and {n} torn lines"),
    };
    // Said as rampart says it when it opens such a file: an entry, not a torn line.
    let unended = if checked.unended {
        "; its last entry is whole but lacks its newline (rampart ends it with one before its next entry)"
    } else {
        ""
    };
    let ok = if ok { "ok, " } else { "" };
    let _ = writeln!(
        out,
        "{}: {ok}{}{torn}, chain intact, head {}{unended}",
        file.display(),
        entries(checked.entries),
        checked.head
    );
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
        "{}: {}, {want} expected: {why}",
        file.display(),
        entries(checked.entries)
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
        Some(i) => {
            let after = checked.hashes.len() - i - 1 - checked.torn.iter().filter(|t| **t > i + 1).count();
            let follow = if after == 1 { "follows" } else { "follow" };
            format!(
                "the expected head is line {}, and {} {follow} it (written since it was recorded)",
                i + 1,
                entries(after),
            )
        }
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

/// One line with an entry's shape ([`entry_shaped`]): its own hash, then what it says of the
/// line before.
fn check_line(line: &[u8]) -> Result<Link, String> {
    let line =
        std::str::from_utf8(line).map_err(|_| "not UTF-8 text: the line was edited".to_string())?;
    if !line.is_char_boundary(line.len() - SUFFIX_LEN) {
        return Err("not an audit entry (no hash)".into());
    }
    let (head, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let hash = &suffix[HASH_OPEN.len()..HASH_OPEN.len() + HASH_LEN];
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

/// What a torn line still says of the line before it: its `prev` when the cut left it whole
/// (and its `prev_file`, when that too is whole). A quote inside a value is escaped, so
/// `,"prev":"` can only open the member.
fn torn_link(line: &[u8]) -> Option<Link> {
    let prev = string_member(line, b",\"prev\":")?;
    Some(Link {
        prev,
        prev_file: string_member(line, b",\"prev_file\":"),
    })
}

/// The string value after `key` in `line`, if it is there whole.
fn string_member(line: &[u8], key: &[u8]) -> Option<String> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let value = line.get(at..)?;
    if value.first() != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    let close = value.iter().enumerate().skip(1).find_map(|(i, b)| {
        let end = !escaped && *b == b'"';
        escaped = !escaped && *b == b'\\';
        end.then_some(i)
    })?;
    serde_json::from_slice(&value[..=close]).ok()
}
