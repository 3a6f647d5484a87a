//! Checks of `tracing`: an OTLP endpoint this build can send to.
//!
//! A setting that would be accepted and then quietly do nothing is refused here instead: this
//! build exports over HTTP (protobuf or JSON) or gRPC, to an `http://` collector (the usual
//! shape of a sidecar beside a node-local OpenTelemetry Collector) or an `https://` one verified
//! against `ca` or the system's roots (showing `cert` if the collector asks for one); a path under a gRPC endpoint is refused (gRPC's
//! path is the method's), and so is a `ca` (or a client `cert` and `key`) for an `http://`
//! endpoint, which would never be read.

use http::Uri;

use super::super::file::{redact_url, OtlpProtocol, Tracing};
use super::super::locate::KeyPath;
use super::{syntax, Report};

/// Checks `tracing`, if present.
pub(super) fn check(t: &Tracing, r: &mut Report<'_>) {
    let p = KeyPath::default().key("tracing");
    let op = p.key("otlp");
    let uri = match endpoint(&t.otlp.endpoint) {
        Err(m) => {
            r.value(&op.key("endpoint"), m);
            None
        }
        Ok(uri) => Some(uri),
    };
    let path = uri.as_ref().map_or("/", Uri::path);
    if t.otlp.protocol == OtlpProtocol::Grpc && !path.is_empty() && path != "/" {
        r.value(
            &op.key("endpoint"),
            format!(
                "{:?}: a gRPC endpoint has no path (spans go to the trace service's method under it); write it like http://127.0.0.1:4317",
                redact_url(&t.otlp.endpoint)
            ),
        );
    }
    // The endpoint is the base URL (SPEC §12); the full URL of a collector's trace path,
    // copied from another exporter's settings, would send spans to `/v1/traces/v1/traces`.
    if t.otlp.protocol != OtlpProtocol::Grpc && path.trim_end_matches('/').ends_with("/v1/traces") {
        let shown = redact_url(&t.otlp.endpoint);
        let base = shown.trim_end_matches('/');
        r.warn(
            &op.key("endpoint"),
            format!(
                "{shown:?} already ends in /v1/traces, and rampart appends /v1/traces to the endpoint: spans go to {base}/v1/traces; give the base URL, without /v1/traces",
            ),
        );
    }
    headers(t, uri.as_ref(), &op.key("headers"), r);
    userinfo(t, uri.as_ref(), &op, r);
    let o = &t.otlp;
    let (cert, key) = (o.cert.as_deref(), o.key.as_deref());
    if o.is_https() {
        if let Some(ca) = &o.ca {
            r.readable(&op.key("ca"), ca, "collector ca bundle");
        }
        super::upstream::client_pair(cert, key, &op, r);
    } else {
        // TLS files an `http://` endpoint would never read.
        let given = [
            ("ca", o.ca.is_some()),
            ("cert", cert.is_some()),
            ("key", key.is_some()),
        ];
        for (name, _) in given.iter().filter(|(_, given)| *given) {
            r.value(
                &op.key(name),
                format!("{name} only applies to an https:// endpoint"),
            );
        }
    }
    r.positive(&op.key("flush_every"), t.otlp.flush_every.0);
    r.positive(&op.key("timeout"), t.otlp.timeout.0);
    if t.service_name.trim().is_empty() {
        r.value(&p.key("service_name"), "the service name is empty");
    }
}

/// Header lines the exporter writes itself, or that would change how the export is framed.
const EXPORTER_OWN: [&str; 9] = [
    "content-type",
    "content-encoding",
    "grpc-encoding",
    "content-length",
    "transfer-encoding",
    "te",
    "host",
    "connection",
    "upgrade",
];

/// `otlp.headers`: names and values an HTTP header line can carry, none the exporter sets
/// itself; sent in clear to a collector off this machine (`uri`, the endpoint when it is
/// valid), they draw a warning.
fn headers(t: &Tracing, uri: Option<&Uri>, p: &KeyPath, r: &mut Report<'_>) {
    let mut seen = std::collections::HashSet::new();
    for (name, value) in &t.otlp.headers {
        let hp = p.key(name);
        let lower = name.to_ascii_lowercase();
        if let Err(m) = syntax::header_name(name) {
            r.key(&hp, m);
        } else if EXPORTER_OWN.contains(&lower.as_str()) {
            r.key(&hp, format!("{name} is set by the exporter itself"));
        } else if !seen.insert(lower) {
            r.key(
                &hp,
                format!("{name} is given twice (header names are not case-sensitive)"),
            );
        }
        if http::HeaderValue::from_str(value).is_err() {
            r.value(
                &hp,
                "invalid header value: use visible ASCII characters, spaces and tabs (no line breaks)",
            );
        }
    }
    let clear = uri
        .is_some_and(|u| !t.otlp.is_https() && !syntax::is_loopback_host(u.host().unwrap_or("")));
    if clear && !t.otlp.headers.is_empty() {
        r.warn(
            p,
            "these header lines (credentials, often) go in clear to a collector off this machine; use an https:// endpoint",
        );
    }
}

/// The endpoint's `user:password@`, which the exporter sends as `authorization` (HTTP Basic)
/// on every export: refused beside an `authorization` of `otlp.headers` (one would be lost),
/// and, in clear to a collector off this machine, warned about as `headers` are.
fn userinfo(t: &Tracing, uri: Option<&Uri>, op: &KeyPath, r: &mut Report<'_>) {
    let Some(uri) = uri.filter(|u| u.authority().is_some_and(|a| a.as_str().contains('@'))) else {
        return;
    };
    let given = t.otlp.headers.keys();
    if let Some(name) = given
        .into_iter()
        .find(|n| n.eq_ignore_ascii_case("authorization"))
    {
        r.key(
            &op.key("headers").key(name),
            format!("{name} is given by the endpoint's user:password too (sent as HTTP Basic); keep one"),
        );
    }
    if !t.otlp.is_https() && !syntax::is_loopback_host(uri.host().unwrap_or("")) {
        r.warn(
            &op.key("endpoint"),
            "the endpoint's user:password goes in clear (HTTP Basic) to a collector off this machine; use an https:// endpoint",
        );
    }
}

/// Why `text` is not a base URL spans can be posted under, if it is not (shown without its
/// password); else the URL.
pub(super) fn endpoint(text: &str) -> Result<Uri, String> {
    let shown = redact_url(text);
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {shown:?}: {e}; expected like http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{shown:?} needs the http:// or https:// scheme, like http://127.0.0.1:4318"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} names no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{shown:?} has a query; the endpoint is a base URL (spans go to {{endpoint}}/v1/traces)"
        ));
    }
    Ok(uri)
}
