//! The system roots' reading decision ([`crate::tls::roots`]): what is kept, when the
//! compiled-in web roots stand in, and what the warning names. Files are given by path, never
//! through `SSL_CERT_FILE`, so no test changes the process environment.

use std::path::Path;

use rustls_native_certs::load_certs_from_paths;

use super::support::{Ca, Files};
use crate::tls::roots::{choose, Found};

fn from(file: Option<&Path>, dir: Option<&Path>) -> Found {
    choose(load_certs_from_paths(file, dir), "the test's paths")
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
