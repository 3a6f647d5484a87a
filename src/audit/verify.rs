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

/// Checks the whole trail in `text`; returns the number of entries, or the first broken line.
///
/// A final newline is expected and not an entry; an empty line anywhere else is broken.
pub fn verify(text: &str) -> Result<usize, Broken> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(0);
    }
    let mut expected = GENESIS.to_string();
    let mut n = 0;
    for (i, line) in body.split('\n').enumerate() {
        let broken = |problem: String| Broken {
            line: i + 1,
            problem,
        };
        check_line(line, &expected).map_err(broken)?;
        expected = sha256_hex(line.as_bytes());
        n += 1;
    }
    Ok(n)
}

/// One line: its own hash, then its `prev` against the previous line.
fn check_line(line: &str, expected_prev: &str) -> Result<(), String> {
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
    if prev != expected_prev {
        return Err(
            "its prev does not match the line before: a line before it was edited, removed or inserted"
                .into(),
        );
    }
    Ok(())
}
