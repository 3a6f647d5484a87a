//! The reasons rampart answers a request itself (SPEC §3), and the boxed error type.
//!
//! Every synthetic answer is picked from [`Reason`]; `proxy/respond.rs` is the only place that
//! turns one into a status, headers and body, so the table in SPEC §3 lives in one match.

/// A boxed, thread-safe error, as errors travel between layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why rampart answered instead of the upstream; the `x-rampart-reason` header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 429: a rate limit refused the request.
    RateLimited,
    /// 503: load shedding refused the request.
    Shed,
    /// 503: the circuit breaker is open.
    CircuitOpen,
    /// 504: no answer within the request or per-try deadline.
    Timeout,
    /// 502: connect error, reset, or no healthy endpoint.
    UpstreamUnavailable,
    /// 404: no route matched.
    NoRoute,
    /// 401: `fallback: reject` and no tenant found.
    TenantRequired,
    /// 400: tenant id too long or with characters outside `[A-Za-z0-9._:@-]`, or repeated.
    InvalidTenant,
    /// 400: malformed request head or body, duplicate or missing `host`.
    BadRequest,
    /// 431: a request head over `runtime.max_header_bytes`, or with too many header lines.
    HeadTooLarge,
    /// 414: a request line that does not fit `runtime.max_header_bytes`, or a target longer
    /// than 65,534 bytes (the `http` crate's bound), its path's raw bytes escaped.
    UriTooLong,
    /// 408: the request body stalled past `body_idle_timeout`.
    ClientTimeout,
    /// 405: CONNECT on an inbound listener.
    MethodNotAllowed,
    /// An injected abort (`fault.abort`); its status is the configured one (503 here is only
    /// the default of [`Reason::status`]).
    FaultInjected,
    /// 409: the first request with this idempotency key is still in flight.
    IdempotencyInFlight,
    /// 422: the idempotency key was used by a different request.
    IdempotencyKeyReused,
    /// 422: the first answer for this idempotency key was too large to keep.
    IdempotencyNotReplayable,
    /// 503: the route's idempotency table (`max_entries`) is full of requests in flight.
    IdempotencyTableFull,
    /// 401: a bearer token was sent and failed verification (SPEC §13).
    InvalidToken,
    /// 503: a bearer token was sent before its `jwt` source's keys were first loaded, so it
    /// cannot be judged yet.
    JwksUnavailable,
    /// 421: a request on a TLS connection whose listener's client-certificate settings a
    /// reload changed since its handshake; the client is to send it again on a new connection.
    MisdirectedRequest,
    /// 421: a request whose target names `https` on an outbound listener whose route's upstream
    /// has no `tls`: sending it would carry in clear what the client asked to go over TLS.
    HttpsDowngrade,
}

// === impl Reason ===

impl Reason {
    /// The `x-rampart-reason` value and the JSON `error` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::Shed => "shed",
            Reason::CircuitOpen => "circuit_open",
            Reason::Timeout => "timeout",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::NoRoute => "no_route",
            Reason::TenantRequired => "tenant_required",
            Reason::InvalidTenant => "invalid_tenant",
            Reason::BadRequest => "bad_request",
            Reason::HeadTooLarge => "head_too_large",
            Reason::UriTooLong => "uri_too_long",
            Reason::ClientTimeout => "client_timeout",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::FaultInjected => "fault_injected",
            Reason::IdempotencyInFlight => "idempotency_in_flight",
            Reason::IdempotencyKeyReused => "idempotency_key_reused",
            Reason::IdempotencyNotReplayable => "idempotency_not_replayable",
            Reason::IdempotencyTableFull => "idempotency_table_full",
            Reason::InvalidToken => "invalid_token",
            Reason::JwksUnavailable => "jwks_unavailable",
            Reason::MisdirectedRequest => "misdirected_request",
            Reason::HttpsDowngrade => "https_downgrade",
        }
    }

    /// The status code of the answer.
    pub const fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Reason::RateLimited => S::TOO_MANY_REQUESTS,
            Reason::Shed
            | Reason::CircuitOpen
            | Reason::FaultInjected
            | Reason::IdempotencyTableFull
            | Reason::JwksUnavailable => S::SERVICE_UNAVAILABLE,
            Reason::Timeout => S::GATEWAY_TIMEOUT,
            Reason::UpstreamUnavailable => S::BAD_GATEWAY,
            Reason::NoRoute => S::NOT_FOUND,
            Reason::TenantRequired | Reason::InvalidToken => S::UNAUTHORIZED,
            Reason::InvalidTenant | Reason::BadRequest => S::BAD_REQUEST,
            Reason::ClientTimeout => S::REQUEST_TIMEOUT,
            Reason::HeadTooLarge => S::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::UriTooLong => S::URI_TOO_LONG,
            Reason::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            Reason::MisdirectedRequest | Reason::HttpsDowngrade => S::MISDIRECTED_REQUEST,
            Reason::IdempotencyInFlight => S::CONFLICT,
            Reason::IdempotencyKeyReused | Reason::IdempotencyNotReplayable => {
                S::UNPROCESSABLE_ENTITY
            }
        }
    }

    /// Every reason, for reading one back from its `x-rampart-reason` value.
    pub const ALL: [Reason; 22] = [
        Reason::RateLimited,
        Reason::Shed,
        Reason::CircuitOpen,
        Reason::Timeout,
        Reason::UpstreamUnavailable,
        Reason::NoRoute,
        Reason::TenantRequired,
        Reason::InvalidTenant,
        Reason::BadRequest,
        Reason::HeadTooLarge,
        Reason::UriTooLong,
        Reason::ClientTimeout,
        Reason::MethodNotAllowed,
        Reason::FaultInjected,
        Reason::IdempotencyInFlight,
        Reason::IdempotencyKeyReused,
        Reason::IdempotencyNotReplayable,
        Reason::IdempotencyTableFull,
        Reason::InvalidToken,
        Reason::JwksUnavailable,
        Reason::MisdirectedRequest,
        Reason::HttpsDowngrade,
    ];

    /// The reason whose [`Reason::as_str`] is `text`.
    pub fn from_text(text: &[u8]) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str().as_bytes() == text)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Walks an error's cause chain looking for a `T`.
pub fn cause_ref<'a, T: std::error::Error + 'static>(
    mut err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    loop {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        err = err.source()?;
    }
}
