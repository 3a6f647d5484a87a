//! Cost of `scope: global` (issue 20): latency a decision adds and Redis operations per admitted
//! request, with leases of 1 (a round trip per request), 10 and 100 tokens, against the local
//! limiter, on loopback.
//!
//! Runs only under `cargo bench --bench global` (it starts its own `redis-server`, from the
//! Debian package `redis-server`); `cargo test --benches` runs it in test mode, where it says so
//! and returns at once. Prints one table; no criterion statistics, since what matters is the
//! tail of a mix of local and remote decisions, not the mean of one kind.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rampart::clock::{MonotonicClock, SharedClock};
use rampart::config::file::{GlobalStore as StoreCfg, Limit, Limits, RateLimit, RedisStore};
use rampart::config::file::{LimitScope, OnStoreError};
use rampart::config::units::{Dur, Rate};
use rampart::metrics::Metrics;
use rampart::policy::rate_limit::{GlobalLimiter, RateLimiter, TrackedTenants};
use rampart::store::GlobalStore;
use tokio::time::Instant;

/// Decisions measured per configuration.
const DECISIONS: usize = 20_000;
/// Tenants the decisions rotate over.
const TENANTS: usize = 10;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("global: measured only under `cargo bench --bench global` (starts redis-server)");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (Debian package redis-server)");
    let _server = Server(child);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(port));
}

async fn run(port: u16) {
    let url = format!("redis://127.0.0.1:{port}/0");
    let clock: SharedClock = Arc::new(MonotonicClock::new());
    let metrics = Metrics::register();
    let cfg = StoreCfg {
        redis: RedisStore {
            url: url.clone(),
            key_prefix: "bench:".into(),
            timeout: Dur(Duration::from_millis(25)),
            tls: None,
        },
    };
    let store = GlobalStore::build(&cfg, None, None, &metrics, &clock).expect("a valid URL");
    let start = Instant::now();
    while !store.is_up() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probe = redis::Client::open(url).expect("url");
    let mut admin = probe
        .get_multiplexed_async_connection()
        .await
        .expect("connect");

    println!("\n| limiter | mean µs | p50 µs | p99 µs | p99.9 µs | Redis calls per admitted |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i}")).collect();
    for lease in [None, Some(1), Some(10), Some(100)] {
        let rl = rate_limit(lease);
        let tracked = TrackedTenants::new(100_000);
        let local = RateLimiter::new(&rl, tracked.clone(), clock.clone());
        let global = lease.map(|_| {
            let counter = metrics.store_fallbacks.with_label_values(&["bench"]);
            GlobalLimiter::new(
                &rl,
                &Arc::from("bench"),
                store.clone(),
                &tracked,
                clock.clone(),
                counter,
            )
        });
        let before = calls(&mut admin).await;
        let mut took = Vec::with_capacity(DECISIONS);
        let mut admitted = 0u64;
        for i in 0..DECISIONS {
            let tenant = &tenants[i % TENANTS];
            let at = Instant::now();
            let d = match &global {
                Some(g) => g.check(tenant, None, &local).await,
                None => local.check(tenant),
            };
            took.push(at.elapsed());
            admitted += u64::from(d.is_admitted());
        }
        let ops = calls(&mut admin).await - before;
        took.sort();
        let q = |p: f64| took[((took.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        let mean = took.iter().map(Duration::as_secs_f64).sum::<f64>() / took.len() as f64 * 1e6;
        let name = match lease {
            None => "local (scope: local)".to_owned(),
            Some(n) => format!("global, lease {n}"),
        };
        println!(
            "| {name} | {mean:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
            q(0.5),
            q(0.99),
            q(0.999),
            ops as f64 / admitted.max(1) as f64
        );
        assert_eq!(
            admitted, DECISIONS as u64,
            "the limit is set high enough to admit all"
        );
    }
}

/// A limit no decision reaches: every request is admitted, so only the cost shows.
fn rate_limit(lease: Option<u64>) -> RateLimit {
    let limit = Limit {
        rate: "1000000/s".parse::<Rate>().expect("rate"),
        burst: Some(10_000_000),
        name: None,
        window: Default::default(),
    };
    RateLimit {
        per_tenant: Some(Limits(vec![limit])),
        overrides: BTreeMap::new(),
        total: None,
        plans: BTreeMap::new(),
        headers: false,
        scope: if lease.is_some() {
            LimitScope::Global
        } else {
            LimitScope::Local
        },
        on_store_error: Some(OnStoreError::Deny),
        lease,
        lease_ttl: None,
    }
}

/// Script calls Redis has served (EVALSHA, and EVAL when the script was not cached yet).
async fn calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
        .iter()
        .filter_map(|p| info.lines().find_map(|l| l.strip_prefix(p)))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}
