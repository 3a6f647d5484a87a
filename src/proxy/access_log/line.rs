//! One access log line as JSON, formatted on the writer thread.
//!
//! The field names and their order are SPEC §12's. Strings that come from the client (path,
//! tenant, request id, method) go through serde_json's escaping; everything else is numbers or
//! text rampart wrote itself.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::Record;

/// Appends `rec` as one JSON line (ending in `\n`) to `buf`.
pub(super) fn write_line(buf: &mut Vec<u8>, rec: &Record) {
    buf.extend_from_slice(b"{\"time\":\"");
    rfc3339_millis(buf, rec.time);
    buf.extend_from_slice(b"\",\"listener\":");
    string(buf, &rec.listener);
    buf.extend_from_slice(b",\"route\":");
    opt_string(buf, rec.route.as_deref());
    buf.extend_from_slice(b",\"tenant\":");
    opt_string(buf, rec.tenant.as_ref().map(|t| t.as_str()));
    buf.extend_from_slice(b",\"method\":");
    string(buf, rec.method.as_str());
    buf.extend_from_slice(b",\"path\":");
    string(buf, rec.uri.path());
    let _ = write!(buf, ",\"status\":{},\"reason\":", rec.status);
    string(buf, rec.reason.as_ref().map_or("", header_text));
    buf.extend_from_slice(b",\"limit\":");
    opt_string(buf, rec.limit.as_deref());
    let _ = write!(buf, ",\"tries\":{},\"endpoint\":", rec.tries);
    match rec.endpoint {
        Some(e) => {
            let _ = write!(buf, "\"{e}\"");
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"duration_ms\":");
    millis(buf, rec.duration);
    buf.extend_from_slice(b",\"upstream_ms\":");
    match rec.upstream {
        Some(d) => millis(buf, d),
        None => buf.extend_from_slice(b"null"),
    }
    let _ = write!(
        buf,
        ",\"bytes_in\":{},\"bytes_out\":{},\"request_id\":",
        rec.bytes_in, rec.bytes_out
    );
    string(buf, header_text(&rec.request_id));
    buf.extend_from_slice(b",\"trace_id\":");
    match rec.trace_id {
        Some(t) => {
            let _ = write!(buf, "\"{t:032x}\"");
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b"}\n");
}

/// `d` in milliseconds with three decimals (whole microseconds), from integers: float
/// formatting is the dearest part of a line, and the writer formats every request's.
fn millis(buf: &mut Vec<u8>, d: std::time::Duration) {
    let micros = d.as_micros();
    let _ = write!(buf, "{}.{:03}", micros / 1000, micros % 1000);
}

fn header_text(v: &HeaderValue) -> &str {
    v.to_str().unwrap_or("")
}

fn string(buf: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

fn opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `2026-12-01T06:33:31.123Z`: UTC, millisecond precision.
fn rfc3339_millis(buf: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(
        buf,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
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

#[cfg(test)]
mod millis_tests {
    use std::time::Duration;

    fn text(d: Duration) -> String {
        let mut buf = Vec::new();
        super::millis(&mut buf, d);
        String::from_utf8(buf).expect("ascii")
    }

    #[test]
    fn milliseconds_have_three_decimals_of_whole_microseconds() {
        assert_eq!(text(Duration::ZERO), "0.000");
        assert_eq!(text(Duration::from_nanos(1_234_567)), "1.234");
        assert_eq!(text(Duration::from_micros(999)), "0.999");
        assert_eq!(text(Duration::from_secs(61)), "61000.000");
    }
}
