//! Turns a serde_yaml error into a [`ConfigError`] with its own path, place and message.
//!
//! serde_yaml renders everything into one string, `PATH: MESSAGE at line L column C`. The
//! place is also available as a [`serde_yaml::Location`]; the path only inside the text, so
//! it is taken apart here. An unknown key gets the key itself appended to its path, since
//! the key is what is wrong, and a close known key is suggested.

use serde_yaml::Error;

use super::super::locate::{Doc, KeyPath, Target};
use super::super::ConfigError;

/// The error serde_yaml reported, located and reworded.
pub(super) fn from_serde(e: &Error, origin: &str, text: &str, doc: &Doc) -> ConfigError {
    let shown = e.to_string();
    if shown.starts_with("deserializing from YAML containing more than one document") {
        let message =
            "the file holds more than one YAML document (a second `---`); rampart reads one";
        return ConfigError {
            origin: origin.to_string(),
            line: second_document(text),
            column: 1,
            path: String::new(),
            message: message.into(),
        };
    }
    let loc = e.location().map(|l| (l.line(), l.column()));
    // Drop the place from the text (it is in line and column); libyaml may add a context
    // after it (", while parsing a block mapping at line 1 column 1"), which is kept.
    let body = match loc {
        Some((line, col)) => shown.replacen(&format!(" at line {line} column {col}"), "", 1),
        None => shown,
    };
    finish(origin, doc, loc, &body)
}

fn finish(origin: &str, doc: &Doc, loc: Option<(usize, usize)>, body: &str) -> ConfigError {
    let (mut path, msg) = split_path(body, doc);
    let message = if let Some((key, expected)) = backticked(msg, "unknown field `") {
        path = path.key(&key);
        unknown_message("key", &key, &expected)
    } else if let Some((value, expected)) = backticked(msg, "unknown variant `") {
        unknown_message("value", &value, &expected)
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        format!("missing required key \"{}\"", rest.trim_end_matches('`'))
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        let key = rest.trim_end_matches('`');
        path = path.key(key);
        format!("key \"{key}\" is given twice")
    } else if msg == "invalid socket address syntax" {
        let value = doc.scalar(&path).unwrap_or_default();
        format!("invalid address {value:?}: expected IP:PORT, like 127.0.0.1:8080 or [::1]:8080 (a listener binds an IP address, not a name)")
    } else {
        reword(msg)
    };
    // serde_yaml leaves some errors without a place (or at 1:1): find the key in the text.
    let (line, column) = match loc {
        Some(p) if p != (1, 1) => p,
        _ if path == KeyPath::default() => loc.unwrap_or((1, 1)),
        _ => doc
            .duplicate_keys()
            .into_iter()
            .find(|(p, _)| *p == path)
            .map(|(_, at)| at)
            .unwrap_or_else(|| doc.locate(&path, Target::Key)),
    };
    ConfigError {
        origin: origin.to_string(),
        line,
        column,
        path: path.to_string(),
        message,
    }
}

/// Replaces Rust type names in serde's messages with words a reader of YAML uses.
fn reword(msg: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected a sequence", "expected a list"),
        ("expected a string", "expected text"),
        (
            "expected struct File",
            "expected a mapping with keys such as version and listeners",
        ),
    ];
    let mut out = msg.to_string();
    for (from, to) in WORDS {
        if let Some(i) = out.find(from) {
            // Only a whole phrase: `expected struct FileX` is left as it is.
            let end = i + from.len();
            if !out[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                out.replace_range(i..end, to);
            }
        }
    }
    if let Some(rest) = out.strip_prefix("invalid type: ") {
        // serde_yaml's struct names leak out as `expected struct Upstream`; say mapping.
        if let Some(i) = rest.find(", expected struct ") {
            return format!("invalid type: {}, expected a mapping", &rest[..i]);
        }
    }
    out
}

/// Splits `a.b[0]: message` into the path and the message; no path means the root.
fn split_path<'a>(body: &'a str, doc: &Doc) -> (KeyPath, &'a str) {
    if let Some((head, rest)) = body.split_once(": ") {
        let plain = !head.contains(char::is_whitespace) && !head.contains(['`', '"', '\'']);
        // A key may hold spaces; then only the text can tell a path from a message.
        if !head.is_empty() && !rest.is_empty() && (plain || doc.contains(&KeyPath::parse(head))) {
            return (KeyPath::parse(head), rest);
        }
    }
    (KeyPath::default(), body)
}

/// `unknown field `x`, expected one of `a`, `b`` → ("x", ["a", "b"]), for `prefix` up to
/// the first backtick.
fn backticked(msg: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix(prefix)?;
    let (name, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((name.to_string(), expected))
}

/// `unknown key "x"; did you mean "y"?`, or the list of what is allowed.
fn unknown_message(what: &str, name: &str, expected: &[String]) -> String {
    let close = expected
        .iter()
        .map(|e| (edit_distance(name, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min_by_key(|(d, _)| *d);
    match close {
        Some((_, e)) => format!("unknown {what} \"{name}\"; did you mean \"{e}\"?"),
        None if expected.is_empty() => format!("unknown {what} \"{name}\": none is allowed here"),
        None => format!(
            "unknown {what} \"{name}\"; expected one of: {}",
            expected.join(", ")
        ),
    }
}

/// The line of the `---` that starts a second document, or 1.
fn second_document(text: &str) -> usize {
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            if content {
                return i + 1;
            }
            content = true;
        } else if !t.trim_start().is_empty() && !t.trim_start().starts_with('#') {
            content = true;
        }
    }
    1
}

/// Levenshtein distance, for suggestions on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
