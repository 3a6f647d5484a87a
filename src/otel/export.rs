//! The OTLP exporter: a bounded queue the request path pushes spans into, and one task that
//! sends them in batches: over HTTP to `{endpoint}/v1/traces` (protobuf or JSON), or over gRPC
//! (HTTP/2, the collector's `:4317`) to the trace service's `Export` method; in clear to an
//! `http://` endpoint, over TLS (never in clear) to an `https://` one.
//!
//! The queue is a fixed-size lock-free array, and the task polls it on a short timer instead
//! of being woken: a push never wakes a thread (the access log measured what a wake-up per
//! request costs). The task sends a batch when [`BATCH`] spans are waiting or the oldest has
//! waited `flush_every`, one export at a time, each bounded by `otlp.timeout`. While the
//! collector is slow or away the queue fills and new spans are dropped and counted; requests
//! never wait for the collector. The queue is bounded twice: by a count of spans, and by the
//! bytes they hold ([`QUEUE_BYTES`]), since a span keeps values a client chose (its path and
//! host, up to `max_header_bytes` each).
//!
//! A request reports to the exporter of the generation it began under, which may be one a
//! reload has since replaced: [`Exporters`] knows every task still running, so that at
//! shutdown each sends what it holds. When the last generation using an exporter is gone (a reload
//! changed the export settings, or shutdown), the task sends what is queued and ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use tokio::time::Instant;

use super::encode;
use super::span::SpanRecord;
use super::TraceMetrics;
use crate::config::file::{redact_url, Otlp, OtlpCompression, OtlpProtocol};
use crate::throttle::{Throttle, WARN_EVERY};

/// Spans queued before new ones are dropped.
pub(super) const QUEUE: usize = 8192;
/// Bytes of spans ([`SpanRecord::weight`]) held at once, queued or in the export under way,
/// before new ones are dropped. [`QUEUE`] spans of a usual request (under 1 KiB each) hold
/// less; spans carrying a client's 30 KiB paths would otherwise hold 240 MiB while the
/// collector is away. As much as the access log queues per destination.
pub(super) const QUEUE_BYTES: usize = 8 << 20;
/// Most spans in one export request.
pub(super) const BATCH: usize = 512;
/// How often the task looks at the queue (at most; `flush_every` if shorter).
const POLL: Duration = Duration::from_millis(50);
/// Longest [`Exporters::flush`] waits.
const FLUSH_MAX: Duration = Duration::from_secs(5);
/// Most bytes of a collector's answer that are read.
const ANSWER_LIMIT: usize = 64 * 1024;
/// The gRPC method spans are exported to (OTLP's `TraceService.Export`).
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One OTLP destination: the queue into its export task.
#[derive(Debug)]
pub struct Exporter {
    /// Shared with the task (and, weakly, with [`Exporters`]).
    queue: Arc<Queue>,
    metrics: TraceMetrics,
}

/// The exporters of one instance: the counters they share, and the queue of every export
/// task still running. A reload that changes the export settings (or any reload, with an
/// `https://` collector) starts a new exporter, and requests begun before it still report to
/// the old one, which ends once they are gone: at shutdown, each sends what it holds.
#[derive(Debug)]
pub struct Exporters {
    metrics: TraceMetrics,
    /// Held strongly by each exporter and its task: one that upgrades is still running.
    running: parking_lot::Mutex<Vec<Weak<Queue>>>,
}

/// The spans on their way to the collector, and what [`Exporters::flush`] and the task tell
/// each other.
#[derive(Debug)]
struct Queue {
    spans: ArrayQueue<Box<SpanRecord>>,
    /// The weight of the spans queued and of those the task is sending: at most
    /// [`QUEUE_BYTES`].
    bytes: AtomicUsize,
    /// Send what is queued at the next tick, due or not.
    urgent: AtomicBool,
    /// The task holds spans it took from the queue and has not finished sending.
    busy: AtomicBool,
    /// How long a flush waits at most: `otlp.timeout`, and never more than [`FLUSH_MAX`].
    flush_for: Duration,
}

/// What the export task owns.
struct Task {
    queue: Arc<Queue>,
    owner: Weak<Exporter>,
    client: Exporting,
    /// `otlp.headers`, sent with every export (values marked sensitive: HPACK never indexes
    /// them).
    headers: header::HeaderMap,
    uri: Uri,
    protocol: OtlpProtocol,
    /// `compression: gzip`.
    gzip: bool,
    service_name: String,
    flush_every: Duration,
    timeout: Duration,
    metrics: TraceMetrics,
    /// Failed exports are logged at most every [`WARN_EVERY`] (each one is counted).
    warn: Throttle,
}

/// The exporter's HTTP client: plain TCP to an `http://` collector, TLS to an `https://` one
/// (the connector then refuses any other scheme, so nothing goes in clear).
enum Exporting {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl Exporting {
    async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Exporting::Plain(c) => c.request(req).await,
            Exporting::Tls(c) => c.request(req).await,
        }
    }
}

// === impl Exporters ===

impl Exporters {
    /// No exporter yet; they count in `m`'s trace families.
    pub fn new(m: &crate::metrics::Metrics) -> Self {
        Exporters {
            metrics: TraceMetrics::new(m),
            running: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Has every exporter still running send what it holds now, and waits until each has
    /// sent it (or given up), for at most its `otlp.timeout` and never more than
    /// [`FLUSH_MAX`], all at once: at shutdown, so the spans of the last requests are not lost
    /// with the process, whichever exporter they went to.
    pub async fn flush(&self) {
        let running: Vec<Arc<Queue>> = self
            .running
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for q in &running {
            q.urgent.store(true, Ordering::Release);
        }
        let started = Instant::now();
        while running
            .iter()
            .any(|q| q.holding() && started.elapsed() < q.flush_for)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Notes `queue`'s task as running (and forgets those that ended).
    fn note(&self, queue: &Arc<Queue>) {
        let mut running = self.running.lock();
        running.retain(|q| q.strong_count() > 0);
        running.push(Arc::downgrade(queue));
    }
}

// === impl Queue ===

impl Queue {
    /// Whether spans are queued, or being sent.
    fn holding(&self) -> bool {
        !self.spans.is_empty() || self.busy.load(Ordering::Acquire)
    }
}

// === impl Exporter ===

impl Exporter {
    /// Starts exporting to `cfg` as `service_name`, one of `exporters`; `tls` verifies an
    /// `https://` collector (from `TlsFiles`). Needs a tokio runtime (it spawns its task).
    pub fn start(
        cfg: &Otlp,
        service_name: &str,
        exporters: &Exporters,
        tls: Option<&ClientConfig>,
    ) -> Arc<Exporter> {
        let metrics = exporters.metrics.clone();
        let queue = Arc::new(Queue {
            spans: ArrayQueue::new(QUEUE),
            bytes: AtomicUsize::new(0),
            urgent: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            flush_for: cfg.timeout.0.min(FLUSH_MAX),
        });
        exporters.note(&queue);
        let exporter = Arc::new(Exporter {
            queue: queue.clone(),
            metrics: metrics.clone(),
        });
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.timeout.0));
        http.set_nodelay(true);
        let grpc = cfg.protocol == OtlpProtocol::Grpc;
        let mut builder = Client::builder(TokioExecutor::new());
        // gRPC is HTTP/2 only (in clear, spoken from the first byte; over TLS, chosen by ALPN).
        builder.pool_max_idle_per_host(1).http2_only(grpc);
        let client = match tls {
            Some(tls) => Exporting::Tls(builder.build(tls_connector(http, tls, grpc))),
            None => Exporting::Plain(builder.build(http)),
        };
        // The endpoint's `user:password@` is sent as HTTP Basic credentials, on every export.
        let (uri, basic) = basic_auth(traces_uri(&cfg.endpoint, cfg.protocol));
        let mut headers = extra_headers(&cfg.headers);
        if let Some(basic) = basic {
            headers.insert(header::AUTHORIZATION, basic);
        }
        let task = Task {
            queue,
            owner: Arc::downgrade(&exporter),
            client,
            headers,
            uri,
            protocol: cfg.protocol,
            gzip: cfg.compression == OtlpCompression::Gzip,
            service_name: service_name.to_owned(),
            flush_every: cfg.flush_every.0,
            timeout: cfg.timeout.0,
            metrics,
            warn: Throttle::new(WARN_EVERY),
        };
        tokio::spawn(task.run());
        exporter
    }

    /// Takes what is queued, in order (a test's look at the spans without a collector).
    #[cfg(test)]
    pub(super) fn take_queued(&self) -> Vec<SpanRecord> {
        let spans: Vec<SpanRecord> =
            std::iter::from_fn(|| self.queue.spans.pop().map(|s| *s)).collect();
        let weight = spans.iter().map(SpanRecord::weight).sum();
        self.queue.bytes.fetch_sub(weight, Ordering::Relaxed);
        spans
    }

    /// Queues `span` without waiting; a full queue (its [`QUEUE`] spans, or [`QUEUE_BYTES`])
    /// drops it (counted).
    pub(super) fn push(&self, span: Box<SpanRecord>) {
        let q = &*self.queue;
        let weight = span.weight();
        // Taken before the push, so two threads never both take the last room.
        let held = q.bytes.fetch_add(weight, Ordering::Relaxed) + weight;
        if held > QUEUE_BYTES || q.spans.push(span).is_err() {
            q.bytes.fetch_sub(weight, Ordering::Relaxed);
            self.metrics.dropped_queue_full.inc();
        }
    }
}

/// `otlp.headers` as header lines (validation refused names and values that are not).
fn extra_headers(headers: &std::collections::BTreeMap<String, String>) -> header::HeaderMap {
    let mut map = header::HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(mut value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        value.set_sensitive(true);
        map.append(name, value);
    }
    map
}

/// `uri` without its userinfo, and the userinfo as an HTTP Basic `authorization` value
/// (percent-decoded, then base64; marked sensitive), if it has one. The client never sends a
/// URL's userinfo itself, and it is no part of the request line or `host`.
pub(super) fn basic_auth(uri: Uri) -> (Uri, Option<header::HeaderValue>) {
    use base64::Engine;
    let Some((userinfo, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return (uri, None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut pair: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
    pair.push(b':');
    pair.extend(percent_encoding::percent_decode_str(password));
    let token = base64::engine::general_purpose::STANDARD.encode(&pair);
    let value = header::HeaderValue::from_str(&format!("Basic {token}"));
    let mut parts = uri.clone().into_parts();
    parts.authority = host.parse().ok();
    match (value, Uri::from_parts(parts)) {
        (Ok(mut value), Ok(bare)) => {
            value.set_sensitive(true);
            (bare, Some(value))
        }
        _ => (uri, None),
    }
}

/// The TLS connector to an `https://` collector, verified by `tls`, offering ALPN `h2` for gRPC
/// and `http/1.1` else; it connects to `https://` URLs only.
fn tls_connector(
    mut http: HttpConnector,
    tls: &ClientConfig,
    grpc: bool,
) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    // The builder sets ALPN itself, and refuses a config that has it set already: `tls` offers
    // none (`TlsFiles::tracing`).
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only();
    if grpc {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    }
}

/// `{endpoint}/v1/traces`, or the gRPC method under the endpoint; validation made sure the
/// endpoint is an `http://` or `https://` URL (with no path, for gRPC).
fn traces_uri(endpoint: &str, protocol: OtlpProtocol) -> Uri {
    let base = endpoint.trim_end_matches('/');
    let path = match protocol {
        OtlpProtocol::Grpc => GRPC_EXPORT,
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => "/v1/traces",
    };
    format!("{base}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:4318/v1/traces"))
}

// === impl Task ===

impl Task {
    async fn run(mut self) {
        let tick = POLL.min(self.flush_every);
        let mut oldest_wait = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::time::sleep(tick).await;
            let closing = self.owner.strong_count() == 0;
            if self.queue.spans.is_empty() {
                oldest_wait = Instant::now();
                if closing {
                    return;
                }
                continue;
            }
            let urgent = self.queue.urgent.swap(false, Ordering::AcqRel);
            let due = self.queue.spans.len() >= BATCH || oldest_wait.elapsed() >= self.flush_every;
            if !due && !closing && !urgent {
                continue;
            }
            // Before the first pop, so a flush never sees an empty queue and an idle task
            // while spans are on their way.
            self.queue.busy.store(true, Ordering::Release);
            while !self.queue.spans.is_empty() {
                while batch.len() < BATCH {
                    match self.queue.spans.pop() {
                        Some(s) => batch.push(s),
                        None => break,
                    }
                }
                self.export(&batch).await;
                // Their bytes count until they are sent (or given up): a hung collector holds
                // a batch a whole `timeout`.
                let weight = batch.iter().map(|s| s.weight()).sum();
                self.queue.bytes.fetch_sub(weight, Ordering::Relaxed);
                batch.clear();
                if batch.capacity() > BATCH {
                    batch.shrink_to(BATCH);
                }
                if self.queue.spans.len() < BATCH && !closing && !urgent {
                    // Less than a batch left: it waits its turn (or `flush_every`).
                    break;
                }
            }
            self.queue.busy.store(false, Ordering::Release);
            oldest_wait = Instant::now();
            if closing && self.queue.spans.is_empty() {
                return;
            }
        }
    }

    /// Sends one batch; counts it exported or dropped.
    async fn export(&mut self, spans: &[Box<SpanRecord>]) {
        let msg = encode::request(&self.service_name, spans);
        let (body, content_type) = encode::body(&msg, self.protocol, self.gzip);
        let n = spans.len() as u64;
        let sent = tokio::time::timeout(self.timeout, self.post(body, content_type)).await;
        let failure = match sent {
            Ok(Ok(())) => {
                self.metrics.exported.inc_by(n);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.metrics.dropped_export_failed.inc_by(n);
        if let Some(since) = self.warn.note(n, Instant::now()) {
            tracing::warn!(
                endpoint = %redact_url(&self.uri.to_string()), error = %failure, spans = n,
                dropped_since_last_warning = since,
                "span export failed; the spans are dropped (counted in rampart_trace_spans_dropped_total)"
            );
        }
    }

    async fn post(&self, body: Vec<u8>, content_type: &'static str) -> Result<(), String> {
        let grpc = self.protocol == OtlpProtocol::Grpc;
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let gzip = header::HeaderValue::from_static("gzip");
        if grpc {
            req.headers_mut()
                .insert(header::TE, header::HeaderValue::from_static("trailers"));
            if self.gzip {
                req.headers_mut().insert("grpc-encoding", gzip);
            }
        } else if self.gzip {
            req.headers_mut().insert(header::CONTENT_ENCODING, gzip);
        }
        for (name, value) in &self.headers {
            req.headers_mut().append(name, value.clone());
        }
        let rsp = self.client.request(req).await.map_err(|e| {
            use std::error::Error;
            match e.source() {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            }
        })?;
        let status = rsp.status();
        let (parts, body) = rsp.into_parts();
        // Read the answer (bounded) so the connection can be used again.
        let read = http_body_util::Limited::new(body, ANSWER_LIMIT)
            .collect()
            .await;
        if !status.is_success() {
            return Err(format!("the collector answered {status}"));
        }
        if !grpc {
            return Ok(());
        }
        // gRPC's outcome is `grpc-status`: in the trailers, or in the head of an answer that
        // has no body ("trailers-only").
        let trailers = read.ok().and_then(|c| c.trailers().cloned());
        grpc_outcome(trailers.as_ref().unwrap_or(&parts.headers))
    }
}

/// `Ok` when `fields` say the gRPC call succeeded (`grpc-status: 0`), else why it did not.
pub(super) fn grpc_outcome(fields: &header::HeaderMap) -> Result<(), String> {
    let text = |name: &str| fields.get(name).and_then(|v| v.to_str().ok());
    match text("grpc-status") {
        Some("0") => Ok(()),
        Some(code) => Err(format!(
            "the collector answered grpc-status {code}: {}",
            text("grpc-message").unwrap_or("(no message)")
        )),
        None => Err("the collector's answer has no grpc-status".to_owned()),
    }
}
