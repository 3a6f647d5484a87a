//! Calendar windows on the injected clock, anchored to a wall-clock date.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::super::{RateLimiter, TrackedTenants};
use crate::clock::{ManualClock, SharedClock, WallClock};
use crate::config::file::{Limit, LimitWindow, Limits, RateLimit};
use crate::config::units::Rate;

/// 2026-12-01T23:59:00Z: a minute before a UTC day boundary.
const BEFORE_MIDNIGHT: u64 = 1_796_169_540;

fn limit(count: u64, secs: u64, window: LimitWindow) -> Limit {
    Limit {
        rate: Rate {
            count,
            per: Duration::from_secs(secs),
        },
        burst: None,
        name: None,
        window,
    }
}

fn limiter(limits: Vec<Limit>, unix_secs: u64) -> (RateLimiter, ManualClock) {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let wall = WallClock::anchored(shared, unix_secs * 1_000_000_000);
    let cfg = RateLimit {
        per_tenant: Some(Limits(limits)),
        ..RateLimit::default()
    };
    (
        RateLimiter::new_anchored(&cfg, TrackedTenants::new(100), &wall),
        clock,
    )
}

fn admitted(l: &RateLimiter, n: usize) -> usize {
    (0..n).filter(|_| l.check("acme").is_admitted()).count()
}

#[test]
fn a_day_quota_resets_at_utc_midnight() {
    assert_eq!(BEFORE_MIDNIGHT % 86_400, 86_340, "the anchor is 23:59:00Z");
    let (l, clock) = limiter(
        vec![limit(3, 86_400, LimitWindow::Calendar)],
        BEFORE_MIDNIGHT,
    );
    assert_eq!(admitted(&l, 5), 3);
    let refused = l.check("acme");
    assert_eq!(
        refused.retry_after(),
        Duration::from_secs(60),
        "to the boundary"
    );
    let mut h = HeaderMap::new();
    refused.write_headers(&mut h);
    assert_eq!(h["ratelimit"], "\"quota\";r=0;t=60");
    assert_eq!(h["ratelimit-policy"], "\"quota\";q=3;w=86400");
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        admitted(&l, 1),
        0,
        "a smooth bucket would have refilled nothing either, but"
    );
    assert_eq!(l.check("acme").retry_after(), Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&l, 5), 3, "the whole count is back at 00:00:00Z");
    clock.advance(Duration::from_secs(86_399));
    assert_eq!(admitted(&l, 1), 0, "one day later, still the same day");
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&l, 5), 3);
}

#[test]
fn minute_windows_beside_a_smooth_burst() {
    // 10 per UTC minute, and no more than 4 at once (refilling 4/s).
    let smooth = Limit {
        burst: Some(4),
        ..limit(4, 1, LimitWindow::Smooth)
    };
    let (l, clock) = limiter(
        vec![smooth, limit(10, 60, LimitWindow::Calendar)],
        BEFORE_MIDNIGHT + 30,
    );
    assert_eq!(admitted(&l, 6), 4);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&l, 6), 4);
    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(&l, 6), 2, "the minute's 10 are spent");
    let d = l.check("acme");
    assert_eq!(d.retry_after(), Duration::from_secs(28));
    clock.advance(Duration::from_secs(28));
    assert_eq!(admitted(&l, 6), 4);
}

#[test]
fn reload_keeps_or_rescales_a_calendar_count() {
    let (l, _) = limiter(vec![limit(4, 3600, LimitWindow::Calendar)], BEFORE_MIDNIGHT);
    assert_eq!(admitted(&l, 2), 2);
    let cfg = |count| RateLimit {
        per_tenant: Some(Limits(vec![limit(count, 3600, LimitWindow::Calendar)])),
        ..RateLimit::default()
    };
    let same = l.reconfigure(&cfg(4));
    assert_eq!(admitted(&same, 4), 2, "kept");
    let doubled = same.reconfigure(&cfg(8));
    assert_eq!(admitted(&doubled, 8), 0, "fully used stays fully used");
}
