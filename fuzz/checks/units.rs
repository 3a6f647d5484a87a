//! The unit parsers (`250ms`, `100/s`, `50%`, `64KiB`) on arbitrary text: a value or an error,
//! never a panic (overflow included).

use std::str::FromStr;

use rampart::config::units::{Dur, Rate, Ratio, Size};

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Dur::from_str(text);
    if let Ok(rate) = Rate::from_str(text) {
        let _ = rate.interval();
    }
    if let Ok(ratio) = Ratio::from_str(text) {
        assert!(ratio.0.is_finite(), "{text:?} parsed to {}", ratio.0);
    }
    let _ = Size::from_str(text);
}
