//! What a Kubernetes pod runs: the ConfigMap policy validates with no inert key, the pod's
//! timings leave rampart its whole drain, and text logs written into a pipe (a container's log
//! file) carry no terminal colour codes.

use std::process::Stdio;
use std::time::Duration;

use super::repo_file;
use crate::support::{http, proxy::bin, sample, Proxy};

/// The policy inside deploy/k8s/configmap.yaml (`data."rampart.yaml"`), dedented.
fn configmap_policy() -> String {
    let (_, text) = repo_file("deploy/k8s/configmap.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim() != "rampart.yaml: |");
    lines
        .next()
        .expect("configmap.yaml must hold data.\"rampart.yaml\"");
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect()
}

/// Runs the binary with `args` and stdout/stderr piped; bounded to 15 s.
async fn run_piped(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RAMPART_CONFIG")
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("rampart must exit within 15 s")
        .expect("rampart's output must be readable")
}

#[tokio::test]
async fn the_kubernetes_policy_validates_without_inert_keys() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, configmap_policy()).expect("write");
    let path = path.display().to_string();
    let out = run_piped(&["validate", "--config", &path]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The admin listener stays on loopback (the `telemetry` listener fronts the parts probes
    // and Prometheus need), so not even the admin.listen warning is left.
    assert!(
        !text.contains(": warning:"),
        "the shipped policy must use only keys rampart acts on, and warn about nothing: {text}"
    );
    assert!(text.contains(" 0 warning(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let app = sample().await;
    let rendered = Proxy::builder(&crate::support::one_route(""))
        .var("APP", app.addr())
        .render();
    let path = rendered.path.display().to_string();
    let child = tokio::process::Command::new(bin())
        .args(["run", "--config", &path, "--log-format", "text"])
        .env("RUST_LOG", "info")
        .env_remove("RAMPART_CONFIG")
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    let pid = child.id().expect("a running child has a pid");
    assert_eventually!(
        http::try_get(rendered.admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 200),
        "rampart must become ready"
    );
    let rsp = http::get(rendered.listeners["inbound"], "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("`kill` must run");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("rampart must exit within 15 s after SIGTERM")
        .expect("rampart's output must be readable");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("INFO"),
        "text log lines expected: {stdout:?}"
    );
    assert!(
        !stdout.trim_start().starts_with('{'),
        "not JSON: {stdout:?}"
    );
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !bytes.windows(2).any(|w| w == b"\x1b["),
            "ANSI escape codes in {name} of a pipe: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// The value after `key:` on the first line of `text` that has it (comments cut off).
fn value_of<'a>(text: &'a str, key: &str) -> &'a str {
    let needle = format!("{key}:");
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(needle.as_str()))
        .unwrap_or_else(|| panic!("no `{key}:` found"));
    line.split('#').next().unwrap_or("").trim()
}

/// Whole seconds of a policy duration (`5s`, `1m`).
fn seconds(d: &str) -> u64 {
    match d.strip_suffix('s') {
        Some(n) => n.parse().unwrap_or_else(|_| panic!("bad duration {d:?}")),
        None => 60 * d.trim_end_matches('m').parse::<u64>().expect("minutes"),
    }
}

#[test]
fn the_pod_leaves_rampart_its_whole_drain() {
    let policy = configmap_policy();
    let delay = seconds(value_of(&policy, "drain_delay"));
    let grace = seconds(value_of(&policy, "shutdown_grace"));
    assert_eq!(
        delay, 5,
        "SPEC §14: 5s of drain_delay in the Kubernetes manifests"
    );
    let (_, deployment) = repo_file("deploy/k8s/deployment.yaml");
    let period: u64 = value_of(&deployment, "terminationGracePeriodSeconds")
        .parse()
        .expect("a number of seconds");
    assert!(
        period > delay + grace,
        "terminationGracePeriodSeconds {period} must exceed drain_delay {delay}s + shutdown_grace {grace}s"
    );
    // The rampart container: from its name to the main containers.
    let at = deployment
        .find("- name: rampart")
        .expect("a rampart container");
    let end = deployment
        .find("\n      containers:")
        .expect("main containers");
    let rampart = &deployment[at..end];
    assert!(
        !rampart.contains("preStop"),
        "rampart delays its own shutdown (drain_delay): no preStop hook"
    );
    let readiness = &rampart[rampart.find("readinessProbe:").expect("a readiness probe")..];
    assert!(readiness.contains("path: /readyz"), "{readiness}");
    let probe: u64 = value_of(readiness, "periodSeconds")
        .parse()
        .expect("seconds");
    assert!(
        probe < delay,
        "readiness every {probe}s must notice a 503 within drain_delay"
    );
}

/// [`configmap_policy`] with its fixed addresses turned into the harness's placeholders.
fn configmap_template() -> String {
    let policy = configmap_policy();
    let mut t = policy.clone();
    for (fixed, var) in [
        ("127.0.0.1:9901", "$ADMIN"),
        ("0.0.0.0:8080", "$LISTEN_inbound"),
        ("127.0.0.1:15001", "$LISTEN_outbound"),
        ("0.0.0.0:9902", "$LISTEN_telemetry"),
        ("127.0.0.1:3000", "$APP"),
        ("payments.payments.svc.cluster.local:8080", "$APP"),
    ] {
        assert!(t.contains(fixed), "the pod policy no longer has {fixed}");
        t = t.replace(fixed, var);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_policy_shows_probes_and_metrics_only_and_follows_configmap_updates() {
    let app = sample().await;
    let template = configmap_template();
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .configmap()
        .arg("--watch")
        .spawn()
        .await;
    let telemetry = proxy.listener("telemetry");
    // What the kubelet and Prometheus reach on the pod IP.
    let rsp = http::get(telemetry, "/metrics", &[]).await;
    assert_eq!(rsp.status, 200);
    assert!(
        rsp.text().contains("# TYPE rampart_config_info gauge"),
        "{}",
        rsp.text()
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http::get(telemetry, path, &[]).await.status, 200, "{path}");
    }
    // The rest of the admin API stays on loopback.
    for path in ["/config", "/state"] {
        http::get(telemetry, path, &[])
            .await
            .assert_rampart(404, "no_route");
    }
    http::post(telemetry, "/reload", &[], "")
        .await
        .assert_rampart(404, "no_route");
    // Traffic: inbound to the app, and the app's outbound call through HTTP_PROXY.
    let acme = [("x-tenant-id", "acme")];
    let rsp = http::get(proxy.listener("inbound"), "/ok", &acme).await;
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "ok\n"));
    let outbound = proxy.listener("outbound");
    let rsp = http::get(
        outbound,
        "/ok",
        &[("host", "payments.payments.svc.cluster.local")],
    )
    .await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    // A ConfigMap update (the kubelet's symlink swap) is picked up by --watch.
    let tighter = template.replace(
        "per_tenant: { rate: 100/s, burst: 200 }",
        "per_tenant: { rate: 1/min, burst: 1 }",
    );
    assert_ne!(tighter, template);
    proxy.swap_configmap(&tighter);
    let admin = proxy.admin();
    assert_eventually!(
        crate::support::metrics::reloads(&crate::support::metrics(admin).await, "success") >= 1.0,
        "the ConfigMap swap must be reloaded"
    );
    let inbound = proxy.listener("inbound");
    let statuses = [
        http::get(inbound, "/ok", &acme).await.status.as_u16(),
        http::get(inbound, "/ok", &acme).await.status.as_u16(),
    ];
    assert!(
        statuses.contains(&429),
        "the new limit must act: {statuses:?}"
    );
}
