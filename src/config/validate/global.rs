//! Checks of `global_store` and of the `rate_limit` keys that use it (SPEC §9).
//!
//! A `scope: global` limit without a store would silently be per process, so it is refused at
//! its `scope`; the keys that only act with `scope: global` (`on_store_error`, `lease`,
//! `lease_ttl`) warn where they cannot act, and a store that nothing uses warns at its key.

use std::time::Duration;

use super::super::file::{redact_url, File, Limit, LimitScope, LimitWindow, RateLimit, RedisStore};
use super::super::locate::KeyPath;
use super::Report;

/// Longest `global_store.redis.timeout`: every request of a tenant without leased tokens may
/// wait this long, so a larger value would trade the latency budget for a remote counter.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `key_prefix`: it is sent with every store call.
const MAX_PREFIX: usize = 64;
/// Largest `lease`: beyond it, one replica could hold a whole fleet's budget.
pub(super) const MAX_LEASE: u64 = 100_000;
/// Longest `lease_ttl`: leased tokens spent later than this would stretch the limit's window.
const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

/// Checks the store and every policy's global keys.
pub(super) fn check(f: &File, r: &mut Report<'_>) {
    let root = KeyPath::default();
    if let Some(g) = &f.global_store {
        redis(&g.redis, &root.key("global_store").key("redis"), r);
    }
    let mut used = false;
    for (name, p) in &f.policies {
        let Some(rl) = &p.rate_limit else {
            continue;
        };
        let rp = root.key("policies").key(name).key("rate_limit");
        used |= rl.scope == LimitScope::Global;
        rate_limit(rl, f.global_store.is_some(), &rp, r);
    }
    used |= f.policies.values().any(|p| p.idempotency.is_some());
    if f.global_store.is_some() && !used {
        r.warn(
            &root.key("global_store"),
            "no rate_limit has `scope: global` and no policy has `idempotency`, so nothing uses this store",
        );
    }
}

fn redis(s: &RedisStore, p: &KeyPath, r: &mut Report<'_>) {
    match url(&s.url) {
        Err(m) => r.value(&p.key("url"), m),
        Ok(u) => {
            let credentials = !u.username().is_empty() || u.password().is_some();
            let host = u.host_str().unwrap_or_default();
            if credentials && !s.is_tls() && !super::syntax::is_loopback_host(host) {
                r.warn(
                    &p.key("url"),
                    "the password goes in clear text to a store off this machine; use rediss://",
                );
            }
        }
    }
    if let Some(tls) = &s.tls {
        if s.is_tls() {
            super::upstream::client_tls(tls, &p.key("tls"), r);
        } else {
            // A TLS setting is never ignored: with `redis://` the store (and the URL's
            // password) would be spoken to in clear text.
            r.value(
                &p.key("tls"),
                "`tls` needs a rediss:// url: with redis:// the store is spoken to in clear text",
            );
        }
    }
    let prefix = &s.key_prefix;
    if prefix.len() > MAX_PREFIX {
        r.value(
            &p.key("key_prefix"),
            format!(
                "{} bytes is too long: the most is {MAX_PREFIX}",
                prefix.len()
            ),
        );
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) || prefix.contains(['{', '}']) {
        r.value(
            &p.key("key_prefix"),
            "use printable ASCII without spaces, `{` or `}` (braces would move keys between Redis Cluster slots)",
        );
    }
    let t = s.timeout.0;
    r.positive(&p.key("timeout"), t);
    if t > MAX_STORE_TIMEOUT {
        r.value(
            &p.key("timeout"),
            format!(
                "{} is too long: a request may wait this long on the store; the most is 5s",
                s.timeout
            ),
        );
    }
}

/// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` (TLS, verified); sockets are
/// not built in, nor is a way to skip verification (the client's `#insecure`). A message
/// shows the URL without its password.
fn url(u: &str) -> Result<url::Url, String> {
    let shown = redact_url(u);
    let rest = match u.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("redis") || scheme.eq_ignore_ascii_case("rediss") =>
        {
            rest
        }
        _ => {
            return Err(format!(
                "{shown:?} is not a redis:// or rediss:// URL (unix sockets are not supported by this build)"
            ))
        }
    };
    if rest.contains('#') {
        return Err(format!(
            "{shown:?}: a fragment is not taken (TLS is always verified; its settings go under `tls`)"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{shown:?} names no host"));
    }
    if let Some(db) = rest
        .split_once('/')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
    {
        if db.parse::<u16>().is_err() {
            return Err(format!(
                "{shown:?}: the database after `/` must be a number"
            ));
        }
    }
    redis::parse_redis_url(u).ok_or_else(|| format!("{shown:?} is not a valid URL"))
}

fn rate_limit(rl: &RateLimit, has_store: bool, p: &KeyPath, r: &mut Report<'_>) {
    let global = rl.scope == LimitScope::Global;
    if global && !has_store {
        r.value(
            &p.key("scope"),
            "`scope: global` needs a `global_store` section (where the shared buckets live)",
        );
    }
    if !global {
        let inert = [
            ("on_store_error", rl.on_store_error.is_some()),
            ("lease", rl.lease.is_some()),
            ("lease_ttl", rl.lease_ttl.is_some()),
        ];
        for (key, _) in inert.iter().filter(|(_, given)| *given) {
            r.warn(
                &p.key(key),
                format!("`{key}` acts only with `scope: global`; here it does nothing"),
            );
        }
        return;
    }
    if let Some(n) = rl.lease {
        if !(1..=MAX_LEASE).contains(&n) {
            r.value(
                &p.key("lease"),
                format!("{n} is out of range: a lease is 1 to {MAX_LEASE} tokens"),
            );
        } else if let Some((cap, at)) = smallest_bucket(rl).filter(|(cap, _)| n > *cap) {
            r.warn(
                &p.key("lease"),
                format!(
                    "a lease of {n} is more than the {cap} token(s) of the bucket at `{at}`: one \
                     replica can take that whole bucket in one lease, and the other replicas get \
                     none of it until this one spends it or `lease_ttl` drops it; a lease of at \
                     most a tenth of the bucket (the default) lets them share it"
                ),
            );
        }
    }
    if let Some(t) = rl.lease_ttl {
        r.positive(&p.key("lease_ttl"), t.0);
        if t.0 > MAX_LEASE_TTL {
            r.value(
                &p.key("lease_ttl"),
                format!("{t} is too long: leased tokens spent that late would stretch the limit; the most is 1m"),
            );
        }
    }
}

/// The smallest bucket of `rl` (tokens, and where it is written, under `rate_limit`): a lease
/// larger than it can empty it in one call.
fn smallest_bucket(rl: &RateLimit) -> Option<(u64, String)> {
    let capacity = |l: &Limit| match l.window {
        LimitWindow::Smooth => l.burst.unwrap_or(l.rate.count).max(1),
        LimitWindow::Calendar => l.rate.count.max(1),
    };
    let named = |key: String, ls: &[Limit]| {
        let many = ls.len() > 1;
        ls.iter()
            .enumerate()
            .map(|(i, l)| {
                let at = if many {
                    format!("{key}[{i}]")
                } else {
                    key.clone()
                };
                (capacity(l), at)
            })
            .collect::<Vec<_>>()
    };
    let mut all = Vec::new();
    if let Some(l) = &rl.per_tenant {
        all.extend(named("per_tenant".into(), &l.0));
    }
    for (tenant, l) in &rl.overrides {
        all.extend(named(format!("overrides.{tenant}"), &l.0));
    }
    for (plan, l) in &rl.plans {
        all.extend(named(format!("plans.{plan}"), &l.0));
    }
    if let Some(l) = &rl.total {
        all.extend(named("total".into(), &l.0));
    }
    all.into_iter().min_by_key(|(cap, _)| *cap)
}
