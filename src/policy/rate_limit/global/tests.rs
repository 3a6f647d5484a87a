//! Leases on their own: spending, expiry, plan changes, what may be dropped.

use super::*;

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
