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
pub(super) fn from_serde(e: &Error, origin: &str, doc: &Doc) -> ConfigError {
    let text = e.to_string();
    let loc = e.location().map(|l| (l.line(), l.column()));
    let mut body = text.as_str();
    if let Some((line, col)) = loc {
        let mark = format!(" at line {line} column {col}");
        if let Some(i) = body.find(&mark) {
            // Keep what libyaml adds after the mark (", while parsing ...").
            let (head, tail) = (&body[..i], &body[i + mark.len()..]);
            return finish(origin, doc, loc, &format!("{head}{tail}"));
        }
    }
    if let Some(stripped) = body.strip_suffix('.') {
        body = stripped;
    }
    finish(origin, doc, loc, body)
}

fn finish(origin: &str, doc: &Doc, loc: Option<(usize, usize)>, body: &str) -> ConfigError {
    let (mut path, msg) = split_path(body);
    let message = if let Some((key, expected)) = unknown_field(msg) {
        path = path.key(&key);
        unknown_key_message(&key, &expected)
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        format!("missing required key \"{}\"", rest.trim_end_matches('`'))
    } else if let Some(rest) = msg.strip_prefix("duplicate field `") {
        let key = rest.trim_end_matches('`');
        path = path.key(key);
        format!("key \"{key}\" is given twice")
    } else {
        msg.to_string()
    };
    // serde_yaml leaves some errors without a place (or at 1:1): find the key in the text.
    let (line, column) = match loc {
        Some(p) if p != (1, 1) => p,
        _ if path == KeyPath::default() => loc.unwrap_or((0, 0)),
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

/// Splits `a.b[0]: message` into the path and the message; no path means the root.
fn split_path(body: &str) -> (KeyPath, &str) {
    if let Some((head, rest)) = body.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && !head.contains(char::is_whitespace)
            && !head.contains(['`', '"', '\''])
            && !rest.is_empty();
        if looks_like_path {
            return (KeyPath::parse(head), rest);
        }
    }
    (KeyPath::default(), body)
}

/// `unknown field `x`, expected one of `a`, `b`` → ("x", ["a", "b"]).
fn unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key.to_string(), expected))
}

fn unknown_key_message(key: &str, expected: &[String]) -> String {
    let close = expected
        .iter()
        .map(|e| (edit_distance(key, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min_by_key(|(d, _)| *d);
    match close {
        Some((_, e)) => format!("unknown key \"{key}\"; did you mean \"{e}\"?"),
        None if expected.is_empty() => format!("unknown key \"{key}\": no keys are allowed here"),
        None => format!(
            "unknown key \"{key}\"; expected one of: {}",
            expected.join(", ")
        ),
    }
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
