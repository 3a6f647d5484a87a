//! Checks of one `policies.NAME` entry: bounds and combinations within each section.

use std::collections::HashSet;

use super::super::file::{
    CircuitBreaker, Limit, Limits, LoadShed, PerTry, Policy, RateLimit, Retry, RetryOn, Timeout,
};
use super::super::locate::KeyPath;
use super::{syntax, Report};

/// The most calls `failure_rate.window` may count: a breaker keeps a byte per call.
pub(super) const MAX_RATE_WINDOW: u32 = 10_000;

/// Most tries a retry policy may ask for, the first included.
pub(super) const MAX_ATTEMPTS: u32 = 10;
/// Most `circuit_breaker.half_open_probes`: every probe must succeed before the breaker
/// closes, so at 4294967295 it stayed half-open for good.
pub(super) const MAX_HALF_OPEN_PROBES: u32 = 100;
/// A `load_shed.queue.timeout` below this is warned about: a waiter is shed before any slot
/// could free.
const MIN_QUEUE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(10);
/// Largest `retry.buffer`: every request in flight may hold this much for replay.
pub(super) const MAX_RETRY_BUFFER: u64 = 16 << 20;

/// Largest `burst`: the bound of a rate's own count. It keeps a bucket's capacity (the
/// RateLimit headers' `q`) a 10-digit number, well within a structured field's 15.
pub(super) const MAX_BURST: u64 = u32::MAX as u64;
/// Longest a bucket may take to refill its whole burst (`burst` ÷ rate), in days: 100 years.
/// A bucket counts its debt in nanoseconds on a `u64` (584 years) from the process's start, and
/// the global store in microseconds in a Lua double, exact below 2^53 (285 years after 1970);
/// past this the capacity would silently saturate. It also keeps the `w` of the RateLimit
/// headers a 10-digit number of seconds.
const MAX_REFILL_DAYS: u64 = 36_500;

/// Checks every section of the policy at `p`; `tunnels` names an outbound listener whose
/// routes carry it (so CONNECTs go through it), if one does.
pub(super) fn check(pol: &Policy, p: &KeyPath, tunnels: Option<&str>, r: &mut Report<'_>) {
    if let Some(t) = &pol.timeout {
        timeout(t, &p.key("timeout"), r);
    }
    if let Some(rt) = &pol.retry {
        retry(rt, &p.key("retry"), r);
    }
    if let Some(rl) = &pol.rate_limit {
        rate_limit(rl, &p.key("rate_limit"), r);
    }
    if let Some(cb) = &pol.circuit_breaker {
        breaker(cb, &p.key("circuit_breaker"), r);
    }
    if let Some(ls) = &pol.load_shed {
        load_shed(ls, &p.key("load_shed"), r);
        queue_within_request(ls, pol.timeout.as_ref(), p, r);
    }
    if let Some(f) = &pol.fault {
        super::resilience::fault(f, &p.key("fault"), tunnels, r);
    }
    if let Some(f) = &pol.fallback {
        super::resilience::fallback(f, &p.key("fallback"), r);
    }
    if let Some(i) = &pol.idempotency {
        super::resilience::idempotency(i, &p.key("idempotency"), r);
    }
}

fn timeout(t: &Timeout, p: &KeyPath, r: &mut Report<'_>) {
    if t.request.is_none() && t.per_try.is_none() && t.idle.is_none() {
        // As for the other sections that can be written empty (`rate_limit: {}`).
        r.warn(
            p,
            "no timeout is given (request, per_try or idle): this timeout section bounds nothing and does nothing",
        );
    }
    if let Some(req) = t.request {
        r.positive(&p.key("request"), req.0);
    }
    // `0s` is legal: it turns the idle timeout off.
    if let (Some(idle), Some(req)) = (t.idle, t.request) {
        if !idle.0.is_zero() && idle >= req {
            // The request's deadline covers the answer's body too, so it always cuts first.
            r.warn(
                &p.key("idle"),
                format!("idle {idle} is no shorter than request {req}, which bounds the whole exchange, the answer's body included: the request timeout always cuts first, so this idle timeout never acts"),
            );
        }
    }
    match t.per_try {
        Some(PerTry::Fixed(d)) => {
            r.positive(&p.key("per_try"), d.0);
            if let Some(req) = t.request {
                if d > req {
                    r.value(
                        &p.key("per_try"),
                        format!("per_try {d} is longer than request {req}; a try can never take that long"),
                    );
                }
            }
        }
        Some(PerTry::Auto { min, max }) => {
            let ap = p.key("per_try").key("auto");
            r.positive(&ap.key("min"), min.0);
            if min > max {
                r.value(
                    &ap.key("min"),
                    format!("min {min} is larger than max {max}"),
                );
            }
        }
        None => {}
    }
}

fn retry(rt: &Retry, p: &KeyPath, r: &mut Report<'_>) {
    if rt.attempts == 1 {
        r.warn(
            &p.key("attempts"),
            "attempts counts every try, the first included: 1 makes no retry, so this retry section does nothing",
        );
    }
    if !(1..=MAX_ATTEMPTS).contains(&rt.attempts) {
        r.value(
            &p.key("attempts"),
            format!("{} is out of range: attempts counts every try, the first included, from 1 to {MAX_ATTEMPTS}", rt.attempts),
        );
    }
    if rt.on.is_empty() {
        r.value(
            &p.key("on"),
            "an empty list retries nothing; remove the retry section instead",
        );
    }
    let mut seen = HashSet::new();
    for (i, on) in rt.on.iter().enumerate() {
        if !seen.insert(on) {
            // As `fallback.on`: a repeat is a slip, whatever it was meant to be.
            r.value(&p.key("on").idx(i), "listed twice");
        }
        if let RetryOn::Status(code @ 100..=499) = on {
            if *code != 408 && *code != 429 {
                r.value(
                    &p.key("on").idx(i),
                    format!("status {code} is not worth retrying: retry.on takes 5xx statuses, and of 1xx to 4xx only 408 and 429"),
                );
            }
        }
    }
    if rt.buffer.0 > MAX_RETRY_BUFFER {
        r.value(
            &p.key("buffer"),
            format!("{} is too large: the most is 16MiB", rt.buffer),
        );
    }
    let b = &rt.backoff;
    if b.base > b.max {
        r.value(
            &p.key("backoff").key("base"),
            format!("base {} is larger than max {}", b.base, b.max),
        );
    }
    r.positive(&p.key("budget").key("window"), rt.budget.window.0);
}

fn rate_limit(rl: &RateLimit, p: &KeyPath, r: &mut Report<'_>) {
    if rl.per_tenant.is_none()
        && rl.overrides.is_empty()
        && rl.total.is_none()
        && rl.plans.is_empty()
    {
        r.warn(
            p,
            "no limit is given (per_tenant, overrides, total or plans): this rate_limit admits everything and does nothing",
        );
    }
    if let Some(l) = &rl.per_tenant {
        limits(l, &p.key("per_tenant"), r);
    }
    for (tenant, l) in &rl.overrides {
        let op = p.key("overrides").key(tenant);
        if let Err(m) = syntax::tenant_id(tenant) {
            r.key(&op, m);
        }
        limits(l, &op, r);
    }
    if let Some(l) = &rl.total {
        limits(l, &p.key("total"), r);
    }
    for (plan, l) in &rl.plans {
        limits(l, &p.key("plans").key(plan), r);
    }
}

fn limits(ls: &Limits, p: &KeyPath, r: &mut Report<'_>) {
    if ls.0.is_empty() {
        r.value(
            p,
            "an empty list of limits admits everything; give a limit or remove the key",
        );
    }
    let mut names = HashSet::new();
    for (i, l) in ls.0.iter().enumerate() {
        // A single limit is written as a mapping, not a one-item list.
        let lp = if ls.0.len() == 1 && !r.doc_has_index(p) {
            p.clone()
        } else {
            p.idx(i)
        };
        if l.rate.count < 1 {
            r.value(
                &lp.key("rate"),
                format!(
                    "rate {} admits nothing: the count must be at least 1",
                    l.rate
                ),
            );
        }
        burst(l, &lp.key("burst"), r);
        super::plans::calendar_limit(l, &lp, r);
        if let Some(name) = &l.name {
            if let Err(m) = syntax::limit_name(name) {
                r.value(&lp.key("name"), m);
            } else if name == crate::policy::rate_limit::STORE_UNAVAILABLE {
                r.value(
                    &lp.key("name"),
                    format!(
                        "{name:?} is reserved: it is the `limit` of a refusal made because the \
                         global store was down (on_store_error: deny); choose another name"
                    ),
                );
            } else if !names.insert(name.as_str()) {
                r.value(
                    &lp.key("name"),
                    format!("another limit in this list is already named {name:?}"),
                );
            }
        }
    }
}

/// `burst`: at least 1, at most [`MAX_BURST`], and refilled by its rate within
/// [`MAX_REFILL_DAYS`].
fn burst(l: &Limit, p: &KeyPath, r: &mut Report<'_>) {
    let Some(b) = l.burst else { return };
    if b == 0 {
        r.value(
            p,
            "burst 0 admits nothing: it must be at least 1 (leave it out to use the rate's count)",
        );
        return;
    }
    if b > MAX_BURST {
        r.value(
            p,
            format!("burst {b} is too large: the most is {MAX_BURST}, as for a rate's count"),
        );
        return;
    }
    // burst × per / count, in nanoseconds (u128: no overflow for any u32 burst and count).
    let (count, per) = (u128::from(l.rate.count.max(1)), l.rate.per.as_nanos());
    let day = 86_400 * 1_000_000_000_u128;
    let refill = u128::from(b) * per / count;
    let most = u128::from(MAX_REFILL_DAYS) * day;
    if refill > most {
        let max_burst = most * count / per.max(1);
        r.value(
            p,
            format!(
                "burst {b} at {} takes {} days to refill: a bucket refills its burst in at most {MAX_REFILL_DAYS} days (100 years), so at this rate the burst may be at most {max_burst}",
                l.rate,
                refill.div_ceil(day),
            ),
        );
    }
}

fn breaker(cb: &CircuitBreaker, p: &KeyPath, r: &mut Report<'_>) {
    if cb.consecutive_failures.is_none() && cb.failure_rate.is_none() && cb.slow_call.is_none() {
        // Legal (a rule left out is off, SPEC §2), but then the breaker guards nothing.
        r.warn(
            p,
            "no rule is given (consecutive_failures, failure_rate or slow_call): this breaker never opens and does nothing",
        );
    }
    if let Some(n) = cb.consecutive_failures {
        r.at_least_1(&p.key("consecutive_failures"), n.into());
    }
    if let Some(fr) = &cb.failure_rate {
        let fp = p.key("failure_rate");
        if fr.threshold.0 <= 0.0 {
            r.value(
                &fp.key("threshold"),
                "a threshold of 0% opens on any failure; it must be above 0%",
            );
        }
        r.at_least_1(&fp.key("min_calls"), fr.min_calls.into());
        if fr.window > MAX_RATE_WINDOW {
            // Each breaker keeps a slot per call of its window (`scope: tenant`: per tenant).
            r.value(
                &fp.key("window"),
                format!(
                    "window {} is more calls than a breaker keeps: at most {MAX_RATE_WINDOW}",
                    fr.window
                ),
            );
        } else if fr.window == 0 {
            r.value(
                &fp.key("window"),
                format!("must be at least 1 (got 0): it counts the last calls judged, from min_calls to {MAX_RATE_WINDOW}"),
            );
        } else if fr.window < fr.min_calls {
            r.value(
                &fp.key("window"),
                format!(
                    "window {} is smaller than min_calls {}: the rate would never be judged; it must be from min_calls to {MAX_RATE_WINDOW}",
                    fr.window, fr.min_calls
                ),
            );
        }
    }
    if let Some(sc) = &cb.slow_call {
        let sp = p.key("slow_call");
        r.positive(&sp.key("duration"), sc.duration.0);
        if sc.threshold.0 <= 0.0 {
            r.value(
                &sp.key("threshold"),
                "a threshold of 0% opens on any call; it must be above 0%",
            );
        }
    }
    r.positive(&p.key("open_for"), cb.open_for.0);
    if let Some(max) = cb.open_for_max {
        if max < cb.open_for {
            r.value(
                &p.key("open_for_max"),
                format!(
                    "open_for_max {max} is shorter than open_for {}",
                    cb.open_for
                ),
            );
        }
    }
    r.at_least_1(&p.key("half_open_probes"), cb.half_open_probes.into());
    if cb.half_open_probes > MAX_HALF_OPEN_PROBES {
        r.value(
            &p.key("half_open_probes"),
            format!(
                "{} is out of range: 1 to {MAX_HALF_OPEN_PROBES} (every probe must succeed before the breaker closes, so more would keep it half-open for good)",
                cb.half_open_probes
            ),
        );
    }
}

/// A queue wait that the request's timeout always cuts first never acts: the request's
/// deadline counts from the request's head, before it joins the queue, and a waiter it ends is
/// answered as the request timeout's (504), never as a queue timeout's (503 `shed`).
fn queue_within_request(ls: &LoadShed, t: Option<&Timeout>, p: &KeyPath, r: &mut Report<'_>) {
    let (Some(q), Some(req)) = (&ls.queue, t.and_then(|t| t.request)) else {
        return;
    };
    if q.size > 0 && q.timeout >= req {
        r.warn(
            &p.key("load_shed").key("queue").key("timeout"),
            format!("a queue wait of {} is no shorter than timeout.request {req}, which counts from the request's head and ends the wait first: a waiter is answered 504 timeout, never 503 shed, and this queue timeout never acts; make it shorter than the request timeout", q.timeout),
        );
    }
}

fn load_shed(ls: &LoadShed, p: &KeyPath, r: &mut Report<'_>) {
    let limited = ls.max_in_flight.is_some()
        || ls.per_tenant_max_in_flight.is_some()
        || ls.adaptive.is_some();
    if !limited {
        // Nothing waits or is shed without a limit: the queue and the priorities never act.
        r.warn(
            p,
            "no limit is given (max_in_flight, per_tenant_max_in_flight or adaptive): nothing is ever queued or shed, so this load_shed does nothing",
        );
    }
    // The queue waits for the route's limit only (max_in_flight or adaptive): a tenant at its
    // per-tenant cap is shed at once, never queued. Priorities act only in the queue.
    let route_limited = ls.max_in_flight.is_some() || ls.adaptive.is_some();
    let queues = ls.queue.as_ref().is_some_and(|q| q.size > 0);
    if let Some(q) = &ls.queue {
        let tp = p.key("queue").key("timeout");
        if q.size == 0 && r.is_written(&tp) {
            r.warn(
                &tp,
                "a queue of size 0 holds no request, so its timeout never applies",
            );
        } else if q.size > 0 && q.timeout.0 < MIN_QUEUE_TIMEOUT {
            r.warn(
                &tp,
                format!("a wait of {} is shorter than any slot takes to free: a request that finds no free slot is shed as good as at once, as with a queue of size 0; give the queue a timeout of 10ms or more, or remove it", q.timeout),
            );
        }
        if limited && !route_limited && q.size > 0 {
            r.warn(
                &p.key("queue"),
                "the queue waits for max_in_flight or adaptive, and neither is given: a tenant at per_tenant_max_in_flight is shed at once, so nothing ever waits here",
            );
        }
    }
    if ls.priority.is_some() && limited && !(queues && route_limited) {
        r.warn(
            &p.key("priority"),
            "priorities act only among requests waiting in the queue, and this load_shed has no queue that anything waits in (queue with size above 0, and max_in_flight or adaptive): a request that finds no free slot is shed whatever its priority",
        );
    }
    if let Some(n) = ls.max_in_flight {
        r.at_least_1(&p.key("max_in_flight"), n.into());
    }
    if let Some(n) = ls.per_tenant_max_in_flight {
        r.at_least_1(&p.key("per_tenant_max_in_flight"), n.into());
        if let Some(max) = ls.max_in_flight {
            if n > max {
                r.value(
                    &p.key("per_tenant_max_in_flight"),
                    format!("{n} is larger than max_in_flight {max}"),
                );
            }
        }
    }
    if let Some(a) = &ls.adaptive {
        let ap = p.key("adaptive");
        r.at_least_1(&ap.key("min"), a.min.into());
        if a.min > a.max {
            r.value(
                &ap.key("min"),
                format!("min {} is larger than max {}", a.min, a.max),
            );
        } else if let Some(n) = ls.max_in_flight.filter(|n| a.min >= *n && a.min >= 1) {
            // The limit in force is the lower of max_in_flight and the adaptive limit, which
            // never goes below min: at or above max_in_flight, it is max_in_flight for good.
            r.warn(
                &ap.key("min"),
                format!("min {} is not below max_in_flight {n}: the limit in force is the lower of the two, and adaptive never lowers the limit below its min, so it is always max_in_flight and adaptive never acts; lower min (or raise max_in_flight) to let latency shrink the limit", a.min),
            );
        }
    }
    if let Some(pr) = &ls.priority {
        if let Err(m) = syntax::header_name(&pr.header) {
            r.value(&p.key("priority").key("header"), m);
        }
    }
}
