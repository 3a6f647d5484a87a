//! Audit trail (SPEC §11), fault injection and fallback answers (SPEC §10), through the binary
//! and real sockets.

use std::process::Command;
use std::time::Duration;

use crate::support::metrics::{metric_value, metrics, reloads};
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

/// A start refused because the policy file is invalid is a start attempt all the same: when
/// the file's audit section names a trail, the refusal is appended to it (with the errors and
/// the refused text's sha), and the chain still verifies.
#[test]
fn a_start_refused_for_an_invalid_file_is_in_the_trail() {
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let config = dir.path().join("rampart.yaml");
    let text = format!(
        "version: 1\naudit: {{ file: \"{}\" }}\nupstreams:\n  app: {{ endpoints: [127.0.0.1:9] }}\nlisteners:\n  - {{ name: i, direction: inbound, listen: 127.0.0.1:0, routes: [ {{ upstream: app, policy: nope }} ] }}\n",
        trail.display()
    );
    std::fs::write(&config, &text).expect("the config must be writable");
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RAMPART_CONFIG")
        .output()
        .expect("the rampart binary must run");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("no policy named \"nope\""), "{said}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trail)
        .unwrap_or_else(|e| {
            panic!("the refused start must be in the trail ({e}); rampart said {said}")
        })
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(
        (line["event"].as_str(), line["result"].as_str()),
        (Some("start"), Some("error")),
        "{line}"
    );
    assert!(
        line["errors"][0].as_str().unwrap_or("").contains("nope"),
        "{line}"
    );
    assert_eq!(
        line["sha256"].as_str(),
        Some(crate::support::sha256_hex(text.as_bytes()).as_str()),
        "{line}"
    );
    let (code, out) = verify(&trail);
    assert_eq!(code, Some(0), "{out}");
}

/// A path that is not a regular file is refused at once, saying what it is: a FIFO (before,
/// `audit verify --file FIFO` waited for a writer for ever) and a device.
#[tokio::test]
async fn audit_verify_refuses_a_path_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = crate::support::fifo(dir.path()).display().to_string();
    for (path, what) in [
        (fifo.as_str(), "a FIFO"),
        ("/dev/zero", "a character device"),
    ] {
        let out = crate::support::proxy::run(&["audit", "verify", "--file", path]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{path}: is {what}")) && err.contains("not a regular file"),
            "{err}"
        );
    }
}

/// Runs `rampart audit verify` with `args` after `verify`: (exit code, stdout + stderr).
fn verify_with(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("the rampart binary must run");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The entries of the trail at `path`, as JSON.
fn entries(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

/// The sha256 of the last line of the trail at `path`: the next entry's `prev`.
fn last_line_sha(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).expect("the trail must be readable");
    let last = text.lines().last().expect("the trail must have a line");
    crate::support::sha256_hex(last.as_bytes())
}

/// Sends SIGHUP and waits until the `n`th successful reload is counted.
async fn reload_to(proxy: &Proxy, n: f64) {
    proxy.signal("HUP");
    assert_eventually!(
        reloads(&metrics(proxy.admin()).await, "success") >= n,
        "reload {n} must be applied; log:\n{}",
        proxy.log()
    );
}

/// No change of policy leaves the trail unrecorded: a reload that removes `audit:` writes its
/// entry (`auditing: "off"`) to the trail it leaves, so auditing coming back shows the gap; a
/// reload that moves `audit.file` writes its entry to the old file (`next_file`) and then to
/// the new one, whose first line continues the old file's chain (`prev_file`, `prev` = the old
/// head), and the two verify as one sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_auditing_off_or_moving_its_file_is_recorded_in_the_trail_it_leaves() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let audited = one_route("audit: { file: $AUDIT }");
    let mut proxy = Proxy::builder(&audited)
        .var("APP", app.addr())
        .var("AUDIT", a.display())
        .var("AUDIT_B", b.display())
        .spawn()
        .await;
    proxy.rewrite_config(&one_route(""));
    reload_to(&proxy, 1.0).await;
    proxy.rewrite_config(&audited);
    reload_to(&proxy, 2.0).await;
    let lines = entries(&a);
    assert_eq!(
        lines.len(),
        3,
        "start, auditing off, auditing on: {lines:#?}"
    );
    assert_eq!(lines[1]["event"], "reload", "{lines:#?}");
    assert_eq!(lines[1]["auditing"], "off", "{lines:#?}");
    assert!(lines[2].get("auditing").is_none(), "{lines:#?}");
    assert_ne!(
        lines[1]["sha256"], lines[0]["sha256"],
        "the file without audit:"
    );

    proxy.rewrite_config(&one_route("audit: { file: $AUDIT_B }"));
    reload_to(&proxy, 3.0).await;
    let (old, new) = (entries(&a), entries(&b));
    assert_eq!(old.len(), 4, "{old:#?}");
    assert_eq!(old[3]["next_file"], b.display().to_string(), "{old:#?}");
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0]["prev_file"], a.display().to_string(), "{new:#?}");
    assert_eq!(new[0]["prev"], last_line_sha(&a), "{new:#?}");
    assert_eq!(
        new[0]["sha256"], old[3]["sha256"],
        "one reload, two entries"
    );

    let (code, out) = verify_with(&[
        "--file".as_ref(),
        a.as_os_str(),
        "--file".as_ref(),
        b.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = verify_with(&["--file".as_ref(), b.as_os_str()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("continues the trail last written to"), "{out}");
    // The files out of order do not verify as one trail.
    let (code, out) = verify_with(&[
        "--file".as_ref(),
        b.as_os_str(),
        "--file".as_ref(),
        a.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
}

/// A reload that moves the trail away from a file someone removed meanwhile does not make the
/// old file again to write its closing entry there: it warns, writes the entry to the new
/// file only (which still names the removed file as `prev_file`), and counts no write
/// failure; so too a reload that turns auditing off after its file was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_removed_audit_file_does_not_make_it_again() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let mut proxy = Proxy::builder(&one_route("audit: { file: $AUDIT }"))
        .var("APP", app.addr())
        .var("AUDIT", a.display())
        .var("AUDIT_B", b.display())
        .spawn()
        .await;
    std::fs::remove_file(&a).expect("remove the trail");
    proxy.rewrite_config(&one_route("audit: { file: $AUDIT_B }"));
    reload_to(&proxy, 1.0).await;
    assert!(!a.exists(), "the removed file must not be made again");
    let new = entries(&b);
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0]["event"], "reload", "{new:#?}");
    assert_eq!(new[0]["prev_file"], a.display().to_string(), "{new:#?}");

    std::fs::remove_file(&b).expect("remove the second trail");
    proxy.rewrite_config(&one_route(""));
    reload_to(&proxy, 2.0).await;
    assert!(!b.exists(), "the removed file must not be made again");
    // The log is written by its own thread: the second warning may land after the reload's
    // answer (a loaded machine saw 1).
    let warned = || {
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("the audit file the trail leaves is gone") && l.contains("WARN"))
            .count()
    };
    assert_eventually!(warned() == 2, "log:\n{}", proxy.log());
    let failures = metric_value(
        &metrics(proxy.admin()).await,
        "rampart_audit_write_failures_total",
        &[],
    );
    assert_eq!(failures, Some(0.0));
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
}

/// `mv audit.jsonl audit.rot` and a reload: the entry goes to a new `audit.jsonl`, as the
/// access log's lines do, not to the renamed file; its first line continues the rotated file's
/// chain, so `verify --file audit.rot --file audit.jsonl` checks both as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_trail_is_reopened_by_path_on_reload_and_continues_its_chain() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let (trail, rotated) = (dir.path().join("audit.jsonl"), dir.path().join("audit.rot"));
    let mut proxy = Proxy::builder(&one_route("audit: { file: $AUDIT }"))
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .spawn()
        .await;
    std::fs::rename(&trail, &rotated).expect("rename");
    reload_to(&proxy, 1.0).await;
    assert_eq!(
        entries(&rotated).len(),
        1,
        "the rotated file keeps its start only"
    );
    let fresh = entries(&trail);
    assert_eq!(fresh.len(), 1, "{fresh:#?}");
    assert_eq!(fresh[0]["event"], "reload");
    assert_eq!(fresh[0]["prev"], last_line_sha(&rotated));
    assert_eq!(fresh[0]["prev_file"], trail.display().to_string());
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        entries(&trail).len(),
        2,
        "the shutdown follows in the new file"
    );
    let (code, out) = verify_with(&[
        "--file".as_ref(),
        rotated.as_os_str(),
        "--file".as_ref(),
        trail.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 entries"), "{out}");
}

/// The chain cannot show entries cut from its end; the head and count rampart shows in
/// `/state` (and logs per entry) can: `verify --expect-head/--expect-count` fails on a file
/// cut short or emptied, which verifies on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_cut_at_its_end_fails_against_the_head_state_shows() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let mut proxy = Proxy::builder(&one_route("audit: { file: $AUDIT }"))
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .spawn()
        .await;
    reload_to(&proxy, 1.0).await;
    let state = http::get(proxy.admin(), "/state", &[]).await.json();
    let audit = &state["audit"];
    assert_eq!(audit["file"], trail.display().to_string(), "{state}");
    assert_eq!(audit["entries"], 2, "{state}");
    let head = audit["head"].as_str().expect("a head").to_owned();
    assert_eq!(head, last_line_sha(&trail));
    assert!(
        proxy.log().contains(&head),
        "each entry written is logged with the head"
    );
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;

    // The trail as it was when the head was read: entries 1 and 2 of 3.
    let text = std::fs::read_to_string(&trail).expect("the trail");
    let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&trail, &kept).expect("rewrite");
    let expect = |head: &str, n: &str| {
        verify_with(&[
            "--file".as_ref(),
            trail.as_os_str(),
            "--expect-head".as_ref(),
            head.as_ref(),
            "--expect-count".as_ref(),
            n.as_ref(),
        ])
    };
    let (code, out) = expect(&head, "2");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(": ok, 2 entries, chain intact, head {head}")),
        "{out}"
    );
    // One entry cut from the end: intact on its own, not against the head.
    let one: String = text.lines().take(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&trail, one).expect("rewrite");
    assert_eq!(verify(&trail).0, Some(0));
    let (code, out) = expect(&head, "2");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cut"), "{out}");
    // Its chain is said, but not "ok": what was asked of it does not hold.
    assert!(out.contains(": 1 entry, chain intact, head "), "{out}");
    assert!(!out.contains(": ok,"), "{out}");
    // Emptied.
    std::fs::write(&trail, "").expect("empty");
    let (code, out) = expect(&head, "2");
    assert_eq!(code, Some(1), "{out}");
    // Entries added since the head was read: named as such.
    std::fs::write(&trail, &text).expect("rewrite");
    let (code, out) = expect(&head, "2");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 entry follows it"), "{out}");
    assert!(!out.contains(": ok,"), "{out}");
    // The count alone, as the head alone, is judged the same way.
    let (code, out) = verify_with(&[
        "--file".as_ref(),
        trail.as_os_str(),
        "--expect-count".as_ref(),
        "2".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(": 3 entries, chain intact, head "), "{out}");
    assert!(!out.contains(": ok,"), "{out}");
}

/// A trail whose last line was cut mid-write is continued with a warning naming the file and
/// where the torn line starts, and the next entry starts a line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_warned_of_and_the_next_entry_starts_its_own_line() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let torn = "{\"time\":\"2026-12-01T00:00:00.000Z\",\"event\":\"sta";
    std::fs::write(&trail, format!("junk\n{torn}")).expect("write");
    let mut proxy = Proxy::builder(&one_route("audit: { file: $AUDIT }"))
        .var("APP", app.addr())
        .var("AUDIT", trail.display())
        .spawn()
        .await;
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let log = proxy.log();
    let warning = log
        .lines()
        .find(|l| l.contains("last line is incomplete"))
        .unwrap_or_else(|| panic!("no warning of the torn line; log:\n{log}"));
    let w: serde_json::Value = serde_json::from_str(warning).expect("a JSON log line");
    assert_eq!(w["level"], "WARN", "{warning}");
    assert!(warning.contains(&trail.display().to_string()), "{warning}");
    assert!(warning.contains("\"offset\":5"), "{warning}");
    let text = std::fs::read_to_string(&trail).expect("the trail");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], torn, "{text}");
    let next: serde_json::Value = serde_json::from_str(lines[2]).expect("a whole entry");
    assert_eq!(next["event"], "start", "{text}");
}

/// A crash mid-write, then a restart: the torn line the crash left is chained to by the next
/// entry (its `prev` is the torn line's hash), so `verify` accepts the trail, warning of the
/// torn line by number, and `/state` counts it apart from the entries. The same trail with the
/// torn line's bytes changed afterwards (or put there by hand) does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_line_the_next_entry_chains_to_verifies_with_a_warning_and_counts_apart() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let start = || {
        Proxy::builder(&one_route("audit: { file: $AUDIT }"))
            .var("APP", app.addr())
            .var("AUDIT", trail.display())
            .spawn()
    };
    let mut proxy = start().await;
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let torn = "{\"time\":\"2026-12-01T00:00:00.000Z\",\"event\":\"rel";
    let mut text = std::fs::read_to_string(&trail).expect("the trail");
    text.push_str(torn);
    std::fs::write(&trail, &text).expect("append the torn line");

    let mut proxy = start().await;
    let state = http::get(proxy.admin(), "/state", &[]).await.json();
    assert_eq!(
        (&state["audit"]["entries"], &state["audit"]["torn"]),
        (&3.into(), &1.into()),
        "{state}"
    );
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let (code, out) = verify(&trail);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok, 4 entries and 1 torn line"), "{out}");
    assert!(out.contains("warning: line 3 is torn"), "{out}");

    let text = std::fs::read_to_string(&trail).expect("the trail");
    let tampered = text.replacen(&format!("{torn}\n"), &format!("{torn}x\n"), 1);
    assert_ne!(tampered, text);
    std::fs::write(&trail, tampered).expect("rewrite");
    let (code, out) = verify(&trail);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("chain broken at line 3"), "{out}");
}

/// A whole last entry that lacks only its newline (the write stopped just before it, or an
/// editor dropped it) is an entry, and everything says so alike: `verify` counts it and notes
/// the newline, a restart ends it without a torn-line warning, `/state` counts it with no torn
/// line, and the next entry starts its own line chained to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_last_entry_without_its_newline_is_an_entry_everywhere() {
    let app = sample().await;
    let dir = tempfile::tempdir().expect("a temp dir must be creatable");
    let trail = dir.path().join("audit.jsonl");
    let start = || {
        Proxy::builder(&one_route("audit: { file: $AUDIT }"))
            .var("APP", app.addr())
            .var("AUDIT", trail.display())
            .spawn()
    };
    let mut proxy = start().await;
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(&trail).expect("the trail");
    let unended = text
        .strip_suffix('\n')
        .expect("a trail ends with a newline");
    std::fs::write(&trail, unended).expect("drop the last newline");
    let head = last_line_sha(&trail);

    let (code, out) = verify(&trail);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok, 2 entries, chain intact"), "{out}");
    assert!(out.contains("lacks its newline"), "{out}");
    assert!(!out.contains("torn"), "{out}");

    let mut proxy = start().await;
    let state = http::get(proxy.admin(), "/state", &[]).await.json();
    assert_eq!(
        (&state["audit"]["entries"], &state["audit"]["torn"]),
        (&3.into(), &0.into()),
        "{state}"
    );
    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    let log = proxy.log();
    assert!(
        !log.contains("incomplete"),
        "a torn-line warning; log:\n{log}"
    );
    assert!(!log.contains("\"WARN\""), "a warning; log:\n{log}");
    let note = log
        .lines()
        .find(|l| l.contains("lacks its newline"))
        .unwrap_or_else(|| panic!("no note of the missing newline; log:\n{log}"));
    assert!(note.contains(&trail.display().to_string()), "{note}");

    let (code, out) = verify(&trail);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok, 4 entries, chain intact"), "{out}");
    assert!(!out.contains("torn") && !out.contains("newline"), "{out}");
    let lines = entries(&trail);
    assert_eq!(lines[2]["event"], "start");
    assert_eq!(lines[2]["prev"], head.as_str());
}

/// One inbound route to upstream `app` at `$APP` under policy `p` with `policy` (flow YAML).
fn with_policy(policy: &str) -> String {
    format!(
        r#"
version: 1
admin: {{ listen: $ADMIN }}
upstreams:
  app: {{ endpoints: [$APP] }}
policies:
  p: {policy}
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
        policy: p
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_at_100_percent_never_reaches_the_upstream_and_spares_other_requests() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ fault: { header: x-chaos, abort: { percent: 100%, status: 418 } } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    for _ in 0..5 {
        let rsp = http::get(addr, "/ok", &[("x-chaos", "1")]).await;
        rsp.assert_rampart(418, "fault_injected");
        assert_eq!(rsp.header("x-rampart-fault"), Some("abort"));
    }
    assert_eq!(
        app.hits_for("/ok"),
        0,
        "an abort must never reach the upstream"
    );

    let rsp = http::get(addr, "/ok", &[]).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "ok\n");
    assert_eq!(
        rsp.header("x-rampart-fault"),
        None,
        "untouched without the header"
    );
    assert_eq!(app.hits_for("/ok"), 1);

    let text = metrics(proxy.admin()).await;
    let injected = |kind: &str| {
        metric_value(
            &text,
            "rampart_faults_injected_total",
            &[("route", "app"), ("kind", kind)],
        )
    };
    assert_eq!(injected("abort"), Some(5.0), "{text}");
    assert_eq!(injected("delay"), Some(0.0), "{text}");
}

/// A request both delayed and aborted is marked with both faults, as both are counted. Before,
/// the answer said only `abort` while `rampart_faults_injected_total` counted the delay too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_then_aborted_answer_is_marked_with_both_faults() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ fault: { header: x-chaos, delay: { percent: 100%, duration: 50ms }, abort: { percent: 100%, status: 503 } } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    let rsp = http::get(addr, "/ok", &[("x-chaos", "1")]).await;
    rsp.assert_rampart(503, "fault_injected");
    assert_eq!(rsp.header("x-rampart-fault"), Some("delay, abort"));
    assert_eq!(app.hits_for("/ok"), 0);
    let text = metrics(proxy.admin()).await;
    for kind in ["delay", "abort"] {
        let n = metric_value(
            &text,
            "rampart_faults_injected_total",
            &[("route", "app"), ("kind", kind)],
        );
        assert_eq!(n, Some(1.0), "{kind}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_shows_in_latency() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ fault: { header: x-chaos, delay: { percent: 100%, duration: 400ms } } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    let t = tokio::time::Instant::now();
    let rsp = http::get(addr, "/ok", &[("x-chaos", "1")]).await;
    let delayed = t.elapsed();
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("x-rampart-fault"), Some("delay"));
    assert!(delayed >= Duration::from_millis(400), "{delayed:?}");

    let t = tokio::time::Instant::now();
    let rsp = http::get(addr, "/ok", &[]).await;
    let plain = t.elapsed();
    assert_eq!(rsp.header("x-rampart-fault"), None);
    assert!(plain < Duration::from_millis(300), "{plain:?}");
    assert_eq!(app.hits_for("/ok"), 2);
}

/// An injected delay longer than the request timeout ends at the deadline, with the request
/// timeout's 504 (no try made, the timeout counted), not after the whole delay. Before, the
/// delay ran in full and the 504 then came late, blaming the upstream by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_is_cut_at_the_request_timeout() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ timeout: { request: 500ms }, fault: { header: x-chaos, delay: { percent: 100%, duration: 3s } } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    let t = tokio::time::Instant::now();
    let rsp = http::get(addr, "/ok", &[("x-chaos", "1")]).await;
    let took = t.elapsed();
    rsp.assert_rampart(504, "timeout");
    assert_eq!(rsp.header("x-rampart-fault"), Some("delay"));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert!(rsp.text().contains("injected delay"), "{}", rsp.text());
    assert_eq!(app.hits(), 0, "no try was made");
    let text = metrics(proxy.admin()).await;
    assert_eq!(
        metric_value(
            &text,
            "rampart_timeouts_total",
            &[("route", "app"), ("kind", "request")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_while_the_upstream_is_down_else_the_static_one() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        r#"{ fallback: { on: [upstream_unavailable], stale: 5m, static: { status: 200, content_type: application/json, body: '{"items":[]}' } } }"#,
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");

    // Kept while the upstream is up: a 2xx GET, and it is untouched on the way.
    let fresh = http::get(addr, "/bytes/1000", &[]).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-rampart-degraded"), None);
    app.stop();

    assert_eventually!(
        http::get(addr, "/bytes/1000", &[])
            .await
            .header("x-rampart-degraded")
            == Some("stale"),
        "the kept answer must be served while the upstream is down"
    );
    let stale = http::get(addr, "/bytes/1000", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, fresh.body, "the very answer kept");
    assert_eq!(
        stale.header("x-rampart-reason"),
        Some("upstream_unavailable")
    );
    assert!(stale.header("age").is_some());

    // Nothing kept for this target: the static answer.
    let fixed = http::get(addr, "/never-seen", &[]).await;
    assert_eq!(fixed.status, 200);
    assert_eq!(fixed.header("x-rampart-degraded"), Some("static"));
    assert_eq!(
        fixed.header("x-rampart-reason"),
        Some("upstream_unavailable")
    );
    assert_eq!(fixed.header("content-type"), Some("application/json"));
    assert_eq!(fixed.text(), r#"{"items":[]}"#);
    // Not a GET: never stale, the static answer too.
    let post = http::post(addr, "/bytes/1000", &[], "x").await;
    assert_eq!(post.header("x-rampart-degraded"), Some("static"));

    let text = metrics(proxy.admin()).await;
    let given = |kind: &str| {
        metric_value(
            &text,
            "rampart_fallbacks_total",
            &[
                ("route", "app"),
                ("kind", kind),
                ("reason", "upstream_unavailable"),
            ],
        )
        .unwrap_or(0.0)
    };
    assert!(given("stale") >= 2.0, "{text}");
    assert_eq!(given("static"), 2.0, "{text}");
}

/// `static.methods: [GET, HEAD]`: the static 200 stands in only for reads, on both paths a
/// refusal is replaced on (one shed before the exchange, one timed out after it); a POST gets
/// rampart's own refusal, as with no fallback, uncounted (a 200 would tell it its write
/// succeeded though it never ran, or ran for an unknown time). Without `methods`, the static
/// answer stands in for every method (SPEC §10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_methods_keep_a_writes_refusal_and_a_reads_get_the_static_answer() {
    let app = sample().await;
    let policy = |methods: &str| {
        with_policy(&format!(
            "{{ timeout: {{ request: 2s }}, load_shed: {{ max_in_flight: 1, queue: {{ size: 0 }} }}, fallback: {{ on: [timeout, shed], static: {{ status: 200, body: sorry{methods} }} }} }}"
        ))
    };
    let proxy = Proxy::builder(&policy(", methods: [GET, HEAD]"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");

    // Shed: one GET holds the only slot (and times out, replaced by the static 200).
    let holder = tokio::spawn(async move { http::get(addr, "/slow?ms=10000", &[]).await });
    assert_eventually!(app.hits() == 1, "the holder must reach the upstream");
    let post = http::post(addr, "/echo", &[], "pay").await;
    post.assert_rampart(503, "shed");
    assert_eq!(post.header("x-rampart-degraded"), None);
    let get = http::get(addr, "/echo", &[]).await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.header("x-rampart-degraded"), Some("static"));
    assert_eq!(get.header("x-rampart-reason"), Some("shed"));
    let held = holder.await.expect("the holder must not panic");
    assert_eq!(held.status, 200, "{held:?}");
    assert_eq!(held.header("x-rampart-reason"), Some("timeout"));

    // Timed out: the POST reached the upstream, which may have done its write.
    let post = http::post(addr, "/slow?ms=10000", &[], "pay").await;
    post.assert_rampart(504, "timeout");
    assert_eq!(post.header("x-rampart-degraded"), None);
    let text = metrics(proxy.admin()).await;
    let given = |reason: &str| {
        metric_value(
            &text,
            "rampart_fallbacks_total",
            &[("route", "app"), ("kind", "static"), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(given("shed"), 1.0, "the GET only: {text}");
    assert_eq!(given("timeout"), 1.0, "the holder only: {text}");
    drop(proxy);

    // Without `methods`: every method.
    let proxy = Proxy::builder(&policy(""))
        .var("APP", app.addr())
        .spawn()
        .await;
    let post = http::post(proxy.listener("inbound"), "/slow?ms=10000", &[], "pay").await;
    assert_eq!(post.status, 200, "{post:?}");
    assert_eq!(post.header("x-rampart-degraded"), Some("static"));
    assert_eq!(post.header("x-rampart-reason"), Some("timeout"));
    assert_eq!(post.text(), "sorry");
}

const IDEM: &str = "{ idempotency: { ttl: 1h, max_body: 4KiB, max_entries: 5 } }";

/// A proxy in front of `app` under [`IDEM`].
async fn idem_proxy(app: &rampart::sample::Sample) -> Proxy {
    Proxy::builder(&with_policy(IDEM))
        .var("APP", app.addr())
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_post_reaches_the_upstream_once_and_replays_byte_for_byte() {
    let app = sample().await;
    let proxy = idem_proxy(&app).await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "k1"), ("x-tenant-id", "a")];

    let first = http::post(addr, "/echo", &key, "pay 10").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-rampart-idempotent-replay"), None);
    let again = http::post(addr, "/echo", &key, "pay 10").await;
    assert_eq!(
        app.hits_for("/echo"),
        1,
        "a repeat must not reach the upstream"
    );
    assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!((again.status, &again.body), (first.status, &first.body));

    // The same key with another body: 422, and still one hit.
    http::post(addr, "/echo", &key, "pay 99")
        .await
        .assert_rampart(422, "idempotency_key_reused");
    // Keys are per tenant: tenant b's k1 is another key.
    let b = [("idempotency-key", "k1"), ("x-tenant-id", "b")];
    let other = http::post(addr, "/echo", &b, "pay 10").await;
    assert_eq!(other.header("x-rampart-idempotent-replay"), None);
    assert_eq!(app.hits_for("/echo"), 2);
    // Without the header nothing is kept.
    http::post(addr, "/echo", &[], "pay 10").await;
    http::post(addr, "/echo", &[], "pay 10").await;
    assert_eq!(app.hits_for("/echo"), 4);
}

/// A malformed key (empty, over 255 bytes, or two `idempotency-key` lines that differ) is
/// refused 400 `bad_request` before it reaches the upstream. Before, an empty or 5000-byte key
/// was taken as a key and a second line ignored: the client thought itself protected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_idempotency_key_is_refused_before_the_upstream() {
    let app = sample().await;
    let proxy = idem_proxy(&app).await;
    let addr = proxy.listener("inbound");
    let long = "k".repeat(256);
    let malformed: [&[(&str, &str)]; 3] = [
        &[("idempotency-key", "")],
        &[("idempotency-key", &long)],
        &[("idempotency-key", "a1"), ("idempotency-key", "b2")],
    ];
    for headers in malformed {
        http::post(addr, "/echo", headers, "pay")
            .await
            .assert_rampart(400, "bad_request");
    }
    assert_eq!(app.hits_for("/echo"), 0, "a malformed key must not run");

    // At the bound, and the same key twice, it is a key.
    let at_bound = "k".repeat(255);
    for headers in [
        &[("idempotency-key", at_bound.as_str())][..],
        &[("idempotency-key", "same"), ("idempotency-key", "same")][..],
    ] {
        let first = http::post(addr, "/echo", headers, "pay").await;
        assert_eq!(first.status, 200);
        let again = http::post(addr, "/echo", headers, "pay").await;
        assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    }
    assert_eq!(app.hits_for("/echo"), 2);
}

/// A request body larger than `max_body` cannot be digested: the request runs without the
/// key's protection, and each answer says so, so the client knows a repeat runs again.
#[tokio::test]
async fn a_body_over_max_body_runs_unprotected_and_the_answer_says_so() {
    let app = sample().await;
    let proxy = idem_proxy(&app).await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "large")];
    let body = "x".repeat(4096 + 1);
    for _ in 0..2 {
        let rsp = http::post(addr, "/echo", &key, body.clone()).await;
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.header("x-rampart-idempotency"), Some("body-too-large"));
        assert_eq!(rsp.header("x-rampart-idempotent-replay"), None);
    }
    assert_eq!(
        app.hits_for("/echo"),
        2,
        "unprotected: both reach the upstream"
    );
    // At max_body it is protected, and unmarked.
    let key = [("idempotency-key", "fits")];
    let body = "x".repeat(4096);
    let first = http::post(addr, "/echo", &key, body.clone()).await;
    assert_eq!(first.header("x-rampart-idempotency"), None);
    let again = http::post(addr, "/echo", &key, body).await;
    assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(app.hits_for("/echo"), 3);
}

/// The access log counts a keyed request's bytes like any other's: its body read ahead for the
/// digest is `bytes_in`, and its answer, teed to be kept, is counted once in `bytes_out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_requests_bytes_are_logged_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.jsonl");
    let app = sample().await;
    let config = with_policy(IDEM).replace(
        "    listen: $LISTEN_inbound\n",
        "    listen: $LISTEN_inbound\n    access_log: { to: $LOG }\n",
    );
    let proxy = Proxy::builder(&config)
        .var("APP", app.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "counted")];
    let first = http::post(addr, "/echo", &key, "pay 10").await;
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], b"pay 10");
    let again = http::post(addr, "/echo", &key, "pay 10").await;
    assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    let lines = crate::support::wait_log_lines(&log, 2).await;
    for line in &lines {
        assert_eq!(line["bytes_in"], 6, "{line}");
        assert_eq!(line["bytes_out"], 6, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_is_409_5xx_is_not_kept_and_a_large_answer_is_not_replayable() {
    let app = sample().await;
    let proxy = idem_proxy(&app).await;
    let addr = proxy.listener("inbound");

    let slow = [("idempotency-key", "slow")];
    let first = tokio::spawn(async move { http::post(addr, "/slow?ms=800", &slow, "x").await });
    assert_eventually!(app.hits_for("/slow") == 1, "the first must be in flight");
    http::post(addr, "/slow?ms=800", &slow, "x")
        .await
        .assert_rampart(409, "idempotency_in_flight");
    assert_eq!(first.await.expect("no panic").status, 200);
    let replay = http::post(addr, "/slow?ms=800", &slow, "x").await;
    assert_eq!(replay.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(app.hits_for("/slow"), 1);

    let failing = [("idempotency-key", "fails")];
    assert_eq!(
        http::post(addr, "/status/503", &failing, "").await.status,
        503
    );
    assert_eq!(
        http::post(addr, "/status/503", &failing, "").await.status,
        503
    );
    assert_eq!(app.hits_for("/status/503"), 2, "a 5xx is not kept");

    let big = [("idempotency-key", "big")];
    assert_eq!(
        http::post(addr, "/bytes/10000", &big, "").await.body.len(),
        10000
    );
    http::post(addr, "/bytes/10000", &big, "")
        .await
        .assert_rampart(422, "idempotency_not_replayable");

    // Memory stays within max_entries (5), in the gauge.
    for i in 0..20 {
        let k = format!("many-{i}");
        http::post(addr, "/ok", &[("idempotency-key", &k)], "").await;
    }
    let text = metrics(proxy.admin()).await;
    let held = metric_value(&text, "rampart_idempotency_keys", &[("route", "app")]);
    assert_eq!(held, Some(5.0), "{text}");
}

/// Kept answers are bounded in bytes per route (`max_bytes`), not only by `max_entries` ×
/// `max_body`: many distinct keys with large answers keep at most `max_bytes` of them, the
/// oldest losing their body first. Such a key still guards its request (a repeat is 422
/// `idempotency_not_replayable` and does not run again); the newest still replays. Before,
/// 1500 keys with 1 MiB answers took 1.6 GB with the example configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_answers_stay_within_max_bytes_the_oldest_losing_their_body() {
    let app = sample().await;
    let policy =
        "{ idempotency: { ttl: 1h, max_body: 64KiB, max_bytes: 200KiB, max_entries: 1000 } }";
    let proxy = Proxy::builder(&with_policy(policy))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let key = |i: usize| format!("big-{i}");
    for i in 0..20 {
        let first = http::post(addr, "/bytes/50000", &[("idempotency-key", &key(i))], "").await;
        assert_eq!(first.status, 200);
        assert_eq!(first.body.len(), 50000, "sent whole");
        let text = metrics(proxy.admin()).await;
        let held = metric_value(&text, "rampart_idempotency_bytes", &[("route", "app")]);
        let held = held.unwrap_or_else(|| panic!("no bytes gauge: {text}"));
        assert!(held <= 200.0 * 1024.0, "after {i}: {held} bytes held");
    }
    let text = metrics(proxy.admin()).await;
    let held = metric_value(&text, "rampart_idempotency_bytes", &[("route", "app")]);
    assert!(
        held.is_some_and(|b| b >= 150_000.0),
        "the newest are kept: {text}"
    );
    let keys = metric_value(&text, "rampart_idempotency_keys", &[("route", "app")]);
    assert_eq!(keys, Some(20.0), "their keys stay: {text}");

    http::post(addr, "/bytes/50000", &[("idempotency-key", &key(0))], "")
        .await
        .assert_rampart(422, "idempotency_not_replayable");
    let newest = http::post(addr, "/bytes/50000", &[("idempotency-key", &key(19))], "").await;
    assert_eq!(newest.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(newest.body.len(), 50000);
    assert_eq!(app.hits_for("/bytes/50000"), 20, "no repeat ran again");
}

/// A reload that changes a route's `idempotency` (here `max_bytes` and `ttl`) keeps its keys,
/// claims in flight included: the repeat of a request still running stays 409 and never
/// reaches the upstream, and once the first ends its answer is replayed. Before, such a reload
/// emptied the route's table, and the repeat ran the request a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_idempotency_keeps_the_keys_in_flight() {
    let app = sample().await;
    let policy = |ttl: &str, max_bytes: &str| {
        with_policy(&format!(
            "{{ idempotency: {{ ttl: {ttl}, max_body: 1KiB, max_bytes: {max_bytes} }} }}"
        ))
    };
    let mut proxy = Proxy::builder(&policy("30s", "3KiB"))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "z")];
    let first = tokio::spawn(async move { http::post(addr, "/slow?ms=2000", &key, "x").await });
    assert_eventually!(app.hits_for("/slow") == 1, "the first must be in flight");
    http::post(addr, "/slow?ms=2000", &key, "x")
        .await
        .assert_rampart(409, "idempotency_in_flight");
    crate::reload::reload_to(&mut proxy, &policy("31s", "4KiB")).await;
    http::post(addr, "/slow?ms=2000", &key, "x")
        .await
        .assert_rampart(409, "idempotency_in_flight");
    assert_eq!(first.await.expect("no panic").status, 200);
    let replay = http::post(addr, "/slow?ms=2000", &key, "x").await;
    assert_eq!(replay.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(app.hits_for("/slow"), 1, "the key must never run twice");
}

/// The newest answer is always kept, even when with its header fields it passes `max_bytes`
/// (`max_body` counts the body only): with `max_body` = `max_bytes` = 1KiB, which validation
/// accepts, a 1000-byte answer is kept and its repeat replayed. Before, it was not kept (the
/// bytes gauge stayed 0) and its repeat was 422 `idempotency_not_replayable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_max_body_is_kept_when_max_bytes_equals_max_body() {
    let app = sample().await;
    let policy = "{ idempotency: { ttl: 1h, max_body: 1KiB, max_bytes: 1KiB } }";
    let proxy = Proxy::builder(&with_policy(policy))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "at-limit")];
    assert_eq!(http::post(addr, "/bytes/1000", &key, "").await.status, 200);
    let text = metrics(proxy.admin()).await;
    let held = metric_value(&text, "rampart_idempotency_bytes", &[("route", "app")]);
    assert!(held.is_some_and(|b| b > 1000.0), "{text}");
    let again = http::post(addr, "/bytes/1000", &key, "").await;
    assert_eq!(again.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(again.body.len(), 1000);
    assert_eq!(app.hits_for("/bytes/1000"), 1);
}

/// A reload that takes `idempotency` off a route it keeps sets the route's idempotency gauges
/// to 0: its keys are gone. Before, they showed the last count forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_gauges_fall_to_0_when_a_reload_takes_it_off_a_route() {
    let app = sample().await;
    let mut proxy = Proxy::builder(&with_policy(IDEM))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    http::post(addr, "/echo", &[("idempotency-key", "g")], "kept").await;
    let gauges = |text: &str| {
        let at = [("route", "app")];
        (
            metric_value(text, "rampart_idempotency_keys", &at).unwrap_or(0.0),
            metric_value(text, "rampart_idempotency_bytes", &at).unwrap_or(0.0),
        )
    };
    let text = metrics(proxy.admin()).await;
    let (keys, bytes) = gauges(&text);
    assert!(keys == 1.0 && bytes > 0.0, "{text}");
    let without = with_policy("{ timeout: { request: 5s } }");
    crate::reload::reload_to(&mut proxy, &without).await;
    assert_eq!(http::get(addr, "/ok", &[]).await.status, 200);
    let text = metrics(proxy.admin()).await;
    assert_eq!(gauges(&text), (0.0, 0.0), "{text}");
}

/// An expired entry is freed, not only ignored: once `ttl` has passed with no more traffic,
/// the keys and bytes held fall to 0 (a sweep runs every quarter `ttl`). Before, 30 s after
/// traffic stopped the keys of a `ttl: 2s` route were all still held, with their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_idempotency_keys_are_freed_when_traffic_stops() {
    let app = sample().await;
    let policy = "{ idempotency: { ttl: 1s, max_body: 4KiB } }";
    let proxy = Proxy::builder(&with_policy(policy))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    for i in 0..10 {
        let k = format!("short-{i}");
        assert_eq!(
            http::post(addr, "/bytes/1000", &[("idempotency-key", &k)], "")
                .await
                .status,
            200
        );
    }
    let gauges = |text: &str| {
        let of = |name| metric_value(text, name, &[("route", "app")]);
        (
            of("rampart_idempotency_keys"),
            of("rampart_idempotency_bytes"),
        )
    };
    let text = metrics(proxy.admin()).await;
    let (keys, bytes) = gauges(&text);
    assert_eq!(keys, Some(10.0), "{text}");
    assert!(bytes.is_some_and(|b| b >= 10_000.0), "{text}");

    // ttl (1 s) and a sweep period (250 ms) later, with margin: at most 3 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = metrics(proxy.admin()).await;
        if gauges(&text) == (Some(0.0), Some(0.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired keys still held 3 s after a 1 s ttl: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Expired: a repeat runs again.
    http::post(addr, "/bytes/1000", &[("idempotency-key", "short-0")], "").await;
    assert_eq!(app.hits_for("/bytes/1000"), 11);
}

/// An upstream that answers 200 to every request, with a header line for each `h=NAME:VALUE`
/// of its query, and a body naming the request's `authorization`; it closes each connection
/// after its answer, so it is down for good once the returned task is aborted.
async fn header_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind must work");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let who = req
                        .headers()
                        .get("authorization")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let body = format!("private to {who}\n");
                    let mut rsp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    let h = rsp.headers_mut();
                    let query = req.uri().query().unwrap_or("");
                    for (name, value) in query
                        .split('&')
                        .filter_map(|p| p.strip_prefix("h="))
                        .filter_map(|p| p.split_once(':'))
                    {
                        h.append(
                            hyper::header::HeaderName::from_bytes(name.as_bytes())
                                .expect("a test header name"),
                            value.parse().expect("a test header value"),
                        );
                    }
                    h.insert("connection", "close".parse().expect("a header value"));
                    Ok::<_, std::convert::Infallible>(rsp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A proxy before `app` whose route falls back, when the upstream is unavailable, to the last
/// good answer (`stale`) or else the static `static`.
async fn stale_fallback(app: std::net::SocketAddr) -> Proxy {
    Proxy::builder(&with_policy(
        r#"{ fallback: { on: [upstream_unavailable], stale: 5m, static: { status: 200, content_type: text/plain, body: 'static' } } }"#,
    ))
    .var("APP", app)
    .spawn()
    .await
}

/// Each `(path, headers)` is answered 200 by the upstream itself, not by the fallback.
async fn answered_live(addr: std::net::SocketAddr, who: &[(&str, &[(&str, &str)])]) {
    for &(path, who) in who {
        let rsp = http::get(addr, path, who).await;
        assert_eq!(rsp.status, 200, "{path}");
        assert_eq!(rsp.header("x-rampart-degraded"), None, "{path}");
    }
}

/// `rsp`, to `path`, is the fallback's static answer, not a stale one.
fn assert_static(rsp: &http::Resp, path: &str) {
    assert_eq!(rsp.status, 200, "{path}");
    assert_eq!(
        rsp.header("x-rampart-degraded"),
        Some("static"),
        "{path}: {:?}",
        rsp.text()
    );
    assert_eq!(rsp.text(), "static", "{path}");
}

/// The stale store is shared by every client of a tenant, so it keeps only what a shared
/// cache may (RFC 9111 §3, §3.5): user A's private answer, one that sets A's cookie, and one
/// to A's `authorization` that does not say it may be shared are never given to user B when
/// the upstream is down (B gets the static answer); a public answer, and one to an
/// authenticated request that says `public`, still are. Before, B got A's body and cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_is_never_kept_for_another_client() {
    let (app, server) = header_server().await;
    let proxy = stale_fallback(app).await;
    let addr = proxy.listener("inbound");
    let a = [("x-tenant-id", "acme"), ("authorization", "Bearer userA")];
    let b = [("x-tenant-id", "acme"), ("authorization", "Bearer userB")];
    let anon = [("x-tenant-id", "acme")];
    let private = "/me?h=cache-control:private,no-store&h=set-cookie:sid=AAA";
    let cookie = "/cookie?h=set-cookie:sid=AAA";
    let no_cache = "/nc?h=cache-control:no-cache";
    let authed = "/authed?h=cache-control:max-age=60";
    let authed_public = "/shared?h=cache-control:public,max-age=60";
    let public = "/public";
    let who: [(&str, &[(&str, &str)]); 6] = [
        (private, &a),
        (cookie, &anon),
        (no_cache, &anon),
        (authed, &a),
        (authed_public, &a),
        (public, &anon),
    ];
    answered_live(addr, &who).await;
    server.abort();
    assert_eventually!(
        http::get(addr, public, &b)
            .await
            .header("x-rampart-degraded")
            == Some("stale"),
        "the public answer must be served stale once the upstream is down"
    );
    for path in [private, cookie, no_cache, authed] {
        let rsp = http::get(addr, path, &b).await;
        assert_static(&rsp, path);
        assert_eq!(rsp.header("set-cookie"), None, "{path}");
    }
    let shared = http::get(addr, authed_public, &b).await;
    assert_eq!(shared.header("x-rampart-degraded"), Some("stale"));
    assert_eq!(
        shared.text(),
        "private to Bearer userA\n",
        "public: may be shared"
    );
}

/// RFC 9111 §4.2.4: an answer that says `must-revalidate`, `proxy-revalidate` or (to a shared
/// cache, which the stale store is) `s-maxage` must not be served stale. Such answers are not
/// kept for the fallback, so once the upstream is down the static answer is given instead; a
/// plain answer is still served stale. Before, all of them were kept and served stale
/// (`x-rampart-degraded: stale`), and `s-maxage` or `must-revalidate` even let an answer to
/// user A's `authorization` go to user B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_must_revalidate_is_never_served_stale() {
    let (app, server) = header_server().await;
    let proxy = stale_fallback(app).await;
    let addr = proxy.listener("inbound");
    let a = [("x-tenant-id", "acme"), ("authorization", "Bearer userA")];
    let b = [("x-tenant-id", "acme"), ("authorization", "Bearer userB")];
    let anon = [("x-tenant-id", "acme")];
    let plain = "/plain?h=cache-control:max-age=60";
    let must = "/must?h=cache-control:max-age=60,must-revalidate";
    let proxy_rv = "/proxy?h=cache-control:public,max-age=60,proxy-revalidate";
    let shared_age = "/smax?h=cache-control:max-age=0,s-maxage=60";
    let must_authed = "/must-authed?h=cache-control:must-revalidate";
    let smax_authed = "/smax-authed?h=cache-control:s-maxage=60";
    let who: [(&str, &[(&str, &str)]); 6] = [
        (plain, &anon),
        (must, &anon),
        (proxy_rv, &anon),
        (shared_age, &anon),
        (must_authed, &a),
        (smax_authed, &a),
    ];
    answered_live(addr, &who).await;
    server.abort();
    assert_eventually!(
        http::get(addr, plain, &anon)
            .await
            .header("x-rampart-degraded")
            == Some("stale"),
        "the plain answer must be served stale once the upstream is down"
    );
    for (path, who) in [
        (must, &anon[..]),
        (proxy_rv, &anon[..]),
        (shared_age, &anon[..]),
        (must_authed, &b[..]),
        (smax_authed, &b[..]),
    ] {
        let rsp = http::get(addr, path, who).await;
        assert_static(&rsp, path);
    }
}

/// A client that leaves after its keyed request was sent upstream does not free the key: the
/// upstream may still be working on it, so a retry with the same key is 409 until the request's
/// deadline (`timeout.request`), and runs only after it. Before, the claim was released when
/// the client left (logged 499), and the retry ran the request a second time (a double charge)
/// while the first still ran at the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_its_keyed_request_was_sent_leaves_the_key_in_flight() {
    use crate::support::conn::Conn;
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ timeout: { request: 2s }, idempotency: { ttl: 1h, max_body: 4KiB, max_entries: 5 } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");
    let key = [("idempotency-key", "pay-R1")];
    let mut conn = Conn::open(addr).await;
    let sent = tokio::time::Instant::now();
    conn.send(
        b"POST /slow?ms=1000 HTTP/1.1\r\nhost: app\r\nidempotency-key: pay-R1\r\ncontent-length: 3\r\n\r\npay",
    )
    .await;
    assert_eventually!(app.hits_for("/slow") == 1, "the first must be sent");
    // It gives up (as `curl -m 0.3` does): later than a half-close right after the request.
    tokio::time::sleep_until(sent + Duration::from_millis(250)).await;
    drop(conn);
    // The client's retry, while the upstream still works on the first, and after it is done.
    for at in [Duration::from_millis(400), Duration::from_millis(1300)] {
        tokio::time::sleep_until(sent + at).await;
        http::post(addr, "/slow?ms=1000", &key, "pay")
            .await
            .assert_rampart(409, "idempotency_in_flight");
    }
    assert_eq!(app.hits_for("/slow"), 1, "the request must not run twice");
    // After the deadline nothing of the first can still be running: the key is free.
    tokio::time::sleep_until(sent + Duration::from_millis(2200)).await;
    let again = http::post(addr, "/slow?ms=1000", &key, "pay").await;
    assert_eq!(again.status, 200);
    assert_eq!(app.hits_for("/slow"), 2);
}

/// Evicting at `max_entries` never drops a claim in flight (its repeat would run the request
/// again): with the table full of claims in flight, a new key is refused 503
/// `idempotency_table_full` before it reaches the upstream, and a repeat of a claimed key is
/// still 409. Once they finish, their answers can make room. Before, t4 evicted t1's claim
/// and t1's repeat ran a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_table_of_claims_in_flight_is_never_evicted() {
    let app = sample().await;
    let proxy = Proxy::builder(&with_policy(
        "{ idempotency: { ttl: 1h, max_body: 4KiB, max_entries: 3 } }",
    ))
    .var("APP", app.addr())
    .spawn()
    .await;
    let addr = proxy.listener("inbound");
    let mut first = Vec::new();
    for k in ["t1", "t2", "t3"] {
        first.push(tokio::spawn(async move {
            http::post(addr, "/slow?ms=1000", &[("idempotency-key", k)], "pay").await
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eventually!(app.hits_for("/slow") == 3, "three must be in flight");
    let full = http::post(addr, "/slow?ms=1000", &[("idempotency-key", "t4")], "pay").await;
    full.assert_rampart(503, "idempotency_table_full");
    assert_eq!(full.header("retry-after"), Some("1"));
    http::post(addr, "/slow?ms=1000", &[("idempotency-key", "t1")], "pay")
        .await
        .assert_rampart(409, "idempotency_in_flight");
    assert_eq!(app.hits_for("/slow"), 3, "neither reached the upstream");
    for f in first {
        assert_eq!(f.await.expect("no panic").status, 200);
    }
    // Finished answers may go: t4 runs now, and t1's answer is replayed or (if evicted for
    // t4) runs again, never while in flight.
    let t4 = http::post(addr, "/slow?ms=1000", &[("idempotency-key", "t4")], "pay").await;
    assert_eq!(t4.status, 200);
    assert_eq!(app.hits_for("/slow"), 4);
    let t3 = http::post(addr, "/slow?ms=1000", &[("idempotency-key", "t3")], "pay").await;
    assert_eq!(t3.header("x-rampart-idempotent-replay"), Some("true"));
    assert_eq!(app.hits_for("/slow"), 4);
}

/// One inbound route to `app` under `policy`, its access log written to `$LOG`.
fn logged_policy(policy: &str) -> String {
    with_policy(policy).replace(
        "    listen: $LISTEN_inbound\n",
        "    listen: $LISTEN_inbound\n    access_log: { to: $LOG, sample_ok: 100% }\n",
    )
}

/// rampart's own answers of 204, 205 and 304 (a static fallback's, an injected abort's) go
/// without content, over HTTP/1.1 and HTTP/2: no body, no `content-length` (a 205 says
/// `content-length: 0`, to a HEAD as to a GET: RFC 9110 §15.3.6), and 0 bytes out in the
/// access log. (A HEAD's 205 over HTTP/1.1 said no length at all.)
/// Before, HTTP/2 clients got a stream reset (PROTOCOL_ERROR: `content-length: 5` on a 204 or
/// 304 whose body was dropped), a 205 was sent with its body over both, and the log counted
/// bytes that were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contentless_fallback_or_abort_goes_without_body_or_length_on_h1_and_h2() {
    let app = sample().await;
    for status in [204u16, 205, 304] {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("access.jsonl");
        let proxy = Proxy::builder(&logged_policy(&format!(
            "{{ timeout: {{ request: 50ms }}, fallback: {{ on: [timeout], static: {{ status: {status}, body: hello }} }}, fault: {{ header: x-chaos, abort: {{ percent: 100%, status: {status} }} }} }}"
        )))
        .var("APP", app.addr())
        .var("LOG", log.display())
        .spawn()
        .await;
        let addr = proxy.listener("inbound");

        for chaos in [&[][..], &[("x-chaos", "1")][..]] {
            let rsp = http::h2_get(addr, "/slow?ms=2000", chaos).await;
            assert_eq!(rsp.status, status, "{rsp:?}");
            let zero = (status == 205).then_some("0");
            assert_eq!(rsp.header("content-length"), zero, "{rsp:?}");
            assert!(rsp.body.is_empty(), "{status}: {rsp:?}");
            let marker = match chaos.is_empty() {
                true => "x-rampart-degraded",
                false => "x-rampart-fault",
            };
            assert!(rsp.header(marker).is_some(), "{rsp:?}");
        }

        for (chaos, marker) in [
            ("", "x-rampart-degraded"),
            ("x-chaos: 1\r\n", "x-rampart-fault"),
        ] {
            let req = format!(
                "GET /slow?ms=2000 HTTP/1.1\r\nhost: app\r\n{chaos}connection: close\r\n\r\n"
            );
            let raw =
                crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
            let text = raw.text();
            assert_eq!(raw.status(), Some(status), "{text}");
            assert!(raw.header(marker).is_some(), "{status} {marker}: {text}");
            let length = raw.header("content-length");
            match status {
                205 => assert_eq!(length.as_deref(), Some("0"), "{text}"),
                _ => assert_eq!(length, None, "{text}"),
            }
            assert!(raw.header("content-type").is_none(), "{text}");
            let (_, after) = text.split_once("\r\n\r\n").expect("a whole head");
            assert_eq!(after, "", "{status}: no content after the head");
            assert!(raw.closed, "{status}: the answer ends at its head");
        }
        // A HEAD gets the head a GET gets.
        let req =
            "HEAD /slow?ms=2000 HTTP/1.1\r\nhost: app\r\nx-chaos: 1\r\nconnection: close\r\n\r\n";
        let raw = crate::support::raw::exchange(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw.status(), Some(status), "{}", raw.text());
        let zero = (status == 205).then(|| "0".to_owned());
        assert_eq!(
            raw.header("content-length"),
            zero,
            "HEAD {status}: {}",
            raw.text()
        );

        let lines = crate::support::wait_log_lines(&log, 5).await;
        for line in &lines {
            assert_eq!(line["status"], status, "{line}");
            assert_eq!(line["bytes_out"], 0, "{status}: {line}");
        }
    }
}

/// A `fault.abort.status` of 1xx is refused (an interim answer is never a request's last),
/// so a reload to one leaves the abort in force as it was, over HTTP/1.1 and HTTP/2. Before,
/// the reload was taken with a warning, and the abort of 100 or 103 came out as a bare 500
/// from hyper without rampart's headers, 101 as a switch to nothing and a closed connection,
/// and all three as a stream reset over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_interim_abort_status_is_refused_and_the_old_abort_holds() {
    let app = sample().await;
    let abort = |status: u16| {
        with_policy(&format!(
            "{{ fault: {{ header: x-chaos, abort: {{ percent: 100%, status: {status} }} }} }}"
        ))
    };
    let mut proxy = Proxy::builder(&abort(503))
        .var("APP", app.addr())
        .spawn()
        .await;
    let addr = proxy.listener("inbound");
    let chaos = [("x-chaos", "1")];
    for (n, status) in [100u16, 101, 103].into_iter().enumerate() {
        proxy.rewrite_config(&abort(status));
        proxy.signal("HUP");
        let want = (n + 1) as f64;
        assert_eventually!(
            reloads(&metrics(proxy.admin()).await, "failure") >= want,
            "the reload to {status} must be refused; log:\n{}",
            proxy.log()
        );
        assert_eq!(reloads(&metrics(proxy.admin()).await, "success"), 0.0);
        let rsp = http::get(addr, "/ok", &chaos).await;
        rsp.assert_rampart(503, "fault_injected");
        assert_eq!(rsp.header("x-rampart-fault"), Some("abort"));
        let rsp = http::h2_get(addr, "/ok", &chaos).await;
        rsp.assert_rampart(503, "fault_injected");
        assert_eq!(rsp.header("x-rampart-fault"), Some("abort"));
    }
    assert_eq!(app.hits_for("/ok"), 0);
}

/// The sample upstream listens with rampart's own backlog (1,024, as `ss` reports it in a
/// listening socket's Send-Q), so a proxy's HTTP/2 fan-out of hundreds of connections at once
/// has none dropped at its SYN queue. Before, it had tokio's 128.
#[tokio::test]
async fn the_sample_listens_with_rampart_s_backlog() {
    let app = crate::support::sample().await;
    let filter = format!("sport = :{}", app.addr().port());
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &filter])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no listening socket in: {text:?}"));
    assert_eq!(send_q, rampart::proxy::bind::BACKLOG.to_string(), "{text}");
}
