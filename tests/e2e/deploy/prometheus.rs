//! A real Prometheus server (Debian package `prometheus`) on loopback scrapes a running rampart:
//! the series arrive with the labels the contract names, the shipped alert rules load and
//! evaluate, and every PromQL expression of the Grafana dashboard runs and returns series.
//!
//! Why a real server: a name audit (deploy.rs) cannot tell a label matcher that selects nothing,
//! a `by` on a label the metric lacks, or an expression Prometheus refuses to parse.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{exercised, metric_names, repo_file, Scrape, TARGET_LABELS};
use crate::support::{free_addr, http};

/// How long Prometheus may take to start, scrape twice and evaluate the rules once.
const PATIENCE: Duration = Duration::from_secs(40);

/// Values the dashboard's variables take in these queries: the scrape job and `app` label of the
/// generated config, every listener, and windows that hold several 1 s scrapes.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "15s"),
    ("$__range", "5m"),
    ("$listener", ".*"),
    ("$job", "rampart"),
    ("$app", "e2e"),
];

/// A `prometheus` child on a free loopback port with its own storage; killed (by PID) on drop.
struct Prometheus {
    _child: tokio::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The `prometheus` executable: on PATH (Debian installs it as /usr/bin/prometheus).
fn prometheus_bin() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `prometheus` server is missing: install the Debian package `prometheus` \
                 (scripts/test.sh does)"
            )
        })
}

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `rampart`, app `e2e`, with the
    /// shipped alert rules; waits until it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (alerts, _) = repo_file("deploy/prometheus/alerts.yml");
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  \
               - job_name: rampart\n    \
                 static_configs:\n      \
                   - targets: [\"{target}\"]\n        \
                     labels: {{ app: e2e }}\n",
            alerts.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = tokio::process::Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("prometheus must start");
        let prom = Prometheus {
            _child: child,
            addr,
            dir,
        };
        let ready = prom
            .poll(|p| async move {
                http::try_get(p.addr, "/-/ready", &[])
                    .await
                    .is_ok_and(|r| r.status == 200)
                    .then_some(())
            })
            .await;
        assert!(ready.is_some(), "prometheus never ready: {}", prom.log());
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Calls `f` every 250 ms until it yields a value or [`PATIENCE`] runs out.
    async fn poll<'a, T, F, Fut>(&'a self, f: F) -> Option<T>
    where
        F: Fn(&'a Prometheus) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(v) = f(self).await {
                return Some(v);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// GET an API path; the `data` of a `success` answer, or the error text.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let rsp = http::try_get(self.addr, path, &[])
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let body: Value = serde_json::from_slice(&rsp.body)
            .map_err(|e| format!("GET {path}: {e}: {}", rsp.text()))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("GET {path}: {body}"))
        }
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", enc(expr)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_rampart_and_loads_the_alert_rules() {
    let (_app, proxy, _) = exercised().await;
    let prom = Prometheus::start(proxy.admin()).await;

    // The request series of tenant `acme`, with the labels of SPEC §5 plus the target's.
    let series = prom
        .poll(|p| async move {
            let r = p
                .query("rampart_requests_total{tenant=\"acme\", code=\"200\"}")
                .await
                .ok()?;
            (!r.is_empty()).then_some(r)
        })
        .await
        .unwrap_or_else(|| panic!("no rampart_requests_total for acme: {}", prom.log()));
    let m = &series[0]["metric"];
    for (k, v) in [
        ("job", "rampart"),
        ("app", "e2e"),
        ("listener", "inbound"),
        ("tenant", "acme"),
        ("code", "200"),
    ] {
        assert_eq!(m[k], v, "label {k} of {m}");
    }
    assert!(m["route"].is_string(), "{m}");
    let up = prom.query("up{job=\"rampart\"}").await.expect("up");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // Every alert of alerts.yml is loaded, and each has been evaluated without error.
    let (_, alerts_text) = repo_file("deploy/prometheus/alerts.yml");
    let want: BTreeSet<String> = alerts_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(want.len() >= 5, "{want:?}");
    let rules = prom
        .poll(|p| async move {
            let data = p.api("/api/v1/rules").await.ok()?;
            let rules: Vec<Value> = data["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            rules.iter().all(|r| r["health"] == "ok").then_some(rules)
        })
        .await
        .unwrap_or_else(|| panic!("alert rules not all evaluated healthy: {}", prom.log()));
    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(loaded, want, "the rules Prometheus loaded");
    for r in &rules {
        assert_eq!(r["lastError"].as_str().unwrap_or(""), "", "{r}");
    }
}

/// A dashboard query: the panel it is in, the expression and its legend.
#[derive(Debug)]
struct Target {
    panel: String,
    expr: String,
    legend: String,
}

fn dashboard_targets() -> (Vec<Target>, Vec<String>) {
    let (_, text) = repo_file("deploy/grafana/rampart.json");
    let dash: Value = serde_json::from_str(&text).expect("rampart.json is JSON");
    let mut panels: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    // Rows may hold their own panels.
    let nested: Vec<Value> = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default())
        .collect();
    panels.extend(nested);
    let mut targets = Vec::new();
    for p in &panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            targets.push(Target {
                panel: p["title"].as_str().unwrap_or("?").to_owned(),
                expr: t["expr"]
                    .as_str()
                    .expect("every target has expr")
                    .to_owned(),
                legend: t["legendFormat"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    (targets, vars)
}

fn substitute(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_owned(), |e, (k, v)| e.replace(k, v))
}

/// The labels of every `by (...)` / `without (...)` clause in `expr`.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kw in ["by (", "by("] {
        let mut rest = expr;
        while let Some(at) = rest.find(kw) {
            let tail = &rest[at + kw.len()..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.extend(
                tail[..end]
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
            rest = &tail[end..];
        }
    }
    out
}

/// The `{{label}}` names of a legend format.
fn legend_labels(legend: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = legend;
    while let Some(at) = rest.find("{{") {
        let tail = &rest[at + 2..];
        let end = tail.find("}}").unwrap_or(tail.len());
        out.insert(tail[..end].trim().to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_shows_what_issue_21_asks_for() {
    let (targets, _) = dashboard_targets();
    let has = |what: &str, ok: &dyn Fn(&str) -> bool| {
        assert!(
            targets.iter().any(|t| ok(&t.expr)),
            "the dashboard has no query for {what}: {targets:#?}"
        );
    };
    let by_tenant = |e: &str| grouping_labels(e).contains("tenant");
    has("request rate by tenant", &|e| {
        e.contains("rate(rampart_requests_total") && by_tenant(e)
    });
    has("p99 latency by tenant", &|e| {
        e.contains("histogram_quantile(0.99")
            && e.contains("rampart_request_duration_seconds_bucket")
            && by_tenant(e)
    });
    has("429s by tenant", &|e| {
        e.contains("rampart_rate_limited_total") && by_tenant(e)
    });
    has("breaker states", &|e| {
        e.contains("rampart_circuit_breaker_state")
    });
    has("shed by reason", &|e| {
        e.contains("rampart_shed_total") && grouping_labels(e).contains("reason")
    });
    has("retries", &|e| e.contains("rampart_retries_total"));
    has("timeouts", &|e| e.contains("rampart_timeouts_total"));
    has("fallbacks", &|e| e.contains("rampart_fallbacks_total"));
    has("config reloads", &|e| {
        e.contains("rampart_config_reloads_total")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_runs_on_a_real_scrape_and_returns_series() {
    let (_app, proxy, text) = exercised().await;
    let scrape = Scrape::parse(&text);
    let (targets, vars) = dashboard_targets();
    assert!(targets.len() >= 10, "{targets:#?}");

    // Static: every `by` label and legend label is a label of a metric the expression reads.
    for t in &targets {
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for name in metric_names(&t.expr) {
            let seen = scrape
                .samples
                .get(&name)
                .unwrap_or_else(|| panic!("{:?} reads {name}, which has no sample", t.panel));
            labels.extend(seen.iter().flatten().cloned());
        }
        let by = grouping_labels(&t.expr);
        for l in &by {
            assert!(
                labels.contains(l),
                "panel {:?}: `by ({l})` but its metrics have only {labels:?}: {}",
                t.panel,
                t.expr
            );
        }
        for l in legend_labels(&t.legend) {
            assert!(
                by.is_empty() || by.contains(&l),
                "panel {:?}: legend {{{{{l}}}}} is not a grouping label of {}",
                t.panel,
                t.expr
            );
        }
    }

    // Live: Prometheus parses and evaluates each one, and each selects real series.
    let prom = Prometheus::start(proxy.admin()).await;
    let empty = prom
        .poll(|p| {
            let targets = &targets;
            async move {
                let mut empty = Vec::new();
                for t in targets {
                    match p.query(&substitute(&t.expr)).await {
                        Ok(r) if !r.is_empty() => {}
                        Ok(_) => empty.push(format!("{}: {}", t.panel, t.expr)),
                        Err(e) => panic!("panel {:?}: Prometheus refuses {}: {e}", t.panel, t.expr),
                    }
                }
                empty.is_empty().then_some(())
            }
        })
        .await;
    if empty.is_none() {
        let mut still = Vec::new();
        for t in &targets {
            if prom
                .query(&substitute(&t.expr))
                .await
                .unwrap_or_default()
                .is_empty()
            {
                still.push(format!("{}: {}", t.panel, substitute(&t.expr)));
            }
        }
        panic!("dashboard queries that select nothing on a real scrape: {still:#?}");
    }

    // The variables' label_values(...) queries find values too.
    for def in vars.iter().filter(|d| d.starts_with("label_values(")) {
        let inner = &def["label_values(".len()..def.len() - 1];
        let (selector, label) = inner.rsplit_once(',').expect("label_values(sel, label)");
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            enc(&substitute(selector.trim()))
        );
        let values = prom
            .api(&path)
            .await
            .unwrap_or_else(|e| panic!("{def}: {e}"));
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "variable query {def} finds no value"
        );
    }
}
