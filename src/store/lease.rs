//! Leasing tokens from the store: one Lua script takes up to N tokens from every limit of a
//! tenant (and of its route's `total`) at once, atomically.
//!
//! Why a script: Redis runs it alone, so two ramparts can never both take the last token, and
//! one round trip decides every limit. Time is Redis's own (`TIME`), so the replicas' clocks do
//! not have to agree. State per limit is one number in a hash field, as in the local GCRA:
//! - smooth limits keep a theoretical arrival time (TAT) in microseconds; taking `k` tokens
//!   moves it by `k × T` and is allowed while the debt stays within `tau = T × capacity`;
//! - calendar limits keep `window start + used`, as `calendar.rs` does.
//!
//! Microseconds, because Lua numbers are doubles: Unix time in µs (about 2^51) is still exact,
//! in ns it is not. `T` is rounded to whole µs (at least 1), so a limit faster than 1,000,000/s
//! per tenant is not exact; below 10,000/s the rounding is under 0.5%.
//!
//! Field names carry the limit's constants, so a reload that changes a limit starts its shared
//! bucket afresh instead of reading another limit's state. Keys expire once every bucket in
//! them would be full again (or the calendar window is over), so idle tenants cost nothing.

use redis::Script;

use super::{GlobalStore, StoreError};
use crate::config::file::{Limit, LimitWindow};

/// Takes up to ARGV[1] tokens from every limit. KEYS[1] holds the first ARGV[2] limits (the
/// tenant's), KEYS[2] (if given) the rest (the route's total). Each limit is 4 ARGV: field,
/// kind (`s` smooth, `c` calendar), then `T` and `tau` (smooth) or window and count (calendar),
/// in µs. Returns `{granted, remaining_1, wait_1, remaining_2, wait_2, ...}`: tokens granted,
/// and per limit the tokens left and the µs until one more.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local nt = tonumber(ARGV[2])
local n = (#ARGV - 2) / 4
local vals = {}
local fit = want
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local key = KEYS[1]
  if i > nt then key = KEYS[2] end
  local v = tonumber(redis.call('HGET', key, ARGV[b + 1]) or '0') or 0
  local a = tonumber(ARGV[b + 3])
  local c = tonumber(ARGV[b + 4])
  local free
  if ARGV[b + 2] == 's' then
    free = math.floor((now + c - math.max(v, now)) / a)
  else
    local start = now - now % a
    local used = 0
    if v >= start then used = v - start end
    free = c - used
  end
  if free < fit then fit = free end
  vals[i] = v
end
if fit < 0 then fit = 0 end
local out = {fit}
local ttl = {0, 0}
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local slot = 1
  if i > nt then slot = 2 end
  local v = vals[i]
  local a = tonumber(ARGV[b + 3])
  local c = tonumber(ARGV[b + 4])
  local nv, rem, wait, life
  if ARGV[b + 2] == 's' then
    nv = math.max(v, now) + fit * a
    rem = math.floor((now + c - nv) / a)
    wait = nv + a - c - now
    life = nv - now
  else
    local start = now - now % a
    local used = 0
    if v >= start then used = v - start end
    nv = start + used + fit
    rem = c - used - fit
    wait = 0
    if rem <= 0 then wait = start + a - now end
    life = start + a - now
  end
  if wait < 0 then wait = 0 end
  if fit > 0 then
    redis.call('HSET', KEYS[slot], ARGV[b + 1], string.format('%d', nv))
  end
  if life > ttl[slot] then ttl[slot] = life end
  out[#out + 1] = rem
  out[#out + 1] = wait
end
for s = 1, #KEYS do
  if ttl[s] > 0 then
    redis.call('PEXPIRE', KEYS[s], math.floor(ttl[s] / 1000) + 1000)
  end
end
return out
";

/// One limit as the script sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLimit {
    field: String,
    kind: &'static str,
    a: u64,
    c: u64,
    /// Tokens it holds when full.
    pub capacity: u64,
}

/// What a lease got: tokens, and per limit (tenant's, then total's) the tokens left in the
/// store and the microseconds until one more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted (0: refused).
    pub granted: u64,
    /// `(remaining, wait_us)` per limit.
    pub items: Vec<(u64, u64)>,
}

/// A lease request.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The tenant's key ([`GlobalStore::tenant_key`]).
    pub tenant_key: &'a str,
    /// The route's total key, if the route has `total` limits.
    pub total_key: Option<&'a str>,
    /// The tenant's limits.
    pub tenant: &'a [StoreLimit],
    /// The route's `total` limits.
    pub total: &'a [StoreLimit],
    /// Tokens wanted.
    pub want: u64,
}

// === impl StoreLimit ===

impl StoreLimit {
    /// The store's view of `limit`.
    pub fn new(limit: &Limit) -> Self {
        let count = u128::from(limit.rate.count.max(1));
        let per_us = (limit.rate.per.as_nanos() / 1000).max(1);
        let cap = limit.burst.unwrap_or(limit.rate.count).max(1);
        let (kind, a, c, capacity) = match limit.window {
            LimitWindow::Smooth => {
                let t = clamp((per_us + count / 2) / count).max(1);
                ("s", t, t.saturating_mul(cap), cap)
            }
            LimitWindow::Calendar => (
                "c",
                clamp(per_us),
                limit.rate.count.max(1),
                limit.rate.count.max(1),
            ),
        };
        StoreLimit {
            field: format!("{kind}:{a}:{c}"),
            kind,
            a,
            c,
            capacity,
        }
    }
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

// === impl GlobalStore ===

impl GlobalStore {
    /// Takes up to `ask.want` tokens from every limit at once, within the store's timeout.
    pub async fn lease(&self, ask: &Ask<'_>) -> Result<Grant, StoreError> {
        // Built once per process: `Script` hashes its text (for EVALSHA).
        static LEASE: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = LEASE.get_or_init(|| Script::new(SCRIPT));
        let mut inv = script.prepare_invoke();
        inv.key(ask.tenant_key);
        if let Some(k) = ask.total_key.filter(|_| !ask.total.is_empty()) {
            inv.key(k);
        }
        inv.arg(ask.want).arg(ask.tenant.len());
        for l in ask.tenant.iter().chain(ask.total) {
            inv.arg(&l.field).arg(l.kind).arg(l.a).arg(l.c);
        }
        let reply: Vec<i64> = self
            .call(|mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        let mut it = reply.into_iter().map(|v| u64::try_from(v).unwrap_or(0));
        let granted = it.next().unwrap_or(0);
        let mut items = Vec::with_capacity(ask.tenant.len() + ask.total.len());
        while let (Some(r), Some(w)) = (it.next(), it.next()) {
            items.push((r, w));
        }
        Ok(Grant { granted, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Rate;

    fn limit(rate: &str, burst: Option<u64>, window: LimitWindow) -> Limit {
        Limit {
            rate: rate.parse::<Rate>().expect("a valid rate"),
            burst,
            name: None,
            window,
        }
    }

    #[test]
    fn limits_become_microsecond_constants_named_by_their_values() {
        let l = StoreLimit::new(&limit("100/s", Some(200), LimitWindow::Smooth));
        assert_eq!(
            (l.kind, l.a, l.c, l.capacity),
            ("s", 10_000, 2_000_000, 200)
        );
        assert_eq!(l.field, "s:10000:2000000");
        let l = StoreLimit::new(&limit("3/s", None, LimitWindow::Smooth));
        assert_eq!(
            (l.a, l.capacity),
            (333_333, 3),
            "T is rounded to the nearest µs"
        );
        let l = StoreLimit::new(&limit("10000/d", None, LimitWindow::Calendar));
        assert_eq!((l.kind, l.a, l.c), ("c", 86_400_000_000, 10_000));
        let fast = StoreLimit::new(&limit("5000000/s", None, LimitWindow::Smooth));
        assert_eq!(fast.a, 1, "faster than 1/µs is held at 1 µs");
    }
}
