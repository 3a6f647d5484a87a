//! Audit trail (SPEC §11), fault injection and fallback answers (SPEC §10), through the binary
//! and real sockets.

use std::process::Command;
use std::time::Duration;

use crate::support::metrics::{metrics, reloads};
use crate::support::proxy::bin;
use crate::support::{http, one_route, sample, Proxy};

/// Runs `rampart audit verify --file FILE`: (exit code, stdout + stderr).
fn verify(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--file"])
        .arg(file)
        .output()
        .expect("the rampart binary must run");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_of_start_reloads_and_shutdown_verifies_and_catches_an_edit() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let template = one_route("audit: { file: $AUDIT }");
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .spawn()
        .await;
    let admin = proxy.admin();

    // A valid reload by SIGHUP, then an invalid one by POST /reload.
    proxy.signal("HUP");
    assert_eventually!(
        reloads(&metrics(admin).await, "success") >= 1.0,
        "the SIGHUP reload must be applied"
    );
    proxy.rewrite_config(&template.replace("version: 1", "version: 1\nbogus: 1"));
    let rsp = http::post(admin, "/reload", &[], "").await;
    assert_ne!(rsp.status, 200, "an invalid file must be refused");
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        proxy.log()
    );

    let text = std::fs::read_to_string(&trail).expect("the trail must exist");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let shape: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("");
            (s("event"), s("source"), s("result"))
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("start", "start", "ok"),
            ("reload", "sighup", "ok"),
            ("reload", "post", "error"),
            ("shutdown", "sigterm", "ok"),
        ],
        "{text}"
    );
    assert!(
        lines[2]["errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("bogus"),
        "{text}"
    );
    assert_eq!(
        lines[0]["sha256"], lines[1]["sha256"],
        "same file, same sha"
    );
    assert_ne!(
        lines[2]["sha256"], lines[1]["sha256"],
        "the refused file's own sha"
    );

    let (code, out) = verify(&trail);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 entries"), "{out}");

    // One line changed: verify fails and names it.
    let edited = text.replacen("\"source\":\"sighup\"", "\"source\":\"watch\"", 1);
    std::fs::write(&trail, edited).expect("the trail must be writable");
    let (code, out) = verify(&trail);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("line 2"), "{out}");
}
