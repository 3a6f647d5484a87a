//! The system roots' reading decision ([`crate::tls::roots`]): what is kept, when the
//! compiled-in web roots stand in, and what the warning names. Files are given by path, never
//! through `SSL_CERT_FILE`, so no test changes the process environment.

use std::path::{Path, PathBuf};

use rustls_native_certs::load_certs_from_paths;

use super::support::{Ca, Files};
use crate::tls::roots::{choose, load_from, load_with, read_paths, Found, STORE_FILE_CAP};

fn from(file: Option<&Path>, dir: Option<&Path>) -> Found {
    choose(
        load_certs_from_paths(file, dir),
        Vec::new(),
        "the test's paths",
    )
}

/// As a load with `SSL_CERT_FILE=file` and `SSL_CERT_DIR=dirs` reads the store.
fn loaded(file: &Path, dirs: &[PathBuf]) -> Found {
    let (found, unread) = load_from(file, dirs);
    choose(found, unread, "the test's paths")
}

/// A FIFO with no writer would hold the read (and a start with it) for good, and `/dev/zero`
/// would grow it without bound: neither is read, and the reason names the file.
#[test]
fn a_store_file_that_is_not_a_regular_file_is_not_read() {
    let files = Files::new();
    let fifo = files.write("x", "").with_file_name("store.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "mkfifo (coreutils) is needed"
    );
    for file in [fifo.as_path(), Path::new("/dev/zero")] {
        match loaded(file, &[]) {
            Found::Fallback { reason } => {
                let named = format!("SSL_CERT_FILE={} is not a regular file", file.display());
                assert!(reason.contains(&named), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A store file past the cap is not read; the roots of the directories beside it are kept.
#[test]
fn a_store_file_past_the_cap_is_not_read_and_the_directories_still_are() {
    let files = Files::new();
    let big = files.write("big.pem", "");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(STORE_FILE_CAP + 1))
        .unwrap();
    let dir = files.write("x", "").with_file_name("certs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(files.ca("ca", &Ca::new("private")), dir.join("ca.pem")).unwrap();
    match loaded(&big, &[dir]) {
        Found::System { store, problems } => {
            assert_eq!(store.len(), 1);
            let problems = problems.expect("the big file is named");
            assert!(problems.contains("more than the 16 MiB"), "{problems}");
        }
        other => panic!("{other:?}"),
    }
}

/// A store file without a certificate is named as such, also when a directory beside it gives
/// problems of its own (the reason once gave the directory's alone).
#[test]
fn a_store_file_without_certificates_is_named_beside_a_directory_problem() {
    let files = Files::new();
    let empty = files.write("empty.pem", "not a certificate\n");
    let missing = empty.with_file_name("no-such-dir");
    match loaded(&empty, &[missing]) {
        Found::Fallback { reason } => {
            assert!(
                reason.contains("empty.pem holds no PEM certificate"),
                "{reason}"
            );
            assert!(reason.contains("no-such-dir"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_readable_bundle_gives_its_roots() {
    let files = Files::new();
    let ca = files.ca("ca", &Ca::new("private"));
    match from(Some(&ca), None) {
        Found::System { store, problems } => {
            assert_eq!(store.len(), 1);
            assert!(problems.is_none(), "{problems:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_bundle_falls_back_naming_the_file() {
    let files = Files::new();
    let missing = files.write("x", "").with_file_name("absent.pem");
    match from(Some(&missing), None) {
        Found::Fallback { reason } => assert!(reason.contains("absent.pem"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bundle_without_certificates_falls_back_saying_where_it_looked() {
    let files = Files::new();
    let empty = files.write("empty.pem", "not a certificate\n");
    match from(Some(&empty), None) {
        Found::Fallback { reason } => {
            assert_eq!(reason, "no certificate found in the test's paths");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nothing_found_anywhere_falls_back() {
    match from(None, None) {
        Found::Fallback { reason } => {
            assert_eq!(reason, "no certificate found in the test's paths");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn roots_read_beside_an_unreadable_directory_are_kept_and_the_problem_named() {
    let files = Files::new();
    let ca = files.ca("ca", &Ca::new("private"));
    let missing = ca.with_file_name("no-such-dir");
    match from(Some(&ca), Some(&missing)) {
        Found::System { store, problems } => {
            assert_eq!(store.len(), 1);
            let problems = problems.expect("the directory is named");
            assert!(problems.contains("no-such-dir"), "{problems}");
        }
        other => panic!("{other:?}"),
    }
}

/// `SSL_CERT_FILE` (or `SSL_CERT_DIR`) set empty counts as unset: with both so, the OS bundle
/// is read, not a file at the path '' (once warned of as "failed to read PEM from file").
#[test]
fn variables_set_empty_read_the_os_bundle() {
    let files = Files::new();
    let ca = files.ca("ca", &Ca::new("bundle"));
    let empty = || Some(std::ffi::OsString::new());
    for (file, dir) in [
        (empty(), None),
        (empty(), empty()),
        (None, empty()),
        (None, None),
    ] {
        let mut read_bundle = false;
        let (found, unread) = load_with(file.clone(), dir.clone(), || {
            read_bundle = true;
            load_certs_from_paths(Some(&ca), None)
        });
        assert!(read_bundle, "{file:?} {dir:?}: the OS bundle is read");
        match choose(found, unread, "the test's paths") {
            Found::System { store, problems } => {
                assert_eq!(store.len(), 1);
                assert_eq!(problems, None, "{file:?} {dir:?}");
            }
            other => panic!("{file:?} {dir:?}: {other:?}"),
        }
    }
}

/// `SSL_CERT_FILE` set empty beside an `SSL_CERT_DIR`: the directory alone, no error for ''.
#[test]
fn an_empty_store_file_beside_a_directory_reads_the_directory_alone() {
    let files = Files::new();
    let dir = files.write("x", "").with_file_name("certs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(files.ca("ca", &Ca::new("private")), dir.join("ca.pem")).unwrap();
    let (found, unread) = load_with(
        Some(std::ffi::OsString::new()),
        Some(dir.into_os_string()),
        || panic!("the OS bundle is not read when SSL_CERT_DIR names a directory"),
    );
    match choose(found, unread, "the test's paths") {
        Found::System { store, problems } => {
            assert_eq!(store.len(), 1);
            assert_eq!(problems, None);
        }
        other => panic!("{other:?}"),
    }
}

/// The OS bundle's file lies in the directory read beside it (Debian's
/// `/etc/ssl/certs/ca-certificates.crt`, also when `SSL_CERT_FILE` and `SSL_CERT_DIR` name
/// them): it is read once, not a second time as an entry of
/// the directory, and a directory named twice is read once. Seen by a bundle that holds a
/// broken PEM block beside its root: its error is reported once per read. Before, the bundle
/// was read twice per load (three errors here).
#[test]
fn a_bundle_in_the_directory_beside_it_is_read_once() {
    let files = Files::new();
    let dir = files.write("x", "").with_file_name("certs");
    std::fs::create_dir(&dir).unwrap();
    let ca = Ca::new("bundled");
    let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let bundle = dir.join("ca-certificates.crt");
    std::fs::write(&bundle, format!("{}{broken}", ca.pem)).unwrap();
    let read = read_paths(Some(&bundle), &[dir.clone(), dir.join(".")]);
    assert_eq!(read.certs.len(), 1, "{:?}", read.errors);
    assert_eq!(read.errors.len(), 1, "read once: {:?}", read.errors);
    // The same with `SSL_CERT_FILE` and `SSL_CERT_DIR` naming them.
    let (read, problems) = load_from(&bundle, &[dir.clone(), dir.join(".")]);
    assert_eq!(read.certs.len(), 1, "{:?}", read.errors);
    assert_eq!(read.errors.len(), 1, "read once: {:?}", read.errors);
    assert!(problems.is_empty(), "{problems:?}");
    // A bundle outside the directory is read as well as the directory.
    let outside = files.write("outside.crt", &format!("{}{broken}", ca.pem));
    let read = read_paths(Some(&outside), &[dir]);
    assert_eq!(read.certs.len(), 1);
    assert_eq!(read.errors.len(), 2, "{:?}", read.errors);
}
