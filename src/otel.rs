//! OpenTelemetry tracing (SPEC §12): W3C trace context continued or started, a SERVER span per
//! request and a CLIENT span per upstream try, exported over OTLP/HTTP.
//!
//! Why this shape, and not the `opentelemetry_sdk` + `opentelemetry-otlp` stack: the request
//! path needs three things only — a sampling decision, two random ids and a record pushed into
//! a queue — and the exporter needs to POST one message type. The SDK brings a global tracer
//! provider, a context propagation machinery the proxy would bypass anyway, and (for OTLP)
//! reqwest or tonic. So the wire types come from `opentelemetry-proto` (prost messages, their
//! serde form for http/json) and the rest is here: ids, sampling, two span shapes and one
//! exporter task (their cost: opentelemetry-proto's required `opentelemetry_sdk` types are
//! compiled but never run).
//!
//! The cost, as the request path sees it:
//! - no `tracing:` section: listeners hold no [`Tracer`]; the path tests one `Option`;
//! - a trace that is not sampled: the `traceparent` is parsed (or two ids are drawn and one
//!   header is written for the upstream); no span is built;
//! - a sampled trace: one boxed record per span, filled from values the path holds anyway, and
//!   pushed into a bounded lock-free queue ([`export`]). A full queue drops the span and counts
//!   it in `rampart_trace_spans_dropped_total{reason="queue_full"}`; nothing ever waits.
//!
//! Sampling is parent-based: a client's `traceparent` decides (sampled or not); a trace rampart
//! starts is sampled with the probability `tracing.sample`. Span times are the wall clock at
//! the request's start plus monotonic time since, so a span never runs backwards when the wall
//! clock steps.

mod context;
mod encode;
mod export;
mod span;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use prometheus::IntCounter;

pub use self::context::{TraceParent, TRACEPARENT, TRACESTATE};
pub use self::export::{Exporter, Exporters};
pub use self::span::{Answered, ClientSpan, ServerSpan, SpanParent, TryTarget, KNOWN_METHODS};
use crate::config::file;

/// The tracing of one config generation: how new traces are sampled and where spans go.
#[derive(Debug)]
pub struct Tracer {
    cfg: file::Tracing,
    exporter: Arc<Exporter>,
}

/// What the request path decided about one request's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The trace the request belongs to (the client's, or a new one).
    pub trace_id: u128,
    /// The SERVER span's id: the parent of every try's span, or, for a trace rampart started
    /// and did not sample, the parent id the upstream is told.
    pub span_id: u64,
    /// The client's span, if the trace came with the request.
    pub remote_parent: Option<u64>,
    /// Whether spans are recorded.
    pub sampled: bool,
}

/// The counters of the exporters of one instance.
#[derive(Clone, Debug)]
pub struct TraceMetrics {
    /// `rampart_trace_spans_exported_total`.
    pub exported: IntCounter,
    /// `rampart_trace_spans_dropped_total{reason="queue_full"}`.
    pub dropped_queue_full: IntCounter,
    /// `rampart_trace_spans_dropped_total{reason="export_failed"}`.
    pub dropped_export_failed: IntCounter,
}

// === impl TraceMetrics ===

impl TraceMetrics {
    /// The handles of `m`'s trace families.
    pub fn new(m: &crate::metrics::Metrics) -> Self {
        let dropped = |reason: &str| m.trace_spans_dropped.with_label_values(&[reason]);
        TraceMetrics {
            exported: m.trace_spans_exported.clone(),
            dropped_queue_full: dropped("queue_full"),
            dropped_export_failed: dropped("export_failed"),
        }
    }
}

// === impl Tracer ===

impl Tracer {
    /// The tracer of `cfg`. The exporter of `old` (the generation before) is kept when the
    /// export settings are unchanged, so a reload that changes `sample` loses no queued span;
    /// otherwise a new exporter starts and the old one flushes what it holds and ends.
    /// `tls` verifies an `https://` collector; an exporter that uses it is started anew on
    /// every reload, so its `ca` is read again as other TLS files are (the old one sends what
    /// it holds and ends). A new exporter is one of `exporters`.
    pub fn build(
        cfg: &file::Tracing,
        old: Option<&Tracer>,
        exporters: &Exporters,
        tls: Option<&rustls::ClientConfig>,
    ) -> Tracer {
        let exporter = match old {
            Some(o)
                if tls.is_none()
                    && o.cfg.otlp == cfg.otlp
                    && o.cfg.service_name == cfg.service_name =>
            {
                o.exporter.clone()
            }
            _ => Exporter::start(&cfg.otlp, &cfg.service_name, exporters, tls),
        };
        Tracer {
            cfg: cfg.clone(),
            exporter,
        }
    }

    /// Where this tracer's spans go.
    pub fn exporter(&self) -> &Arc<Exporter> {
        &self.exporter
    }

    /// Decides the trace of a request with `headers`, and tells the upstream when nobody else
    /// will: a trace rampart starts and does not sample gets its `traceparent` (sampled flag 0)
    /// now; a sampled trace gets one per try (each try's span is the parent). A client's
    /// unsampled `traceparent` passes through unchanged, and so does its `tracestate`; a
    /// `tracestate` without a valid `traceparent` is dropped with it (W3C: the trace restarts).
    /// Two `traceparent` lines are no valid one (W3C's test suite: the trace restarts).
    pub fn start(&self, headers: &mut HeaderMap) -> Trace {
        let mut given = headers.get_all(TRACEPARENT).iter();
        let incoming = match (given.next(), given.next()) {
            (Some(one), None) => TraceParent::parse(one),
            _ => None,
        };
        match incoming {
            Some(tp) => Trace {
                trace_id: tp.trace_id,
                span_id: context::span_id(),
                remote_parent: Some(tp.parent_id),
                sampled: tp.sampled(),
            },
            None => {
                let sample = self.cfg.sample.0;
                let trace = Trace {
                    trace_id: context::trace_id(),
                    span_id: context::span_id(),
                    remote_parent: None,
                    sampled: sample >= 1.0 || (sample > 0.0 && fastrand::f64() < sample),
                };
                headers.remove(TRACESTATE);
                if trace.sampled {
                    // Each try writes its own; a stale or invalid one must not reach the upstream.
                    headers.remove(TRACEPARENT);
                } else {
                    headers.insert(TRACEPARENT, trace.traceparent(trace.span_id));
                }
                trace
            }
        }
    }
}

// === impl Trace ===

impl Trace {
    /// The `traceparent` that names span `parent` of this trace, with this trace's flag.
    pub fn traceparent(&self, parent: u64) -> HeaderValue {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: parent,
            flags: u8::from(self.sampled),
        }
        .to_header()
    }
}
