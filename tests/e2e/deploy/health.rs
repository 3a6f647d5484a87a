//! `rampart health`, the image's HEALTHCHECK: exit 0 on a 200 from the admin path, 1 with a
//! reason otherwise (refused, silent, draining, not found), always within its timeout.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{one_route, proxy::bin, sample, Proxy};

/// `rampart health ARGS`: (exit code, stdout + stderr, how long it took).
async fn health(args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = tokio::time::Instant::now();
    let child = tokio::process::Command::new(bin())
        .arg("health")
        .args(args)
        .env_remove("RAMPART_CONFIG")
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("rampart health must finish within 10 s")
        .expect("its output must be readable");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_on_200_and_1_with_a_reason_otherwise() {
    let app = sample().await;
    let proxy = Proxy::builder(&one_route("runtime: { drain_delay: 3s }"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let admin = proxy.admin().to_string();

    let (code, text, _) = health(&["--admin", &admin]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("{admin}/healthz: 200")), "{text}");
    // The address from the policy file, as the image's HEALTHCHECK finds it (RAMPART_CONFIG).
    let config = proxy.config_path().display().to_string();
    let (code, text, _) = health(&["--config", &config, "--path", "/readyz"]).await;
    assert_eq!(code, Some(0), "{text}");

    let (code, text, _) = health(&["--admin", &admin, "--path", "/nothing-here"]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("answered 404"), "{text}");
    let (code, text, _) = health(&["--admin", &admin, "--path", "/healthz HTTP/1.1\r\n"]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--path must start with /"), "{text}");

    // Draining: /readyz 503 at once, /healthz still 200.
    proxy.signal("TERM");
    crate::assert_eventually!(
        health(&["--admin", &admin, "--path", "/readyz"]).await.0 == Some(1),
        "/readyz must fail while draining"
    );
    let (code, text, _) = health(&["--admin", &admin, "--path", "/readyz"]).await;
    assert!(text.contains("answered 503"), "{code:?} {text}");
    let (code, text, _) = health(&["--admin", &admin]).await;
    assert_eq!(code, Some(0), "/healthz while draining: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_fast_on_a_closed_port_and_within_its_timeout_on_a_silent_one() {
    let closed = crate::support::Closed::new();
    let (code, text, _) = health(&["--admin", &closed.to_string()]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot connect"), "{text}");

    // Accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (code, text, took) = health(&["--admin", &addr, "--timeout", "300ms"]).await;
    hold.abort();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no answer"), "{text}");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} with a 300ms timeout"
    );

    // A policy file that does not load names itself and the way around it.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nadmin: { listen: nowhere }\n").expect("write");
    let (code, text, _) = health(&["--config", &bad.display().to_string()]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("bad.yaml") && text.contains("--admin"),
        "{text}"
    );
}
