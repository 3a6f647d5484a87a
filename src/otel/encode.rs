//! Spans as OTLP messages (`opentelemetry-proto`'s prost types), encoded as protobuf or JSON.

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use super::span::{Attrs, Kind, SpanRecord, Val};
use crate::config::file::OtlpProtocol;

/// W3C trace flag `sampled`, and OTLP's "the parent's remoteness is known" / "is remote" bits.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The export request of `spans`, from service `service_name`.
pub(super) fn request(service_name: &str, spans: &[Box<SpanRecord>]) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv("service.name", Val::Owned(service_name.to_owned())),
            kv("telemetry.sdk.name", Val::Static("rampart")),
            kv("telemetry.sdk.language", Val::Static("rust")),
            kv(
                "telemetry.sdk.version",
                Val::Static(env!("CARGO_PKG_VERSION")),
            ),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "rampart".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: spans.iter().map(|s| to_span(s)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The body of an export of `req` over `protocol`, and its content type; `gzip`: compressed
/// (the whole body over HTTP, sent with `content-encoding: gzip`; the message over gRPC, with
/// its flag set and `grpc-encoding: gzip`).
pub(super) fn body(
    req: &ExportTraceServiceRequest,
    protocol: OtlpProtocol,
    gzip: bool,
) -> (Vec<u8>, &'static str) {
    let squeeze = |b: Vec<u8>| if gzip { compress(&b) } else { b };
    match protocol {
        OtlpProtocol::HttpJson => {
            // Serializing plain data into a Vec cannot fail; an empty body would be refused.
            let b = serde_json::to_vec(req).unwrap_or_default();
            (squeeze(b), "application/json")
        }
        OtlpProtocol::HttpProtobuf => (squeeze(req.encode_to_vec()), "application/x-protobuf"),
        // One gRPC message: a flag byte (1: compressed), the length (4 bytes, big-endian), then
        // the (compressed) protobuf bytes.
        OtlpProtocol::Grpc => {
            let msg = squeeze(req.encode_to_vec());
            let mut b = Vec::with_capacity(5 + msg.len());
            b.push(u8::from(gzip));
            b.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
            b.extend_from_slice(&msg);
            (b, "application/grpc")
        }
    }
}

/// `bytes` gzipped.
fn compress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(bytes);
    gz.finish().unwrap_or_default()
}

fn to_span(s: &SpanRecord) -> Span {
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if s.remote_parent {
        flags |= FLAG_IS_REMOTE;
    }
    Span {
        trace_id: s.trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        parent_span_id: s
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        trace_state: s.trace_state.as_deref().unwrap_or_default().to_owned(),
        flags,
        name: s.name.clone(),
        kind: match s.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: unix_nanos(s.start),
        end_time_unix_nano: unix_nanos(s.end),
        attributes: attrs(&s.attrs),
        events: s
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: unix_nanos(e.at),
                name: e.name.into(),
                attributes: attrs(&e.attrs),
                ..Default::default()
            })
            .collect(),
        status: Some(match &s.error {
            Some(m) => Status {
                message: m.clone(),
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Default::default()
    }
}

fn attrs(a: &Attrs) -> Vec<KeyValue> {
    a.iter().map(|(k, v)| kv(k, v.clone())).collect()
}

fn kv(key: &str, v: Val) -> KeyValue {
    let value = match v {
        Val::Static(s) => any_value::Value::StringValue(s.into()),
        Val::Shared(s) => any_value::Value::StringValue(s.as_ref().into()),
        Val::Owned(s) => any_value::Value::StringValue(s),
        Val::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
