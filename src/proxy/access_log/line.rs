//! The pieces of an access log line: JSON strings, numbers and the time, written straight
//! into byte buffers.
//!
//! Why by hand: the request path writes every line, and `write!` (the `fmt` machinery, with
//! its padding and its dynamic dispatch) cost more than everything else the line does. Strings
//! that come from the client (path, tenant, request id, method) are escaped as JSON requires;
//! everything else is numbers or text rampart wrote itself.

use std::cell::RefCell;
use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Wall time for lines: an anchor (Unix time at a monotonic instant) and the text of the
/// last second written.
///
/// The request path never reads the system's wall clock: the writer thread re-anchors every
/// lane each time it takes the lane's lines (every few milliseconds), and a line's time is the
/// anchor plus or minus the monotonic distance to the request's start. The date part changes
/// once a second, so its text is kept and only the milliseconds are written per line.
#[derive(Debug, Clone)]
pub(super) struct Wall {
    /// Unix time at `at`, in nanoseconds.
    unix_nanos: u64,
    at: Instant,
    /// The Unix second whose text is in `date` (`u64::MAX`: none yet).
    second: u64,
    /// `2026-12-01T06:33:31.` for `second`.
    date: [u8; 20],
}

// === impl Wall ===

impl Wall {
    /// Anchored at `at`, which is `unix_nanos` after the Unix epoch.
    pub(super) fn new(unix_nanos: u64, at: Instant) -> Self {
        Wall {
            unix_nanos,
            at,
            second: u64::MAX,
            date: [0; 20],
        }
    }

    /// Anchored now, to the system's clock.
    pub(super) fn now() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Wall::new(unix, Instant::now())
    }

    /// Moves the anchor to `other`'s, keeping the text of the current second.
    pub(super) fn rebase(&mut self, other: &Wall) {
        self.unix_nanos = other.unix_nanos;
        self.at = other.at;
    }

    /// Writes `t` as `2026-12-01T06:33:31.123Z` (UTC, milliseconds).
    pub(super) fn write(&mut self, buf: &mut Vec<u8>, t: Instant) {
        let nanos = match t.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos.saturating_add(after.as_nanos() as u64),
            None => self
                .unix_nanos
                .saturating_sub(self.at.duration_since(t).as_nanos() as u64),
        };
        // 9999-12-31T23:59:59: four digits of year, always.
        let millis = (nanos / 1_000_000).min(253_402_300_799_999);
        let second = millis / 1000;
        if second != self.second {
            self.second = second;
            self.date = date_text(second);
        }
        buf.extend_from_slice(&self.date);
        three_digits(buf, (millis % 1000) as u32);
        buf.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix second.
fn date_text(second: u64) -> [u8; 20] {
    let (days, rem) = (second / 86_400, second % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let mut t = *b"0000-00-00T00:00:00.";
    let y = y.clamp(0, 9999) as u32;
    t[..4].copy_from_slice(&[
        digit(y / 1000),
        digit(y / 100 % 10),
        digit(y / 10 % 10),
        digit(y % 10),
    ]);
    for (at, v) in [
        (5, m),
        (8, d),
        (11, (rem / 3600) as u32),
        (14, (rem % 3600 / 60) as u32),
        (17, (rem % 60) as u32),
    ] {
        t[at] = digit(v / 10);
        t[at + 1] = digit(v % 10);
    }
    t
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic Gregorian calendar).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to eras of 400 years starting on 0000-03-01, so leap days end each year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn digit(v: u32) -> u8 {
    b'0' + (v % 10) as u8
}

/// "00" to "99", two bytes each: a number is written two digits per lookup, with one
/// division by 100 instead of a division by 10 per digit.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// The two digits of `v` (below 100).
#[inline(always)]
fn pair(v: u32) -> [u8; 2] {
    let at = (v as usize % 100) * 2;
    [PAIRS[at], PAIRS[at + 1]]
}

/// `v` (below 1000) as exactly three digits.
#[inline(always)]
pub(super) fn three_digits(buf: &mut Vec<u8>, v: u32) {
    let [a, b] = pair(v % 100);
    buf.extend_from_slice(&[digit(v / 100), a, b]);
}

/// `n` in decimal. The usual numbers of a line (byte counts, milliseconds, tries) are below
/// 1000 and are written in place; larger ones out of line.
#[inline(always)]
pub(super) fn uint(buf: &mut Vec<u8>, n: u64) {
    if n < 10 {
        buf.push(b'0' + n as u8);
    } else if n < 100 {
        buf.extend_from_slice(&pair(n as u32));
    } else if n < 1000 {
        three_digits(buf, n as u32);
    } else {
        large_uint(buf, n);
    }
}

/// `n` (at least 1000) in decimal: two digits at a time into a scratch array, from the end.
#[inline(never)]
fn large_uint(buf: &mut Vec<u8>, mut n: u64) {
    let mut t = [0u8; 20];
    let mut at = t.len();
    while n >= 100 {
        at -= 2;
        t[at..at + 2].copy_from_slice(&pair((n % 100) as u32));
        n /= 100;
    }
    if n >= 10 {
        at -= 2;
        t[at..at + 2].copy_from_slice(&pair(n as u32));
    } else {
        at -= 1;
        t[at] = b'0' + n as u8;
    }
    buf.extend_from_slice(&t[at..]);
}

/// `d` in milliseconds with three decimals (whole microseconds), from integers: float
/// formatting is the dearest way to write a number.
#[inline(always)]
pub(super) fn millis(buf: &mut Vec<u8>, d: Duration) {
    // Beyond u64 microseconds (584,000 years): the most it can say.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    uint(buf, micros / 1000);
    buf.push(b'.');
    three_digits(buf, (micros % 1000) as u32);
}

/// `s` as a JSON string.
pub(super) fn string(buf: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes(), false) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Whether `s` needs no JSON escaping: no control character, quote or backslash (and, with
/// `ascii`, nothing from DEL up). Eight bytes at a time: most of what is checked (request ids,
/// paths) is longer than that.
#[inline(always)]
fn plain(s: &[u8], ascii: bool) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A high bit for a byte of `x` below `n` (n <= 0x80); only set if there is one.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let equal = |x: u64, c: u8| below(x ^ (ONES * u64::from(c)), 1);
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let mut b = [0; 8];
        b.copy_from_slice(w);
        let x = u64::from_ne_bytes(b);
        let mut bad = below(x, 0x20) | equal(x, b'"') | equal(x, b'\\');
        if ascii {
            bad |= (x & HIGH) | equal(x, 0x7f);
        }
        if bad != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\' && (!ascii || b < 0x7f))
}

/// A header value as a JSON string; `""` if it is not visible ASCII (as `to_str` says).
/// One pass over the bytes for the usual value, which needs no escaping.
pub(super) fn header_string(buf: &mut Vec<u8>, v: &http::HeaderValue) {
    let b = v.as_bytes();
    if plain(b, true) {
        buf.push(b'"');
        buf.extend_from_slice(b);
        buf.push(b'"');
    } else {
        string(buf, v.to_str().unwrap_or(""));
    }
}

/// Text known to need no escaping (an HTTP method, whose grammar `http` enforces; a request id
/// rampart made; a tenant id from the allowed set) as a JSON string, unchecked.
pub(super) fn token(buf: &mut Vec<u8>, s: &[u8]) {
    buf.push(b'"');
    buf.extend_from_slice(s);
    buf.push(b'"');
}

/// `"127.0.0.1:8080"`. IPv4 text is kept per thread for the last few endpoints (a sidecar's
/// upstreams are few, and every line names one); IPv6 (rare behind a sidecar) goes through
/// `Display`.
pub(super) fn endpoint(buf: &mut Vec<u8>, addr: SocketAddr) {
    let SocketAddr::V4(a) = addr else {
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "\"{addr}\"");
        return;
    };
    let cached = ENDPOINTS.try_with(|c| {
        let mut c = c.borrow_mut();
        let at = match c.iter().position(|e| e.0 == a) {
            Some(at) => at,
            None => {
                let mut text = Vec::with_capacity(24);
                text.push(b'"');
                text.extend_from_slice(crate::proxy::wire::ipv4(*a.ip(), &mut [0; 15]));
                text.push(b':');
                uint(&mut text, u64::from(a.port()));
                text.push(b'"');
                if c.len() == ENDPOINTS_KEPT {
                    c.pop();
                }
                c.insert(0, (a, text.into()));
                0
            }
        };
        buf.extend_from_slice(&c[at].1);
    });
    if cached.is_err() {
        // This thread is ending (its cache is gone): the slow way.
        let _ = write!(buf, "\"{addr}\"");
    }
}

/// Endpoint texts kept per thread.
const ENDPOINTS_KEPT: usize = 8;

thread_local! {
    /// The text of the endpoints this thread wrote last, most recent first.
    static ENDPOINTS: RefCell<Vec<(SocketAddrV4, Box<[u8]>)>> = const { RefCell::new(Vec::new()) };
}

/// A trace id as JSON: 32 lowercase hex digits in quotes.
pub(super) fn trace_hex(buf: &mut Vec<u8>, id: u128) {
    let mut t = [b'"'; 34];
    crate::proxy::wire::put_hex(&mut t[1..33], id);
    buf.extend_from_slice(&t);
}

#[cfg(test)]
mod pieces_tests {
    use std::time::Duration;

    use tokio::time::Instant;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut buf = Vec::new();
        f(&mut buf);
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn milliseconds_have_three_decimals_of_whole_microseconds() {
        let ms = |d| text(|b| super::millis(b, d));
        assert_eq!(ms(Duration::ZERO), "0.000");
        assert_eq!(ms(Duration::from_nanos(1_234_567)), "1.234");
        assert_eq!(ms(Duration::from_micros(999)), "0.999");
        assert_eq!(ms(Duration::from_secs(61)), "61000.000");
        assert_eq!(ms(Duration::new(12_345, 678_901_234)), "12345678.901");
        assert_eq!(ms(Duration::MAX), "18446744073709551.615");
    }

    #[test]
    fn integers_are_decimal() {
        let mut some = vec![
            0,
            7,
            10,
            99,
            100,
            65_535,
            1_234_567_890,
            u64::MAX,
            u64::MAX - 1,
        ];
        // Every power of ten and its neighbours: where the digit count changes.
        for k in 0..20 {
            let p = 10u64.pow(k);
            some.extend([p - 1, p, p + 1]);
        }
        some.extend((0..2_000).chain([10_009, 100_010, 99_999_999_999]));
        for n in some {
            assert_eq!(text(|b| super::uint(b, n)), n.to_string());
        }
        for v in 0..1000 {
            assert_eq!(text(|b| super::three_digits(b, v)), format!("{v:03}"));
        }
    }

    #[test]
    fn endpoints_read_as_socket_addresses() {
        for a in ["127.0.0.1:8081", "10.200.3.45:443", "0.0.0.0:0", "[::1]:80"] {
            let addr: std::net::SocketAddr = a.parse().expect("addr");
            assert_eq!(text(|b| super::endpoint(b, addr)), format!("\"{a}\""));
        }
        // More endpoints than the cache keeps, twice over: every text right, hit or miss.
        for round in 0..2 {
            for i in 0..20u16 {
                let a = format!("10.0.{round}.{i}:{}", 8000 + i);
                let addr: std::net::SocketAddr = a.parse().expect("addr");
                assert_eq!(text(|b| super::endpoint(b, addr)), format!("\"{a}\""));
                assert_eq!(text(|b| super::endpoint(b, addr)), format!("\"{a}\""));
            }
        }
    }

    #[test]
    fn trace_ids_are_32_hex_digits() {
        let t = |id| text(|b| super::trace_hex(b, id));
        assert_eq!(t(0x4bf9_2f35), format!("\"{:032x}\"", 0x4bf9_2f35));
        assert_eq!(t(u128::MAX), format!("\"{}\"", "f".repeat(32)));
    }

    #[test]
    fn strings_are_json() {
        for s in ["plain", "quote\"back\\slash", "ctl\u{1}\n", "ünï", ""] {
            let got = text(|b| super::string(b, s));
            assert_eq!(serde_json::from_str::<String>(&got).expect("json"), s);
        }
        // Long strings are checked eight bytes at a time: a byte to escape at any place, and
        // every byte value around the ones that need it, is caught.
        for at in 0..24 {
            for bad in [0u8, 0x1f, b'"', b'\\', b'\n'] {
                let mut s = vec![b'a'; 24];
                s[at] = bad;
                let s = String::from_utf8(s).expect("ascii");
                let got = text(|b| super::string(b, &s));
                assert_eq!(serde_json::from_str::<String>(&got).expect("json"), s);
                assert!(got.len() > s.len() + 2, "escaped at {at}: {got}");
            }
        }
        let fine: String = (0x20u8..0x7f)
            .map(char::from)
            .filter(|c| !"\"\\".contains(*c))
            .collect();
        let header = |v: &[u8]| {
            let v = http::HeaderValue::from_bytes(v).expect("header value");
            text(|b| super::header_string(b, &v))
        };
        assert_eq!(header(b"0123456789abcdef-id"), "\"0123456789abcdef-id\"");
        assert_eq!(
            header(b"id \"quoted\"\tand tab"),
            r#""id \"quoted\"\tand tab""#
        );
        assert_eq!(
            header(b"long enough to be in words \x80"),
            "\"\"",
            "obs-text: empty"
        );
        assert_eq!(header(b"\xff"), "\"\"");
        assert_eq!(text(|b| super::token(b, b"PATCH")), "\"PATCH\"");
        let fine = format!("{fine}ünïcödé");
        assert_eq!(
            text(|b| super::string(b, &fine)),
            format!("\"{fine}\""),
            "not escaped"
        );
    }

    #[test]
    fn the_time_is_the_anchor_plus_the_monotonic_distance() {
        let at = Instant::now();
        // 2025-12-01T06:33:31.123Z
        let mut wall = super::Wall::new(1_764_570_811_123_000_000, at);
        let w = |wall: &mut super::Wall, t| text(|b| wall.write(b, t));
        assert_eq!(w(&mut wall, at), "2025-12-01T06:33:31.123Z");
        let later = at + Duration::from_millis(877);
        assert_eq!(
            w(&mut wall, later),
            "2025-12-01T06:33:32.000Z",
            "next second"
        );
        // An instant before the anchor (a request that began before the last re-anchoring).
        let mut wall = super::Wall::new(1_764_570_811_123_000_000, later);
        assert_eq!(w(&mut wall, at), "2025-12-01T06:33:30.246Z");
        // Re-anchored a day on (the clock was stepped): the date text follows.
        wall.rebase(&super::Wall::new(1_764_657_211_000_000_000, at));
        assert_eq!(w(&mut wall, at), "2025-12-02T06:33:31.000Z");
        let mut epoch = super::Wall::new(0, at);
        assert_eq!(w(&mut epoch, at), "1970-01-01T00:00:00.000Z");
    }
}
