//! Route matching: authority first (exact or `*.suffix`, port ignored), then path prefix.
//!
//! Routes are tried in file order and the first match wins. The authority is the request
//! URI's (absolute-form HTTP/1.1, as apps using `HTTP_PROXY` send, or HTTP/2 `:authority`), or
//! else the `host` header.

use std::net::Ipv6Addr;

use http::header::HOST;
use http::Request;

use crate::config::file;

/// The compiled `match` of one route.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    /// An IPv6 literal (`[::1]`): the address it names, however written (`[0:0::1]` is the
    /// same), on either side.
    Ip(Ipv6Addr),
}

// === impl Matcher ===

impl Matcher {
    /// Compiles a route's `match` (absent: matches everything).
    pub fn new(m: Option<&file::Match>) -> Self {
        let Some(m) = m else {
            return Matcher::default();
        };
        let host = m.host.as_deref().map(|h| {
            let h = host_key(h);
            if let Ok(ip) = h.parse() {
                return HostMatch::Ip(ip);
            }
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                None => HostMatch::Exact(h),
            }
        });
        Matcher {
            host,
            path_prefix: m.path_prefix.clone(),
        }
    }

    /// Whether the route matches on the authority (so the request's must be read).
    pub fn needs_host(&self) -> bool {
        self.host.is_some()
    }

    /// Whether a request with this authority host and path matches.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    host.len() > s.len()
                        && host.is_char_boundary(host.len() - s.len())
                        && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
                // Only an IPv6 literal leaves a `:` in a request's host (its port is cut off):
                // a name is not parsed.
                HostMatch::Ip(ip) => {
                    host.as_bytes().contains(&b':')
                        && host.parse::<Ipv6Addr>().is_ok_and(|h| h == *ip)
                }
            };
            if !ok {
                return false;
            }
        }
        match &self.path_prefix {
            Some(p) => path.starts_with(p.as_str()),
            None => true,
        }
    }
}

/// A `match.host` in the form [`request_host`] gives a request's host in: lower case, without
/// a trailing dot, an IPv6 literal without its brackets and in its one text form (RFC 5952:
/// `[0:0::1]` is matched as `::1`, as the address it names). Done once, when the config is
/// loaded, so requests are matched with no more work (an IPv6 literal's is a parse).
pub fn host_key(written: &str) -> String {
    let h = written.strip_suffix('.').unwrap_or(written);
    match h.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')) {
        Some(ip) => ip
            .parse::<Ipv6Addr>()
            .map_or_else(|_| ip.to_ascii_lowercase(), |ip| ip.to_string()),
        None => h.to_ascii_lowercase(),
    }
}

/// The host a request is for, without port: from the URI authority, else the `host` header.
/// A fully qualified name's trailing dot (`app.internal.`) is cut too: it names the same host
/// (nginx matches it the same way).
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    let host = strip_port(raw);
    Some(host.strip_suffix('.').unwrap_or(host))
}

fn strip_port(authority: &str) -> &str {
    // Drop any userinfo, then the port; keep IPv6 literals whole. Byte walks: an authority is
    // a few bytes, and `str` searches by `char` cost more to set up than to run here.
    let a = match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split_once(']').map_or(a, |(ip, _)| ip);
    }
    match a.bytes().position(|b| b == b':') {
        Some(colon) => &a[..colon],
        None => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, prefix: Option<&str>) -> Matcher {
        Matcher::new(Some(&file::Match {
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
        }))
    }

    #[test]
    fn hosts_and_wildcards() {
        let exact = m(Some("payments.internal"), None);
        assert!(exact.matches(Some("payments.internal"), "/"));
        assert!(exact.matches(Some("PAYMENTS.internal"), "/"));
        assert!(!exact.matches(Some("x.payments.internal"), "/"));
        assert!(!exact.matches(None, "/"));
        let wild = m(Some("*.example.com"), None);
        assert!(wild.matches(Some("a.example.com"), "/"));
        assert!(wild.matches(Some("a.b.example.com"), "/"));
        assert!(!wild.matches(Some("example.com"), "/"));
        assert!(!wild.matches(Some("badexample.com"), "/"));
    }

    /// A host written with a trailing dot or an IPv6 literal in brackets matches the hosts
    /// [`request_host`] gives (it cuts both). Before, `[::1]` and `app.internal.` never matched.
    #[test]
    fn hosts_are_written_as_requests_name_them() {
        let host_of = |authority: &str| {
            let req = Request::builder()
                .uri(format!("http://{authority}/"))
                .body(())
                .expect("req");
            request_host(&req).map(str::to_owned)
        };
        for (written, authority) in [
            ("[::1]", "[::1]:8080"),
            ("[FE80::1]", "[fe80::1]"),
            ("[0:0::1]", "[::1]:8080"),
            ("[::1]", "[0:0:0:0:0:0:0:1]"),
            ("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]:80"),
            ("app.internal.", "app.internal"),
            ("app.internal.", "App.Internal.:80"),
            ("app.internal", "app.internal.:80"),
            ("*.example.com.", "a.example.com"),
            ("*.example.com", "a.example.com.:443"),
        ] {
            let host = host_of(authority);
            assert!(
                m(Some(written), None).matches(host.as_deref(), "/"),
                "{written} must match {authority}"
            );
        }
        assert!(!m(Some("*.example.com."), None).matches(Some("example.com"), "/"));
        // An IPv6 literal matches its address alone.
        let ip = m(Some("[0:0::1]"), None);
        for other in ["::2", "[::1]", "localhost", "1"] {
            assert!(!ip.matches(Some(other), "/"), "{other}");
        }
        assert_eq!(host_key("[0:0::1]"), "::1");
    }

    #[test]
    fn prefixes_and_hosts_from_requests() {
        let p = m(None, Some("/api"));
        assert!(p.matches(None, "/api/x"));
        assert!(!p.matches(None, "/ap"));
        let req = Request::builder()
            .uri("http://svc.local:8080/x")
            .body(())
            .expect("req");
        assert_eq!(request_host(&req), Some("svc.local"));
        let req = Request::builder()
            .uri("/x")
            .header("host", "h:1")
            .body(())
            .expect("req");
        assert_eq!(request_host(&req), Some("h"));
        let req = Request::builder()
            .uri("/x")
            .header("host", "[::1]:80")
            .body(())
            .expect("req");
        assert_eq!(request_host(&req), Some("::1"));
        // A trailing dot names the same host.
        let req = Request::builder()
            .uri("/x")
            .header("host", "app.internal.:80")
            .body(())
            .expect("req");
        assert_eq!(request_host(&req), Some("app.internal"));
    }

    #[test]
    fn the_port_and_userinfo_are_cut_from_an_authority() {
        for (authority, host) in [
            ("svc", "svc"),
            ("svc:8080", "svc"),
            ("user:pw@svc:8080", "svc"),
            ("a@b@svc", "svc"),
            ("[::1]:80", "::1"),
            ("u@[fe80::1]", "fe80::1"),
            ("[::1", "[::1"),
            ("", ""),
            (":80", ""),
            ("héllo.例え:1", "héllo.例え"),
        ] {
            assert_eq!(strip_port(authority), host, "{authority}");
        }
        assert!(m(Some("svc"), None).needs_host());
        assert!(!m(None, Some("/api")).needs_host());
    }
}
