//! The shipped deployment files against the binary: every metric that `deploy/prometheus` and
//! `deploy/grafana` name is one rampart really exports (or one a named issue will create), and
//! the alert unit tests feed series with the labels rampart really puts on them. What a pod
//! runs (the Kubernetes policy, its timings, the log output) is checked in `deploy/pod.rs`.
//!
//! Why: an alert on a series that never exists can never fire, and its promtool unit test
//! passes anyway when it feeds made-up series. Only a scrape of the real binary tells.

mod health;
mod manifests;
mod pod;
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::{http, metric_value, metrics, sample, Proxy};

/// Metrics the alerts or the dashboard use whose series rampart does not create yet, each with
/// the issue that will. An entry must go when its series appears (the test says so), and a
/// name that is neither exported nor listed here fails the test.
const PENDING: &[(&str, &str)] = &[];

/// Labels Prometheus adds at scrape time (deploy/prometheus/prometheus.yml), not rampart.
const TARGET_LABELS: &[&str] = &["job", "app", "instance", "namespace", "pod"];

/// Routes with a per-tenant rate limit, retries, a breaker, load shedding and a fallback: every
/// series the alerts and the dashboard use gets a sample.
const EXERCISED: &str = r#"
version: 1
admin: { listen: $ADMIN }
tenants:
  from: [ { header: x-tenant-id } ]
  fallback: anonymous
upstreams:
  app: { endpoints: [$APP] }
  dead: { endpoints: [$DEAD] }
policies:
  guarded:
    timeout: { request: 5s, per_try: 2s }
    rate_limit:
      per_tenant: { rate: 2/min, burst: 2 }
    retry:
      attempts: 3
      on: [connect_error, reset, 503]
      backoff: { base: 5ms, max: 20ms }
      budget: { ratio: 100%, min_per_second: 100 }
    circuit_breaker: { consecutive_failures: 50, open_for: 10s }
  shedding:
    load_shed: { max_in_flight: 1, queue: { size: 0 }, adaptive: { min: 1, max: 10 } }
  degraded:
    fallback:
      on: [upstream_unavailable]
      static: { status: 200, content_type: application/json, body: '{"items":[]}', methods: [GET, HEAD] }
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - name: slow
        match: { path_prefix: /slow }
        upstream: app
        policy: shedding
      - name: degraded
        match: { path_prefix: /degraded }
        upstream: dead
        policy: degraded
      - upstream: app
        policy: guarded
"#;

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must be readable: {e}", path.display()));
    (path, text)
}

/// Every distinct `rampart_*` name in `text` (expressions, annotations and comments alike).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rampart_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The scrape, read as: family name → type, and sample name → label-name sets seen.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, BTreeSet<Vec<String>>>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let mut it = t.split_whitespace();
                if let (Some(n), Some(k)) = (it.next(), it.next()) {
                    s.types.insert(n.to_owned(), k.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let mut keys: Vec<String> = match line[name_end..].strip_prefix('{') {
                // Label values of rampart's own series hold no `,` or `="`.
                Some(body) => body
                    .split("\",")
                    .filter_map(|kv| kv.split_once("=\"").map(|(k, _)| k.trim().to_owned()))
                    .collect(),
                None => Vec::new(),
            };
            keys.sort();
            s.samples
                .entry(line[..name_end].to_owned())
                .or_default()
                .insert(keys);
        }
        s
    }

    /// The family `name` belongs to: itself, or a histogram/summary it is a `_bucket`, `_sum`
    /// or `_count` series of.
    fn family<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.types.contains_key(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let kind = self.types.get(base)?;
            (kind == "histogram" || kind == "summary").then_some(base)
        })
    }

    /// True when `name` has a `# TYPE` line (its own or its histogram's) and at least one sample.
    fn exports(&self, name: &str) -> bool {
        self.family(name).is_some() && self.samples.contains_key(name)
    }
}

/// Starts rampart with [`EXERCISED`] and sends one retried request, one refused 429, one shed
/// and one answered by a fallback (tenant `acme`); returns the upstream, the proxy (both must
/// live while it is used) and the `/metrics` text.
async fn exercised() -> (rampart::sample::Sample, Proxy, String) {
    let app = sample().await;
    let proxy = Proxy::builder(EXERCISED)
        .var("APP", app.addr())
        .closed("DEAD")
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let acme = [("x-tenant-id", "acme")];
    let rsp = http::get(addr, "/fail-first/1?key=deploy", &acme).await;
    assert_eq!(rsp.status, 200, "the retried request: {}", rsp.text());
    assert_eq!(http::get(addr, "/ok", &acme).await.status, 200);
    http::get(addr, "/ok", &acme)
        .await
        .assert_rampart(429, "rate_limited");
    // Two at once on a route that takes one: one is shed.
    let (a, b) = tokio::join!(
        http::get(addr, "/slow?ms=300", &acme),
        http::get(addr, "/slow?ms=300", &acme)
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 503], "one of two must be shed");
    let rsp = http::get(addr, "/degraded", &acme).await;
    assert_eq!(rsp.header("x-rampart-degraded"), Some("static"), "{rsp:?}");
    let text = metrics(proxy.admin()).await;
    let retried = metric_value(&text, "rampart_retries_total", &[("route", "app")]);
    assert_eq!(retried, Some(1.0), "one retry must be counted:\n{text}");
    (app, proxy, text)
}

/// [`exercised`], for tests that only need the scrape.
async fn exercised_scrape() -> String {
    exercised().await.2
}

/// Names in `used` that are neither exported nor pending; and pending names now exported.
fn audit(scrape: &Scrape, used: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let pending = |n: &str| PENDING.iter().any(|(p, _)| *p == n);
    let missing = used
        .iter()
        .filter(|n| !scrape.exports(n) && !pending(n))
        .cloned()
        .collect();
    let stale = PENDING
        .iter()
        .filter(|(p, _)| scrape.types.contains_key(*p))
        .map(|(p, why)| format!("{p} ({why})"))
        .collect();
    (missing, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_series_rampart_exports() {
    let text = exercised_scrape().await;
    let scrape = Scrape::parse(&text);
    let mut used = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
        "deploy/grafana/rampart.json",
    ] {
        // Whole-line YAML comments are prose; everything else (annotations too) counts.
        let text = repo_file(file).1;
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        used.extend(metric_names(&code.join("\n")));
    }
    assert!(used.contains("rampart_requests_total"), "{used:?}");
    let (missing, stale) = audit(&scrape, &used);
    assert!(
        missing.is_empty(),
        "deploy/ names series rampart does not export and no issue is pending for: \
         {missing:?}\n(add them to PENDING with the issue that creates them, or fix the name)\n\
         scrape:\n{text}"
    );
    assert!(
        stale.is_empty(),
        "these PENDING series are exported now: take them out of PENDING and check their \
         alerts and alerts_test.yml against the scrape: {stale:?}"
    );
    for (name, _) in PENDING {
        assert!(
            used.contains(*name),
            "PENDING lists {name}, which deploy/ never uses"
        );
    }
}

#[test]
fn the_audit_catches_a_made_up_series() {
    let scrape = Scrape::parse(
        "# TYPE rampart_requests_total counter\nrampart_requests_total{code=\"200\"} 1\n\
         # TYPE rampart_d histogram\nrampart_d_bucket{le=\"+Inf\"} 1\n\
         # TYPE rampart_retries_total counter\n",
    );
    let used: BTreeSet<String> = metric_names(
        "rate(rampart_requests_total[5m]) rampart_d_bucket rampart_bogus_total \
         rampart_retries_total",
    );
    let (missing, _) = audit(&scrape, &used);
    // A family without samples is what Prometheus never sees, like a made-up name.
    assert_eq!(missing, ["rampart_bogus_total", "rampart_retries_total"]);
}

/// `name{a="x",b="y"}` of each `series:` line in alerts_test.yml → (name, sorted label names).
fn fed_series(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- series:"))
        .map(|s| {
            let s = s.trim().trim_matches('\'');
            let (name, body) = s.split_once('{').unwrap_or((s, "}"));
            let mut keys: Vec<String> = body
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|kv| kv.split_once("=\"").map(|(k, _)| k.trim().to_owned()))
                .filter(|k| !TARGET_LABELS.contains(&k.as_str()))
                .collect();
            keys.sort();
            (name.to_owned(), keys)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_tests_feed_series_with_the_labels_rampart_exports() {
    let text = exercised_scrape().await;
    let scrape = Scrape::parse(&text);
    let (_, tests) = repo_file("deploy/prometheus/alerts_test.yml");
    let fed = fed_series(&tests);
    assert!(!fed.is_empty(), "alerts_test.yml feeds no series");
    for (name, keys) in fed {
        if !name.starts_with("rampart_") || PENDING.iter().any(|(p, _)| *p == name) {
            continue;
        }
        let real = scrape
            .samples
            .get(&name)
            .unwrap_or_else(|| panic!("alerts_test.yml feeds {name}, which is not exported"));
        assert!(
            real.contains(&keys),
            "alerts_test.yml feeds {name} with labels {keys:?} (besides {TARGET_LABELS:?}); \
             rampart exports it with {real:?}"
        );
    }
}
