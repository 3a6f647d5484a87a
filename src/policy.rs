//! Resilience policies, one module per concern.

pub mod retry;
pub mod timeout;
