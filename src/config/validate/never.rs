//! Settings that are valid on their own but can never act where they stand, found by looking
//! across sections: each draws a warning at its key (configuration never lies, README).
//!
//! - `outlier` that can never eject: `max_ejected: 0%`; or an upstream of IP endpoints only
//!   where `max_ejected` of them rounds down to none, or that has a single one (the last
//!   available endpoint is never ejected: its failures are left to the breaker and retries,
//!   where an upstream with nothing left to send to would answer every request 502).
//! - `resolve_every` on an upstream whose endpoints are all IP addresses: nothing to resolve.
//! - `circuit_breaker.slow_call.duration` that no try can outlast: every try that feeds the
//!   breaker (those of every route to its upstream, SPEC §2) is cut sooner by a timeout.
//! - `fallback.on: [shed]` in a policy without `load_shed`, and `fallback.on: [circuit_open]`
//!   on routes that no breaker guards. (`timeout` always can fire: a gRPC call's own
//!   `grpc-timeout` sets a deadline on any route.)
//! - `retry.on: [timeout]` in a policy where neither `timeout.per_try` nor `timeout.idle` ever
//!   cuts a try before the request's deadline (none or `0s`, or as long as `timeout.request`):
//!   only a try cut by one of those is retried (the request's deadline ends the request, a
//!   connect timeout is a `connect_error`).
//! - A `retry.budget` that grants no retry: `ratio: 0%` with `min_per_second × window` under
//!   one retry.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::super::file::{
    Direction, FallbackOn, File, PerTry, Policy, RetryOn, Upstream, IDLE_TIMEOUT,
};
use super::super::locate::KeyPath;
use super::Report;

/// Adds the warnings of this module.
pub(super) fn check(f: &File, r: &mut Report<'_>) {
    let root = KeyPath::default();
    for (name, up) in &f.upstreams {
        upstream(up, &root.key("upstreams").key(name), r);
    }
    for (name, pol) in &f.policies {
        let p = root.key("policies").key(name);
        slow_call(f, name, pol, &p, r);
        fallback(f, name, pol, &p, r);
        retry(pol, &p, r);
    }
}

fn retry(pol: &Policy, p: &KeyPath, r: &mut Report<'_>) {
    let Some(rt) = &pol.retry else { return };
    let rp = p.key("retry");
    // Whether a try can be cut by its per-try limit (the shortest) or the idle timeout (on by
    // default) before the request's deadline.
    let cuts = |limit: Duration, req: Option<Duration>| req.is_none_or(|req| limit < req);
    let request = pol.timeout.as_ref().and_then(|t| t.request).map(|d| d.0);
    let per_try_cuts = pol.timeout.as_ref().is_some_and(|t| {
        let shortest = match t.per_try {
            Some(PerTry::Fixed(d)) => d.0,
            Some(PerTry::Auto { min, .. }) => min.0,
            None => return false,
        };
        cuts(shortest, request)
    });
    let idle = pol.timeout.as_ref().and_then(|t| t.idle);
    let idle = idle.unwrap_or(IDLE_TIMEOUT).0;
    let idle_cuts = !idle.is_zero() && cuts(idle, request);
    if let Some(i) = rt.on.iter().position(|o| matches!(o, RetryOn::Timeout)) {
        if !per_try_cuts && !idle_cuts {
            r.warn(
                &rp.key("on").idx(i),
                "timeout retries a try cut by timeout.per_try or timeout.idle, and in this policy none is (no per_try, or one no shorter than the request timeout; an idle timeout off, or no shorter than the request timeout: the request's deadline ends the request, and a connect timeout is a connect_error): this entry never acts",
            );
        }
    }
    let b = &rt.budget;
    // The same rounding as `policy::retry::budget`: whole retries per window.
    let floor = u128::from(b.min_per_second) * b.window.0.as_micros();
    if b.ratio.0 <= 0.0 && floor < 1_000_000 {
        let bp = rp.key("budget");
        let msg = if b.min_per_second == 0 {
            "ratio 0% and min_per_second 0 grant no retry: this retry section never retries"
                .to_string()
        } else {
            format!(
                "ratio 0% and min_per_second {} over a {} window grant under one retry per window, which rounds down to none: this retry section never retries",
                b.min_per_second, b.window
            )
        };
        r.warn(&bp, msg);
    } else if b.ratio.0 > 0.0 && floor < 1_000_000 && b.window.0 < Duration::from_secs(1) {
        // The reserve grants none, and the ratio one only after 1/ratio original requests
        // within one short window: at most routes' rates, no retry is ever granted.
        let needed = (1.0 / b.ratio.0).ceil();
        let per_second = needed / b.window.0.as_secs_f64().max(0.001);
        r.warn(
            &rp.key("budget").key("window"),
            format!(
                "over a {} window, min_per_second {} grants under one retry, which rounds down to none, and ratio {} grants one only after {needed} requests within one window: below {per_second:.0} requests per second this retry section never retries; use a window of seconds (the default is 10s)",
                b.window, b.min_per_second, b.ratio
            ),
        );
    }
}

/// Whether every endpoint of `up` is an IP address (so the count of endpoints is known).
fn all_ip(up: &Upstream) -> bool {
    up.endpoints.iter().all(|e| e.parse::<SocketAddr>().is_ok())
}

fn upstream(up: &Upstream, p: &KeyPath, r: &mut Report<'_>) {
    let ips = !up.endpoints.is_empty() && all_ip(up);
    let rp = p.key("resolve_every");
    if ips && r.is_written(&rp) {
        r.warn(
            &rp,
            "every endpoint of this upstream is an IP address, so there is no name to re-resolve: resolve_every does nothing",
        );
    }
    let Some(o) = &up.outlier else { return };
    let op = p.key("outlier");
    let mp = op.key("max_ejected");
    let at = if r.is_written(&mp) { mp } else { op };
    if o.max_ejected.0 <= 0.0 {
        r.warn(
            &at,
            "max_ejected 0% lets no endpoint be ejected: this outlier section never acts",
        );
        return;
    }
    if !ips {
        // A name may yield any number of addresses: the cap is only known at run time.
        return;
    }
    let n = up.endpoints.len();
    if n == 1 {
        r.warn(
            &at,
            "this upstream has a single endpoint, and outlier detection never ejects the last available endpoint (its failures are left to the breaker and retries): this outlier section never acts",
        );
        return;
    }
    // The same rounding as `proxy::health::outlier`.
    let cap = (o.max_ejected.0 * n as f64 + 1e-9).floor();
    if cap < 1.0 {
        let least = (100.0 / n as f64).ceil();
        r.warn(
            &at,
            format!(
                "max_ejected {} of {n} endpoints rounds down to none: this outlier section never ejects (give at least {least}%)",
                o.max_ejected
            ),
        );
    }
}

/// The longest one try of a route with policy `pol` can take, or `None` if nothing bounds it.
fn try_bound(pol: Option<&Policy>) -> Option<Duration> {
    let t = pol?.timeout.as_ref()?;
    let per_try = match t.per_try {
        Some(PerTry::Fixed(d)) => Some(d.0),
        Some(PerTry::Auto { max, .. }) => Some(max.0),
        None => None,
    };
    [t.request.map(|d| d.0), per_try]
        .into_iter()
        .flatten()
        .min()
}

/// The upstreams that routes with policy `name` send to.
fn reached<'f>(f: &'f File, name: &str) -> BTreeSet<&'f str> {
    f.listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter(|rt| rt.policy.as_deref() == Some(name))
        .map(|rt| rt.upstream.as_str())
        .collect()
}

fn slow_call(f: &File, name: &str, pol: &Policy, p: &KeyPath, r: &mut Report<'_>) {
    let Some(sc) = pol
        .circuit_breaker
        .as_ref()
        .and_then(|cb| cb.slow_call.as_ref())
    else {
        return;
    };
    let ups = reached(f, name);
    // The longest try that feeds the breaker: every route to its upstream (SPEC §2), or this
    // policy's own bound when no route uses it.
    let mut longest = Some(Duration::ZERO);
    let mut feeds = |bound: Option<Duration>| {
        longest = longest.zip(bound).map(|(a, b)| a.max(b));
    };
    if ups.is_empty() {
        feeds(try_bound(Some(pol)));
    }
    for l in &f.listeners {
        for rt in l
            .routes
            .iter()
            .filter(|rt| ups.contains(rt.upstream.as_str()))
        {
            let policy = rt.policy.as_ref().and_then(|n| f.policies.get(n));
            feeds(try_bound(policy));
            if l.direction == Direction::Outbound {
                // A CONNECT's try is its connect, bounded by the upstream's connect_timeout.
                let connect = f.upstreams.get(&rt.upstream).map(|u| u.connect_timeout.0);
                feeds(connect);
            }
        }
    }
    let Some(longest) = longest else { return };
    if sc.duration.0 >= longest {
        r.warn(
            &p.key("circuit_breaker").key("slow_call").key("duration"),
            format!(
                "no try this breaker judges can last longer than {:?} (its timeouts cut it first), so none is slower than {}: slow_call never acts; make duration shorter than the timeout",
                longest, sc.duration
            ),
        );
    }
}

fn fallback(f: &File, name: &str, pol: &Policy, p: &KeyPath, r: &mut Report<'_>) {
    let Some(fb) = &pol.fallback else { return };
    let onp = p.key("fallback").key("on");
    for (i, on) in fb.on.iter().enumerate() {
        match on {
            FallbackOn::Shed if pol.load_shed.is_none() => r.warn(
                &onp.idx(i),
                "this policy has no load_shed, so its routes never answer shed: this entry never acts",
            ),
            FallbackOn::CircuitOpen if pol.circuit_breaker.is_none() && !guarded(f, name) => {
                r.warn(
                    &onp.idx(i),
                    "no circuit breaker guards the upstreams of this policy's routes (no policy reaching them has circuit_breaker), so they never answer circuit_open: this entry never acts",
                );
            }
            _ => {}
        }
    }
}

/// Whether a breaker guards an upstream that a route of policy `name` sends to: a policy with
/// `circuit_breaker` reaches it (SPEC §2).
fn guarded(f: &File, name: &str) -> bool {
    let ups = reached(f, name);
    f.listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter(|rt| ups.contains(rt.upstream.as_str()))
        .filter_map(|rt| rt.policy.as_ref().and_then(|n| f.policies.get(n)))
        .any(|p| p.circuit_breaker.is_some())
}
