//! RateLimit header rendering through the public limiter: a validated `rate_limit` policy
//! built from fuzzed numbers, a fuzzed sequence of checks on a manual clock, and every
//! decision's headers written. Nothing panics, and the headers are well-formed
//! structured-field items whose `r` and `t` are integers.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use rampart::clock::{ManualClock, SharedClock};
use rampart::policy::rate_limit::RateLimiter;
use rampart::tenant::tracked::TrackedTenants;

const UNITS: [&str; 4] = ["s", "min", "h", "d"];

fn policy(count: u32, unit: &str, burst: u32, total: bool) -> String {
    let section = if total { "total" } else { "per_tenant" };
    format!(
        "version: 1\nupstreams:\n  app: {{ endpoints: [127.0.0.1:10] }}\npolicies:\n  p:\n    \
         rate_limit:\n      {section}: {{ rate: {count}/{unit}, burst: {burst} }}\n      \
         headers: true\nlisteners:\n  - name: i\n    direction: inbound\n    listen: \
         127.0.0.1:9\n    routes:\n      - upstream: app\n        policy: p\n"
    )
}

fn well_formed(h: &HeaderMap) {
    for name in ["ratelimit", "ratelimit-policy"] {
        for v in h.get_all(name) {
            let v = v.to_str().expect("RateLimit headers are ASCII");
            for param in v.split(';').skip(1) {
                let (k, n) = param.split_once('=').expect("a parameter has a value");
                assert!(
                    !matches!(k, "r" | "t" | "q" | "w") || n.parse::<u64>().is_ok(),
                    "{name}: {v}"
                );
            }
        }
    }
}

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], 0]);
    let burst = u32::from_le_bytes([data[3], data[4], data[5], 0]);
    let text = policy(count, UNITS[data[6] as usize % 4], burst, data[7] & 1 == 1);
    let Ok(cfg) = rampart::config::Config::from_str(&text, "fuzz") else {
        return;
    };
    let Some(rl) = cfg.file.policies["p"].rate_limit.clone() else {
        return;
    };
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let limiter = RateLimiter::new(&rl, TrackedTenants::new(16), shared);
    // Each later byte: high bit set = advance the clock by the low bits squared (ms),
    // else a check for tenant `t<byte % 4>`.
    for &b in &data[8..] {
        if b & 0x80 != 0 {
            let ms = u64::from(b & 0x7f);
            clock.advance(Duration::from_millis(ms * ms * 37));
        } else {
            let d = limiter.check(["t0", "t1", "t2", "t3"][usize::from(b % 4)]);
            let _ = d.retry_after();
            let mut h = HeaderMap::new();
            d.write_headers(&mut h);
            well_formed(&h);
        }
    }
}
