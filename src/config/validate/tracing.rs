//! Checks of `tracing`: an OTLP endpoint this build can send to.
//!
//! A setting that would be accepted and then quietly do nothing is refused here instead: this
//! build exports over HTTP (protobuf or JSON) or gRPC, to an `http://` collector (the usual
//! shape of a sidecar beside a node-local OpenTelemetry Collector) or an `https://` one verified
//! against `ca` or the compiled-in web roots; a path under a gRPC endpoint is refused (gRPC's
//! path is the method's), and so is a `ca` for an `http://` endpoint, which would never be read.

use http::Uri;

use super::super::file::{OtlpProtocol, Tracing};
use super::super::locate::KeyPath;
use super::Report;

/// Checks `tracing`, if present.
pub(super) fn check(t: &Tracing, r: &mut Report<'_>) {
    let p = KeyPath::default().key("tracing");
    let op = p.key("otlp");
    match endpoint(&t.otlp.endpoint) {
        Err(m) => r.value(&op.key("endpoint"), m),
        Ok(path) if t.otlp.protocol == OtlpProtocol::Grpc && path != "/" && !path.is_empty() => {
            r.value(
                &op.key("endpoint"),
                format!(
                    "{:?}: a gRPC endpoint has no path (spans go to the trace service's method under it); write it like http://127.0.0.1:4317",
                    t.otlp.endpoint
                ),
            );
        }
        Ok(_) => {}
    }
    if let Some(ca) = &t.otlp.ca {
        if t.otlp.endpoint.starts_with("https://") {
            r.readable(&op.key("ca"), ca, "collector ca bundle");
        } else {
            r.value(&op.key("ca"), "ca only applies to an https:// endpoint");
        }
    }
    r.positive(&op.key("flush_every"), t.otlp.flush_every.0);
    r.positive(&op.key("timeout"), t.otlp.timeout.0);
    if t.service_name.trim().is_empty() {
        r.value(&p.key("service_name"), "the service name is empty");
    }
}

/// Why `text` is not a base URL spans can be posted under, if it is not; else its path.
pub(super) fn endpoint(text: &str) -> Result<String, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {text:?}: {e}; expected like http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{text:?} needs the http:// or https:// scheme, like http://127.0.0.1:4318"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{text:?} has a query; the endpoint is a base URL (spans go to {{endpoint}}/v1/traces)"
        ));
    }
    Ok(uri.path().to_owned())
}
