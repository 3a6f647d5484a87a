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
//!
//! Unspent leased tokens may be given back ([`GlobalStore::give_back`], when a lease is evicted
//! from memory): to each limit whose field still holds what the lease's own take wrote (its
//! *mark*), so nothing took from or gave back to that bucket since. Only then is it certain
//! that the tokens are still owed: a take by anyone else may have found the bucket full
//! between, which forgives debt in a way the store cannot attribute afterwards, and giving back
//! then could hand out tokens twice. A smooth limit gets back the part of the tokens' debt that
//! has not yet run out (at most `tokens × T`), a calendar one its `tokens` (its window is the
//! same: the mark names it). A limit whose field moved keeps them: the strict side, as before.

use redis::Script;

use super::{GlobalStore, StoreError};
use crate::config::file::{Limit, LimitWindow};

/// Takes up to ARGV[1] tokens from every limit. KEYS[1] holds the first ARGV[2] limits (the
/// tenant's), KEYS[2] (if given) the rest (the route's total). Each limit is 4 ARGV: field,
/// kind (`s` smooth, `c` calendar), then `T` and `tau` (smooth) or window and count (calendar),
/// in µs. Returns `{granted, remaining_1, wait_1, mark_1, remaining_2, wait_2, mark_2, ...}`:
/// tokens granted, and per limit the tokens left, the µs until one more, and the value its
/// field holds after this take (the mark [`GIVE_BACK`] checks).
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
  out[#out + 1] = nv
end
for s = 1, #KEYS do
  if ttl[s] > 0 then
    redis.call('PEXPIRE', KEYS[s], math.floor(ttl[s] / 1000) + 1000)
  end
end
return out
";

/// Gives ARGV[1] unspent tokens back to every limit whose field still holds its mark. KEYS and
/// ARGV[2] as in [`SCRIPT`]; each limit is 4 ARGV: field, kind, `T` (smooth) or window
/// (calendar) in µs, and the mark the lease's take left. A smooth limit's value moves back by
/// what is left of the tokens' debt (`tokens × T` at most; none once the bucket would be full
/// anyway); a calendar limit's used count by the tokens (the mark is in the current window,
/// since the field still holds it). Keys are never created, and their expiry is kept: it can
/// only be later than needed.
const GIVE_BACK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = tonumber(ARGV[1])
local nt = tonumber(ARGV[2])
local n = (#ARGV - 2) / 4
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local key = KEYS[1]
  if i > nt then key = KEYS[2] end
  local v = tonumber(redis.call('HGET', key, ARGV[b + 1]) or '')
  if v and v == tonumber(ARGV[b + 4]) then
    local nv = v - k
    if ARGV[b + 2] == 's' then
      nv = v - math.min(k * tonumber(ARGV[b + 3]), v - now)
    end
    if nv < v then
      redis.call('HSET', key, ARGV[b + 1], string.format('%d', nv))
    end
  end
end
return 0
";

/// Leases given back in one pipeline (one round trip).
const GIVE_BACK_PIPELINE: usize = 256;

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
/// store, the microseconds until one more, and the mark of the take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted (0: refused).
    pub granted: u64,
    /// `(remaining, wait_us, mark)` per limit: the mark is the value the take left in the
    /// limit's field, what [`GlobalStore::give_back`] must find there.
    pub items: Vec<(u64, u64, u64)>,
}

/// Unspent tokens of one lease, to give back.
#[derive(Debug)]
pub struct Return<'a> {
    /// The tenant's key ([`GlobalStore::tenant_key`]).
    pub tenant_key: &'a str,
    /// The route's total key, if the route has `total` limits.
    pub total_key: Option<&'a str>,
    /// The tenant's limits the tokens were leased from.
    pub tenant: &'a [StoreLimit],
    /// The route's `total` limits.
    pub total: &'a [StoreLimit],
    /// The lease's grant's mark per limit (tenant's, then total's), as [`Grant::items`] had it.
    pub marks: &'a [u64],
    /// Tokens unspent.
    pub tokens: u64,
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
        while let (Some(r), Some(w), Some(m)) = (it.next(), it.next(), it.next()) {
            items.push((r, w, m));
        }
        Ok(Grant { granted, items })
    }

    /// Gives unspent leased tokens back ([`GIVE_BACK`]), a pipeline of up to
    /// [`GIVE_BACK_PIPELINE`] leases per round trip, each within the store's timeout; stops at
    /// the first that gets no answer (the rest stay spent: the strict side).
    pub async fn give_back(&self, returns: &[Return<'_>]) -> Result<(), StoreError> {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(GIVE_BACK));
        for chunk in returns.chunks(GIVE_BACK_PIPELINE) {
            let mut pipe = redis::pipe();
            // Loaded in the same round trip: a store that restarted has no scripts.
            pipe.load_script(script).ignore();
            for r in chunk {
                let mut inv = script.prepare_invoke();
                inv.key(r.tenant_key);
                if let Some(k) = r.total_key.filter(|_| !r.total.is_empty()) {
                    inv.key(k);
                }
                inv.arg(r.tokens).arg(r.tenant.len());
                for (l, mark) in r.tenant.iter().chain(r.total).zip(r.marks) {
                    inv.arg(&l.field).arg(l.kind).arg(l.a).arg(*mark);
                }
                pipe.invoke_script(&inv).ignore();
            }
            self.call(|mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?;
        }
        Ok(())
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
