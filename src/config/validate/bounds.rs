//! The bounds of the whole-number keys whose checks refuse more than their type does, so that
//! a value serde cannot read (`-1`, a number past the type's range) is refused with the range
//! the check would give, not the type's: `max_connections: -1` is told 1 to 4294967295, as 0
//! is told it must be at least 1.

use super::super::locate::KeyPath;
use super::super::units::Size;
use super::{
    global, policy, resilience, upstream, HEADER_BYTES, MAX_METRICS_LABELS, MAX_TRACKED,
    MAX_TRUSTED_HOPS, VERSION,
};

/// Written paths (`*` any key, `[]` any item, `**` any steps) with their least and most
/// value; `None` leaves the most to the type.
const BOUNDS: &[(&str, u64, Option<u64>)] = &[
    ("version", VERSION as u64, Some(VERSION as u64)),
    ("runtime.max_connections", 1, None),
    ("tenants.max_tracked", 1, Some(MAX_TRACKED)),
    ("tenants.metrics_labels", 0, Some(MAX_METRICS_LABELS)),
    (
        "tenants.from.[].client_ip.trusted_hops",
        1,
        Some(MAX_TRUSTED_HOPS as u64),
    ),
    ("tenants.from.[].client_ip.ipv6_prefix", 1, Some(128)),
    ("upstreams.*.max_connections", 1, None),
    (
        "upstreams.*.health_check.healthy_after",
        1,
        Some(upstream::MAX_CHECKS_IN_A_ROW),
    ),
    (
        "upstreams.*.health_check.unhealthy_after",
        1,
        Some(upstream::MAX_CHECKS_IN_A_ROW),
    ),
    ("upstreams.*.outlier.consecutive_failures", 1, None),
    (
        "policies.*.retry.attempts",
        1,
        Some(policy::MAX_ATTEMPTS as u64),
    ),
    ("policies.*.rate_limit.**.burst", 1, Some(policy::MAX_BURST)),
    ("policies.*.rate_limit.lease", 1, Some(global::MAX_LEASE)),
    ("policies.*.circuit_breaker.consecutive_failures", 1, None),
    ("policies.*.circuit_breaker.failure_rate.min_calls", 1, None),
    (
        "policies.*.circuit_breaker.failure_rate.window",
        1,
        Some(policy::MAX_RATE_WINDOW as u64),
    ),
    (
        "policies.*.circuit_breaker.half_open_probes",
        1,
        Some(policy::MAX_HALF_OPEN_PROBES as u64),
    ),
    ("policies.*.load_shed.max_in_flight", 1, None),
    ("policies.*.load_shed.per_tenant_max_in_flight", 1, None),
    ("policies.*.load_shed.adaptive.min", 1, None),
    (
        "policies.*.idempotency.max_entries",
        1,
        Some(resilience::MAX_IDEMPOTENT_ENTRIES),
    ),
];

/// The least and most whole number the checks take at `path`, within `type_max`.
pub(super) fn whole_number(path: &KeyPath, type_max: u64) -> (u64, u64) {
    BOUNDS
        .iter()
        .find(|(pattern, ..)| path.matches(pattern))
        .map_or((0, type_max), |(_, least, most)| {
            (*least, most.map_or(type_max, |m| m.min(type_max)))
        })
}

/// Size keys (written paths, as for [`BOUNDS`]) with the least and most bytes their checks
/// take: a number serde cannot read as a size (negative, or past 64 bits) is told this range.
const SIZES: &[(&str, u64, u64)] = &[
    ("runtime.max_header_bytes", HEADER_BYTES.0, HEADER_BYTES.1),
    ("policies.*.retry.buffer", 0, policy::MAX_RETRY_BUFFER),
    (
        "policies.*.idempotency.max_body",
        1,
        resilience::MAX_IDEMPOTENT_BODY,
    ),
    (
        "policies.*.idempotency.max_bytes",
        1,
        resilience::MAX_IDEMPOTENT_BYTES,
    ),
];

/// The refusal of `text`, a number no size can be, at `path` when it is a size key: the
/// range its check takes.
pub(super) fn size_out_of_range(path: &KeyPath, text: &str) -> Option<String> {
    let (_, least, most) = SIZES.iter().find(|(pattern, ..)| path.matches(pattern))?;
    Some(format!(
        "{text} is out of range: it must be between {} and {}",
        Size(*least),
        Size(*most)
    ))
}

/// The refusal of `text`, written as a size but more bytes than 64 bits hold
/// (`99999999999999GiB`), at `path` when it is a size key: too large, with the most its check
/// takes (not the most a size can be, which the key refuses anyway).
pub(super) fn size_too_large(path: &KeyPath, text: &str) -> Option<String> {
    let (_, _, most) = SIZES.iter().find(|(pattern, ..)| path.matches(pattern))?;
    Size::overflows(text)
        .then(|| format!("{} is too large: the most is {}", text.trim(), Size(*most)))
}
