//! The Kubernetes manifests and the compose setup, checked by real tools: every manifest against
//! the Kubernetes JSON schemas (`kubernetes-validate`, PyPI, strict: unknown fields are errors),
//! the references between files (`deploy/check_refs.py`), the policies with `rampart validate`
//! and the compose Prometheus config with `promtool check config`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::repo_file;
use crate::support::proxy::bin;

/// Kubernetes versions the manifests must be valid for: the first with native sidecars on by
/// default (1.29) and the newest the validator knows.
const KUBE_VERSIONS: &[Option<&str>] = &[Some("1.29.0"), None];

/// Kinds the Kubernetes schemas cover; the others (Kustomization, the ServiceMonitor CRD) are
/// checked by `check_refs.py`.
const NOT_IN_SCHEMAS: &[&str] = &["kustomization.yaml", "servicemonitor.yaml"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The PyPI tool `name`: in `RAMPART_PY_TOOLS` (a venv's bin folder, what scripts/test.sh
/// exports), in `target/deploy-venv/bin`, or on PATH.
fn py_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("RAMPART_PY_TOOLS")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(repo().join("target/deploy-venv/bin"));
    dirs.extend(
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths),
    );
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is missing: install the PyPI package kubernetes-validate (it brings \
                 PyYAML) into a venv and set RAMPART_PY_TOOLS to its bin folder; scripts/test.sh \
                 does this in target/deploy-venv"
            )
        })
}

/// The Python of the venv kubernetes-validate is in (it has PyYAML).
fn venv_python() -> PathBuf {
    let tool = py_tool("kubernetes-validate");
    let beside = tool.with_file_name("python3");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("python3")
    }
}

/// Runs `program args` in the repo; (exit code, stdout + stderr). Bounded to 60 s.
async fn run(program: &Path, args: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo())
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} must start: {e}", program.display()));
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} must finish within 60 s", program.display()))
        .expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// deploy/k8s/*.yaml that the Kubernetes schemas cover, and how many objects they hold.
fn schema_manifests() -> (Vec<String>, usize) {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .expect("deploy/k8s")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && !NOT_IN_SCHEMAS.contains(&n.as_str()))
        .map(|n| format!("deploy/k8s/{n}"))
        .collect();
    files.sort();
    let objects = files
        .iter()
        .map(|f| {
            repo_file(f)
                .1
                .lines()
                .filter(|l| l.starts_with("kind:"))
                .count()
        })
        .sum();
    (files, objects)
}

#[tokio::test]
async fn kubernetes_manifests_pass_the_kubernetes_schemas() {
    let tool = py_tool("kubernetes-validate");
    let (files, objects) = schema_manifests();
    assert!(objects >= 5, "{files:?}: {objects} objects");
    for version in KUBE_VERSIONS {
        let mut args = vec!["--strict"];
        if let Some(v) = version {
            args.extend(["--kubernetes-version", v]);
        }
        args.extend(files.iter().map(String::as_str));
        let (code, text) = run(&tool, &args).await;
        assert_eq!(code, Some(0), "kubernetes-validate {args:?}:\n{text}");
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(
            passed, objects,
            "every object must be checked against a schema, none skipped:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_validator_refuses_a_misspelt_field() {
    let tool = py_tool("kubernetes-validate");
    let (_, deployment) = repo_file("deploy/k8s/deployment.yaml");
    let broken = deployment.replacen("readinessProbe:", "readinesProbe:", 1);
    assert_ne!(broken, deployment);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deployment.yaml");
    std::fs::write(&path, broken).expect("write");
    let (code, text) = run(&tool, &["--strict", &path.display().to_string()]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("readinesProbe"), "{text}");
}

#[tokio::test]
async fn kubernetes_manifests_reference_each_other_rightly() {
    let (code, text) = run(&venv_python(), &["deploy/check_refs.py", "k8s"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.trim(), "k8s: ok");
}

#[tokio::test]
async fn the_compose_setup_names_only_files_that_exist_and_valid_configs() {
    let (code, text) = run(&venv_python(), &["deploy/check_refs.py", "compose"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.trim(), "compose: ok");

    let (code, text) = run(
        Path::new(&bin()),
        &["validate", "--config", "deploy/compose/rampart.yaml"],
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(" 0 warning(s)") && !text.contains(": warning:"),
        "{text}"
    );

    // Prometheus reads alerts.yml beside its config, as the compose mounts lay them out.
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("deploy/compose/prometheus.yml", "prometheus.yml"),
        ("deploy/prometheus/alerts.yml", "alerts.yml"),
    ] {
        std::fs::copy(repo().join(from), dir.path().join(to)).expect("copy");
    }
    let promtool = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("promtool is missing: install the Debian package `prometheus`"));
    let config = dir.path().join("prometheus.yml").display().to_string();
    let (code, text) = run(&promtool, &["check", "config", &config]).await;
    assert_eq!(code, Some(0), "{text}");
}
