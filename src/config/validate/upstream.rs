//! Checks of one `upstreams.NAME` entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use super::super::file::{Upstream, UpstreamProtocol, UpstreamTls};
use super::super::locate::KeyPath;
use super::{syntax, Report};

/// Checks the upstream at `p`: endpoints, health checks, TLS files and outlier ejection.
/// Most checks in a row `healthy_after` and `unhealthy_after` may ask for: at 4294967295 an
/// endpoint never changed state again.
pub(super) const MAX_CHECKS_IN_A_ROW: u64 = 100;
/// Checks more often than this are warned about: each is a new connection.
const MIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) fn check(up: &Upstream, p: &KeyPath, r: &mut Report<'_>) {
    if up.endpoints.is_empty() {
        r.value(
            &p.key("endpoints"),
            "needs at least one endpoint, like [127.0.0.1:3000]",
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in up.endpoints.iter().enumerate() {
        let ep = p.key("endpoints").idx(i);
        if let Err(m) = syntax::endpoint(e) {
            r.value(&ep, m);
        } else if let Some(first) = seen.get(&same_endpoint(e)) {
            // A repeat would be balanced to as a second endpoint, a weight the schema does
            // not have: a slip, as a repeated `retry.on` entry is.
            let at = r.place(&p.key("endpoints").idx(*first));
            r.value(
                &ep,
                format!("endpoint {e} is listed twice (endpoints[{first}] at {at}): list each endpoint once"),
            );
        } else {
            seen.insert(same_endpoint(e), i);
        }
    }
    r.positive(&p.key("connect_timeout"), up.connect_timeout.0);
    r.at_least_1(&p.key("max_connections"), up.max_connections.into());
    r.positive(&p.key("resolve_every"), up.resolve_every.0);
    if up.pool_idle_timeout.0.is_zero() {
        // 0s could be read as "never close" or as "never keep"; neither is what the pool
        // would do (reuse within the clock's tick), so it is refused with the key that keeps none.
        r.value(
            &p.key("pool_idle_timeout"),
            "must be longer than 0s (to keep no idle connections, set pool_max_idle: 0)",
        );
    }
    if let Some(hc) = &up.health_check {
        let hp = p.key("health_check");
        // Each probe sends the path (and query) as its request target, as it is written: one
        // that could not be sent would fail every probe, every endpoint marked down.
        let path = hc.path.as_str();
        if !path.starts_with('/') {
            r.value(&hp.key("path"), format!("path {path:?} must start with /"));
        } else {
            // What the probe's request can carry as it is written (http's `PathAndQuery` takes
            // some characters RFC 3986 has percent-encoded, `[]` in a query among them): those
            // are sent, with a word; the rest would fail every probe and are refused.
            let sendable = http::uri::PathAndQuery::try_from(path).is_ok();
            match syntax::path_flaw(path, true) {
                Some(syntax::PathFlaw::Never(what)) => r.value(
                    &hp.key("path"),
                    format!("path {path:?} is not a request target a probe can send: it has {what}"),
                ),
                Some(syntax::PathFlaw::Unescaped(escaped)) if sendable => r.warn(
                    &hp.key("path"),
                    format!("path {path:?} has characters a request target should hold only percent-encoded (UTF-8 beyond ASCII, and \" < > [ \\ ] ^ ` {{ | }}): probes send it as written, which a strict server refuses; write {escaped:?}"),
                ),
                Some(syntax::PathFlaw::Unescaped(escaped)) => r.value(
                    &hp.key("path"),
                    format!("path {path:?} has characters a request target holds only percent-encoded (UTF-8 beyond ASCII, and \" < > [ \\ ] ^ ` {{ | }}): write {escaped:?}"),
                ),
                None if !sendable => r.value(
                    &hp.key("path"),
                    format!(
                        "path of {} bytes is longer than a request target a probe can send",
                        path.len()
                    ),
                ),
                None => {}
            }
        }
        r.positive(&hp.key("interval"), hc.interval.0);
        r.positive(&hp.key("timeout"), hc.timeout.0);
        if hc.interval.0 < MIN_CHECK_INTERVAL && !hc.interval.0.is_zero() {
            r.warn(
                &hp.key("interval"),
                format!("a check every {} opens a new connection to each endpoint that often; checks more often than every 100ms load the upstream without telling its health any sooner", hc.interval),
            );
        }
        for (key, n) in [
            ("healthy_after", hc.healthy_after),
            ("unhealthy_after", hc.unhealthy_after),
        ] {
            r.at_least_1(&hp.key(key), n.into());
            if u64::from(n) > MAX_CHECKS_IN_A_ROW {
                r.value(
                    &hp.key(key),
                    format!("{n} is out of range: 1 to {MAX_CHECKS_IN_A_ROW} checks in a row (more would keep an endpoint's state for good)"),
                );
            }
        }
    }
    if let Some(tls) = &up.tls {
        client_tls(tls, &p.key("tls"), r);
    }
    if up.protocol == UpstreamProtocol::Http2 {
        // One multiplexed connection per endpoint: the pool's keys have nothing to act on.
        for key in ["pool_max_idle", "pool_idle_timeout", "max_connections"] {
            let kp = p.key(key);
            if r.is_written(&kp) {
                r.warn(
                    &kp,
                    format!("with `protocol: http2` each endpoint has one multiplexed connection; `{key}` does nothing"),
                );
            }
        }
    }
    if let Some(o) = &up.outlier {
        r.at_least_1(
            &p.key("outlier").key("consecutive_failures"),
            o.consecutive_failures.into(),
        );
        r.positive(&p.key("outlier").key("eject_for"), o.eject_for.0);
    }
}

/// Warns at the `tls` of an upstream (at `p`) that outbound listener `tunnels` (if any) tunnels
/// CONNECTs to: a tunnel to it goes inside rampart's TLS session with it (`proxy/tunnel.rs`),
/// so what its clients send inside must be plaintext.
pub(super) fn tunnelled(up: &Upstream, p: &KeyPath, tunnels: Option<&str>, r: &mut Report<'_>) {
    let (Some(_), Some(l)) = (&up.tls, tunnels) else {
        return;
    };
    let inside = match up.protocol {
        UpstreamProtocol::Http1 => "plaintext, such as HTTP/1.1",
        UpstreamProtocol::Http2 => {
            "plaintext HTTP/2 with prior knowledge (protocol: http2: the session agrees to h2 by ALPN)"
        }
    };
    r.warn(
        &p.key("tls"),
        format!("listener {l} tunnels CONNECTs to this upstream, and a tunnel goes inside rampart's TLS session with it (this ca, server_name and client certificate), as every connection to it does: clients must send {inside} inside the tunnel; an HTTPS_PROXY client that starts its own TLS there gets TLS in TLS, which the upstream does not read"),
    );
}

/// What makes two valid endpoints the same one: the address and port of an IP endpoint
/// (`[::ffff:127.0.0.1]:80` is `127.0.0.1:80`), a DNS name without regard to case.
fn same_endpoint(e: &str) -> String {
    match e.parse::<SocketAddr>() {
        Ok(a) => SocketAddr::new(a.ip().to_canonical(), a.port()).to_string(),
        Err(_) => e.to_ascii_lowercase(),
    }
}

/// The keys of a client's `tls` section (an upstream's, the global store's), at `tp`: a
/// `server_name` that is a host name, readable files, and a client certificate with its key.
pub(super) fn client_tls(tls: &UpstreamTls, tp: &KeyPath, r: &mut Report<'_>) {
    if let Some(name) = &tls.server_name {
        if let Err(m) = syntax::host_name(name) {
            r.value(&tp.key("server_name"), m);
        }
    }
    if let Some(ca) = &tls.ca {
        r.readable(&tp.key("ca"), ca, "ca bundle");
    }
    client_pair(tls.cert.as_deref(), tls.key.as_deref(), tp, r);
}

/// A client certificate and its key, the keys `cert` and `key` under `tp`: both readable, or
/// neither given.
pub(super) fn client_pair(
    cert: Option<&Path>,
    key: Option<&Path>,
    tp: &KeyPath,
    r: &mut Report<'_>,
) {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            r.readable(&tp.key("cert"), cert, "client certificate");
            r.readable(&tp.key("key"), key, "client private key");
        }
        (Some(_), None) => r.key(&tp.key("cert"), "a client certificate needs its `key` too"),
        (None, Some(_)) => r.key(&tp.key("key"), "a client key needs its `cert` too"),
        (None, None) => {}
    }
}
