//! Reading an existing trail file without holding it in memory: its last line (where the next
//! entry chains to, and whether a write stopped before its newline) and its count of entries
//! and torn lines.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{sha256_hex, verify, TAIL_READ};

/// What the end of a trail file holds.
pub(super) struct Tail {
    /// sha256 of its last non-empty line; `None` if it has none.
    pub(super) last: Option<String>,
    /// Where its last line starts, when that line lacks its newline.
    pub(super) unended_at: Option<u64>,
    /// With `unended_at`: the line has an entry's shape ([`verify::entry_shaped`]), a whole
    /// entry whose newline alone is missing; otherwise it is torn (a write cut short inside it).
    pub(super) unended_whole: bool,
    /// With `unended_at`: sha256 of the last non-empty line before that one, if the tail read
    /// holds one.
    pub(super) before_unended: Option<String>,
}

/// Reads at most the last [`TAIL_READ`] bytes of `file` (`len` long).
pub(super) fn read_tail(file: &File, len: u64) -> std::io::Result<Tail> {
    let from = len.saturating_sub(TAIL_READ);
    let mut tail = vec![0; (len - from) as usize];
    let got = read_full(file, &mut tail, from)?;
    tail.truncate(got);
    let unended_at = (!tail.is_empty() && !tail.ends_with(b"\n")).then(|| {
        let start = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        from + start as u64
    });
    // Judged as `count_lines` and `verify` judge it; a line longer than the tail read is
    // judged by its end (what was read of it is far longer than an entry's suffix).
    let unended_whole = unended_at.is_some_and(|at| {
        let line = &tail[(at - from) as usize..];
        verify::entry_shaped(line.len(), line)
    });
    let last_line = |bytes: &[u8]| {
        bytes
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .map(sha256_hex)
    };
    let before_unended = unended_at.and_then(|at| last_line(&tail[..(at - from) as usize]));
    Ok(Tail {
        last: last_line(&tail),
        unended_at,
        unended_whole,
        before_unended,
    })
}

/// Entries and torn lines in the first `len` bytes of `file`, as `verify` tells them apart
/// ([`verify::entry_shaped`]), for [`Head::entries`] and [`Head::torn`]. Read in blocks of
/// [`TAIL_READ`], keeping only the end of the line under way: memory stays bounded however
/// long the file or its lines.
pub(super) fn count_lines(file: &File, len: u64) -> std::io::Result<(u64, u64)> {
    let mut buf = vec![0; TAIL_READ as usize];
    let mut line = LineEnd::default();
    let (mut at, mut entries, mut torn) = (0, 0, 0);
    // An empty line is neither (`verify` finds it broken).
    let mut tally = |line: &mut LineEnd| {
        if line.whole() {
            entries += 1;
        } else if line.len > 0 {
            torn += 1;
        }
        *line = LineEnd::default();
    };
    while at < len {
        let want = (len - at).min(TAIL_READ) as usize;
        let got = read_full(file, &mut buf[..want], at)?;
        if got == 0 {
            break;
        }
        let mut parts = buf[..got].split(|b| *b == b'\n').peekable();
        while let Some(part) = parts.next() {
            line.push(part);
            if parts.peek().is_some() {
                tally(&mut line);
            }
        }
        at += got as u64;
    }
    // Bytes after the last newline (the file grew since `len` was taken): a line too.
    if line.len > 0 {
        tally(&mut line);
    }
    Ok((entries, torn))
}

/// The length of a line being read and its last [`verify::SUFFIX_LEN`] bytes.
#[derive(Default)]
struct LineEnd {
    len: usize,
    end: Vec<u8>,
}

// === impl LineEnd ===

impl LineEnd {
    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        self.end.extend_from_slice(bytes);
        let extra = self.end.len().saturating_sub(verify::SUFFIX_LEN);
        self.end.drain(..extra);
    }

    /// Whether the line has an entry's shape.
    fn whole(&self) -> bool {
        verify::entry_shaped(self.len, &self.end)
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
