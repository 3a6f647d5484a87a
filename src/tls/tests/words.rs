//! What a refused handshake is said as ([`crate::tls::words::refusal`]), for the refusals no
//! rustls server sends (those it does are run end to end in `tests/e2e/tls/refused.rs`).

use rustls::{AlertDescription as A, Error, PeerIncompatible, PeerMisbehaved};

use super::support::{Ca, Files};
use crate::tls::words::refusal;
use crate::tls::{client_config_offering, SystemRoots};

/// A client config trusting a throwaway CA, offering `alpn`, with a client certificate or not.
fn config(alpn: &[&[u8]], with_cert: bool) -> std::sync::Arc<rustls::ClientConfig> {
    let (ca, files) = (Ca::new("words ca"), Files::new());
    let ca_path = files.ca("ca", &ca);
    let pair = with_cert.then(|| files.pair("client", &ca.server(7)));
    let (cert, key) = match &pair {
        Some((c, k)) => (Some(c.as_path()), Some(k.as_path())),
        None => (None, None),
    };
    client_config_offering(Some(&ca_path), cert, key, alpn, &SystemRoots::new()).expect("config")
}

fn said(err: Error, alpn: &[&[u8]], with_cert: bool) -> String {
    refusal(&err, &config(alpn, with_cert)).expect("said in words")
}

#[test]
fn a_server_that_picks_a_protocol_not_offered_is_told_what_was() {
    let err = Error::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedApplicationProtocol);
    assert_eq!(
        said(err.clone(), &[b"http/1.1"], false),
        "the server chose an ALPN protocol rampart did not offer (it offered http/1.1)"
    );
    assert!(said(err, &[b"h2"], false).ends_with("(it offered h2)"));
}

#[test]
fn a_handshake_failure_names_the_likely_causes_with_and_without_a_client_certificate() {
    let without = said(Error::AlertReceived(A::HandshakeFailure), &[b"h2"], false);
    assert!(
        without.starts_with("the server refused the handshake (alert handshake_failure)")
            && without
                .contains("which rampart does not present (set cert and key in its tls section)"),
        "{without}"
    );
    let with = said(Error::AlertReceived(A::HandshakeFailure), &[b"h2"], true);
    assert!(
        with.contains("it may not accept rampart's client certificate"),
        "{with}"
    );
}

#[test]
fn a_refused_client_certificate_is_said_so_by_the_alert_name() {
    for (alert, name) in [
        (A::UnknownCA, "unknown_ca"),
        (A::BadCertificate, "bad_certificate"),
        (A::CertificateExpired, "certificate_expired"),
        (A::AccessDenied, "access_denied"),
    ] {
        let s = said(Error::AlertReceived(alert), &[b"http/1.1"], true);
        let want = format!(
            "the server refused rampart's client certificate, the cert of its tls section (alert {name})"
        );
        assert_eq!(s, want);
    }
}

#[test]
fn no_common_version_and_other_alerts_are_said_by_name() {
    let s = said(
        Error::AlertReceived(A::ProtocolVersion),
        &[b"http/1.1"],
        false,
    );
    assert!(
        s.contains("shares no TLS version with rampart") && s.ends_with("(alert protocol_version)"),
        "{s}"
    );
    let s = said(
        Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
        &[b"http/1.1"],
        false,
    );
    assert_eq!(
        s,
        "the server speaks neither TLS 1.2 nor 1.3, rampart's versions"
    );
    let s = said(
        Error::AlertReceived(A::InternalError),
        &[b"http/1.1"],
        false,
    );
    assert_eq!(
        s,
        "the server ended the handshake with alert internal_error"
    );
    let s = said(Error::AlertReceived(A::from(0xfe)), &[b"http/1.1"], false);
    assert!(s.contains("with alert 254"), "{s}");
}

#[test]
fn errors_rustls_words_well_enough_are_left_to_it() {
    assert_eq!(refusal(&Error::DecryptError, &config(&[], false)), None);
}
