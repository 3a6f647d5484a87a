//! What makes a request a gRPC call, and the deadline such a call carries.
//!
//! rampart answers a gRPC call in gRPC's form (`respond::to_grpc`), and a call's own deadline
//! (`grpc-timeout`) bounds its request timeout (`stack::handle`): past it the client has given
//! up, and further tries would be work nobody waits for.

use std::time::Duration;

use http::header::{HeaderName, CONTENT_TYPE};
use http::HeaderMap;

/// The header in which a gRPC client states its deadline.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The longest `grpc-timeout` taken: a longer one (gRPC allows up to 99,999,999 hours) bounds
/// nothing a proxy would wait for, and is left to the policy.
const LONGEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// Whether a request with these headers is a gRPC call: a `content-type` of `application/grpc`,
/// alone or with a `+format` or parameters (not gRPC-Web's `application/grpc-web`, whose
/// clients read an HTTP status and a body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    let Some(rest) = ct
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
        .map(|_| &ct[16..])
    else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+' | b';' | b' '))
}

/// The deadline a gRPC call states in `grpc-timeout`: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`: hours to nanoseconds). `None` when the header is absent, malformed (the call
/// then goes on under the policy's timeout alone, as a gRPC server would treat it) or over 30
/// days.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let d = match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    (d <= LONGEST).then_some(d)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).expect("value"));
            is_grpc(&h)
        };
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=x",
        ] {
            assert!(with(yes), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "grpc",
        ] {
            assert!(!with(no), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn a_calls_deadline_is_read_from_grpc_timeout() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).expect("value"));
            timeout(&h)
        };
        assert_eq!(of("100m"), Some(Duration::from_millis(100)));
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("5u"), Some(Duration::from_micros(5)));
        assert_eq!(of("0n"), Some(Duration::ZERO));
        assert_eq!(of("12345678m"), Some(Duration::from_millis(12_345_678)));
        assert_eq!(of("720H"), Some(Duration::from_secs(720 * 3600)), "30 days");
        for bad in [
            "721H",
            "123456789S",
            "10x",
            "10",
            "m",
            "",
            "-1S",
            "1.5S",
            " 1S",
        ] {
            assert_eq!(of(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }
}
