//! What a rate-limit decision says: admitted or not, how long to wait, and the IETF RateLimit
//! headers (SPEC §3) that carry it to the client.
//!
//! Header text is prepared once per set of limits (`Spec`): the `ratelimit-policy` value is
//! fixed, and only `ratelimit` (remaining, reset) is written per answer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::gcra::Gcra;
use crate::config::file::Limit;

/// An unnamed tenant limit whose rate is counted per this period or longer (`/h`, `/d`) is named
/// `quota` in the headers, a shorter one (`/s`, `/min`) `burst`. It is the rate's unit that
/// decides, not the window `w` (capacity / rate): `{rate: 1/min, burst: 120}` is `burst` with
/// `w=7200`. README ("Item names") states the rule for users.
const QUOTA_PERIOD: Duration = Duration::from_secs(3600);

/// Items rendered without allocation; more limits than this spill to a `Vec`.
const INLINE_ITEMS: usize = 4;

/// The `limit` (metric label, access log) of a refusal made because the global store could not
/// be asked (`on_store_error: deny`), not because a limit was used up. No limit may take this
/// name (config validation refuses it), so the two never share a series.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

/// The answer for one request: admitted or refused, how long to wait, and the RateLimit headers.
#[derive(Debug, Clone)]
pub struct Decision {
    pub(super) admitted: bool,
    pub(super) retry_nanos: u64,
    pub(super) items: Items,
    pub(super) spec: Option<Arc<Spec>>,
    /// Refused because the global store could not decide (`on_store_error: deny`): no limit
    /// of the tenant's was found used up, so none is named and `ratelimit` is not written.
    pub(super) store_down: bool,
}

/// Header names of a set's items (its limits, then the totals) and the fixed policy header.
#[derive(Debug)]
pub(super) struct Spec {
    pub(super) names: Vec<String>,
    pub(super) policy: Option<HeaderValue>,
    /// How many of the items are the tenant's limits (the rest are the route's totals).
    pub(super) tenant_items: usize,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Items {
    pub(super) len: usize,
    pub(super) inline: [Item; INLINE_ITEMS],
    pub(super) spill: Vec<Item>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Item {
    pub(super) remaining: u64,
    pub(super) reset_nanos: u64,
}

// === impl Spec ===

impl Spec {
    /// Names items per SPEC §3 (`name:`, else `burst`/`quota`/`total`), unique within the set.
    pub(super) fn new(limits: &[Limit], total: &[Limit]) -> Self {
        let default_name = |l: &Limit, tenant: bool| match (&l.name, tenant) {
            (Some(n), _) => n.clone(),
            (None, true) if l.rate.per >= QUOTA_PERIOD => "quota".to_owned(),
            (None, true) => "burst".to_owned(),
            (None, false) => "total".to_owned(),
        };
        let all = limits
            .iter()
            .map(|l| (l, true))
            .chain(total.iter().map(|l| (l, false)));
        let mut names: Vec<String> = Vec::new();
        let mut policy = String::new();
        for (limit, tenant) in all {
            let base = sf_string(&default_name(limit, tenant));
            let mut name = base.clone();
            let mut n = 2;
            while names.contains(&name) {
                name = format!("{base}{n}");
                n += 1;
            }
            let g = Gcra::new(limit);
            let sep = if policy.is_empty() { "" } else { ", " };
            let _ = write!(
                policy,
                "{sep}\"{name}\";q={};w={}",
                g.capacity(),
                g.window_secs()
            );
            names.push(name);
        }
        let policy = (!names.is_empty())
            .then(|| HeaderValue::from_str(&policy).ok())
            .flatten();
        Spec {
            names,
            policy,
            tenant_items: limits.len(),
        }
    }
}

/// The inside of a structured-field string: printable ASCII, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// === impl Decision ===

impl Decision {
    /// True if the request may go on.
    pub fn is_admitted(&self) -> bool {
        self.admitted
    }

    /// The real wait until every refusing limit has a token again; `ZERO` if admitted. The
    /// answer's `retry-after` is this rounded up to whole seconds, at least 1.
    pub fn retry_after(&self) -> Duration {
        if self.admitted {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.retry_nanos)
        }
    }

    /// The name of the limit that refused (as in the RateLimit headers: `burst`, `quota`,
    /// `total` or its `name:`): the first one without a token now. `None` if admitted.
    /// A refusal by the unreachable store is [`STORE_UNAVAILABLE`].
    pub fn limit(&self) -> Option<&str> {
        if self.store_down && !self.admitted {
            return Some(STORE_UNAVAILABLE);
        }
        let names = &self.spec.as_ref()?.names;
        names.get(self.refusing()?).map(String::as_str)
    }

    /// Whether the limit that refused is the route's `total` (whatever the tenant), not one
    /// of the tenant's own.
    pub fn refused_by_total(&self) -> bool {
        match (&self.spec, self.refusing()) {
            (Some(spec), Some(i)) => i >= spec.tenant_items,
            _ => false,
        }
    }

    /// Whether the refusal was made because the global store could not be asked
    /// (`on_store_error: deny`), whatever the tenant had used.
    pub fn store_unavailable(&self) -> bool {
        self.store_down && !self.admitted
    }

    /// Where the refusing limit is among the items: the first one without a token now.
    fn refusing(&self) -> Option<usize> {
        if self.admitted || self.store_down {
            return None;
        }
        let empty = self.items.iter().position(|i| i.reset_nanos > 0);
        Some(empty.unwrap_or(0))
    }

    /// Whether [`Decision::write_headers`] writes anything (refused requests, and every request
    /// of a policy with `headers: true`).
    pub fn writes_headers(&self) -> bool {
        self.spec.as_ref().is_some_and(|s| s.policy.is_some())
    }

    /// Writes `ratelimit-policy` and `ratelimit` (SPEC §3), one item per limit that applied.
    /// Writes nothing for an admitted request unless the policy has `headers: true`, so the
    /// caller may call it on every answer.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let Some(spec) = &self.spec else { return };
        let Some(policy) = &spec.policy else { return };
        if self.store_down {
            // The limits are what they are, but how much of them is left is unknown: no
            // `ratelimit` item would be true (`r=0` would claim a limit the tenant never used).
            headers.insert(HeaderName::from_static("ratelimit-policy"), policy.clone());
            return;
        }
        let mut value = String::with_capacity(24 * spec.names.len());
        for (name, item) in spec.names.iter().zip(self.items.iter()) {
            let sep = if value.is_empty() { "" } else { ", " };
            let t = item.reset_nanos.div_ceil(1_000_000_000);
            let _ = write!(value, "{sep}\"{name}\";r={};t={t}", item.remaining);
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static("ratelimit-policy"), policy.clone());
            headers.insert(HeaderName::from_static("ratelimit"), value);
        }
    }
}

// === impl Items ===

impl Items {
    pub(super) fn push(&mut self, item: Item) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = item,
            None => self.spill.push(item),
        }
        self.len += 1;
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Item> {
        self.inline.iter().take(self.len).chain(self.spill.iter())
    }
}
