//! The policy parser and validator on arbitrary text: `Config::from_str` must answer every
//! input with a config or located errors, never a panic or a hang.

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rampart::config::Config::from_str(text, "fuzz.yaml") {
        Ok(cfg) => {
            // A valid config's derived values are computed without panicking too.
            let _ = cfg.sha256.len();
        }
        Err(errors) => {
            // Rendering the errors (what `validate` prints) must not panic either.
            let _ = errors.to_string();
        }
    }
}
