//! Logs that cannot take their lines, through the real process: a FIFO or a device named as a
//! log file (refused, never opened, so nothing waits on it); a log file that cannot be opened
//! (refused) or written (a full file system: every lost line counted, one warning); a stdout
//! nobody reads (nothing waits on it: not a request, not the admin, not SIGTERM).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::proxy::run as rampart;
use crate::support::{fifo, http, metric_value, metrics, one_route, sample, Proxy};

/// How long an answer may take here: every one is immediate unless a thread is stuck.
const PROMPT: Duration = Duration::from_secs(3);

/// GET `path` on `addr`, which must be answered within [`PROMPT`].
async fn prompt_get(addr: std::net::SocketAddr, path: &str) -> http::Resp {
    tokio::time::timeout(PROMPT, http::get(addr, path, &[]))
        .await
        .unwrap_or_else(|_| panic!("GET {addr}{path} must be answered within {PROMPT:?}"))
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

/// `one_route` whose listener logs to `$LOG`.
fn logging_to_log() -> String {
    one_route("").replace(
        "    listen: $LISTEN_inbound\n",
        "    listen: $LISTEN_inbound\n    access_log: { to: $LOG }\n",
    )
}

/// `access_log: { to: stderr }` writes its lines to the process's stderr, apart from rampart's
/// own log on stdout, and makes no file named `stderr` in the working directory. Before, it
/// was a relative path like any other: a file `stderr` beside wherever rampart was started.
#[tokio::test]
async fn an_access_log_to_stderr_goes_to_the_stream_not_a_file() {
    let app = sample().await;
    let template = logging_to_log().replace("$LOG", "stderr");
    let cwd = std::env::current_dir().expect("a working directory");
    let before = cwd.join("stderr").exists();
    // Stdout piped apart: the proxy's log file then holds its stderr only.
    let proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .stdout_unread()
        .spawn()
        .await;
    let rsp = http::get(proxy.listener("inbound"), "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eventually!(
        proxy.log().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["path"] == "/ok" && v["listener"] == "inbound")
        }),
        "an access log line on stderr: {}",
        proxy.log()
    );
    assert_eq!(
        cwd.join("stderr").exists(),
        before,
        "no file named stderr was made"
    );
}

/// An access log this process cannot open for appending (a read-only sysctl: for root too) is
/// refused: `validate` and `run` exit 1 naming its key, and a reload naming it is refused while
/// the config in force, and its log, go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_that_cannot_be_opened_is_refused_at_start_and_on_reload() {
    let app = sample().await;
    let unopenable = "/proc/sys/kernel/ostype";
    let rendered = Proxy::builder(&logging_to_log())
        .var("APP", app.addr())
        .var("LOG", unopenable)
        .render();
    let config = rendered.path.display().to_string();
    for command in ["validate", "run"] {
        let out = rampart(&[command, "--config", &config]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "listeners[0].access_log.to: {unopenable} cannot be opened for appending: Permission denied"
            )),
            "{command}: {stderr}"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let proxy = Proxy::builder(&logging_to_log())
        .var("APP", app.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    assert_eq!(prompt_get(addr, "/ok?n=1").await.status, 200);
    crate::support::wait_log_lines(&log, 1).await;
    let mut proxy = proxy;
    proxy.rewrite_config(&logging_to_log().replace("$LOG", unopenable));
    let rsp = http::post(proxy.admin(), "/reload", &[], "").await;
    assert_eq!(rsp.status, 400, "{}", rsp.text());
    assert!(
        rsp.text().contains("cannot be opened for appending"),
        "{}",
        rsp.text()
    );
    assert_eq!(prompt_get(addr, "/ok?n=2").await.status, 200);
    let lines = crate::support::wait_log_lines(&log, 2).await;
    assert_eq!(
        lines[1]["path"], "/ok",
        "the log in force still takes the lines"
    );
}

/// The access log on a full file system (a 64 KiB tmpfs, mounted in a mount namespace of the
/// proxy's own, so nothing stays mounted after it): every line that does not reach the file is
/// counted in `rampart_access_log_dropped_total` (the file's whole lines and the count add up
/// to the requests), and the failure is warned about once, not once per 25 ms round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_lost_to_a_full_disk_are_counted_and_warned_about_once() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let log = mnt.join("access.jsonl");
    let mnt_arg = mnt.display().to_string();
    let proxy = Proxy::builder(&logging_to_log())
        .var("APP", app.addr())
        .var("LOG", log.display())
        .launcher(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@""#,
            &mnt_arg,
        ])
        .spawn()
        .await;
    // The file as the proxy sees it, through its own mount namespace.
    let seen = PathBuf::from(format!("/proc/{}/root{}", proxy.pid(), log.display()));
    let client = http::client();
    let addr = proxy.listener("inbound");
    // About 600 × 300 bytes of lines: a few times what the file system holds, over many rounds.
    let sent = 600;
    for i in 0..sent {
        let path = format!("/ok?n={i}");
        let rsp = http::send(
            &client,
            addr,
            ::http::Method::GET,
            &path,
            &[],
            http::empty(),
        )
        .await
        .expect("answered");
        assert_eq!(rsp.status, 200);
    }
    let whole = || {
        std::fs::read(&seen)
            .expect("the log, through /proc/PID/root")
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    };
    let dropped = || async {
        let text = metrics(proxy.admin()).await;
        metric_value(&text, "rampart_access_log_dropped_total", &[]).unwrap_or(0.0) as usize
    };
    assert_eventually!(
        dropped().await + whole() == sent,
        "{} dropped + {} whole lines != {sent}",
        dropped().await,
        whole()
    );
    let dropped = dropped().await;
    assert!(dropped > 0, "the file system is full: lines were lost");
    let warnings = proxy
        .log()
        .lines()
        .filter(|l| l.contains("writing the access log failed"))
        .count();
    assert_eq!(warnings, 1, "{}", proxy.log());
}

/// With the access log and rampart's own log on a stdout that nobody reads (a stalled log
/// collector), once the pipe is full: a SIGHUP (whose "reloading" and "reloaded" lines go to
/// stdout) is applied, the admin endpoints and every request answer at once, and SIGTERM exits
/// 0 in a bounded time. Before, the thread that logged a line blocked on the pipe: the main
/// thread (admin, reloads, signals) at the SIGHUP, and with it a worker's share of requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_never_holds_a_request_the_admin_or_sigterm() {
    use std::os::fd::AsFd;
    let app = sample().await;
    let template = logging_to_log().replace("$LOG", "stdout");
    let mut proxy = Proxy::builder(&template)
        .var("APP", app.addr())
        .env("RAMPART_WORKERS", 2)
        .stdout_unread()
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let client = http::client();
    // Requests until the pipe is full: it holds up to 64 KiB and each request writes a line
    // of ~300 bytes; full is when a batch of lines (and two writer rounds) leaves it as it was.
    let queued = || {
        let pipe = proxy.stdout_pipe().expect("stdout is a pipe");
        rustix::io::ioctl_fionread(pipe.as_fd()).expect("FIONREAD")
    };
    let mut sent = 0;
    let mut last = 0;
    loop {
        assert!(sent < 5_000, "the pipe never filled: {} bytes", queued());
        for _ in 0..50 {
            let rsp = tokio::time::timeout(
                PROMPT,
                http::send(
                    &client,
                    addr,
                    ::http::Method::GET,
                    "/ok",
                    &[],
                    http::empty(),
                ),
            )
            .await
            .expect("answered while the pipe fills")
            .expect("answered");
            assert_eq!(rsp.status, 200);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let now = queued();
        if now >= 32 * 1024 && now == last {
            break;
        }
        last = now;
    }
    let reloads = || async {
        let text = tokio::time::timeout(PROMPT, metrics(proxy.admin()))
            .await
            .expect("/metrics must answer at once");
        crate::support::metrics::reloads(&text, "success")
    };
    let before = reloads().await;
    proxy.signal("HUP");
    assert_eventually!(
        reloads().await > before,
        "the SIGHUP reload must be applied"
    );
    assert_eq!(prompt_get(proxy.admin(), "/healthz").await.status, 200);
    // Fresh connections, so both workers get some.
    for i in 0..20 {
        assert_eq!(prompt_get(addr, &format!("/ok?n={i}")).await.status, 200);
    }
    assert_eq!(queued(), last, "the pipe stayed full, nobody read it");
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("rampart must exit within 10 s of SIGTERM though stdout is full");
    assert!(status.success(), "{status}");
}
