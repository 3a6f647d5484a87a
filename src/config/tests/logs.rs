//! Log paths (`listeners[].access_log.to`, `audit.file`) and TLS files: what may stand at the
//! path. A FIFO or a device is refused with its place, never opened (opening a FIFO waits for
//! its other end, for ever in `validate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{errors, fails_at, ok, BASE, SPEC_EXAMPLE};
use crate::config::ConfigError;

/// BASE whose listener logs to `to`.
fn logging_to(to: &Path) -> String {
    BASE.replace(
        "    listen: 127.0.0.1:8080\n",
        &format!(
            "    listen: 127.0.0.1:8080\n    access_log: {{ to: {} }}\n",
            to.display()
        ),
    )
}

/// BASE with its audit trail in `file`.
fn auditing_to(file: &Path) -> String {
    format!("{BASE}audit: {{ file: {} }}\n", file.display())
}

/// A FIFO in a new temp dir, nobody reading it.
fn fifo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = crate::logfile::tests::fifo(dir.path(), "fifo");
    (dir, path)
}

/// The errors of `text`, or a failure if validating it has not returned within 5 s.
fn errors_within_5s(text: String) -> Vec<ConfigError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(errors(&text));
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("validating must never wait on a file")
}

#[test]
fn an_access_log_that_is_a_fifo_or_a_device_is_refused_with_stdout_suggested() {
    let (_dir, fifo) = fifo();
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (PathBuf::from("/dev/full"), "a character device"),
    ] {
        let all = errors_within_5s(logging_to(&path));
        let e = all
            .iter()
            .find(|e| e.path == "listeners[0].access_log.to")
            .unwrap_or_else(|| panic!("{}: {all:#?}", path.display()));
        assert_eq!((e.line, e.column), (11, 23), "{e}");
        assert!(
            e.message.starts_with(&format!(
                "{} is not a regular file but {kind}",
                path.display()
            )),
            "{e}"
        );
        assert!(e.message.contains("use `to: stdout`"), "{e}");
    }
    ok(&logging_to(&fifo.with_file_name("access.jsonl")));
}

#[test]
fn an_audit_trail_that_is_a_fifo_or_a_device_is_refused() {
    let (_dir, fifo) = fifo();
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (PathBuf::from("/dev/full"), "a character device"),
        (PathBuf::from("/dev/zero"), "a character device"),
    ] {
        let text = auditing_to(&path);
        let all = errors_within_5s(text.clone());
        assert_eq!(all.len(), 1, "{all:#?}");
        let e = fails_at(&text, "audit.file");
        assert!(
            e.message.starts_with(&format!(
                "{} is not a regular file but {kind}",
                path.display()
            )),
            "{e}"
        );
    }
}

/// A TLS file that is a FIFO is named "not a regular file", and looking at it never waits.
#[test]
fn a_tls_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
    let (_dir, fifo) = fifo();
    let text = SPEC_EXAMPLE
        .replace(
            "    tls: { server_name: payments.internal, ca: /etc/rampart/ca.pem }",
            "",
        )
        .replace("/etc/rampart/tls/cert.pem", &fifo.display().to_string());
    let all = errors_within_5s(text);
    let e = all
        .iter()
        .find(|e| e.path == "listeners[0].tls.cert")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert!(e.message.contains("is not a regular file"), "{e}");
}

/// A log file this process cannot open for appending, or cannot create, is refused at its key
/// (for root too: a read-only sysctl, and the sysctl directory).
#[test]
fn a_log_file_that_cannot_be_opened_or_created_is_refused() {
    let ostype = Path::new("/proc/sys/kernel/ostype");
    let absent = Path::new("/proc/sys/kernel/rampart.jsonl");
    for (text, at) in [
        (logging_to(ostype), "listeners[0].access_log.to"),
        (auditing_to(ostype), "audit.file"),
    ] {
        let e = fails_at(&text, at);
        assert!(
            e.message.starts_with(
                "/proc/sys/kernel/ostype cannot be opened for appending: Permission denied"
            ),
            "{e}"
        );
    }
    for (text, at) in [
        (logging_to(absent), "listeners[0].access_log.to"),
        (auditing_to(absent), "audit.file"),
    ] {
        let e = fails_at(&text, at);
        assert!(
            e.message.starts_with(
                "/proc/sys/kernel/rampart.jsonl cannot be created in /proc/sys/kernel: Permission denied"
            ),
            "{e}"
        );
    }
}

/// `to: STDERR` (any case but the lowercase name) is a file path, which wrote `./STDERR`
/// silently: warned at the key, with the lowercase name suggested.
#[test]
fn a_stream_name_in_another_case_is_warned_as_a_file_path() {
    for (to, name) in [("STDERR", "stderr"), ("Stdout", "stdout")] {
        let w = super::warnings(&logging_to(Path::new(to)));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].path, "listeners[0].access_log.to");
        assert!(w[0].message.contains("is taken as a file path"), "{w:?}");
        assert!(
            w[0].message.ends_with(&format!("write `to: {name}`")),
            "{w:?}"
        );
    }
    assert!(super::warnings(&logging_to(Path::new("stderr"))).is_empty());
}

/// An access log written to the audit trail's file would put its lines into the hash chain
/// (each audit entry chains to the file's last line): refused at the access log's key, whether
/// the paths are written alike or differently (`DIR/./audit.jsonl`, a symbolic link to the
/// trail), the file there or not yet.
#[test]
fn an_access_log_to_the_audit_trails_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let both = |to: &Path| format!("{}audit: {{ file: {} }}\n", logging_to(to), audit.display());
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&audit, &link).expect("a symbolic link");
    let dotted = dir.path().join(".").join("audit.jsonl");
    for exists in [false, true] {
        if exists {
            std::fs::write(&audit, "").expect("the trail is writable");
        }
        for to in [&audit, &dotted, &link] {
            let text = both(to);
            let all = errors(&text);
            assert_eq!(all.len(), 1, "{}: {all:#?}", to.display());
            let e = &all[0];
            assert_eq!(e.path, "listeners[0].access_log.to", "{e}");
            assert!(
                e.message.contains("is also audit.file") && e.message.contains("hash chain"),
                "{e}"
            );
        }
    }
    ok(&both(&dir.path().join("access.jsonl")));
}
