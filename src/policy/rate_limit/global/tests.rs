//! Leases on their own: spending, expiry, plan changes, what may be dropped.

use super::*;
use crate::policy::rate_limit::TrackedTenants;

const S: u64 = 1_000_000_000;

fn leased(tokens: u64, set: u32, expires: u64) -> Lease {
    let l = Lease::default();
    l.set.store(set, Ordering::Relaxed);
    l.expires.store(expires, Ordering::Relaxed);
    l.tokens.store(tokens, Ordering::Relaxed);
    l
}

#[test]
fn leased_tokens_are_spent_one_by_one_until_none_is_left() {
    let l = leased(3, 0, 10 * S);
    assert_eq!(l.take(0, S), Some(2));
    assert_eq!(l.take(0, S), Some(1));
    assert_eq!(l.take(0, S), Some(0));
    assert_eq!(l.take(0, S), None, "an empty lease asks the store");
    assert!(l.is_idle(S));
}

#[test]
fn expired_tokens_and_tokens_of_another_set_are_not_spent() {
    let l = leased(5, 0, 2 * S);
    assert_eq!(l.take(0, 2 * S), None, "void from lease_ttl on");
    assert!(l.is_idle(2 * S), "an expired lease may be dropped");
    let l = leased(5, 1, 2 * S);
    assert_eq!(l.take(0, S), None, "a tenant that changed plan leases anew");
    assert!(!l.is_idle(S), "live tokens are kept");
}

#[test]
fn a_refusal_in_force_or_a_refill_running_keeps_the_lease() {
    let l = Lease::default();
    l.refused_until.store(3 * S, Ordering::Relaxed);
    assert!(!l.is_idle(S));
    assert!(l.is_idle(3 * S));
    l.refilling.store(true, Ordering::Relaxed);
    assert!(!l.is_idle(3 * S));
}

/// A store that never answers (its port refuses), as a stalled or dead Redis looks to a
/// request: every decision without leased tokens is the fallback's.
fn unreachable_store(clock: &SharedClock) -> Arc<GlobalStore> {
    let cfg = crate::config::file::GlobalStore {
        redis: crate::config::file::RedisStore {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "t:".into(),
            timeout: crate::config::units::Dur::from_millis(25),
            tls: None,
        },
    };
    let metrics = crate::metrics::Metrics::register();
    GlobalStore::build(&cfg, None, None, &metrics, clock).expect("a valid URL")
}

/// The limiter of `cfg` on route `app`, its store unreachable, its leases counted in `tracked`.
fn limiter(
    cfg: &RateLimit,
    tracked: &Arc<TrackedTenants>,
    clock: &SharedClock,
    fallbacks: IntCounter,
) -> GlobalLimiter {
    let route: Arc<str> = Arc::from("app");
    GlobalLimiter::new(
        cfg,
        &route,
        unreachable_store(clock),
        tracked,
        clock.clone(),
        fallbacks,
    )
}

/// A global limit of one a minute per tenant, with a burst of 20.
fn one_a_minute() -> RateLimit {
    use crate::config::file::{LimitScope, Limits};
    use crate::config::units::Rate;
    RateLimit {
        per_tenant: Some(Limits(vec![Limit {
            rate: Rate {
                count: 1,
                per: Duration::from_secs(60),
            },
            burst: Some(20),
            name: None,
            window: Default::default(),
        }])),
        scope: LimitScope::Global,
        ..RateLimit::default()
    }
}

/// `on_store_error: local` enforces the per-process limit from where this process stands:
/// what it admitted through the store counts against the local bucket, so a store that stops
/// answering for a moment does not hand the tenant a second full burst on this process, and
/// the process admits at most the limit whoever decides.
#[tokio::test]
async fn admissions_through_the_store_count_against_the_local_fallback() {
    use crate::clock::ManualClock;

    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let cfg = RateLimit {
        on_store_error: Some(OnStoreError::Local),
        lease: Some(1),
        ..one_a_minute()
    };
    let local = RateLimiter::new(&cfg, TrackedTenants::new(1000), shared.clone());
    let fallbacks = IntCounter::new("fallbacks", "decisions by on_store_error").expect("valid");
    let g = limiter(&cfg, &TrackedTenants::new(1000), &shared, fallbacks.clone());
    // Five admissions through the store: tokens as a store's answers leave them.
    let lease = g.inner.lease_of("acme").expect("room");
    lease.expires.store(u64::MAX, Ordering::Release);
    lease.tokens.store(5, Ordering::Release);
    for _ in 0..5 {
        assert!(g.check("acme", None, &local).await.is_admitted());
    }
    assert_eq!(fallbacks.get(), 0, "the store decided those");

    // The store stops answering: this process has 15 of its 20 left, not a fresh 20.
    let mut during = 0;
    for _ in 0..40 {
        during += usize::from(g.check("acme", None, &local).await.is_admitted());
    }
    assert_eq!(
        during, 15,
        "5 through the store + 15 locally = the burst of 20"
    );
    assert_eq!(
        fallbacks.get(),
        15,
        "the 25 its own buckets refused did not wait for the store"
    );

    // The store answers again, with tokens to spare (it never learnt of the 15): this
    // process has admitted its 20 this minute, so it refuses, without spending a leased token.
    lease.tokens.store(10, Ordering::Release);
    let refused = g.check("acme", None, &local).await;
    assert!(
        !refused.is_admitted(),
        "one process never admits more than the limit"
    );
    assert_eq!(
        lease.tokens.load(Ordering::Acquire),
        10,
        "the store's tokens are kept"
    );
    assert_eq!(fallbacks.get(), 15, "a refusal of its own is no fallback");

    // A minute later (1/m) one more is admitted, through the store and counted here.
    clock.advance(Duration::from_secs(60));
    let mut later = 0;
    for _ in 0..5 {
        later += usize::from(g.check("acme", None, &local).await.is_admitted());
    }
    assert_eq!(later, 1, "1/m: one more a minute later");
    assert_eq!(lease.tokens.load(Ordering::Acquire), 9);
    assert_eq!(fallbacks.get(), 15);

    // The other fallbacks do not touch the local limiter at all.
    let allow = RateLimit {
        on_store_error: Some(OnStoreError::Allow),
        ..cfg.clone()
    };
    let local = RateLimiter::new(&allow, TrackedTenants::new(1000), shared.clone());
    let g = limiter(&allow, &TrackedTenants::new(1000), &shared, fallbacks);
    let lease = g.inner.lease_of("acme").expect("room");
    lease.expires.store(u64::MAX, Ordering::Release);
    lease.tokens.store(1, Ordering::Release);
    assert!(g.check("acme", None, &local).await.is_admitted());
    assert_eq!(local.tracked(), 0, "allow: nothing counted locally");
}

/// A lease of `tokens` for `tenant`, good until `expires`; the table holds it, not the caller.
fn lease_for(g: &GlobalLimiter, tenant: &str, tokens: u64, expires: u64) {
    let l = g.inner.lease_of(tenant).expect("room");
    l.expires.store(expires, Ordering::Release);
    l.tokens.store(tokens, Ordering::Release);
}

/// Leases are per-tenant state like a rate limiter's buckets: they count against
/// `tenants.max_tracked` with every other table, and a new tenant that finds the cap reached
/// evicts a batch (an eighth of the cap: idle leases first, then those with the fewest live
/// tokens), so the tenants after it find room without a scan of their own; another table's
/// new tenant may take its room from the leases too.
#[tokio::test]
async fn leases_count_against_max_tracked_and_are_evicted_in_batches() {
    use crate::clock::ManualClock;

    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let cfg = one_a_minute();
    let tracked = TrackedTenants::new(16);
    let fallbacks = IntCounter::new("fallbacks", "decisions by on_store_error").expect("valid");
    let g = limiter(&cfg, &tracked, &shared, fallbacks);
    for i in 0..8 {
        lease_for(&g, &format!("short{i}"), 1, S);
        lease_for(&g, &format!("long{i}"), 5, 100 * S);
    }
    assert_eq!(g.leases(), 16);
    assert_eq!(tracked.len(), 16, "leases count against max_tracked");

    // Half the leases expire: the next new tenant drops every idle one, and no live one.
    clock.advance(Duration::from_secs(2));
    lease_for(&g, "n0", 1, 100 * S);
    assert_eq!((g.leases(), tracked.len()), (9, 9), "idle leases go first");
    for i in 0..8 {
        assert!(
            g.inner.leases.get(format!("long{i}").as_str()).is_some(),
            "long{i} is live"
        );
    }
    lease_for(&g, "n1", 2, 100 * S);
    for i in 2..8 {
        lease_for(&g, &format!("n{i}"), 5, 100 * S);
    }
    assert_eq!(tracked.len(), 16);

    // Full, nothing idle: one newcomer evicts a batch of 16 / 8 = 2, those with the fewest
    // live tokens; the newcomer after it finds room and evicts nothing.
    lease_for(&g, "x", 5, 100 * S);
    assert_eq!((g.leases(), tracked.len()), (15, 15));
    assert!(g.inner.leases.get("n0").is_none() && g.inner.leases.get("n1").is_none());
    lease_for(&g, "y", 5, 100 * S);
    assert_eq!((g.leases(), tracked.len()), (16, 16), "room was left for y");

    // A new tenant of a rate limiter under the same cap takes its room from the leases.
    let local = RateLimiter::new(&cfg, tracked.clone(), shared.clone());
    assert!(local.check("z").is_admitted());
    assert_eq!(tracked.len(), 15, "the cap holds across tables");
    assert_eq!((g.leases(), local.tracked()), (14, 1));
}
