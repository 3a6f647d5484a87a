//! Words a reader of YAML uses, in place of Rust's type names, and suggestions for typos.

/// serde's "expected ..." phrase, in YAML words.
pub(super) fn expected(exp: &str) -> String {
    const WORDS: [(&str, &str); 7] = [
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number of 0 or more"),
        ("u16", "a whole number from 0 to 65535"),
        ("a sequence", "a list"),
        ("a string", "text"),
        ("a borrowed string", "text"),
        (
            "struct File",
            "a mapping with keys such as version and listeners",
        ),
    ];
    if let Some((_, to)) = WORDS.iter().find(|(from, _)| *from == exp) {
        return (*to).to_string();
    }
    if exp.starts_with("struct ") || exp == "a map" {
        return "a mapping".into();
    }
    exp.to_string()
}

/// `unknown key "x"; did you mean "y"?`, or the list of what is allowed.
pub(super) fn unknown(what: &str, name: &str, expected: &[&str]) -> String {
    let shown = crate::config::locate::printable(name);
    let close = expected
        .iter()
        .map(|e| (edit_distance(name, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min_by_key(|(d, _)| *d);
    match close {
        Some((_, e)) => format!("unknown {what} \"{shown}\"; did you mean \"{e}\"?"),
        None if expected.is_empty() => format!("unknown {what} \"{shown}\": none is allowed here"),
        None => format!(
            "unknown {what} \"{shown}\"; expected one of: {}",
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
