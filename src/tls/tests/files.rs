//! What `rampart validate` reports about certificate and key files.

use std::path::Path;

use super::support::{sec1_of, Ca, Files, Leaf};
use crate::tls::{check_client, check_server, is_valid_cert_tenant, TlsFileError};

fn names(err: &TlsFileError, path: &Path) -> bool {
    err.to_string().contains(&path.display().to_string())
}

#[test]
fn a_matching_pair_and_a_client_ca_pass() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert, key) = files.pair("server", &ca.server(1));
    let ca_path = files.ca("ca", &ca);
    check_server(&cert, &key, None).expect("a fresh pair must pass");
    check_server(&cert, &key, Some(&ca_path)).expect("with a client_ca it must pass too");
    check_client(Some(&ca_path), Some(&cert), Some(&key)).expect("client side must pass");
    check_client(None, None, None).expect("system roots need no files");
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_the_key() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert, _) = files.pair("server", &ca.server(1));
    let (_, other_key) = files.pair("other", &ca.server(2));
    let err = check_server(&cert, &other_key, None).expect_err("mismatch must be refused");
    assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
    assert!(
        names(&err, &other_key),
        "message must name the key path: {err}"
    );
    let err = check_client(None, Some(&cert), Some(&other_key)).expect_err("client side too");
    assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
}

#[test]
fn an_expired_certificate_is_refused_naming_the_cert() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let expired = ca.issue(Leaf {
        dns: vec!["localhost"],
        not_before: Some((2019, 1, 1)),
        not_after: Some((2020, 1, 1)),
        ..Leaf::default()
    });
    let (cert, key) = files.pair("expired", &expired);
    let err = check_server(&cert, &key, None).expect_err("expired must be refused");
    assert!(matches!(err, TlsFileError::Expired { .. }), "{err}");
    assert!(names(&err, &cert), "message must name the cert path: {err}");
    assert!(
        err.to_string().contains("2020"),
        "message shows notAfter: {err}"
    );
}

#[test]
fn a_certificate_not_yet_valid_is_refused() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let future = ca.issue(Leaf {
        dns: vec!["localhost"],
        not_before: Some((3000, 1, 1)),
        not_after: Some((3001, 1, 1)),
        ..Leaf::default()
    });
    let (cert, key) = files.pair("future", &future);
    let err = check_server(&cert, &key, None).expect_err("future notBefore must be refused");
    assert!(matches!(err, TlsFileError::NotYetValid { .. }), "{err}");
    assert!(names(&err, &cert), "{err}");
}

#[test]
fn missing_empty_and_swapped_files_say_what_is_wrong() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert, key) = files.pair("server", &ca.server(1));
    let nowhere = files.write("x", "").with_file_name("nowhere.pem");
    let err = check_server(&nowhere, &key, None).expect_err("missing cert");
    assert!(
        matches!(err, TlsFileError::Missing { .. }) && names(&err, &nowhere),
        "{err}"
    );

    let err = check_server(&key, &key, None).expect_err("a key file holds no certificate");
    assert!(
        matches!(err, TlsFileError::NoCertificate { .. }) && names(&err, &key),
        "{err}"
    );

    let err = check_server(&cert, &cert, None).expect_err("a cert file holds no key");
    assert!(
        matches!(err, TlsFileError::NoKey { .. }) && names(&err, &cert),
        "{err}"
    );

    // An encrypted key is named as one, not as no key at all.
    let encrypted = files.write(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let err = check_server(&cert, &encrypted, None).expect_err("an encrypted key");
    assert!(
        matches!(err, TlsFileError::Invalid { .. })
            && names(&err, &encrypted)
            && err.to_string().contains("encrypted"),
        "{err}"
    );

    let junk = files.write("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let err = check_server(&junk, &key, None).expect_err("junk");
    assert!(
        matches!(err, TlsFileError::Malformed { .. }) && names(&err, &junk),
        "{err}"
    );

    let err = check_client(Some(&key), None, None).expect_err("a CA bundle without certs");
    assert!(matches!(err, TlsFileError::NoCertificate { .. }), "{err}");

    let dir = cert.parent().expect("temp dir");
    let err = check_server(dir, &key, None).expect_err("a directory is no regular file");
    assert!(
        matches!(err, TlsFileError::NotRegular { .. })
            && names(&err, dir)
            && err.to_string().contains("is not a regular file"),
        "{err}"
    );
}

#[test]
fn a_combined_cert_and_key_file_serves_both_paths() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let issued = ca.server(1);
    let both = files.write("both.pem", &format!("{}{}", issued.cert, issued.key));
    check_server(&both, &both, None).expect("PEM sections of other types are skipped");
}

#[test]
fn a_sec1_ec_key_is_read_like_pkcs8() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let issued = ca.server(1);
    let sec1 = sec1_of(&issued.key);
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    let cert = files.write("server.pem", &issued.cert);
    let key = files.write("server-key.pem", &sec1);
    check_server(&cert, &key, None).expect("a SEC1 key must load and match");
    let other = files.write("other-key.pem", &sec1_of(&ca.server(2).key));
    let err = check_server(&cert, &other, None).expect_err("a SEC1 mismatch is still refused");
    assert!(matches!(err, TlsFileError::KeyMismatch { .. }), "{err}");
}

#[test]
fn a_client_cert_needs_its_key_and_the_reverse() {
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert, key) = files.pair("client", &ca.server(1));
    let err = check_client(None, Some(&cert), None).expect_err("cert without key");
    assert!(
        matches!(err, TlsFileError::Incomplete { missing: "key", .. }),
        "{err}"
    );
    let err = check_client(None, None, Some(&key)).expect_err("key without cert");
    assert!(
        matches!(
            err,
            TlsFileError::Incomplete {
                missing: "cert",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn cert_tenant_ids_allow_spiffe_and_refuse_spaces_and_controls() {
    assert!(is_valid_cert_tenant("billing"));
    assert!(is_valid_cert_tenant(
        "spiffe://example.org/ns/prod/sa/billing"
    ));
    assert!(is_valid_cert_tenant(&"a".repeat(2048)));
    assert!(!is_valid_cert_tenant(&"a".repeat(2049)));
    assert!(!is_valid_cert_tenant(""));
    assert!(is_valid_cert_tenant("Billing Service"), "a space inside");
    assert!(!is_valid_cert_tenant(" billing"), "a space first");
    assert!(!is_valid_cert_tenant("billing "), "a space last");
    assert!(!is_valid_cert_tenant(" "));
    assert!(!is_valid_cert_tenant("tab\there"));
    assert!(!is_valid_cert_tenant("caf\u{e9}"));
    // The label of the folded tenants is no tenant's.
    assert!(!is_valid_cert_tenant("_other"));
}

/// Every certificate of a chain file is checked, not the leaf alone: an expired (or not yet
/// valid) intermediate after a fresh leaf is refused, on a listener's `cert` and on an
/// upstream's client `cert`, naming the file, the certificate's place and its subject.
#[test]
fn an_intermediate_out_of_its_validity_is_refused_naming_it() {
    let (root, files) = (Ca::new("test root"), Files::new());
    for (name, from, to, says) in [
        ("lapsed", (2019, 1, 1), (2020, 1, 1), "expired at"),
        ("early", (3000, 1, 1), (3001, 1, 1), "not valid before"),
    ] {
        let issuing = root.intermediate(&format!("{name} issuing ca"), from, to);
        let leaf = issuing.server(1);
        let chain = format!("{}{}", leaf.cert, issuing.pem);
        let cert = files.write(&format!("{name}-chain.pem"), &chain);
        let key = files.write(&format!("{name}-key.pem"), &leaf.key);
        for err in [
            check_server(&cert, &key, None).expect_err("listener cert"),
            check_client(None, Some(&cert), Some(&key)).expect_err("upstream client cert"),
        ] {
            assert!(names(&err, &cert), "{err}");
            let text = err.to_string();
            assert!(text.contains(says), "{text}");
            assert!(
                text.contains(&format!(
                    "certificate 2 of 2 (an intermediate, subject CN={name} issuing ca)"
                )),
                "{text}"
            );
        }
    }
    // The same chain with a valid intermediate passes: the leaf alone was never the problem.
    let issuing = root.intermediate("good issuing ca", (2020, 1, 1), (3000, 1, 1));
    let leaf = issuing.server(1);
    let cert = files.write("good-chain.pem", &format!("{}{}", leaf.cert, issuing.pem));
    let key = files.write("good-key.pem", &leaf.key);
    check_server(&cert, &key, None).expect("a chain valid throughout passes");
}

/// A file past the cap is refused by its size, naming the size and the cap, without being
/// read (a sparse file of the cap plus one byte stands in for a disk image).
#[test]
fn a_file_over_the_size_cap_is_refused_naming_size_and_cap() {
    let files = Files::new();
    let big = files.write("big.pem", "");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(crate::tls::pem::MAX_FILE + 1))
        .expect("grow the file");
    for err in [
        crate::tls::pem::load_roots(&big).expect_err("over the cap"),
        crate::tls::pem::load_key(&big).expect_err("over the cap"),
    ] {
        let text = err.to_string();
        assert!(names(&err, &big), "{text}");
        assert!(
            text.contains("is 1048577 bytes") && text.contains("at most 1048576 bytes"),
            "{text}"
        );
    }
    // At the cap exactly the file is read (and judged on its content).
    let at = files.write("at.pem", &" ".repeat(1024 * 1024));
    let err = crate::tls::pem::load_roots(&at).expect_err("no certificate");
    assert!(matches!(err, TlsFileError::NoCertificate { .. }), "{err}");
}

/// A file that has no data yet and would make a read wait (here a FIFO with a writer that
/// writes nothing, as /proc/kmsg is a file that waits) is an error at once, never a hang.
#[test]
fn a_file_that_would_wait_for_data_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = crate::logfile::tests::fifo(dir.path(), "ca.pem");
    // Held open for reading and writing: a blocking read of it would wait for ever.
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the fifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(crate::tls::pem::load_roots(&path).map(|_| ()));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("reading a TLS file must never wait")
        .expect_err("a file with nothing to read has no certificate");
    assert!(names(&err, &fifo), "{err}");
}
