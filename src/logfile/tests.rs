use std::io::{Read, Seek, Write};
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// A FIFO at `dir/name`, nobody reading it (the tests of every log's opening use it).
pub(crate) fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    path
}

/// Runs `f` on a thread of its own and gives its result, or fails the test if it has not
/// returned within 5 s (an open that blocks would otherwise hang the test run).
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the open must return at once, never wait")
}

fn refused_as(e: &io::Error) -> String {
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    e.to_string()
}

#[test]
fn a_fifo_nobody_reads_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = fifo(dir.path(), "fifo");
    for how in [Use::Append, Use::ReadAppend] {
        let p = path.clone();
        let e = within_5s(move || open(&p, how, true)).expect_err("a FIFO is no log file");
        assert_eq!(refused_as(&e), "is not a regular file but a FIFO");
    }
    assert!(matches!(
        check(&path, Use::Append),
        Err(Unfit::NotRegular("a FIFO"))
    ));
}

#[test]
fn a_fifo_with_a_reader_is_refused_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = fifo(dir.path(), "fifo");
    // A reader, so the writer's open itself succeeds: the descriptor's check refuses it.
    let _reader = rustix::fs::open(&path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
        .expect("open the reading end");
    let e = within_5s(move || open(&path, Use::Append, true)).expect_err("a FIFO is no log file");
    assert_eq!(refused_as(&e), "is not a regular file but a FIFO");
}

#[test]
fn devices_and_directories_are_refused() {
    let e = open(Path::new("/dev/full"), Use::ReadAppend, true).expect_err("a device");
    assert_eq!(
        refused_as(&e),
        "is not a regular file but a character device"
    );
    assert!(matches!(
        check(Path::new("/dev/null"), Use::Append),
        Err(Unfit::NotRegular("a character device"))
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(matches!(
        check(dir.path(), Use::ReadAppend),
        Err(Unfit::NotRegular("a directory"))
    ));
}

#[test]
fn a_regular_file_is_opened_for_append_and_left_blocking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    assert!(
        check(&path, Use::Append).is_ok(),
        "nothing there yet is fine"
    );
    std::fs::write(&path, b"first\n").expect("seed");
    assert!(check(&path, Use::ReadAppend).is_ok());
    let mut f = open(&path, Use::ReadAppend, true).expect("a regular file opens");
    let flags = rustix::fs::fcntl_getfl(&f).expect("flags");
    assert!(!flags.contains(OFlags::NONBLOCK), "{flags:?}");
    assert!(flags.contains(OFlags::APPEND), "{flags:?}");
    f.write_all(b"second\n").expect("append");
    f.rewind().expect("seek");
    let mut all = String::new();
    f.read_to_string(&mut all).expect("read");
    assert_eq!(all, "first\nsecond\n");
    let made = dir.path().join("made");
    open(&made, Use::Append, true).expect("created");
    assert!(made.is_file());
    assert!(open(&dir.path().join("absent"), Use::Append, false).is_err());
}

/// What cannot be opened, or created, is named as such: for every user, root included, a
/// read-only sysctl cannot be opened for writing and nothing can be created among them.
#[test]
fn a_file_that_cannot_be_opened_or_created_is_named() {
    let e = check(Path::new("/proc/sys/kernel/ostype"), Use::Append).expect_err("read-only");
    assert!(matches!(&e, Unfit::Unopenable(io) if io.kind() == io::ErrorKind::PermissionDenied));
    assert!(
        e.to_string()
            .starts_with("cannot be opened for appending: Permission denied"),
        "{e}"
    );
    let e = check(Path::new("/proc/sys/kernel/rampart.log"), Use::Append).expect_err("no room");
    assert!(
        e.to_string()
            .starts_with("cannot be created in /proc/sys/kernel: Permission denied"),
        "{e}"
    );
}
