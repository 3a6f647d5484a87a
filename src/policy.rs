//! The resilience policies applied to each request, one module per concern.
//!
//! Each policy keeps its deciding state apart from the request path (STYLE (b)): the state
//! machine takes time from an injected clock, so unit tests step time exactly and benches time
//! only the decision. The request path (`proxy/stack.rs`, `proxy/exchange.rs`) calls them in
//! one fixed order.

pub mod circuit_breaker;
pub mod fallback;
pub mod fault;
pub mod held;
pub mod idempotency;
pub mod load_shed;
pub mod outcome;
pub mod rate_limit;
pub mod retry;
pub mod timeout;
