//! Checks what serde cannot: references, bounds, and combinations. (Stub: structure only.)

use super::file::File;
use super::{ConfigError, ConfigErrors};

/// Parses `text` into the file model and validates it.
pub(super) fn parse(text: &str, origin: &str) -> Result<File, ConfigErrors> {
    serde_yaml::from_str::<File>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigErrors(vec![ConfigError {
            origin: origin.to_string(),
            line,
            column,
            path: String::new(),
            message: e.to_string(),
        }])
    })
}
