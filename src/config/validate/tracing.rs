//! Checks of `tracing`: an OTLP endpoint this build can send to, and a protocol it speaks.
//!
//! A setting that would be accepted and then quietly do nothing is refused here instead: this
//! build exports over HTTP (protobuf or JSON) to a plain `http://` collector, the usual shape of
//! a sidecar beside a node-local OpenTelemetry Collector; `grpc` and `https://` are named as
//! not built rather than accepted.

use http::Uri;

use super::super::file::{OtlpProtocol, Tracing};
use super::super::locate::KeyPath;
use super::Report;

/// Checks `tracing`, if present.
pub(super) fn check(t: &Tracing, r: &mut Report<'_>) {
    let p = KeyPath::default().key("tracing");
    let op = p.key("otlp");
    if let Err(m) = endpoint(&t.otlp.endpoint) {
        r.value(&op.key("endpoint"), m);
    }
    if t.otlp.protocol == OtlpProtocol::Grpc {
        r.value(
            &op.key("protocol"),
            "grpc is not built into rampart: use http/protobuf (collector port 4318) or http/json",
        );
    }
    r.positive(&op.key("flush_every"), t.otlp.flush_every.0);
    r.positive(&op.key("timeout"), t.otlp.timeout.0);
    if t.service_name.trim().is_empty() {
        r.value(&p.key("service_name"), "the service name is empty");
    }
}

/// Why `text` is not a base URL spans can be posted under, if it is not.
pub(super) fn endpoint(text: &str) -> Result<(), String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {text:?}: {e}; expected like http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text:?}: https is not built into rampart's exporter; send to a collector over http (e.g. a node-local OpenTelemetry Collector on :4318)"
            ))
        }
        _ => {
            return Err(format!(
                "{text:?} needs the http:// scheme, like http://127.0.0.1:4318"
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
    Ok(())
}
