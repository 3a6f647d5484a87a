//! Lexical checks of single values: endpoints, host names, header names, tenant ids.
//!
//! Each returns the complete message for the error, quoting the offending text, so callers
//! only attach a place.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::super::file::{FOLDED_TENANTS, NO_TENANT};

/// Longest tenant id, in bytes (SPEC §3, `invalid_tenant`).
const TENANT_MAX: usize = 128;

/// A tenant id: 1 to 128 bytes of `[A-Za-z0-9._:@-]`, and not the reserved `_other` or `-`.
pub(super) fn tenant_id(s: &str) -> Result<(), String> {
    if s == FOLDED_TENANTS {
        return Err(format!(
            "tenant id {s:?} is reserved: it is the metrics label of the tenants folded past tenants.metrics_labels, so no tenant may be named so"
        ));
    }
    if s == NO_TENANT {
        return Err(format!(
            "tenant id {s:?} is reserved: it is the tenant of a request on a `tenant: optional` route that names none, so no tenant may be named so"
        ));
    }
    if s.is_empty() || s.len() > TENANT_MAX {
        return Err(format!(
            "invalid tenant id {s:?}: it must be 1 to {TENANT_MAX} bytes long (this one is {})",
            s.len()
        ));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:@-".contains(*c)))
    {
        Some(c) => Err(format!(
            "invalid tenant id {s:?}: {c:?} is not allowed; use only letters, digits and . _ : @ -"
        )),
        None => Ok(()),
    }
}

/// The name of a listener, route, upstream or policy (`what`): it labels metrics and log
/// lines, so it must hold more than spaces and no control characters (a line break or an
/// escape sequence in a name would reach every scrape and log reader as it is).
pub(super) fn name(what: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "invalid {what} name {s:?}: {c:?} is a control character; names label metrics and log lines, so they must be printable"
        )),
        None => Ok(()),
    }
}

/// An HTTP header name (an RFC 9110 token).
pub(super) fn header_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the header name is empty".into());
    }
    match http::HeaderName::from_bytes(s.as_bytes()) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "invalid header name {s:?}: use letters, digits and - (like x-tenant-id)"
        )),
    }
}

/// A limit's `name:`, used as an item name in the RateLimit headers.
pub(super) fn limit_name(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "invalid limit name {s:?}: use only letters, digits, _ and -"
        ))
    }
}

/// An upstream endpoint: `host:port` with an IPv4 address, a DNS name or `[IPv6]` as host.
pub(super) fn endpoint(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid endpoint {s:?}: {why}"));
    if let Some((scheme, rest)) = s.split_once("://") {
        let hint = rest.trim_end_matches('/');
        return bad(&format!(
            "an endpoint has no scheme ({scheme}://); write HOST:PORT, like {hint}"
        ));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once("]:") else {
            return bad("expected [IPV6]:PORT, like [::1]:8080");
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return bad("the part in brackets is not an IPv6 address");
        }
        (None, port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return bad("expected HOST:PORT, like 127.0.0.1:3000 or app.internal:80");
        };
        if host.contains(':') {
            return bad("an IPv6 address needs brackets, like [::1]:8080");
        }
        (Some(host), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad(&format!("port {port:?} is not a number from 1 to 65535")),
    }
    match host {
        Some(h) => host_name(h).or_else(|why| bad(&why)),
        None => Ok(()),
    }
}

/// Whether `host` is this machine: `localhost` or a loopback address (an IPv6 one with or
/// without its brackets, an IPv4-mapped one such as `::ffff:127.0.0.1` too).
pub(super) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// An IPv4 address or a DNS name (letters, digits, `-` and `_`, labels of 1 to 63 bytes).
pub(super) fn host_name(h: &str) -> Result<(), String> {
    if h.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() {
        return Err("the host is empty".into());
    }
    if name.len() > 253 {
        return Err(format!("host {h:?} is longer than 253 bytes"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("host {h:?} is not a valid IPv4 address"));
    }
    for l in &labels {
        let ok_chars = l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if l.is_empty() || l.len() > 63 || !ok_chars || l.starts_with('-') || l.ends_with('-') {
            return Err(format!(
                "host {h:?} is not a DNS name: each dot-separated label needs 1 to 63 letters, digits, - or _, and no - at either end"
            ));
        }
    }
    Ok(())
}

/// What keeps a path written in the file from being (the start of) a request target as it is.
pub(super) enum PathFlaw {
    /// A byte no request target holds where it stands, said as "a space, which ...".
    Never(&'static str),
    /// Bytes a request target holds only percent-encoded; the path written with them so.
    Unescaped(String),
}

/// The first flaw of `path` (which starts with `/`) as a request target: a `?` (unless
/// `query`: then the first `?` starts a query, which may hold `/` and `?` too), a `#`, a space
/// or a control byte; else bytes outside RFC 3986's `pchar`, `/` and `%`, which a request holds
/// only percent-encoded.
pub(super) fn path_flaw(path: &str, query: bool) -> Option<PathFlaw> {
    // What a request target can never hold: its path ends at `?` and `#`, and no request line
    // or `:path` carries a space or a control byte in it.
    let never = path.bytes().find_map(|b| match b {
        b'?' if !query => Some(
            "a `?`, where a request's path ends and its query begins (routes match the path alone)",
        ),
        b'#' => Some("a `#`, which starts a fragment, never sent in a request"),
        b' ' => Some("a space, which a request path never holds (its escaped form is %20)"),
        b if b.is_ascii_control() => Some("a control character, which a request path never holds"),
        _ => None,
    });
    if let Some(what) = never {
        return Some(PathFlaw::Never(what));
    }
    let escape = |s: &str| crate::proxy::normalize::escape_raw(s).unwrap_or_else(|| s.to_owned());
    let escaped = match path.split_once('?') {
        Some((p, q)) => {
            let q: Vec<String> = q.split('?').map(escape).collect();
            format!("{}?{}", escape(p), q.join("?"))
        }
        None => escape(path),
    };
    (escaped != path).then_some(PathFlaw::Unescaped(escaped))
}

/// A route's `match.host`: a name, an IP address, or `*.suffix`; never a port.
pub(super) fn match_host(s: &str) -> Result<(), String> {
    if let Some(ip) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match ip.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "invalid host {s:?}: the part in brackets is not an IPv6 address"
            )),
        };
    }
    if s.contains(':') {
        return Err(format!(
            "invalid host {s:?}: a match host has no port (the port of the Host header is ignored when matching)"
        ));
    }
    let name = s.strip_prefix("*.").unwrap_or(s);
    if name.contains('*') {
        return Err(format!(
            "invalid host {s:?}: a wildcard is only allowed as a whole first label, like *.example.com"
        ));
    }
    host_name(name).map_err(|why| format!("invalid host {s:?}: {why}"))
}
