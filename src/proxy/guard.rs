//! What a request holds until its answer has been sent whole.
//!
//! A request occupies things beyond its handler's stack frame: a place in the listener's
//! in-flight gauge, a load-shed slot, an endpoint's in-flight count (which p2c balancing reads),
//! the connection's count of open requests (which the idle timeout reads). They must be given
//! back when the answer's body ends or the client goes away — not when the head goes out, or a
//! long download would stop counting while it still occupies the upstream. [`Guards`] gathers
//! them; `Body::hold` ties them to an upstream answer's body, and synthetic answers (complete at
//! once) drop them on the spot. Each field releases itself on drop, so there is no path on which
//! one is forgotten.

use super::access_log::Entry;
use super::conn::ConnActive;
use crate::metrics::Held;
use crate::otel::ServerSpan;
use crate::policy::load_shed::ShedSlot;

/// The guards of one request; dropped together when its answer ends.
#[derive(Debug, Default)]
pub struct Guards {
    /// `rampart_in_flight_requests{listener}`.
    pub in_flight: Option<Held>,
    /// The connection's count of requests in progress (its idle timer waits for zero).
    pub conn: Option<ConnActive>,
    /// The route's load-shed slot.
    pub slot: Option<ShedSlot>,
    /// The request's access log line, written when it drops (after the body's last byte).
    pub log: Option<Entry>,
    /// The request's SERVER span (sampled traces), sent when it drops.
    pub span: Option<ServerSpan>,
}
