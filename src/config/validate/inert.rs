//! Keys the file model accepts but this build does not act on yet (issue 15).
//!
//! One table, one line per key: when a feature lands, delete its line. A present inert key
//! draws a warning at its key, so nobody believes a setting protects them when it does
//! nothing; a key whose silent absence would be dangerous is refused instead.

use super::super::locate::KeyPath;
use super::Report;

/// What a present inert key does to the verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Accepted, with a warning.
    #[allow(dead_code)] // no key is inert today; kept for the next one accepted before it acts
    Warn,
    /// Refused, with this message.
    #[allow(dead_code)] // kept for a key whose silent absence would be dangerous
    Refuse(&'static str),
}

/// One inert key: its path (`*` any name, `[]` any item), the value that makes it inert
/// (`None`: any value), and the verdict.
struct Inert {
    path: &'static str,
    value: Option<&'static str>,
    verdict: Verdict,
}

#[allow(dead_code)] // no key is inert today; kept for the next one accepted before it acts
const fn warn(path: &'static str, value: Option<&'static str>) -> Inert {
    Inert {
        path,
        value,
        verdict: Verdict::Warn,
    }
}

/// Delete a line when its feature lands.
const INERT: &[Inert] = &[];

const WARNING: &str = "is accepted but not enforced by this build yet; it does nothing";

/// Adds a warning (or an error) for every inert key present in the text.
pub(super) fn check(r: &mut Report<'_>) {
    for inert in INERT {
        let found: Vec<(KeyPath, bool)> = r
            .doc
            .glob(inert.path)
            .into_iter()
            .map(|(path, text)| (path, inert.value.is_none_or(|v| text == Some(v))))
            .collect();
        for (path, _) in found.into_iter().filter(|(_, hit)| *hit) {
            let (message, warning) = match inert.verdict {
                Verdict::Warn => {
                    let what = match inert.value {
                        Some(v) => format!("`{}: {v}`", last_key(&path)),
                        None => format!("`{}`", last_key(&path)),
                    };
                    (format!("{what} {WARNING}"), true)
                }
                Verdict::Refuse(m) => (m.to_string(), false),
            };
            r.written_key(&path, message, warning);
        }
    }
}

fn last_key(path: &KeyPath) -> String {
    let shown = path.to_string();
    shown.rsplit('.').next().unwrap_or_default().to_string()
}
