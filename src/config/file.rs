//! The serde mirror of the policy file (SPEC §2): structure and defaults only, no logic.
//!
//! Every struct denies unknown keys, so a typo is an error with its line and column rather than
//! a setting silently ignored. Cross-references and bounds are checked in `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::units::{Dur, Rate, Ratio, Size};

mod resilience;

pub use resilience::{
    Fallback, FallbackOn, Fault, FaultAbort, FaultDelay, Idempotency, StaticAnswer,
};

/// The whole policy file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Schema version; only `1` exists.
    pub version: u32,
    /// The admin listener.
    #[serde(default)]
    pub admin: Admin,
    /// Process-wide limits.
    #[serde(default)]
    pub runtime: Runtime,
    /// How requests are attributed to tenants.
    #[serde(default)]
    pub tenants: Tenants,
    /// Named upstreams that routes send to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Named policies that routes apply.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// The listeners, each with its routes.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The audit trail of policy changes (SPEC §11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// State shared by every rampart that names the same store (SPEC §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_store: Option<GlobalStore>,
    /// OpenTelemetry tracing (SPEC §12); off unless present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// `global_store:` (SPEC §9): where limits with `scope: global` keep their buckets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalStore {
    /// A Redis server (the only backend).
    pub redis: RedisStore,
}

/// `global_store.redis:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; shown (in `/config`)
    /// without its password.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Put before every key, so several services can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest a request waits on the store; past it, `on_store_error` decides.
    #[serde(default = "default_store_timeout")]
    pub timeout: Dur,
    /// How a `rediss://` store is verified (and the client certificate it is shown); the
    /// system's roots (`tls::roots`) and no client certificate if absent. Refused beside
    /// `redis://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

// === impl RedisStore ===

impl RedisStore {
    /// Whether the store is spoken to over TLS (`rediss://`, in any case, as URL parsers read
    /// a scheme).
    pub fn is_tls(&self) -> bool {
        self.url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
    }
}

/// `tracing:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Where spans are exported.
    pub otlp: Otlp,
    /// Head sampling of new traces; a client's sampled (or unsampled) parent is followed.
    #[serde(default = "full_ratio")]
    pub sample: Ratio,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

/// `tracing.otlp:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// Base URL of the collector; spans go to `{endpoint}/v1/traces`. Shown (in `/config`)
    /// without a password.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub endpoint: String,
    /// How spans are encoded on the wire.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Longest a span waits in the queue before it is sent (a full batch goes at once).
    #[serde(default = "default_otlp_flush_every")]
    pub flush_every: Dur,
    /// Longest one export may take (connect included) before it is given up.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: Dur,
    /// PEM bundle of the roots an `https://` collector is verified against; the system's roots
    /// (`tls::roots`) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain shown to an `https://` collector that asks for one
    /// (mutual TLS); given with `key` or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Whether exports are compressed.
    #[serde(default)]
    pub compression: OtlpCompression,
    /// Header lines sent with every export (a vendor's API key, say); their values are shown
    /// as `***` on `/config`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_redacted_values"
    )]
    pub headers: BTreeMap<String, String>,
}

impl Otlp {
    /// Whether the collector is reached over TLS (an `https://` endpoint, in any case).
    pub fn is_https(&self) -> bool {
        self.endpoint
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }
}

/// `tracing.otlp.compression:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpCompression {
    /// Sent as encoded (the OTLP default).
    #[default]
    None,
    /// gzip: the body over HTTP (`content-encoding`), the message over gRPC (`grpc-encoding`).
    Gzip,
}

/// `tracing.otlp.protocol:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`application/x-protobuf`), the OTLP default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP (`application/json`).
    #[serde(rename = "http/json")]
    HttpJson,
    /// gRPC (`TraceService/Export` over HTTP/2, the status in `grpc-status`).
    #[serde(rename = "grpc")]
    Grpc,
}

/// `audit:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// The JSON-lines file entries are appended to.
    pub file: PathBuf,
}

/// `admin:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/config`, `/reload`, `/state`.
    #[serde(default = "default_admin_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

/// `runtime:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Drain time after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// A client must finish sending its request head within this time.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Larger request heads are answered 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Size,
    /// Connections served at once per listener; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A keep-alive or h2 connection with no request in flight is closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// A request body that stalls longer than this between bytes is answered 408.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Dur,
    /// After SIGTERM, listeners keep serving this long (with `/readyz` failing) before they
    /// stop accepting.
    #[serde(default = "default_drain_delay")]
    pub drain_delay: Dur,
}

/// `tenants:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tenants {
    /// Sources tried in order; the first that yields a value wins.
    #[serde(default = "default_tenant_sources")]
    pub from: Vec<TenantSource>,
    /// Tenant of unidentified requests; the word `reject` answers 401 instead.
    #[serde(default = "default_fallback")]
    pub fallback: String,
    /// Per-tenant state entries kept in memory.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: u64,
    /// Tenants that get their own metric label; the rest share `_other`.
    #[serde(default = "default_metrics_labels")]
    pub metrics_labels: u64,
    /// Where a tenant's plan (named limit set) comes from besides a token's `plan_claim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plans: Option<TenantPlans>,
}

/// `tenants.plans:` (SPEC §13).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPlans {
    /// A request header naming the plan, read only on listeners with `trust_plan_header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_header: Option<String>,
    /// Plan name to the tenants on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assign: BTreeMap<String, Vec<String>>,
}

/// One place a tenant id can come from; exactly one key is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSource {
    /// A request header, e.g. `x-tenant-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query-string parameter, e.g. `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A field of the verified TLS client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCertField>,
    /// A claim of a verified JSON Web Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSource>,
    /// The client's IP address: limits per client address, for traffic that names no tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIp>,
}

/// `tenants.from[i].client_ip:` `peer`, `x-forwarded-for`, or
/// `{ from, trusted_hops, ipv6_prefix }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClientIp {
    /// Where the address is read.
    pub from: ClientIpFrom,
    /// `x-forwarded-for` only: how many proxies in front of rampart append to that header; the
    /// client is the address this many entries from its end (1 if absent: the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_hops: Option<u8>,
    /// An IPv6 client counts by the first this many bits of its address (64: the block a
    /// subscriber is usually given, so it cannot step around its limit by changing address);
    /// 128 if absent. IPv4 addresses count whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
}

/// `tenants.from[i].client_ip.from:` where the client's address is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientIpFrom {
    /// The connection's peer: cannot be forged, and is the client's own address when nothing
    /// stands between it and rampart.
    #[serde(rename = "peer")]
    Peer,
    /// The last address of the last `x-forwarded-for` line: the one the proxy in front of
    /// rampart (a load balancer) appended. Only for listeners that every request reaches
    /// through that proxy: a client that reaches rampart directly can write the line itself.
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
}

/// `tenants.from[i].jwt:` the tenant is a claim of a bearer token verified against a JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSource {
    /// Header carrying the token: `Bearer <token>` in `authorization`; in any other header
    /// the token bare or after `Bearer `.
    #[serde(default = "default_jwt_header")]
    pub header: String,
    /// Claim naming the tenant; a dotted path (`org.id`) walks nested objects.
    pub claim: String,
    /// A JWKS file path, or an `http://` / `https://` URL (shown in `/config` without a
    /// password).
    #[serde(serialize_with = "serialize_redacted_url_or_path")]
    pub jwks: String,
    /// How often the JWKS is read again (last good keys are kept on failure). A token naming a
    /// `kid` the keys lack (a key the issuer has just rotated in) has it read early: at most
    /// once per 30 s, or per `jwks_refresh` when shorter, whatever the tokens; the request waits
    /// for that read (at most the 10 s a fetch is given, never past the route's timeout) and
    /// is judged against what it brought, rather than refused until the next read
    /// (`tenant/jwt/early.rs`).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Accepted `iss` values; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// CA bundle for an https JWKS URL (default: the system's roots, `tls::roots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca: Option<PathBuf>,
    /// Claim naming the tenant's plan (dotted path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_claim: Option<String>,
}

/// `tenants.from[i].client_cert:` which field of the client certificate names the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertField {
    /// The subject's common name.
    Cn,
    /// The first URI subject alternative name.
    UriSan,
}

/// `upstreams.NAME:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` endpoints; a DNS name yields one endpoint per address.
    pub endpoints: Vec<String>,
    /// Time allowed to establish a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// How often DNS names are resolved again.
    #[serde(default = "default_resolve_every")]
    pub resolve_every: Dur,
    /// Active health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// TLS towards the upstream (rustls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// What the upstream speaks: HTTP/1.1 (pooled connections) or HTTP/2 (one multiplexed
    /// connection per endpoint: gRPC services).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Endpoint selection.
    #[serde(default)]
    pub balance: Balance,
    /// Passive outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<Outlier>,
    /// Idle pooled connections kept per endpoint (0: none); the one idle the shortest time is
    /// reused first.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: u32,
    /// How long an idle pooled connection is kept; it is closed after that.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Dur,
    /// Connections open at once to one endpoint; further requests wait for a free one.
    #[serde(default = "default_upstream_max_connections")]
    pub max_connections: u32,
}

/// `upstreams.NAME.health_check:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path probed with GET; any 2xx is healthy.
    pub path: String,
    /// Time between probes of one endpoint.
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    /// Time allowed for one probe.
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Consecutive failed probes that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Consecutive good probes that mark it healthy again.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

/// `upstreams.NAME.tls:`, and `global_store.redis.tls:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// SNI and certificate name; the endpoint host if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM bundle of trusted roots; the system's roots (`tls::roots`: the compiled-in web
    /// roots where the system has none) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS; given with `key` or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `upstreams.NAME.protocol:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, keep-alive connections pooled per endpoint.
    #[default]
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2: h2c (prior knowledge) in clear, ALPN `h2` over `tls`; one connection per
    /// endpoint carries every request at once, trailers included (gRPC).
    #[serde(rename = "http2")]
    Http2,
}

/// `upstreams.NAME.balance:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Power of two choices on EWMA latency.
    P2c,
}

/// `upstreams.NAME.outlier:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint stays out.
    #[serde(default = "default_eject_for")]
    pub eject_for: Dur,
    /// Most endpoints ejected at once.
    #[serde(default = "default_max_ejected")]
    pub max_ejected: Ratio,
}

/// `policies.NAME:`; every section is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Deadlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Circuit breaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Load shedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_shed: Option<LoadShed>,
    /// Deliberate faults (SPEC §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Answers in place of rampart's own errors (SPEC §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Replay protection by idempotency key (SPEC §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
}

/// `policies.NAME.timeout:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// The whole exchange, every retry and backoff included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// Each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<PerTry>,
    /// The longest the upstream may keep rampart waiting for the next bytes of its answer
    /// while rampart is ready to take them: for the head once the request is written whole,
    /// then between body bytes ([`IDLE_TIMEOUT`] when absent; `0s` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

/// Default of `timeout.idle` (as Envoy's stream idle timeout): it applies on every route, a
/// route without a policy or a `timeout` section included.
pub const IDLE_TIMEOUT: Dur = Dur::from_secs(300);

/// `per_try: 5s`, `per_try: auto`, or `per_try: { auto: { min: 50ms, max: 2s } }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerTry {
    /// A fixed bound.
    Fixed(Dur),
    /// Derived from the upstream's recent latency, clamped to `[min, max]`.
    Auto {
        /// Lower bound of the derived timeout.
        min: Dur,
        /// Upper bound of the derived timeout.
        max: Dur,
    },
}

/// Default lower bound of `per_try: auto`.
pub const PER_TRY_AUTO_MIN: Dur = Dur::from_millis(10);
/// Default upper bound of `per_try: auto`.
pub const PER_TRY_AUTO_MAX: Dur = Dur::from_secs(30);

/// `policies.NAME.retry:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Request bodies up to this size are kept for replay.
    #[serde(default = "default_retry_buffer")]
    pub buffer: Size,
    /// Outcomes that are retried.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Exponential backoff with full jitter.
    #[serde(default)]
    pub backoff: Backoff,
    /// Cap on the extra load retries may add.
    #[serde(default)]
    pub budget: Budget,
}

/// One entry of `retry.on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The connection could not be established.
    ConnectError,
    /// The connection broke before a full answer.
    Reset,
    /// A per-try timeout fired.
    Timeout,
    /// The upstream answered this status.
    Status(u16),
}

/// `retry.backoff:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Backoff ceiling of the first retry.
    #[serde(default = "default_backoff_base")]
    pub base: Dur,
    /// Largest backoff.
    #[serde(default = "default_backoff_max")]
    pub max: Dur,
}

/// `retry.budget:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Retries allowed as a share of requests.
    #[serde(default = "default_budget_ratio")]
    pub ratio: Ratio,
    /// Retries always allowed per second, whatever the ratio.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
    /// Sliding window over which the ratio is computed.
    #[serde(default = "default_budget_window")]
    pub window: Dur,
}

/// `policies.NAME.rate_limit:`
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Limits applied to every tenant on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_tenant: Option<Limits>,
    /// Limits that replace `per_tenant` for named tenants.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Limits>,
    /// Limits of the whole route, whatever the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Limits>,
    /// Limits of the tenants on a plan (`tenants.plans`), between overrides and `per_tenant`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, Limits>,
    /// RateLimit headers on admitted answers too.
    #[serde(default)]
    pub headers: bool,
    /// `local` (default): buckets per rampart process; `global`: shared through `global_store`.
    #[serde(default, skip_serializing_if = "LimitScope::is_local")]
    pub scope: LimitScope,
    /// With `scope: global`: what decides while the store is down or slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<OnStoreError>,
    /// With `scope: global`: tokens a rampart takes from the store at once, per tenant, and
    /// spends locally (absent: a tenth of the smallest capacity, from 1 to 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// With `scope: global`: how long leased tokens stay good before the rest are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<Dur>,
}

/// `rate_limit.scope:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Each rampart process keeps its own buckets.
    #[default]
    Local,
    /// Buckets live in `global_store`, shared by every rampart that names it.
    Global,
}

impl LimitScope {
    fn is_local(&self) -> bool {
        *self == LimitScope::Local
    }
}

/// `rate_limit.on_store_error:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Enforce the limits per process until the store answers again.
    #[default]
    Local,
    /// Admit every request.
    Allow,
    /// Refuse every request (429).
    Deny,
}

/// One limit or a list of limits, all of which must admit.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Limits(pub Vec<Limit>);

/// A token bucket: `rate` refills, `burst` is its capacity (the rate's count if absent).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Refill rate.
    pub rate: Rate,
    /// Capacity; defaults to the rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Name used in the RateLimit headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Smooth refill (default), or a count per UTC minute, hour or day.
    #[serde(default, skip_serializing_if = "LimitWindow::is_smooth")]
    pub window: LimitWindow,
}

/// `limit.window:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    /// A token bucket: the burst, then one more every `per / count`.
    #[default]
    Smooth,
    /// The rate's count per UTC minute, hour or day (its unit), reset at the boundary.
    Calendar,
}

impl LimitWindow {
    fn is_smooth(&self) -> bool {
        *self == LimitWindow::Smooth
    }
}

/// `policies.NAME.circuit_breaker:`; a rule that is absent is off.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// One breaker per upstream, or per (upstream, tenant).
    #[serde(default)]
    pub scope: BreakerScope,
    /// Consecutive failures that open the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure share over a window of calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    /// Share of slow calls over the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCall>,
    /// Time open before probing.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Ceiling of `open_for` as it grows on repeated trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for_max: Option<Dur>,
    /// Trial calls let through while half open.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
}

/// `circuit_breaker.scope:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerScope {
    /// One breaker per upstream.
    #[default]
    Upstream,
    /// One breaker per (upstream, tenant).
    Tenant,
}

/// `circuit_breaker.failure_rate:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRate {
    /// Failure share that opens the breaker.
    pub threshold: Ratio,
    /// Calls in the sliding window.
    #[serde(default = "default_fr_window")]
    pub window: u32,
    /// Calls needed before the rate is judged.
    #[serde(default = "default_fr_min_calls")]
    pub min_calls: u32,
}

/// `circuit_breaker.slow_call:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlowCall {
    /// A call longer than this is slow.
    pub duration: Dur,
    /// Share of slow calls that opens the breaker.
    pub threshold: Ratio,
}

/// `policies.NAME.load_shed:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadShed {
    /// Requests in flight on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Requests in flight per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_tenant_max_in_flight: Option<u32>,
    /// Waiting room for requests that find no free slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queue>,
    /// Priority classes read from a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Limit that follows measured upstream latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Adaptive>,
}

/// `load_shed.queue:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Requests that may wait; 0 sheds at once.
    pub size: u32,
    /// Longest wait.
    #[serde(default = "default_queue_timeout")]
    pub timeout: Dur,
}

/// `load_shed.priority:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Priority {
    /// Header carrying `critical`, `normal` or `sheddable`.
    pub header: String,
}

/// `load_shed.adaptive:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// Lowest limit.
    pub min: u32,
    /// Highest limit.
    pub max: u32,
}

/// `listeners[i]:`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used as the metrics label.
    pub name: String,
    /// Traffic entering the service, or leaving it.
    pub direction: Direction,
    /// Address to bind.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// TLS termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// One JSON line per request (SPEC §12); `true` is `{ to: stdout, sample_ok: 100% }`,
    /// `false` or absent is off.
    #[serde(
        default,
        deserialize_with = "access_log",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_log: Option<AccessLog>,
    /// Whether `tenants.plans.plan_header` is believed on this listener.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trust_plan_header: bool,
    /// Whether request paths have runs of `/` merged when normalised; absent: yes on inbound
    /// listeners, no on outbound ones ([`Listener::merges_slashes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,
    /// Routes, matched in order.
    pub routes: Vec<Route>,
}

// === impl Listener ===

impl Listener {
    /// `merge_slashes`, or its default: on for `inbound` (the service's own server may merge
    /// them, so `//admin` must match an `/admin` route), off for `outbound` (an external API's
    /// resource names, S3 keys among them, may hold `//`, and a signature covers them).
    pub fn merges_slashes(&self) -> bool {
        self.merge_slashes
            .unwrap_or(self.direction == Direction::Inbound)
    }
}

/// `listeners[i].access_log:` in its long form.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, or the path of a file that lines are appended to.
    pub to: LogTo,
    /// Share of 2xx/3xx lines kept; every other line is always written.
    #[serde(default = "full_ratio")]
    pub sample_ok: Ratio,
}

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LogTo {
    /// The process's standard output.
    Stdout,
    /// The process's standard error: the access log apart from rampart's own log, which goes
    /// to stdout (as nginx's `access_log /dev/stderr` or Envoy's stderr access logger). Not a
    /// file named `stderr`: a file of that name is written `./stderr`.
    Stderr,
    /// A file, opened for append (and again on every reload, for log rotation).
    File(PathBuf),
}

/// `listeners[i].direction:`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// In front of the service.
    Inbound,
    /// Between the service and its dependencies.
    Outbound,
}

/// `listeners[i].tls:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM bundle of CAs whose client certificates are required and trusted (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// `listeners[i].routes[j]:`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Metrics label; the upstream's name if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions; a route without `match` matches everything.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Match>,
    /// Upstream name.
    pub upstream: String,
    /// Policy name; a route without one is a plain proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A tunnel silent this long is closed ([`TUNNEL_IDLE_TIMEOUT`] when absent): a CONNECT
    /// tunnel (outbound listeners only) or an upgraded connection (WebSocket, any listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_idle_timeout: Option<Dur>,
    /// Whether a request here needs a tenant (`tenants.fallback` applies) or not.
    #[serde(default, skip_serializing_if = "TenantMode::is_required")]
    pub tenant: TenantMode,
}

// === impl Route ===

impl Route {
    /// Whether a CONNECT can match this route (on an outbound listener): one without a
    /// `path_prefix`, `/` included, as a CONNECT's target has no path.
    pub fn takes_connect(&self) -> bool {
        self.matches
            .as_ref()
            .is_none_or(|m| m.path_prefix.is_none())
    }
}

/// `routes[j].tenant:`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantMode {
    /// A request without a tenant gets `tenants.fallback` (or 401 when it is `reject`).
    #[default]
    Required,
    /// A request without a tenant is served as tenant [`NO_TENANT`].
    Optional,
}

/// The tenant of a request on a `tenant: optional` route that names none.
pub const NO_TENANT: &str = "-";

/// The `tenant` metric label shared by the tenants past `tenants.metrics_labels`. Reserved: no
/// tenant may be named so, in the file or by a client, or its series would be read as theirs.
pub const FOLDED_TENANTS: &str = "_other";

impl TenantMode {
    fn is_required(&self) -> bool {
        *self == TenantMode::Required
    }
}

/// Default of `routes[j].tunnel_idle_timeout`.
pub const TUNNEL_IDLE_TIMEOUT: Dur = Dur::from_secs(3600);

/// `routes[j].match:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Host name, or `*.suffix`; the port is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

// === defaults ===

/// `url` without its password or its query's values (for logs, error messages and
/// `/config`): `redis://user:***@host`, `https://idp/jwks?token=***`. Everything before the
/// last `@` is taken for credentials, so a password holding `/`, `?` or `@` is hidden whole,
/// even in a URL that does not parse (an `@` further on, in a path, hides too much rather than
/// too little). A query's names stay, its values (tokens, keys) are hidden, and so is a
/// fragment.
pub fn redact_url(url: &str) -> String {
    let shown = redact_userinfo(url);
    let Some((base, query)) = shown.split_once('?') else {
        return shown;
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let mut out = String::with_capacity(shown.len());
    out.push_str(base);
    for (i, pair) in query.split('&').enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match pair.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=***");
            }
            None => out.push_str(pair),
        }
    }
    if shown.contains('#') {
        out.push_str("#***");
    }
    out
}

/// `url` without its password ([`redact_url`]'s first half).
fn redact_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once("://") {
            Some((scheme, cred)) => match cred.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => format!("***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// `text` as it may be shown: a URL ([`redact_url`]) without its password, a path as it is.
pub fn redact_url_or_path(text: &str) -> String {
    match text.contains("://") {
        true => redact_url(text),
        false => text.to_owned(),
    }
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn serialize_redacted_url_or_path<S: serde::Serializer>(
    text: &str,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url_or_path(text))
}

/// A map's keys with every value shown as `***` (credentials, for `/config`).
fn serialize_redacted_values<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(map.len()))?;
    for k in map.keys() {
        m.serialize_entry(k, "***")?;
    }
    m.end()
}

/// Default `global_store.redis.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "rampart:";
fn default_key_prefix() -> String {
    DEFAULT_KEY_PREFIX.into()
}
fn default_store_timeout() -> Dur {
    Dur::from_millis(25)
}
fn default_service_name() -> String {
    "rampart".into()
}
fn default_otlp_flush_every() -> Dur {
    Dur::from_secs(1)
}
fn default_otlp_timeout() -> Dur {
    Dur::from_secs(10)
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_shutdown_grace() -> Dur {
    Dur::from_secs(15)
}
fn default_header_read_timeout() -> Dur {
    Dur::from_secs(10)
}
fn default_max_header_bytes() -> Size {
    Size(32 * 1024)
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_idle_timeout() -> Dur {
    Dur::from_secs(60)
}
fn default_body_idle_timeout() -> Dur {
    Dur::from_secs(30)
}
fn default_drain_delay() -> Dur {
    Dur::from_secs(0)
}
fn default_tenant_sources() -> Vec<TenantSource> {
    vec![TenantSource {
        header: Some("x-tenant-id".into()),
        ..TenantSource::default()
    }]
}
fn default_jwt_header() -> String {
    "authorization".into()
}
fn default_jwks_refresh() -> Dur {
    Dur::from_secs(300)
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_fallback() -> String {
    "anonymous".into()
}
fn default_max_tracked() -> u64 {
    100_000
}
fn default_metrics_labels() -> u64 {
    100
}
fn default_connect_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_resolve_every() -> Dur {
    Dur::from_secs(30)
}
fn default_pool_max_idle() -> u32 {
    256
}
fn default_pool_idle_timeout() -> Dur {
    Dur::from_secs(90)
}
fn default_upstream_max_connections() -> u32 {
    1024
}
fn default_hc_interval() -> Dur {
    Dur::from_secs(5)
}
fn default_hc_timeout() -> Dur {
    Dur::from_secs(1)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
}
fn default_eject_for() -> Dur {
    Dur::from_secs(30)
}
fn full_ratio() -> Ratio {
    Ratio(1.0)
}

fn default_max_ejected() -> Ratio {
    Ratio(0.5)
}
fn default_retry_buffer() -> Size {
    Size(64 * 1024)
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectError,
        RetryOn::Reset,
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
fn default_backoff_base() -> Dur {
    Dur::from_millis(25)
}
fn default_backoff_max() -> Dur {
    Dur::from_millis(250)
}
fn default_budget_ratio() -> Ratio {
    Ratio(0.2)
}
fn default_budget_min() -> u32 {
    10
}
fn default_budget_window() -> Dur {
    Dur::from_secs(10)
}
fn default_open_for() -> Dur {
    Dur::from_secs(10)
}
fn default_half_open_probes() -> u32 {
    1
}
fn default_fr_window() -> u32 {
    20
}
fn default_fr_min_calls() -> u32 {
    10
}
fn default_queue_timeout() -> Dur {
    Dur::from_millis(250)
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
        }
    }
}
impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            shutdown_grace: default_shutdown_grace(),
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            body_idle_timeout: default_body_idle_timeout(),
            drain_delay: default_drain_delay(),
        }
    }
}
impl Default for Tenants {
    fn default() -> Self {
        Tenants {
            from: default_tenant_sources(),
            fallback: default_fallback(),
            max_tracked: default_max_tracked(),
            metrics_labels: default_metrics_labels(),
            plans: None,
        }
    }
}
impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}
impl Default for Budget {
    fn default() -> Self {
        Budget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
            window: default_budget_window(),
        }
    }
}

// === addresses ===

/// An `IP:PORT` to bind, with a message that says what is expected.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid address {text:?}: expected IP:PORT, like 127.0.0.1:8080 or [::1]:8080 (a listener binds an IP address, not a name)"
        ))
    })
}

// === impl Limits: one map or a list of maps ===

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V(PhantomData<Limit>);
        impl<'de> Visitor<'de> for V {
            type Value = Limits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a limit { rate, burst } or a list of limits")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Limits, A::Error> {
                let one = Limit::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Limits(vec![one]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Limits, A::Error> {
                let mut all = Vec::new();
                while let Some(l) = seq.next_element::<Limit>()? {
                    all.push(l);
                }
                Ok(Limits(all))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

// === impl PerTry ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoBounds {
    #[serde(default = "auto_min")]
    min: Dur,
    #[serde(default = "auto_max")]
    max: Dur,
}
fn auto_min() -> Dur {
    PER_TRY_AUTO_MIN
}
fn auto_max() -> Dur {
    PER_TRY_AUTO_MAX
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoMap {
    auto: AutoBounds,
}

impl<'de> Deserialize<'de> for PerTry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PerTry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration, `auto`, or { auto: { min, max } }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PerTry, E> {
                if v == "auto" {
                    return Ok(PerTry::Auto {
                        min: PER_TRY_AUTO_MIN,
                        max: PER_TRY_AUTO_MAX,
                    });
                }
                v.parse::<Dur>().map(PerTry::Fixed).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PerTry, A::Error> {
                let m = AutoMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PerTry::Auto {
                    min: m.auto.min,
                    max: m.auto.max,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PerTry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            PerTry::Fixed(d) => d.serialize(s),
            PerTry::Auto { min, max } => {
                #[derive(Serialize)]
                struct B<'a> {
                    min: &'a Dur,
                    max: &'a Dur,
                }
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("auto", &B { min, max })?;
                m.end()
            }
        }
    }
}

// === impl ClientIp: a word or a map ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientIpMap {
    from: ClientIpFrom,
    #[serde(default)]
    trusted_hops: Option<u8>,
    #[serde(default)]
    ipv6_prefix: Option<u8>,
}

impl<'de> Deserialize<'de> for ClientIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ClientIp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`peer`, `x-forwarded-for`, or { from, trusted_hops, ipv6_prefix }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClientIp, E> {
                let from = ClientIpFrom::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(ClientIp {
                    from,
                    trusted_hops: None,
                    ipv6_prefix: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClientIp, A::Error> {
                let m = ClientIpMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ClientIp {
                    from: m.from,
                    trusted_hops: m.trusted_hops,
                    ipv6_prefix: m.ipv6_prefix,
                })
            }
        }
        d.deserialize_any(V)
    }
}

// === impl AccessLog ===

/// `access_log: true | false | { to, sample_ok }`.
fn access_log<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AccessLog>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<AccessLog>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true, false, or { to: stdout | stderr | PATH, sample_ok: RATIO }")
        }
        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then_some(AccessLog {
                to: LogTo::Stdout,
                sample_ok: full_ratio(),
            }))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            AccessLog::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

impl<'de> Deserialize<'de> for LogTo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "stdout" => Ok(LogTo::Stdout),
            "stderr" => Ok(LogTo::Stderr),
            "" => Err(de::Error::custom(
                "expected `stdout`, `stderr` or a file path",
            )),
            _ => Ok(LogTo::File(PathBuf::from(s))),
        }
    }
}

impl Serialize for LogTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LogTo::Stdout => s.serialize_str("stdout"),
            LogTo::Stderr => s.serialize_str("stderr"),
            LogTo::File(p) => p.serialize(s),
        }
    }
}

// === impl RetryOn ===

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect_error, reset, timeout or a status code from 100 to 599")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect_error" => Ok(RetryOn::ConnectError),
                    "reset" => Ok(RetryOn::Reset),
                    "timeout" => Ok(RetryOn::Timeout),
                    other => match other.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "unknown retry condition {other:?}: expected connect_error, reset, timeout or a status code"
                        ))),
                    },
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                if (100..=599).contains(&v) {
                    Ok(RetryOn::Status(v as u16))
                } else {
                    Err(E::custom(format!(
                        "invalid status code {v}: expected 100 to 599"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                Err(E::custom(format!(
                    "invalid status code {v}: expected 100 to 599"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::ConnectError => s.serialize_str("connect_error"),
            RetryOn::Reset => s.serialize_str("reset"),
            RetryOn::Timeout => s.serialize_str("timeout"),
            RetryOn::Status(c) => s.serialize_u16(*c),
        }
    }
}
