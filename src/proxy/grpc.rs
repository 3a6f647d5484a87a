//! What makes a request a gRPC call, and the deadline such a call carries.
//!
//! rampart answers a gRPC call in gRPC's form (`respond::to_grpc`), and a call's own deadline
//! (`grpc-timeout`) bounds its request timeout (`stack::handle`): past it the client has given
//! up, and further tries would be work nobody waits for. Each try states its own deadline to
//! the upstream in the same header (`exchange::try_once`, [`timeout_value`]).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::upstream::{Endpoint, Upstream};
use crate::error::Reason;
use crate::policy::circuit_breaker::BreakerPermit;
use crate::policy::outcome::Outcome;

// The status codes of gRPC (grpc/doc/statuscodes.md) that rampart reads or writes.
const OK: u8 = 0;
const CANCELLED: u8 = 1;
const UNKNOWN: u8 = 2;
const INVALID_ARGUMENT: u8 = 3;
const DEADLINE_EXCEEDED: u8 = 4;
const NOT_FOUND: u8 = 5;
const ALREADY_EXISTS: u8 = 6;
const PERMISSION_DENIED: u8 = 7;
const RESOURCE_EXHAUSTED: u8 = 8;
const FAILED_PRECONDITION: u8 = 9;
const ABORTED: u8 = 10;
const OUT_OF_RANGE: u8 = 11;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;
const UNAVAILABLE: u8 = 14;
const UNAUTHENTICATED: u8 = 16;

/// The header in which a gRPC client states its deadline.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The header that carries a gRPC call's outcome (in the trailers, or in the headers of a
/// Trailers-Only answer).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The longest `grpc-timeout` taken: a longer one (gRPC allows up to 99,999,999 hours) is taken
/// as this, the longest duration a policy may write, and the upstream is told this much (less
/// what has passed), as Envoy's `max_grpc_timeout` caps it.
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
/// `m`, `u`, `n`: hours to nanoseconds), at most 30 days: a longer one is taken as 30 days.
/// `None` when the header is absent or malformed (the call then goes on under the policy's
/// timeout alone, as a gRPC server would treat it).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(GRPC_TIMEOUT)?.as_bytes()).map(|d| d.min(LONGEST))
}

/// Whether `headers` carry a `grpc-timeout` that is not one gRPC can read: not 1 to 8 digits
/// and a unit, or more than one line. Such a header is dropped before the upstream rather than
/// passed on: a gRPC server that fails to parse it may fail the call, and some (gRPC C-core)
/// then fail every later call on that HTTP/2 connection, other clients' too.
pub fn malformed_timeout(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(GRPC_TIMEOUT).iter();
    match (lines.next(), lines.next()) {
        (None, _) => false,
        (Some(v), None) => parse_timeout(v.as_bytes()).is_none(),
        (Some(_), Some(_)) => true,
    }
}

/// A `grpc-timeout` value's duration, whatever its length; `None` when it is malformed.
fn parse_timeout(v: &[u8]) -> Option<Duration> {
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
    Some(d)
}

/// How the stream of a gRPC answer ended.
#[derive(Clone, Copy, Debug)]
pub enum StreamEnd<'a> {
    /// With trailers (gRPC's status is among them).
    Trailers(&'a HeaderMap),
    /// With no trailers: no status at all.
    NoTrailers,
    /// The stream broke (reset, the connection lost) before its end.
    Broke,
    /// A timeout of rampart's cut it before its end: the request's deadline passed, or the
    /// upstream sent nothing for `timeout.idle` (`pool::h2::H2Answer`, `pool::Returning`).
    Deadline,
    /// The request's deadline cut it while rampart waited on its client to take what was
    /// handed on (`pool::Waited::Client`): the upstream was not slow, and the try is cancelled,
    /// as when the client goes away.
    Cancelled,
}

/// Where a gRPC answer's stream of messages stands, read from its bytes as they pass: each
/// message is a 5-byte prefix (a flag, then its length in 4 bytes, big-endian) and that many
/// bytes. Whether the bytes passed so far end on a message's end tells whether the stream can
/// still end with a status in trailers: one cut inside a message cannot (a gRPC client would
/// read the message as broken, whatever status followed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Messages {
    /// The current message's prefix bytes read so far (0 to 4).
    prefix: [u8; 5],
    have: u8,
    /// The current message's bytes still to come after its prefix.
    left: u64,
}

impl Messages {
    /// Reads `data`, the next bytes of the stream.
    pub fn read(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = data.len().min(5 - have);
            self.prefix[have..have + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            if have + n == 5 {
                let [_, a, b, c, d] = self.prefix;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.have = 0;
            } else {
                self.have = (have + n) as u8;
            }
        }
    }

    /// Whether the bytes read so far end on a message's end (or there were none).
    pub fn at_message_end(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

/// The trailers that end a gRPC answer's stream cut at the request's deadline: the status
/// (DEADLINE_EXCEEDED) and message rampart's own answer gives a call whose deadline passed
/// before the answer's head (`respond::to_grpc`).
pub fn deadline_trailers() -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert(GRPC_STATUS, HeaderValue::from(u16::from(DEADLINE_EXCEEDED)));
    t.insert(
        HeaderName::from_static("grpc-message"),
        HeaderValue::from_static("the request timeout ran out before the answer was whole"),
    );
    t
}

/// Whether a request's `te` says its client reads trailers (gRPC's clients send
/// `te: trailers`, RFC 9110 §10.1.4); one that does not (an HTTP/1.1 client without it) never
/// gets them.
pub fn reads_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| super::h1::parse::has_token(v.as_bytes(), b"trailers"))
}

/// The trailer fields a gRPC server ends an answer's stream with (gRPC over HTTP/2's
/// `Trailers`: the status, its message, and its details).
const GRPC_TRAILER_FIELDS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// Readies a gRPC answer still streaming from an HTTP/2 upstream for an HTTP/1.1 client that
/// reads trailers (`te: trailers`). gRPC servers announce no trailers (HTTP/2 needs no
/// announcement), and hyper's HTTP/1.1 server writes only the trailer fields the answer's
/// `trailer` names: so the head names gRPC's, unless its `trailer` names `grpc-status`
/// already. An answer that stated its length goes chunked (its `content-length` out, its size
/// untold), as a body framed by its length has no room for trailers; so does a replayed answer
/// kept with its trailers (idempotency). Any other answer (not
/// gRPC, over, or from HTTP/1.1) is left as it is. The fields that have no place in trailers
/// are taken out of them as before (`pool::h2::H2Answer`), and none is named here.
pub fn announce_trailers(rsp: &mut http::Response<super::body::Body>) {
    if !is_grpc(rsp.headers()) {
        return;
    }
    let sized = rsp.headers().contains_key(http::header::CONTENT_LENGTH);
    match rsp.body_mut() {
        // A kept answer replayed with its trailers (`respond::replay`): it states no length.
        super::body::Body::Trailed(_) => {}
        body => match body.streaming_h2() {
            Some(stream) => stream.size_untold |= sized,
            None => return,
        },
    }
    let headers = rsp.headers_mut();
    headers.remove(http::header::CONTENT_LENGTH);
    let named = headers
        .get_all(http::header::TRAILER)
        .iter()
        .any(|v| super::h1::parse::has_token(v.as_bytes(), GRPC_STATUS.as_str().as_bytes()));
    if !named {
        headers.append(
            http::header::TRAILER,
            HeaderValue::from_static(GRPC_TRAILER_FIELDS),
        );
    }
}

/// A try of a gRPC call whose answer streams (HTTP 200 and no `grpc-status` in its head: the
/// status comes in the trailers, after the messages). Its breaker permit and the endpoint's
/// health (outlier detection, the balancer's failure count) wait for the trailers instead of
/// taking the head's 200 as a success: the answer's body holds this and ends it
/// (`pool::h2::H2Answer`). Dropped before the stream ends (the client went away), the try is
/// cancelled: its permit says so, and the endpoint's health is not told.
#[derive(Debug)]
pub struct Trailed {
    up: Arc<Upstream>,
    ep: Arc<Endpoint>,
    permit: Option<BreakerPermit>,
    /// The try's time to its answer's head: what the slow-call rule and the endpoint's
    /// latency figures read (a stream's length is the call's business).
    took: Duration,
    /// A plain HTTP answer's status ([`Trailed::plain`]): its try's outcome if its body ends
    /// whole, whatever trailers say.
    plain: Option<u16>,
}

impl Trailed {
    /// A try to `ep` of `up` whose answer's head came after `took`, admitted by `permit`.
    pub fn new(
        up: Arc<Upstream>,
        ep: Arc<Endpoint>,
        permit: Option<BreakerPermit>,
        took: Duration,
    ) -> Self {
        Trailed {
            up,
            ep,
            permit,
            took,
            plain: None,
        }
    }

    /// The same for a plain HTTP answer of status `code` whose body streams: the try is
    /// `code` if the body ends whole, a reset if it breaks first, a timeout if the request's
    /// deadline cuts it (an upstream that sends a head and then drops its connection
    /// mid-body fails, as Envoy's outlier detection counts a reset after the headers).
    pub fn plain(mut self, code: u16) -> Self {
        self.plain = Some(code);
        self
    }

    /// The answer's stream ended as `end` says: the try's outcome, at last, to its breaker and
    /// its endpoint's health.
    pub fn end(self, end: StreamEnd<'_>) {
        let outcome = match (end, self.plain) {
            // Dropped: its permit records a cancelled try (neither success nor failure), and the
            // endpoint's health is not told (SPEC §14: a client's fault is never the upstream's).
            (StreamEnd::Cancelled, _) => return,
            (StreamEnd::Broke, _) => Outcome::Reset,
            // As a deadline that passes before the answer's head counts (`exchange::try_once`).
            (StreamEnd::Deadline, _) => Outcome::Timeout,
            (_, Some(code)) => Outcome::Status(code),
            (StreamEnd::Trailers(t), None) => Outcome::Status(trailers_status(t)),
            (StreamEnd::NoTrailers, None) => Outcome::Status(500),
        };
        let Trailed {
            up,
            ep,
            permit,
            took,
            plain: _,
        } = self;
        if let Some(p) = permit {
            p.record(outcome, took);
        }
        up.try_ended(&ep, outcome, took, Instant::now());
    }
}

/// `grpc-timeout`'s value for a deadline `left` away, as gRPC's own libraries write it: the
/// finest unit (nanoseconds to hours) in which it fits the header's 8 digits, rounded up, so the
/// upstream's deadline is never before rampart's (at most one unit after it). A deadline already
/// passed is written as one nanosecond: the upstream ends the call at once.
pub fn timeout_value(left: Duration) -> HeaderValue {
    const MOST: u128 = 99_999_999;
    let nanos = left.as_nanos().max(1);
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(n, _)| n <= MOST)
        // Past 99,999,999 hours (11,000 years): the longest gRPC can state.
        .unwrap_or((MOST, b'H'));
    let mut text = n.to_string();
    text.push(char::from(unit));
    HeaderValue::try_from(text).expect("digits and a letter")
}

/// The HTTP status that an upstream's answer to a gRPC call stands for, for the try's outcome
/// (breakers, outlier detection, `retry.on`, the upstream's metrics): its own status, unless it
/// is a 200 whose headers carry a `grpc-status` (a Trailers-Only answer, how gRPC servers send
/// an error with no message before it), which maps as Envoy and gRPC's gateway map it:
/// UNAVAILABLE is a 503, INTERNAL a 500, DEADLINE_EXCEEDED a 504, RESOURCE_EXHAUSTED a 429,
/// NOT_FOUND a 404, CANCELLED a 499 (the client's doing), and so on. The answer itself goes to
/// the client unchanged. A 200 without one streams, and its status comes in the trailers: the
/// try's metrics and access log take the head's 200, its breaker and endpoint health the
/// trailers' ([`Trailed`]).
pub fn answer_status(status: StatusCode, headers: &HeaderMap) -> u16 {
    if status != StatusCode::OK {
        return status.as_u16();
    }
    headers.get(GRPC_STATUS).map_or(200, status_of)
}

/// The HTTP status that the trailers ending a gRPC answer's stream stand for: their
/// `grpc-status` mapped as [`answer_status`] maps one, and none at all a 500 (a gRPC client
/// reports a stream that ends without a status as an error).
pub fn trailers_status(trailers: &HeaderMap) -> u16 {
    trailers.get(GRPC_STATUS).map_or(500, status_of)
}

/// The code a `grpc-status` value gives, as gRPC writes one: one or two digits, no sign and no
/// leading zero (anything else is no code).
pub fn code(v: &HeaderValue) -> Option<u8> {
    match *v.as_bytes() {
        [d @ b'0'..=b'9'] => Some(d - b'0'),
        [t @ b'1'..=b'9', u @ b'0'..=b'9'] => Some((t - b'0') * 10 + (u - b'0')),
        _ => None,
    }
}

/// The HTTP status a `grpc-status` value stands for (see [`answer_status`]).
fn status_of(v: &HeaderValue) -> u16 {
    match code(v) {
        Some(OK) => 200,
        Some(CANCELLED) => 499,
        Some(INVALID_ARGUMENT | FAILED_PRECONDITION | OUT_OF_RANGE) => 400,
        Some(DEADLINE_EXCEEDED) => 504,
        Some(NOT_FOUND) => 404,
        Some(ALREADY_EXISTS | ABORTED) => 409,
        Some(PERMISSION_DENIED) => 403,
        Some(RESOURCE_EXHAUSTED) => 429,
        Some(UNIMPLEMENTED) => 501,
        Some(UNAVAILABLE) => 503,
        Some(UNAUTHENTICATED) => 401,
        // UNKNOWN, INTERNAL, DATA_LOSS, and any code gRPC does not define.
        _ => 500,
    }
}

/// The gRPC status code that tells a gRPC client what rampart's own answer for `reason` says
/// (its `grpc-status`), for an answer of HTTP `status` (which only an injected abort chooses:
/// it maps as gRPC maps an HTTP status it did not expect, grpc/doc/http-grpc-status-mapping.md).
pub fn code_for(reason: Reason, status: StatusCode) -> u8 {
    match reason {
        Reason::RateLimited | Reason::HeadTooLarge | Reason::UriTooLong => RESOURCE_EXHAUSTED,
        Reason::Shed
        | Reason::CircuitOpen
        | Reason::UpstreamUnavailable
        | Reason::IdempotencyTableFull
        | Reason::JwksUnavailable
        | Reason::MisdirectedRequest => UNAVAILABLE,
        Reason::Timeout | Reason::ClientTimeout => DEADLINE_EXCEEDED,
        Reason::NoRoute | Reason::MethodNotAllowed => UNIMPLEMENTED,
        Reason::TenantRequired | Reason::InvalidToken => UNAUTHENTICATED,
        Reason::InvalidTenant => INVALID_ARGUMENT,
        Reason::BadRequest => INTERNAL,
        Reason::IdempotencyInFlight => ABORTED,
        // Sent again, each would be refused the same until the upstream is given `tls`.
        Reason::IdempotencyKeyReused
        | Reason::IdempotencyNotReplayable
        | Reason::HttpsDowngrade => FAILED_PRECONDITION,
        Reason::FaultInjected => match status.as_u16() {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502 | 503 | 504 => UNAVAILABLE,
            _ => UNKNOWN,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream is at a message's end only between messages, however its bytes are split
    /// into frames: never inside a prefix or a message's bytes.
    #[test]
    fn a_streams_message_ends_are_found_across_frames() {
        let mut m = Messages::default();
        assert!(m.at_message_end(), "nothing yet");
        m.read(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert!(m.at_message_end(), "one whole message");
        m.read(&[0, 0, 0]);
        assert!(!m.at_message_end(), "inside a prefix");
        m.read(&[0, 2, b'x']);
        assert!(!m.at_message_end(), "inside a message");
        m.read(&[b'y', 0, 0, 0, 0, 0]);
        assert!(m.at_message_end(), "an empty message after one");
        m.read(&[1, 0, 1, 0, 0]);
        assert!(!m.at_message_end(), "65536 bytes to come");
        for _ in 0..64 {
            m.read(&[7; 1024]);
        }
        assert!(m.at_message_end(), "they came");
        // Byte by byte as well.
        let mut m = Messages::default();
        for (i, b) in [0u8, 0, 0, 0, 1, b'z'].into_iter().enumerate() {
            assert_eq!(m.at_message_end(), i == 0, "{i}");
            m.read(&[b]);
        }
        assert!(m.at_message_end());
        // A length that is no message gRPC sends is only bytes to wait for.
        m.read(&[0, 0xff, 0xff, 0xff, 0xff, 1]);
        assert!(!m.at_message_end());
    }

    #[test]
    fn a_client_reads_trailers_when_its_te_says_so() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::TE, HeaderValue::from_str(v).expect("value"));
            reads_trailers(&h)
        };
        assert!(with("trailers"));
        assert!(with("gzip, Trailers"));
        assert!(!with("gzip"));
        assert!(!with("trailersx"));
        assert!(!reads_trailers(&HeaderMap::new()));
    }

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
    fn a_trailers_only_answer_stands_for_its_grpc_status() {
        let with = |status: StatusCode, code: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(c) = code {
                h.insert(GRPC_STATUS, HeaderValue::from_str(c).expect("value"));
            }
            answer_status(status, &h)
        };
        let ok = StatusCode::OK;
        assert_eq!(
            with(ok, None),
            200,
            "an answer with a body: its status is in the trailers"
        );
        assert_eq!(with(ok, Some("0")), 200);
        assert_eq!(with(ok, Some("14")), 503);
        assert_eq!(with(ok, Some("13")), 500);
        assert_eq!(with(ok, Some("4")), 504);
        assert_eq!(with(ok, Some("8")), 429);
        assert_eq!(with(ok, Some("5")), 404);
        assert_eq!(with(ok, Some("1")), 499);
        assert_eq!(with(ok, Some("12")), 501);
        assert_eq!(with(ok, Some("16")), 401);
        assert_eq!(with(ok, Some("99")), 500);
        assert_eq!(with(ok, Some("x")), 500);
        // What a hostile upstream may write is no code gRPC writes: a failure, never an OK.
        for odd in ["+14", "014", "00", "-0", " 0", "0 ", "140", ""] {
            assert_eq!(with(ok, Some(odd)), 500, "{odd:?}");
        }
        // An HTTP error is what it says, whatever else it carries.
        assert_eq!(with(StatusCode::BAD_GATEWAY, Some("0")), 502);
    }

    /// What a hostile upstream can write in `grpc-status` (head or trailers) that no gRPC
    /// server writes is no code at all: never read as OK, nor as another code.
    #[test]
    fn only_a_code_as_grpc_writes_one_is_read() {
        let of = |v: &[u8]| code(&HeaderValue::from_bytes(v).expect("value"));
        assert_eq!(of(b"0"), Some(0));
        assert_eq!(of(b"14"), Some(14));
        assert_eq!(of(b"99"), Some(99));
        for odd in [
            &b"014"[..],
            b"00",
            b"+0",
            b"-1",
            b" 0",
            b"0 ",
            b"140",
            b"1e1",
            b"\xff",
            b"",
            b"99999999999999999999",
        ] {
            assert_eq!(of(odd), None, "{:?}", String::from_utf8_lossy(odd));
        }
    }

    #[test]
    fn a_streams_trailers_stand_for_their_grpc_status_and_none_is_an_error() {
        let of = |code: Option<&str>| {
            let mut t = HeaderMap::new();
            if let Some(c) = code {
                t.insert(GRPC_STATUS, HeaderValue::from_str(c).expect("value"));
            }
            trailers_status(&t)
        };
        assert_eq!(of(Some("0")), 200);
        assert_eq!(of(Some("14")), 503);
        assert_eq!(of(Some("4")), 504);
        assert_eq!(
            of(Some("8")),
            429,
            "RESOURCE_EXHAUSTED: not the upstream's failure"
        );
        assert_eq!(of(Some("014")), 500);
        assert_eq!(of(None), 500, "trailers without a status");
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
        // Longer is taken as 30 days, up to the longest gRPC can write.
        for long in ["721H", "99999999S", "99999999H"] {
            assert_eq!(of(long), Some(LONGEST), "{long:?}");
        }
        for bad in ["123456789S", "10x", "10", "m", "", "-1S", "1.5S", " 1S"] {
            assert_eq!(of(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_grpc_timeout_grpc_cannot_read_is_malformed_and_a_long_one_is_not() {
        let of = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for v in lines {
                h.append(GRPC_TIMEOUT, HeaderValue::from_str(v).expect("value"));
            }
            malformed_timeout(&h)
        };
        assert!(!of(&[]), "no header");
        assert!(!of(&["5S"]));
        assert!(
            !of(&["721H"]),
            "over 30 days: taken as 30 days, and gRPC reads it"
        );
        for bad in ["abc", "10", "123456789S", "1.5S", " 1S", "S"] {
            assert!(of(&[bad]), "{bad:?}");
        }
        assert!(of(&["5S", "5S"]), "two lines");
    }

    /// What is written reads back (by rampart's own reader, as gRPC's servers read it) as the
    /// same deadline or at most one unit later, and never earlier.
    #[test]
    fn a_tries_deadline_is_written_in_the_finest_unit_that_fits_rounded_up() {
        let text = |d: Duration| timeout_value(d).to_str().expect("ascii").to_owned();
        assert_eq!(text(Duration::from_nanos(1)), "1n");
        assert_eq!(text(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(text(Duration::from_millis(100)), "100000u");
        assert_eq!(
            text(Duration::from_nanos(100_000_001)),
            "100001u",
            "rounded up"
        );
        assert_eq!(text(Duration::from_secs(99)), "99000000u");
        assert_eq!(text(Duration::from_secs(100)), "100000m");
        assert_eq!(text(Duration::from_secs(30 * 24 * 3600)), "2592000S");
        assert_eq!(text(Duration::from_secs(99_999_999 * 3600)), "99999999H");
        assert_eq!(text(Duration::MAX), "99999999H", "the longest gRPC states");
        assert_eq!(text(Duration::ZERO), "1n", "already passed: ends at once");
        for left in [
            Duration::from_nanos(7),
            Duration::from_micros(123_456_789),
            Duration::from_millis(1_500),
            Duration::new(4_000, 1),
            Duration::from_secs(29 * 24 * 3600 + 1),
        ] {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, timeout_value(left));
            let read = timeout(&h).expect("reads back");
            assert!(read >= left, "{left:?} written as {:?}", h[GRPC_TIMEOUT]);
            assert!(
                read - left < Duration::from_secs(60),
                "{left:?} written as {:?}",
                h[GRPC_TIMEOUT]
            );
        }
    }
}
