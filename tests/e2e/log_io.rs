//! Logs that cannot take their lines, through the real process: a FIFO or a device named as a
//! log file (refused, never opened, so nothing waits on it).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::{http, one_route, proxy::bin, sample, Proxy};

/// How long an answer may take here: every one is immediate unless a thread is stuck.
const PROMPT: Duration = Duration::from_secs(3);

/// A FIFO in `dir`, nobody reading it.
fn fifo(dir: &Path) -> PathBuf {
    let path = dir.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("`mkfifo` must run");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

/// GET `path` on `addr`, which must be answered within [`PROMPT`].
async fn prompt_get(addr: std::net::SocketAddr, path: &str) -> http::Resp {
    tokio::time::timeout(PROMPT, http::get(addr, path, &[]))
        .await
        .unwrap_or_else(|_| panic!("GET {addr}{path} must be answered within {PROMPT:?}"))
}

/// `rampart ARGS`, which must exit within 15 s (the child is killed, by its PID, if not).
async fn rampart(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RAMPART_CONFIG")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the rampart binary must start");
    tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("rampart must exit within 15 s")
        .expect("rampart's output must be readable")
}

/// A reload that adds an access log to a FIFO is refused at its key, with `to: stdout`
/// suggested, and nothing hangs: the admin endpoints, every request, SIGTERM. (Before, the
/// reload opened the FIFO on the main thread, which waited there for a reader.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_fifo_as_access_log_is_refused_and_nothing_waits() {
    let app = sample().await;
    let template = one_route("");
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .spawn()
        .await;
    let fifo = fifo(proxy.dir());
    proxy.rewrite_config(&template.replace(
        "    listen: $LISTEN_inbound\n",
        &format!(
            "    listen: $LISTEN_inbound\n    access_log: {{ to: {} }}\n",
            fifo.display()
        ),
    ));
    let rsp = tokio::time::timeout(PROMPT, http::post(proxy.admin(), "/reload", &[], ""))
        .await
        .expect("the reload must be answered");
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    let text = rsp.text();
    assert!(text.contains("listeners[0].access_log.to"), "{text}");
    assert!(text.contains("is not a regular file but a FIFO"), "{text}");
    assert!(text.contains("use `to: stdout`"), "{text}");
    assert_eq!(prompt_get(proxy.admin(), "/healthz").await.status, 200);
    for i in 0..20 {
        let rsp = prompt_get(proxy.listener("inbound"), &format!("/ok?n={i}")).await;
        assert_eq!(rsp.status, 200);
    }
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("rampart must exit after SIGTERM");
    assert!(status.success(), "{status}");
}

/// A start whose audit trail is a FIFO is refused (exit 1, the key named) instead of waiting
/// for a reader for ever; `validate` refuses a device as the trail (`/dev/full` was read to its
/// end, which never comes, to continue the chain).
#[tokio::test]
async fn an_audit_trail_that_is_a_fifo_or_a_device_is_refused_at_start_and_by_validate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = fifo(dir.path());
    for (file, kind) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/full"), "a character device"),
    ] {
        let template = one_route(&format!("audit: {{ file: {} }}", file.display()))
            .replace("$APP", "127.0.0.1:3000");
        let rendered = Proxy::builder(&template).render();
        let config = rendered.path.display().to_string();
        for command in ["run", "validate"] {
            let out = rampart(&[command, "--config", &config]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} {}: {stderr}",
                file.display()
            );
            assert!(
                stderr.contains(&format!(
                    "audit.file: {} is not a regular file but {kind}",
                    file.display()
                )),
                "{command}: {stderr}"
            );
        }
    }
}
