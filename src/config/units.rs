//! Units of the policy file: durations (`250ms`), rates (`100/s`), ratios (`50%`) and sizes
//! (`64KiB`).
//!
//! Each is a newtype with `FromStr` and a serde `Deserialize` that reports the bad text, so a
//! typo in a unit is an error at the exact line and column of the file, never a silent default.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a number and a unit: `ms`, `s`, `m`, `h` or `d` (`250ms`, `1.5s`);
/// at most [`Dur::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

/// A rate: a count per period, `100/s`, `6000/min`, `50000/h`, `1000000/d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// How many events the period allows.
    pub count: u64,
    /// The period over which `count` refills.
    pub per: Duration,
}

/// A ratio written as a percentage, `50%`; stored as a fraction in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Ratio(pub f64);

/// A size in bytes: a plain number, or with `B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

/// Why a unit failed to parse; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

// === impl Dur ===

impl Dur {
    /// The longest duration a policy file may write (30 days): longer is surely a typo, and
    /// the bound keeps deadline arithmetic far from overflow.
    pub const MAX: Dur = Dur::from_secs(30 * 86_400);

    /// Builds a duration from milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// Builds a duration from seconds.
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl FromStr for Dur {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid duration {s:?}: expected a number and a unit (ms, s, m, min, h, d), like 250ms or 5s (a space before the unit is allowed too: 250 ms)"
            ))
        };
        let t = s.trim();
        let (num, unit) = split_number(t);
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        let unit_ms: u128 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let too_large = || {
            UnitError(format!(
                "invalid duration {s:?}: it is too large; the longest allowed is 30d"
            ))
        };
        // Exact decimal arithmetic: `0.1s` is 100ms, never 99.999…ms from a float.
        let whole = whole.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        if whole.len() > 12 {
            return Err(too_large());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let max_ms = Dur::MAX.0.as_millis();
        if whole * unit_ms > max_ms {
            return Err(too_large());
        }
        // A unit is at most 86_400_000 ms (a multiple of 10^5 but not 10^6), so more than 5
        // significant decimals never make a whole number of milliseconds.
        let frac_ms = match frac.len() {
            0 => Some(0),
            n @ 1..=5 => {
                let scale = 10u128.pow(n as u32);
                let f: u128 = frac.parse().map_err(|_| bad())?;
                (f * unit_ms)
                    .is_multiple_of(scale)
                    .then(|| f * unit_ms / scale)
            }
            _ => None,
        };
        let Some(frac_ms) = frac_ms else {
            let below_1ms = whole == 0
                && format!("0.{frac}")
                    .parse::<f64>()
                    .is_ok_and(|f| f * (unit_ms as f64) < 1.0);
            let why = if below_1ms {
                "it is shorter than 1ms, the shortest duration above 0s"
            } else {
                "it is not a whole number of milliseconds"
            };
            return Err(UnitError(format!(
                "invalid duration {s:?}: {why} (durations are whole milliseconds)"
            )));
        };
        let ms = whole * unit_ms + frac_ms;
        if ms > max_ms {
            return Err(too_large());
        }
        Ok(Dur::from_millis(
            u64::try_from(ms).map_err(|_| too_large())?,
        ))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

// === impl Rate ===

impl Rate {
    /// The time one event's worth of the rate takes to refill.
    pub fn interval(&self) -> Duration {
        if self.count == 0 {
            return Duration::MAX;
        }
        self.per / u32::try_from(self.count).unwrap_or(u32::MAX)
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid rate {s:?}: expected COUNT/PERIOD with PERIOD one of s (or sec, second), min (or m, minute), h (or hour), d (or day), like 100/s or 6000/min"
            ))
        };
        let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            _ => return Err(bad()),
        };
        if count == 0 || count > u32::MAX as u64 {
            return Err(UnitError(format!(
                "invalid rate {s:?}: the count must be between 1 and {}",
                u32::MAX
            )));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

// === impl Ratio ===

impl FromStr for Ratio {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid ratio {s:?}: expected a percentage from 0% to 100%, like 50%"
            ))
        };
        let num = s.trim().strip_suffix('%').ok_or_else(bad)?;
        let n: f64 = num.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&n) {
            return Err(bad());
        }
        Ok(Ratio(n / 100.0))
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

// === impl Size ===

/// Why a size's text is no size.
enum SizeFault {
    /// Not a whole number with one of the units.
    Malformed,
    /// Well formed, but more bytes than 64 bits hold (the number, or it times its unit).
    TooLarge,
}

impl Size {
    /// Whether `s` is written as a size (a whole number and a unit) but is more bytes than
    /// any size can be: for a key's own bound in the message, where the key has one.
    pub(crate) fn overflows(s: &str) -> bool {
        matches!(Size::parse(s), Err(SizeFault::TooLarge))
    }

    fn parse(s: &str) -> Result<u64, SizeFault> {
        let (num, unit) = split_number(s.trim());
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(SizeFault::Malformed),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SizeFault::Malformed);
        }
        // Digits only: the parse can fail only by overflowing.
        let n: u64 = num.parse().map_err(|_| SizeFault::TooLarge)?;
        n.checked_mul(mult).ok_or(SizeFault::TooLarge)
    }
}

impl FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        Size::parse(s).map(Size).map_err(|fault| match fault {
            SizeFault::Malformed => UnitError(format!(
                "invalid size {s:?}: expected a number of bytes with an optional unit (B, KiB, MiB, GiB, KB, MB, GB), like 64KiB"
            )),
            SizeFault::TooLarge => UnitError(format!(
                "invalid size {s:?}: it is too large; the largest size is {} bytes (16EiB less one byte)",
                u64::MAX
            )),
        })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

// === serde: every unit reads from a string (sizes also from an integer) ===

macro_rules! serde_via_str {
    ($t:ty, $what:literal, $ints:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$t, E> {
                        if $ints {
                            v.to_string().parse().map_err(E::custom)
                        } else {
                            Err(E::custom(format!(
                                "invalid {}: {v} has no unit; write it like {}",
                                $what,
                                <$t>::example()
                            )))
                        }
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$t, E> {
                        Err(E::custom(format!("invalid {}: {v}", $what)))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$t, E> {
                        Err(E::custom(format!(
                            "invalid {}: {v} has no unit; write it like {}",
                            $what,
                            <$t>::example()
                        )))
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

trait Example {
    fn example() -> &'static str;
}
impl Example for Dur {
    fn example() -> &'static str {
        "250ms or 5s"
    }
}
impl Example for Rate {
    fn example() -> &'static str {
        "100/s"
    }
}
impl Example for Ratio {
    fn example() -> &'static str {
        "50%"
    }
}
impl Example for Size {
    fn example() -> &'static str {
        "64KiB"
    }
}

serde_via_str!(Dur, "duration", false);
serde_via_str!(Rate, "rate", false);
serde_via_str!(Ratio, "ratio", false);
serde_via_str!(Size, "size", true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Dur>().unwrap(), Dur::from_millis(250));
        assert_eq!("5s".parse::<Dur>().unwrap(), Dur::from_secs(5));
        assert_eq!("1m".parse::<Dur>().unwrap(), Dur::from_secs(60));
        assert_eq!("1.5s".parse::<Dur>().unwrap(), Dur::from_millis(1500));
        assert_eq!("2h".parse::<Dur>().unwrap(), Dur::from_secs(7200));
        for bad in ["", "5", "5x", "s", "-1s", "abc"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!("30d".parse::<Dur>().unwrap(), Dur::MAX);
        for big in ["31d", "99999999999d", "721h"] {
            let e = big.parse::<Dur>().unwrap_err().to_string();
            assert!(
                e.contains("too large; the longest allowed is 30d"),
                "{big}: {e}"
            );
        }
    }

    /// A space around the unit is taken in every unit, as the error text and README say:
    /// `500 ms` is 500ms, `100 / s` is 100/s, `50 %` is 50%, `64 KiB` is 64KiB.
    #[test]
    fn a_space_before_the_unit_is_taken_in_every_unit() {
        assert_eq!("500 ms".parse::<Dur>().unwrap(), Dur::from_millis(500));
        assert_eq!("100 / s".parse::<Rate>().unwrap(), "100/s".parse().unwrap());
        assert_eq!("50 %".parse::<Ratio>().unwrap(), "50%".parse().unwrap());
        assert_eq!("64 KiB".parse::<Size>().unwrap(), "64KiB".parse().unwrap());
        let e = "5 x".parse::<Dur>().unwrap_err().to_string();
        assert!(e.contains("a space before the unit is allowed too"), "{e}");
    }

    /// Durations are whole milliseconds: a value below 1ms, or between two, is refused by its
    /// text (`0.000000001s` was taken as 1ns, which made every request time out), and the
    /// decimals are read exactly (`0.1s` is 100ms, `1.001s` 1001ms).
    #[test]
    fn durations_are_whole_milliseconds() {
        for (text, ms) in [
            ("0.1s", 100),
            ("1.001s", 1001),
            ("0.001s", 1),
            ("1.0ms", 1),
            ("0ms", 0),
            ("0.0s", 0),
            (".5s", 500),
            ("0.5m", 30_000),
            ("0.00001d", 864),
            ("007s", 7000),
        ] {
            assert_eq!(text.parse::<Dur>(), Ok(Dur::from_millis(ms)), "{text}");
        }
        for tiny in [
            "0.000000001s",
            "0.5ms",
            "0.0001s",
            "0.9ms",
            "0.000000000000000001d",
        ] {
            let e = tiny.parse::<Dur>().unwrap_err().to_string();
            assert!(
                e.ends_with("it is shorter than 1ms, the shortest duration above 0s (durations are whole milliseconds)"),
                "{tiny}: {e}"
            );
        }
        for between in ["1.5ms", "0.0015s", "1.0000001s", "2.000000000000000001h"] {
            let e = between.parse::<Dur>().unwrap_err().to_string();
            assert!(
                e.ends_with(
                    "it is not a whole number of milliseconds (durations are whole milliseconds)"
                ),
                "{between}: {e}"
            );
        }
        for bad in ["1.2.3s", ".s", "."] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} must be refused");
        }
    }

    /// Every duration the file may hold is shown as text that reads back to it (`/config`
    /// showed an accepted 0.5ms as `0ms`, another value, which validate refused).
    #[test]
    fn every_duration_displays_as_text_that_reads_back_to_it() {
        for ms in [
            0,
            1,
            7,
            999,
            1000,
            1001,
            59_999,
            60_000,
            3_600_000,
            Dur::MAX.0.as_millis() as u64,
        ] {
            let d = Dur::from_millis(ms);
            assert_eq!(d.to_string().parse::<Dur>(), Ok(d), "{ms}ms shown as {d}");
        }
    }

    #[test]
    fn rates() {
        let r: Rate = "100/s".parse().unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(1)));
        assert_eq!(r.interval(), Duration::from_millis(10));
        assert_eq!(
            "6000/min".parse::<Rate>().unwrap().per,
            Duration::from_secs(60)
        );
        assert_eq!(
            "50000/h".parse::<Rate>().unwrap().per,
            Duration::from_secs(3600)
        );
        assert_eq!(
            "1000000/d".parse::<Rate>().unwrap().per,
            Duration::from_secs(86400)
        );
        for bad in ["100", "100/x", "/s", "0/s", "-5/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} must be refused");
        }
        // The refusal lists every period accepted (it named only s, min, h, d).
        let e = "1/x".parse::<Rate>().unwrap_err().to_string();
        for (period, secs) in [
            ("s", 1),
            ("sec", 1),
            ("second", 1),
            ("m", 60),
            ("min", 60),
            ("minute", 60),
            ("h", 3600),
            ("hour", 3600),
            ("d", 86400),
            ("day", 86400),
        ] {
            let r: Rate = format!("1/{period}").parse().unwrap();
            assert_eq!(r.per, Duration::from_secs(secs));
            let listed = [
                format!(" {period} "),
                format!(" {period},"),
                format!(" {period})"),
            ];
            assert!(
                listed.iter().any(|l| e.contains(l.as_str())),
                "{period} not in {e}"
            );
        }
    }

    #[test]
    fn ratios_and_sizes() {
        assert_eq!("50%".parse::<Ratio>().unwrap(), Ratio(0.5));
        assert_eq!("0%".parse::<Ratio>().unwrap(), Ratio(0.0));
        assert!("150%".parse::<Ratio>().is_err());
        assert!("0.5".parse::<Ratio>().is_err());
        assert_eq!("64KiB".parse::<Size>().unwrap(), Size(65536));
        assert_eq!("1MiB".parse::<Size>().unwrap(), Size(1 << 20));
        assert_eq!("100".parse::<Size>().unwrap(), Size(100));
        assert!("12XB".parse::<Size>().is_err());
    }

    /// A size past 64 bits, by its number or by its unit, is told it is too large and the
    /// largest; a malformed one (even with a huge number) keeps the message of the forms.
    #[test]
    fn sizes_past_64_bits_are_too_large() {
        assert_eq!("16777215GiB".parse::<Size>(), Ok(Size(16_777_215 << 30)));
        assert_eq!(format!("{}", u64::MAX).parse::<Size>(), Ok(Size(u64::MAX)));
        for big in [
            "99999999999999GiB",
            "17179869184GiB",
            "18446744073709551616",
            "99999999999999999999999 MB",
        ] {
            let e = big.parse::<Size>().unwrap_err().to_string();
            assert_eq!(
                e,
                format!("invalid size {big:?}: it is too large; the largest size is 18446744073709551615 bytes (16EiB less one byte)"),
            );
            assert!(Size::overflows(big), "{big}");
        }
        for bad in [
            "99999999999999999999XB",
            "1.5KiB",
            "KiB",
            "-1",
            "9999999999999999999.5GiB",
        ] {
            let e = bad.parse::<Size>().unwrap_err().to_string();
            assert!(e.contains("expected a number of bytes"), "{bad}: {e}");
            assert!(!Size::overflows(bad), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["250ms", "5s"] {
            assert_eq!(s.parse::<Dur>().unwrap().to_string(), s);
        }
        for s in ["100/s", "6000/min", "50000/h", "1000000/d"] {
            assert_eq!(s.parse::<Rate>().unwrap().to_string(), s);
        }
        assert_eq!("64KiB".parse::<Size>().unwrap().to_string(), "64KiB");
    }
}
