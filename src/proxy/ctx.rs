//! The per-request context: what the admission steps learned, handed down the whole path.
//!
//! Built once the route and tenant are known (`stack.rs`), read by everything below: the
//! exchange (deadline, retries), each try (breakers scoped per tenant, the outcome hook) and the
//! metrics. Passing one struct down keeps the signatures of the path stable as policies are
//! added: a new policy reads what it needs here instead of growing every function's arguments.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::forward::Peer;
use crate::generation::{ListenerRt, RouteRt};
use crate::metrics::TenantMetrics;
use crate::tenant::{Labels, TenantId};

/// What one request carries down the path after admission.
#[derive(Debug)]
pub struct RequestCtx<'a> {
    /// The listener it came in on.
    pub listener: &'a ListenerRt,
    /// The route it matched (its identity is `route.key`).
    pub route: &'a RouteRt,
    /// Who it is for.
    pub tenant: TenantId,
    /// Metric handles of (route, tenant label).
    pub metrics: Arc<TenantMetrics>,
    /// When the request timeout fires, if the policy sets one.
    pub deadline: Option<Instant>,
    /// The client end of the connection.
    pub peer: &'a Peer,
    /// Longest stall allowed between request body frames.
    pub body_idle: Duration,
    /// Tenant label folding (for per-tenant breakers' metric series).
    pub labels: &'a Labels,
}
