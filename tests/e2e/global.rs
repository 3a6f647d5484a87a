//! SPEC §9: global limits across replicas. Two `rampart` processes share one tenant limit
//! through a real `redis-server` that the test starts, kills, restarts and stalls.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::redis::{replicas, store_up, wait_up, Redis};
use crate::support::{http, metric_value, metrics, sample, Proxy};

/// `$TIMEOUT` is the store timeout, `$ON_ERROR` the fallback, `$LEASE` the lease.
const SHARED: &str = r#"
version: 1
admin: { listen: $ADMIN }
global_store:
  redis: { url: "$REDIS", key_prefix: "rt:", timeout: $TIMEOUT }
upstreams:
  app: { endpoints: [$APP] }
policies:
  shared:
    rate_limit:
      per_tenant: { rate: $RATE, burst: $BURST }
      scope: global
      on_store_error: $ON_ERROR
      lease: $LEASE
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: shared
"#;

/// What a policy of [`SHARED`] is started with.
struct Setup<'a> {
    timeout: &'a str,
    on_error: &'a str,
    lease: u64,
    rate: &'a str,
    burst: u64,
}

async fn spawn(redis: &Redis, app: SocketAddr, s: &Setup<'_>) -> Proxy {
    spawn_from(SHARED, redis, app, s).await
}

/// As [`spawn`], from `template` ([`SHARED`] with more sections).
async fn spawn_from(template: &str, redis: &Redis, app: SocketAddr, s: &Setup<'_>) -> Proxy {
    let proxy = start(template, &redis.url(), app, s).await;
    wait_up(&proxy, 1.0).await;
    proxy
}

/// A proxy from `template` whose store is at `url`, not waited for to be up.
async fn start(template: &str, url: &str, app: SocketAddr, s: &Setup<'_>) -> Proxy {
    Proxy::builder(template)
        .var("REDIS", url)
        .var("APP", app)
        .var("TIMEOUT", s.timeout)
        .var("ON_ERROR", s.on_error)
        .var("LEASE", s.lease)
        .var("RATE", s.rate)
        .var("BURST", s.burst)
        .spawn()
        .await
}

/// Sends `n` GETs of `tenant`, alternating between the proxies, `conc` at a time; returns
/// each answer's status and latency.
async fn burst(addrs: &[SocketAddr], tenant: &str, n: usize, conc: usize) -> Vec<(u16, Duration)> {
    let mut out = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < n {
        let wave = conc.min(n - sent);
        let tasks: Vec<_> = (0..wave)
            .map(|i| {
                let addr = addrs[(sent + i) % addrs.len()];
                let tenant = tenant.to_owned();
                tokio::spawn(async move {
                    let at = Instant::now();
                    let r = http::get(addr, "/ok", &[("x-tenant-id", &tenant)]).await;
                    (r.status.as_u16(), at.elapsed())
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.expect("a client task must not panic"));
        }
        sent += wave;
    }
    out
}

fn admitted(answers: &[(u16, Duration)]) -> usize {
    answers.iter().filter(|(s, _)| *s == 200).count()
}

fn slowest(answers: &[(u16, Duration)]) -> Duration {
    answers.iter().map(|(_, d)| *d).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ramparts_together_admit_one_tenant_limit() {
    let redis = Redis::start().await;
    let app = sample().await;
    // No refill during the test (1/m), so the fleet must admit exactly the burst, less what
    // leases strand: at most 2 × (lease − 1). `deny` on errors, so a hiccup can only admit less.
    let setup = Setup {
        timeout: "250ms",
        on_error: "deny",
        lease: 4,
        rate: "1/m",
        burst: 40,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let b = spawn(&redis, app.addr(), &setup).await;
    let addrs = [a.listener("inbound"), b.listener("inbound")];

    let answers = burst(&addrs, "acme", 120, 6).await;
    let ok = admitted(&answers);
    println!("two ramparts, shared burst 40, lease 4: {ok} of 120 admitted");
    assert!(
        (40 - 2 * 3..=40).contains(&ok),
        "the two ramparts together admitted {ok} of a shared burst of 40"
    );
    assert!(answers.iter().all(|(s, _)| *s == 200 || *s == 429));
    // Each rampart alone would have admitted 40: both did take part.
    let by = |addr: SocketAddr| {
        answers
            .iter()
            .enumerate()
            .filter(|(i, (s, _))| *s == 200 && addrs[i % 2] == addr)
            .count()
    };
    assert!(by(addrs[0]) > 0 && by(addrs[1]) > 0, "both replicas admit");
    // Leases of 4, shared by concurrent requests (single-flight), and refusals answered
    // locally once the store said "none until later": far fewer calls than requests.
    let calls = redis.calls("evalsha").await + redis.calls("eval").await;
    println!("store calls for 120 requests: {calls}");
    assert!(calls <= 24, "{calls} script calls for 120 requests");

    // Keys carry the prefix, the route (as the Cluster hash tag) and the tenant, and expire.
    let keys = redis.keys("rt:*").await;
    assert_eq!(keys, ["rt:{app}:t:acme"], "keys: {keys:?}");
    let ttl = redis.int(&["PTTL", "rt:{app}:t:acme"]).await;
    assert!(ttl > 0, "an idle tenant's key must expire (PTTL {ttl})");
    let text = metrics(a.admin()).await;
    assert_eq!(
        metric_value(
            &text,
            "rampart_ratelimit_backend_errors_total",
            &[("backend", "redis")]
        ),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_falls_back_to_local_limits_and_its_return_restores_them() {
    let mut redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "50ms",
        on_error: "local",
        lease: 2,
        rate: "1/m",
        burst: 10,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let b = spawn(&redis, app.addr(), &setup).await;
    let addrs = [a.listener("inbound"), b.listener("inbound")];

    let before = admitted(&burst(&addrs, "t1", 30, 4).await);
    assert!(
        (8..=10).contains(&before),
        "global: {before} admitted of 10"
    );

    redis.kill();
    let down = burst(&addrs, "t2", 40, 4).await;
    let ok = admitted(&down);
    println!(
        "Redis killed: {ok} of 40 admitted (local limits), slowest {:?}; before: {before} of 30",
        slowest(&down)
    );
    // Each process now enforces the limit on its own: up to 10 each.
    assert!(
        (11..=20).contains(&ok),
        "with Redis gone each rampart enforces its own 10: {ok} admitted"
    );
    assert!(down.iter().all(|(s, _)| *s == 200 || *s == 429), "{down:?}");
    // A request never waits on the store past its timeout (50ms; the rest is slack for a
    // loaded machine).
    assert!(
        slowest(&down) < Duration::from_millis(300),
        "slowest answer with Redis down: {:?}",
        slowest(&down)
    );
    wait_up(&a, 0.0).await;
    let text = metrics(a.admin()).await;
    let errors = metric_value(
        &text,
        "rampart_ratelimit_backend_errors_total",
        &[("backend", "redis")],
    );
    assert!(errors.unwrap_or(0.0) >= 1.0, "{text}");
    assert!(
        metric_value(
            &text,
            "rampart_ratelimit_store_fallbacks_total",
            &[("route", "app")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    // Readiness never depends on the store; /state says it is down.
    assert_eq!(http::get(a.admin(), "/readyz", &[]).await.status, 200);
    let state = http::get(a.admin(), "/state", &[]).await.json();
    assert_eq!(state["global_store"]["up"], false, "{state}");

    redis.restart().await;
    wait_up(&a, 1.0).await;
    wait_up(&b, 1.0).await;
    let after = admitted(&burst(&addrs, "t3", 30, 4).await);
    println!("Redis back: {after} of 30 admitted (global limit 10)");
    assert!(
        (8..=10).contains(&after),
        "global enforcement must resume by itself: {after} admitted of 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_treated_as_down() {
    let redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "50ms",
        on_error: "deny",
        lease: 1,
        rate: "100/s",
        burst: 100,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let addr = [a.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "s1", 3, 1).await), 3);

    redis.stall(Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let slow = burst(&addr, "s2", 10, 2).await;
    // `deny`: every decision during the stall is the fallback's 429, each within the timeout.
    println!("Redis stalled: {slow:?}");
    assert_eq!(admitted(&slow), 0, "{slow:?}");
    assert!(
        slowest(&slow) < Duration::from_millis(300),
        "slowest answer while Redis stalls: {:?}",
        slowest(&slow)
    );
    wait_up(&a, 0.0).await;

    // Once the stall ends, the probe finds Redis answering and calls resume.
    wait_up(&a, 1.0).await;
    assert_eq!(admitted(&burst(&addr, "s3", 3, 1).await), 3);
}

/// A reload that lengthens the store's `timeout` lengthens the probe's patience too, though the
/// link is kept (its URL is the same): a store answering in 50 ms is down under 25 ms and comes
/// up under 200 ms. (The probe kept the timeout of the generation that made the link: the store
/// stayed down, and `on_store_error` refused every request, until a restart.) A reload that
/// would lengthen it but is refused (a new listener's address is taken) leaves the 25 ms in
/// force: the timeout acts only once a reload is through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lengthens_the_timeout_lets_a_slow_store_up() {
    let redis = Redis::start().await;
    let slow = redis.slowed(Duration::from_millis(50)).await;
    let app = sample().await;
    let setup = Setup {
        timeout: "25ms",
        on_error: "deny",
        lease: 1,
        rate: "100/s",
        burst: 100,
    };
    let mut proxy = start(SHARED, &slow.url(), app.addr(), &setup).await;
    let errors = stays_down(&proxy, 0.0, 3.0, "a store slower than its timeout").await;
    let addr = [proxy.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "t1", 2, 1).await), 0, "deny");

    // Redis's own port: taken, so the new listener cannot bind, the last check of a reload.
    let taken = redis.url().replace("redis://", "").replace("/0", "");
    let text = format!(
        "{}  - name: taken\n    direction: inbound\n    listen: {taken}\n    routes:\n      - upstream: app\n        policy: shared\n",
        SHARED.replace("$TIMEOUT", "200ms"),
    );
    proxy.rewrite_config(&text);
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    let said = rsp.text();
    assert!(
        rsp.status != 200 && said.contains(&taken) && said.contains("in use"),
        "the reload must fail binding {taken}: {} {said}",
        rsp.status
    );
    stays_down(&proxy, errors, 2.0, "a refused reload's timeout").await;

    reload(&mut proxy, &SHARED.replace("$TIMEOUT", "200ms")).await;
    wait_up(&proxy, 1.0).await;
    assert_eq!(admitted(&burst(&addr, "t2", 3, 1).await), 3);
}

/// A Redis that goes quiet without closing its connections (stopped, stuck in a long script, a
/// silent host) is noticed with no traffic at all: the idle link's keepalive `PING` goes
/// unanswered, the store is marked down, and it comes back by itself when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_gone_quiet_is_noticed_without_traffic() {
    let redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "50ms",
        on_error: "deny",
        lease: 1,
        rate: "100/s",
        burst: 100,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let addr = [a.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "q1", 2, 1).await), 2);

    // From here until the store is back no request goes through the proxy. The connection
    // stays open; Redis answers nothing for 7 s.
    redis.stall(Duration::from_secs(7));
    let noticed = store_reads(&a, 0.0, Duration::from_secs(5), "Redis gone quiet").await;
    let state = http::get(a.admin(), "/state", &[]).await.json();
    assert_eq!(state["global_store"]["up"], false, "{state}");
    let back = store_reads(&a, 1.0, Duration::from_secs(10), "Redis answering again").await;
    println!("Redis quiet for 7 s: down after {noticed:?}, up again {back:?} later, no traffic");
    assert_eq!(admitted(&burst(&addr, "q2", 3, 1).await), 3);
}

/// `rampart_ratelimit_store_fallbacks_total{route="app"}` of `proxy`.
async fn fallbacks(proxy: &Proxy) -> f64 {
    let text = metrics(proxy.admin()).await;
    metric_value(
        &text,
        "rampart_ratelimit_store_fallbacks_total",
        &[("route", "app")],
    )
    .unwrap_or(0.0)
}

/// Polls `proxy`'s `rampart_global_store_up` (the admin port only: no request goes through
/// the proxy) until it reads `want`; how long that took. Fails past `within`.
async fn store_reads(proxy: &Proxy, want: f64, within: Duration, why: &str) -> Duration {
    let start = Instant::now();
    while store_up(proxy).await != Some(want) {
        assert!(
            start.elapsed() < within,
            "{why}: rampart_global_store_up must read {want} within {within:?}; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// A connection Redis drops is noticed when it drops, with no request in flight, and the store
/// is connected again once Redis is back, before any request needs it. (It used to read as up
/// until a request failed on the dead link; the first requests after Redis's return were
/// refused by `deny`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_noticed_at_once_and_replaced_without_traffic() {
    let mut redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "25ms",
        on_error: "deny",
        lease: 1,
        rate: "1/m",
        burst: 20,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let addr = [a.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "warm", 2, 1).await), 2);

    // From here until the end of the outage no request goes through the proxy.
    redis.kill();
    let noticed = store_reads(&a, 0.0, Duration::from_secs(1), "Redis killed").await;
    let state = http::get(a.admin(), "/state", &[]).await.json();
    assert_eq!(state["global_store"]["up"], false, "{state}");
    // Down long enough for the probes to back off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store_up(&a).await, Some(0.0));
    let before = fallbacks(&a).await;

    redis.restart().await;
    // The longest wait between probes is 2 s (jittered within its upper half), then a connect.
    let back = store_reads(&a, 1.0, Duration::from_millis(2500), "Redis restarted").await;
    println!(
        "Redis killed: store down after {noticed:?}; restarted: up after {back:?}, no traffic"
    );

    let fresh = burst(&addr, "fresh", 3, 1).await;
    assert_eq!(admitted(&fresh), 3, "after the store's return: {fresh:?}");
    assert_eq!(
        fallbacks(&a).await,
        before,
        "decided by the store, not by on_store_error"
    );
    assert_eq!(redis.keys("rt:*").await, ["rt:{app}:t:fresh"]);
}

/// A Redis that closes a connection but answers (a restart, its idle `timeout`, `CLIENT KILL`,
/// a proxy in between) costs a reconnect, not a refusal: requests that arrive meanwhile wait
/// for the immediate reconnect (within the store timeout), and one whose call the close broke
/// tries once more on the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_a_live_redis_refuses_no_request() {
    let redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "250ms",
        on_error: "deny",
        lease: 1,
        rate: "100/s",
        burst: 100,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let addr = [a.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "k", 2, 1).await), 2);
    let errors = store_errors(&a).await;
    for round in 0..5 {
        let killed = redis
            .int(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .await;
        assert_eq!(killed, 1, "round {round}: rampart's one connection");
        let answers = burst(&addr, "k", 4, 4).await;
        assert_eq!(admitted(&answers), 4, "round {round}: {answers:?}");
    }
    assert_eq!(
        fallbacks(&a).await,
        0.0,
        "no decision fell to on_store_error"
    );
    let lost = store_errors(&a).await - errors;
    assert!(
        (1.0..=5.0).contains(&lost),
        "each closed connection is one store error: {lost}"
    );
    wait_up(&a, 1.0).await;
}

/// `on_store_error: local` holds the limit per process from where the process stands: a short
/// stall of the store does not hand a tenant a second burst (it used to: 35 admitted within a
/// second for a limit of 20/min).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_stall_gives_no_tenant_a_second_burst() {
    let redis = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "25ms",
        on_error: "local",
        lease: 1,
        rate: "1/m",
        burst: 20,
    };
    let a = spawn(&redis, app.addr(), &setup).await;
    let addr = [a.listener("inbound")];
    let first = admitted(&burst(&addr, "s", 5, 1).await);
    assert_eq!(first, 5);

    redis.stall(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = admitted(&burst(&addr, "s", 40, 40).await);
    assert!(
        fallbacks(&a).await > 0.0,
        "the stall must have been met by the fallback"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    wait_up(&a, 1.0).await;
    let after = admitted(&burst(&addr, "s", 10, 1).await);
    println!("stall: {first} before, {during} of 40 during, {after} of 10 after (limit 20/min)");
    assert_eq!(
        first + during + after,
        20,
        "one process admits the limit, whoever decides"
    );
}

/// rampart with leases of 5 from a bucket of `burst` an hour, per tenant, `max_tracked`
/// tenants tracked.
async fn leasing(
    redis: &Redis,
    app: &rampart::sample::Sample,
    burst: u64,
    max_tracked: usize,
) -> Proxy {
    let setup = Setup {
        timeout: "250ms",
        on_error: "deny",
        lease: 5,
        rate: "1/h",
        burst,
    };
    let template = format!("{SHARED}tenants: {{ max_tracked: {max_tracked} }}\n");
    spawn_from(&template, redis, app.addr(), &setup).await
}

/// Leases are per-tenant state under `tenants.max_tracked` like any other: a tenant that finds
/// the cap reached evicts another's lease and is charged one token a request, so it gets its
/// whole burst (it used to go without a lease, each request leasing 5 tokens to spend one: 2 of
/// a burst of 10), and the leases count in `rampart_tenants_tracked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_max_tracked_is_charged_what_it_spends() {
    let redis = Redis::start().await;
    let app = sample().await;
    let a = leasing(&redis, &app, 10, 2).await;
    let addr = [a.listener("inbound")];
    // Two tenants spend their bursts: their leases hold the store's "none until later", so
    // neither is idle when the third comes.
    for tenant in ["t1", "t2"] {
        assert_eq!(admitted(&burst(&addr, tenant, 12, 1).await), 10, "{tenant}");
    }
    let third = admitted(&burst(&addr, "t3", 15, 1).await);
    assert_eq!(
        third, 10,
        "a third tenant past max_tracked: 2 is owed its burst of 10"
    );
    let text = metrics(a.admin()).await;
    assert_eq!(
        metric_value(&text, "rampart_tenants_tracked", &[]),
        Some(2.0),
        "leases count against max_tracked"
    );
    // The evicted lease gave the tenant no fresh burst: its bucket lives in the store.
    assert_eq!(admitted(&burst(&addr, "t1", 3, 1).await), 0);
}

/// A steady tenant keeps its whole limit while tenants seen once churn through a full
/// `tenants.max_tracked`: a newcomer evicts the lease with the fewest live tokens, often the
/// steady tenant's (it spends them), and those go back to the store, so the tenant is charged
/// only what it spends. (They were lost: up to a lease less one at each eviction, and the
/// tenant refused after about 7 of its 20.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_tenant_keeps_its_limit_while_tenants_seen_once_churn() {
    let redis = Redis::start().await;
    let app = sample().await;
    let a = leasing(&redis, &app, 20, 4).await;
    let addr = [a.listener("inbound")];
    let (mut steady, mut once) = (0, 0);
    for round in 0..25 {
        steady += admitted(&burst(&addr, "steady", 1, 1).await);
        for i in 0..4 {
            once += admitted(&burst(&addr, &format!("once-{round}-{i}"), 1, 1).await);
        }
    }
    assert_eq!(once, 100, "every tenant seen once is admitted");
    assert_eq!(
        steady,
        20,
        "the steady tenant must get its burst of 20, no more, no less; log:\n{}",
        a.log()
    );
}

/// The client connections a Redis server sees, other than the one asking.
async fn clients(redis: &Redis) -> Vec<String> {
    let list = redis.text(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_connection_unless_the_url_changes() {
    let first = Redis::start().await;
    let second = Redis::start().await;
    let app = sample().await;
    let setup = Setup {
        timeout: "250ms",
        on_error: "deny",
        lease: 2,
        rate: "1/m",
        burst: 4,
    };
    let mut proxy = spawn(&first, app.addr(), &setup).await;
    let addr = [proxy.listener("inbound")];
    assert_eq!(admitted(&burst(&addr, "r1", 6, 1).await), 4);
    let ids = clients(&first).await;
    assert_eq!(ids.len(), 1, "one multiplexed connection: {ids:?}");

    // Same URL, other prefix and limit: the connection stays.
    let changed = SHARED
        .replace("key_prefix: \"rt:\"", "key_prefix: \"rt2:\"")
        .replace("burst: $BURST", "burst: 5");
    proxy.rewrite_config(&changed);
    proxy.signal("HUP");
    assert_eventually!(
        admitted(&burst(&addr, "r1", 1, 1).await) == 1,
        "the new prefix starts a new bucket"
    );
    assert_eq!(
        clients(&first).await,
        ids,
        "an unchanged URL keeps its connection"
    );
    assert!(!first.keys("rt2:*").await.is_empty());

    // Another URL: a new connection there, the old one closed.
    proxy.rewrite_config(&changed.replace("$REDIS", &second.url()));
    proxy.signal("HUP");
    assert_eventually!(
        clients(&second).await.len() == 1,
        "the new URL must be connected"
    );
    assert_eventually!(
        clients(&first).await.is_empty(),
        "the old connection must close"
    );
    wait_up(&proxy, 1.0).await;
    assert_eq!(admitted(&burst(&addr, "r2", 7, 1).await), 5);
    assert!(!second.keys("rt2:*").await.is_empty());
}

const SETS: &str = r#"
version: 1
admin: { listen: $ADMIN }
global_store:
  redis: { url: "$REDIS", timeout: 250ms }
upstreams:
  app: { endpoints: [$APP] }
policies:
  sets:
    rate_limit:
      per_tenant: [ { rate: 100/s, burst: 50 }, { rate: 6/d, window: calendar, name: quota } ]
      overrides:
        vip: { rate: 1/m, burst: 3 }
      total: { rate: 1/m, burst: 12 }
      scope: global
      on_store_error: deny
      lease: 1
      headers: true
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: sets
"#;

/// A proxy in front of `app` under [`SETS`], its store found up.
async fn sets_proxy(redis: &Redis, app: &rampart::sample::Sample) -> Proxy {
    let proxy = Proxy::builder(SETS)
        .var("REDIS", redis.url())
        .var("APP", app.addr())
        .spawn()
        .await;
    wait_up(&proxy, 1.0).await;
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_of_a_set_and_the_route_total_are_shared() {
    let redis = Redis::start().await;
    let app = sample().await;
    let proxy = sets_proxy(&redis, &app).await;
    let addr = proxy.listener("inbound");
    let get = |tenant: &'static str| async move {
        http::get(addr, "/ok", &[("x-tenant-id", tenant)]).await
    };

    // The calendar quota (6 a day) refuses first, and says so.
    let mut ok = 0;
    for _ in 0..6 {
        let r = get("a").await;
        assert_eq!(r.status, 200);
        ok += 1;
        let rl = r.header("ratelimit").unwrap_or_default().to_owned();
        assert!(rl.contains(&format!("\"quota\";r={}", 6 - ok)), "{rl}");
    }
    let refused = get("a").await;
    refused.assert_rampart(429, "rate_limited");
    let rl = refused.header("ratelimit").unwrap_or_default();
    assert!(rl.contains("\"quota\";r=0"), "{rl}");
    let retry: u64 = refused
        .header("retry-after")
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(
        (1..=86_400).contains(&retry),
        "until the UTC day ends: {retry}"
    );

    // An override replaces the tenant's limits: 3 for `vip`.
    let vip = admitted_of(get, "vip", 5).await;
    assert_eq!(vip, 3);
    // The route's total (12) is shared by every tenant: 6 + 3 spent, 3 left for `b`.
    assert_eq!(admitted_of(get, "b", 5).await, 3);
    let keys = redis.keys("rampart:*").await;
    assert!(keys.contains(&"rampart:{app}:total".to_owned()), "{keys:?}");
}

async fn admitted_of<F, Fut>(get: F, tenant: &'static str, n: usize) -> usize
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = http::Resp>,
{
    let mut ok = 0;
    for _ in 0..n {
        if get(tenant).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

const IDEMPOTENT: &str = r#"
version: 1
admin: { listen: $ADMIN }
global_store:
  redis: { url: "$REDIS", timeout: 250ms }
upstreams:
  app: { endpoints: [$APP] }
policies:
  pay:
    idempotency: { ttl: 1h, max_body: 4KiB }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: pay
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_honoured_on_every_replica() {
    let mut redis = Redis::start().await;
    let app = sample().await;
    let (a, b) = replicas(IDEMPOTENT, &redis, app.addr()).await;
    let (a_addr, b_addr) = (a.listener("inbound"), b.listener("inbound"));
    let key = [("idempotency-key", "order-1"), ("x-tenant-id", "t")];

    let first = http::post(a_addr, "/echo", &key, "pay 10").await;
    assert_eq!(first.status, 200);
    // The answer is kept where the body ends, in the background: give it a moment.
    assert_eventually!(
        http::post(b_addr, "/echo", &key, "pay 10")
            .await
            .header("x-rampart-idempotent-replay")
            == Some("true"),
        "a repeat on the other replica must be replayed"
    );
    let again = http::post(b_addr, "/echo", &key, "pay 10").await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(app.hits_for("/echo"), 1, "one request reached the upstream");
    http::post(b_addr, "/echo", &key, "pay 99")
        .await
        .assert_rampart(422, "idempotency_key_reused");
    let keys = redis.keys("rampart:{app}:i:t:*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");

    // Store gone: each replica still protects its own repeats.
    redis.kill();
    let k2 = [("idempotency-key", "order-2"), ("x-tenant-id", "t")];
    assert_eq!(http::post(a_addr, "/echo", &k2, "pay 5").await.status, 200);
    let repeat = http::post(a_addr, "/echo", &k2, "pay 5").await;
    assert_eq!(repeat.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(app.hits_for("/echo"), 2);

    // Store back: both replicas reconnect by themselves (b sent nothing while it was down),
    // and a key is shared again from its first request. (Before, b's first keyed request
    // after the return failed on its dead link and fell back to memory: the key ran twice.)
    redis.restart().await;
    wait_up(&a, 1.0).await;
    wait_up(&b, 1.0).await;
    let k3 = [("idempotency-key", "order-3"), ("x-tenant-id", "t")];
    assert_eq!(http::post(a_addr, "/echo", &k3, "pay 7").await.status, 200);
    assert_eventually!(
        http::post(b_addr, "/echo", &k3, "pay 7")
            .await
            .header("x-rampart-idempotent-replay")
            == Some("true"),
        "after the store's return a repeat on the other replica must be replayed"
    );
    assert_eq!(
        app.hits_for("/echo"),
        3,
        "order-3 reached the upstream once"
    );
}

/// With the keys in the store, a client that leaves after its keyed request was sent holds the
/// key on every replica until the request's deadline: its retry on the other replica is 409,
/// not a second run. Before, the claim was released in the store when the client left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_sending_holds_its_key_in_the_store() {
    use crate::support::conn::Conn;
    let redis = Redis::start().await;
    let app = sample().await;
    let config = IDEMPOTENT.replace(
        "    idempotency: {",
        "    timeout: { request: 2s }\n    idempotency: {",
    );
    let (a, b) = replicas(&config, &redis, app.addr()).await;
    let (a_addr, b_addr) = (a.listener("inbound"), b.listener("inbound"));
    let key = [("idempotency-key", "pay-R1"), ("x-tenant-id", "t")];
    let mut conn = Conn::open(a_addr).await;
    let sent = Instant::now();
    conn.send(
        b"POST /slow?ms=1000 HTTP/1.1\r\nhost: app\r\nx-tenant-id: t\r\nidempotency-key: pay-R1\r\ncontent-length: 3\r\n\r\npay",
    )
    .await;
    assert_eventually!(app.hits_for("/slow") == 1, "the first must be sent");
    tokio::time::sleep_until(sent + Duration::from_millis(250)).await;
    drop(conn);
    for at in [Duration::from_millis(500), Duration::from_millis(1300)] {
        tokio::time::sleep_until(sent + at).await;
        http::post(b_addr, "/slow?ms=1000", &key, "pay")
            .await
            .assert_rampart(409, "idempotency_in_flight");
    }
    assert_eq!(app.hits_for("/slow"), 1, "the request must not run twice");
    tokio::time::sleep_until(sent + Duration::from_millis(2300)).await;
    assert_eq!(
        http::post(b_addr, "/slow?ms=1000", &key, "pay")
            .await
            .status,
        200
    );
    assert_eq!(app.hits_for("/slow"), 2);
}

/// With the store down and `on_store_error: deny`, the first request of a tenant never seen
/// is refused because of the store, and the answer says so: its message names the store, it is
/// counted as `limit="store_unavailable"` (and as a store fallback), never as a `burst` the
/// tenant did not use, and it claims no `r=0` of any limit (no `ratelimit`), while
/// `ratelimit-policy` still states the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_while_the_store_is_down_is_the_stores_not_the_tenants() {
    let mut redis = Redis::start().await;
    let app = sample().await;
    let proxy = sets_proxy(&redis, &app).await;
    let addr = proxy.listener("inbound");
    redis.kill();
    let refused = http::get(addr, "/ok", &[("x-tenant-id", "Z2")]).await;
    refused.assert_rampart(429, "rate_limited");
    let message = refused.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("rate limit store unavailable; on_store_error: deny"),
        "{message}"
    );
    assert!(!message.contains("Z2"), "{message}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("ratelimit"), None, "{refused:?}");
    let policy = refused.header("ratelimit-policy").unwrap_or_default();
    assert!(policy.starts_with("\"burst\";q=50;"), "{policy}");

    let text = metrics(proxy.admin()).await;
    let limited = |limit: &str| {
        metric_value(
            &text,
            "rampart_rate_limited_total",
            &[("tenant", "Z2"), ("limit", limit)],
        )
    };
    assert_eq!(limited("store_unavailable"), Some(1.0), "{text}");
    for limit in ["burst", "quota", "total"] {
        assert_eq!(limited(limit), None, "limit={limit}: {text}");
    }
    assert_eq!(fallbacks(&proxy).await, 1.0);
}

/// [`SHARED`] with its store over TLS: `$TLS` is the store's `tls` mapping.
fn over_tls() -> String {
    SHARED.replace(
        "redis: { url: \"$REDIS\", key_prefix: \"rt:\", timeout: $TIMEOUT }",
        "redis: { url: \"$REDIS\", key_prefix: \"rt:\", timeout: $TIMEOUT, tls: $TLS }",
    )
}

/// `rampart_ratelimit_backend_errors_total{backend="redis"}` of `proxy`.
async fn store_errors(proxy: &Proxy) -> f64 {
    let text = metrics(proxy.admin()).await;
    metric_value(
        &text,
        "rampart_ratelimit_backend_errors_total",
        &[("backend", "redis")],
    )
    .unwrap_or(0.0)
}

/// Waits (bounded) until `proxy` has failed `n` more store calls or probes than `from`, and
/// asserts the store is still down: failures are counted while nothing gets through.
async fn stays_down(proxy: &Proxy, from: f64, n: f64, why: &str) -> f64 {
    assert_eventually!(
        store_errors(proxy).await >= from + n,
        "{why}: the probes must go on failing; log:\n{}",
        proxy.log()
    );
    assert_eq!(
        crate::support::redis::store_up(proxy).await,
        Some(0.0),
        "{why}: the store must stay down; log:\n{}",
        proxy.log()
    );
    store_errors(proxy).await
}

/// Rewrites `proxy`'s policy to `text`, sends SIGHUP and waits (bounded) until the reload
/// succeeded.
async fn reload(proxy: &mut Proxy, text: &str) {
    use crate::support::metrics::reloads;
    let before = reloads(&metrics(proxy.admin()).await, "success");
    proxy.rewrite_config(text);
    proxy.signal("HUP");
    assert_eventually!(
        reloads(&metrics(proxy.admin()).await, "success") > before,
        "the reload must succeed; log:\n{}",
        proxy.log()
    );
}

/// A `rediss://` store is spoken to over TLS only, and only when its certificate verifies: a
/// store whose certificate chains to another CA stays down (the reason logged), as does one that
/// asks for a client certificate when none is configured; each reload's files are taken for the
/// next connection (same URL, so the link is kept), and with the right CA and a client
/// certificate the store comes up and the limit is shared through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_store_is_verified_and_shown_a_client_certificate() {
    use crate::support::redis::TlsPort;
    use crate::support::tls::{Ca, Pki};

    let pki = Pki::new();
    let ca = Ca::new("redis ca");
    let stranger = Ca::new("another ca");
    let (server_cert, server_key) = pki.pair("redis", &ca.server(7));
    let (client_cert, client_key) = pki.pair("rampart", &ca.client("rampart", None));
    let ca_path = pki.ca("ca", &ca);
    let stranger_path = pki.ca("stranger", &stranger);
    let redis = Redis::start_tls(TlsPort {
        addr: crate::support::free_addr(),
        cert: server_cert,
        key: server_key,
        ca: ca_path.clone(),
        auth_clients: true,
    })
    .await;
    let app = sample().await;
    let template = over_tls();
    let with_tls = |tls: String| {
        template
            .replace("$TLS", &tls)
            .replace("$REDIS", &redis.tls_url())
            .replace("$APP", &app.addr().to_string())
            .replace("$TIMEOUT", "250ms")
            .replace("$ON_ERROR", "deny")
            .replace("$LEASE", "1")
            .replace("$RATE", "1/m")
            .replace("$BURST", "3")
    };

    // Another CA: the handshake fails on our side, nothing reaches the store.
    let mut proxy = Proxy::builder(&with_tls(format!("{{ ca: {} }}", stranger_path.display())))
        .spawn()
        .await;
    let errors = stays_down(&proxy, 0.0, 2.0, "a certificate of another CA").await;
    assert!(
        proxy.log().contains("global store unreachable") && proxy.log().contains("certificate"),
        "the first failure is logged with its reason:\n{}",
        proxy.log()
    );
    let addr = [proxy.listener("inbound")];
    let refused = burst(&addr, "tls", 2, 1).await;
    assert!(
        refused.iter().all(|(s, _)| *s == 429),
        "on_store_error: deny while the store is down: {refused:?}"
    );
    assert_eq!(redis.clients_by_port().await, (0, 0), "no connection stays");

    // The right CA, but the store asks for a client certificate and none is configured.
    reload(
        &mut proxy,
        &with_tls(format!("{{ ca: {} }}", ca_path.display())),
    )
    .await;
    let errors = store_errors(&proxy).await.max(errors);
    stays_down(&proxy, errors, 2.0, "no client certificate").await;

    // The right CA, the store's name, and a client certificate of the store's CA.
    let good = format!(
        "{{ ca: {}, server_name: localhost, cert: {}, key: {} }}",
        ca_path.display(),
        client_cert.display(),
        client_key.display()
    );
    reload(&mut proxy, &with_tls(good)).await;
    wait_up(&proxy, 1.0).await;
    assert_eq!(
        redis.clients_by_port().await,
        (1, 1),
        "one multiplexed connection, over the TLS port"
    );
    let answers = burst(&addr, "tls", 5, 1).await;
    assert_eq!(
        admitted(&answers),
        3,
        "the burst of 3, from Redis: {answers:?}"
    );
    assert!(
        !redis.keys("rt:*").await.is_empty(),
        "the buckets live in the store"
    );
}

/// [`SHARED`] with `timeout.request: 300ms` on the route, the store given 2 s.
const LATE: &str = r#"
version: 1
admin: { listen: $ADMIN }
global_store:
  redis: { url: "$REDIS", key_prefix: "rt:", timeout: 2s }
upstreams:
  app: { endpoints: [$APP] }
policies:
  shared:
    timeout: { request: 300ms }
    rate_limit:
      per_tenant: { rate: 100/s, burst: 100 }
      scope: global
      on_store_error: allow
      lease: 1
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: shared
"#;

/// A small upload the lean server reads whole after its head (its 2 bytes 30 ms apart) is
/// the client's until then: when its deadline passes later, while rampart waits on a slow
/// global store (stalled 800 ms), the time is rampart's, and the answer is the usual 504
/// `timeout`, not 408 `client_timeout`. Before, every moment from the head on was counted
/// against the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passed_in_rampart_after_a_whole_upload_is_no_client_timeout() {
    let redis = Redis::start().await;
    let app = sample().await;
    let proxy = Proxy::builder(LATE)
        .var("REDIS", redis.url())
        .var("APP", app.addr())
        .spawn()
        .await;
    wait_up(&proxy, 1.0).await;
    let addr = proxy.listener("inbound");

    redis.stall(Duration::from_millis(800));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let head = "POST /echo HTTP/1.1\r\nHost: a\r\nx-tenant-id: late\r\ncontent-length: 2\r\nconnection: close\r\n\r\n";
    let gap = Duration::from_millis(30);
    let rsp =
        crate::support::raw::trickle(addr, head.as_bytes(), b"hi", gap, Duration::from_secs(5))
            .await;
    assert_eq!(rsp.status(), Some(504), "{}", rsp.text());
    assert_eq!(rsp.header("x-rampart-reason").as_deref(), Some("timeout"));
    assert!(
        rsp.elapsed >= Duration::from_millis(500),
        "it waited on the store: {:?}",
        rsp.elapsed
    );
    assert_eq!(app.hits_for("/echo"), 0, "no try after the deadline");
}
