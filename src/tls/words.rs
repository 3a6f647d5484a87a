//! rustls's errors told in words, for `rampart validate`, a refused reload and the log.
//!
//! rustls prints most certificate problems with `Debug` (`invalid peer certificate:
//! Other(OtherError(UnsupportedCertVersion))`), and calls every certificate a peer's, also the
//! listener's own. These say what is wrong with the certificate, and for the usual mistakes
//! what to do, without naming whose it is: the caller's message says that.

use std::borrow::Cow;

use rustls::{CertificateError, Error};

/// `err` in words: a certificate problem as [`certificate`] tells it, any other error as
/// rustls tells it (its other messages are words already), without the "unexpected error"
/// rustls puts before a `General` one.
pub(crate) fn rustls_error(err: &Error) -> Cow<'static, str> {
    match err {
        Error::InvalidCertificate(e) => certificate(e),
        Error::General(s) => Cow::Owned(s.clone()),
        other => Cow::Owned(other.to_string()),
    }
}

/// A PEM file's problem in words: the section a cut-short file leaves open is named as text
/// (`CERTIFICATE`), where the PEM reader prints the label's bytes (`[67, 69, 82, ...]`).
pub(crate) fn pem(err: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as P;
    match err {
        P::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("the {label} section has no end line (`-----END {label}-----`); is the file cut short?")
        }
        P::IllegalSectionStart { line } => {
            format!(
                "a section starts with a malformed line: {:?}",
                String::from_utf8_lossy(line)
            )
        }
        other => other.to_string(),
    }
}

/// What is wrong with a certificate, as a phrase that starts with "certificate".
pub(crate) fn certificate(err: &CertificateError) -> Cow<'static, str> {
    use CertificateError as C;
    let said: &'static str = match err {
        C::BadEncoding => "certificate is not well-formed DER",
        C::Expired => "certificate has expired",
        C::NotValidYet => "certificate is not valid yet",
        C::Revoked => "certificate is revoked",
        C::UnhandledCriticalExtension => {
            "certificate has a critical extension rustls does not handle"
        }
        C::UnknownIssuer => "certificate is not signed by a trusted CA (unknown issuer)",
        C::UnknownRevocationStatus => "certificate's revocation status is unknown",
        C::ExpiredRevocationList => "certificate revocation list has expired",
        C::BadSignature => "certificate's signature does not verify",
        #[allow(deprecated)]
        C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "certificate is signed with an algorithm rustls does not support"
        }
        C::NotValidForName => "certificate is not valid for the name asked for",
        C::InvalidPurpose => "certificate's extended key usage does not allow this use",
        C::ApplicationVerificationFailure => "certificate was refused by its verifier",
        C::Other(other) => return webpki(other),
        // The ones with context (expired at, valid for which names...) are words already.
        other => return Cow::Owned(other.to_string()),
    };
    Cow::Borrowed(said)
}

/// A certificate problem rustls passes on from webpki as it is.
fn webpki(other: &rustls::OtherError) -> Cow<'static, str> {
    use ::webpki::Error as W;
    let Some(err) = other.0.downcast_ref::<W>() else {
        return Cow::Owned(other.to_string());
    };
    let said: &'static str = match err {
        W::UnsupportedCertVersion => {
            "certificate is X.509 v1; rustls accepts only v3 certificates (make it with a v3 \
             extension, e.g. openssl's -extfile / -addext)"
        }
        W::UnsupportedCriticalExtension => {
            "certificate has a critical extension rustls does not handle"
        }
        W::MalformedExtensions | W::ExtensionValueInvalid => {
            "certificate has a malformed extension"
        }
        W::InvalidSerialNumber => {
            "certificate's serial number is invalid (it must be positive and at most 20 bytes)"
        }
        W::MalformedDnsIdentifier => "certificate has a malformed DNS name in its names",
        W::UnsupportedNameType => "certificate has a name of a type rustls does not support",
        W::CaUsedAsEndEntity => {
            "certificate is a CA's (basicConstraints CA:TRUE), used here as a leaf"
        }
        W::EndEntityUsedAsCa => "certificate is a leaf's, used here as a CA",
        W::EmptyEkuExtension => "certificate has an empty extended key usage extension",
        W::SignatureAlgorithmMismatch => {
            "certificate's two signature algorithm fields do not agree"
        }
        W::NameConstraintViolation => "certificate's names break its issuer's name constraints",
        W::PathLenConstraintViolated => "certificate chain is longer than its CA allows",
        W::CertDistrusted => "certificate is distrusted",
        W::InvalidCertValidity => "certificate's validity period is invalid",
        // Path-building and revocation-list limits do not arise from one file; webpki's own
        // name for them is the most precise thing to say.
        other => return Cow::Owned(format!("certificate refused by webpki: {other}")),
    };
    Cow::Borrowed(said)
}

/// A TLS alert by its name in the TLS RFCs (`certificate_required`, RFC 8446 §6), where rustls
/// prints its own (`CertificateRequired`): the name an operator finds in a server's log and in
/// the RFC.
pub(crate) fn alert(a: rustls::AlertDescription) -> Cow<'static, str> {
    use rustls::AlertDescription as A;
    let name: &'static str = match a {
        A::CloseNotify => "close_notify",
        A::UnexpectedMessage => "unexpected_message",
        A::BadRecordMac => "bad_record_mac",
        A::DecryptionFailed => "decryption_failed",
        A::RecordOverflow => "record_overflow",
        A::DecompressionFailure => "decompression_failure",
        A::HandshakeFailure => "handshake_failure",
        A::NoCertificate => "no_certificate",
        A::BadCertificate => "bad_certificate",
        A::UnsupportedCertificate => "unsupported_certificate",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateExpired => "certificate_expired",
        A::CertificateUnknown => "certificate_unknown",
        A::IllegalParameter => "illegal_parameter",
        A::UnknownCA => "unknown_ca",
        A::AccessDenied => "access_denied",
        A::DecodeError => "decode_error",
        A::DecryptError => "decrypt_error",
        A::ExportRestriction => "export_restriction",
        A::ProtocolVersion => "protocol_version",
        A::InsufficientSecurity => "insufficient_security",
        A::InternalError => "internal_error",
        A::InappropriateFallback => "inappropriate_fallback",
        A::UserCanceled => "user_canceled",
        A::NoRenegotiation => "no_renegotiation",
        A::MissingExtension => "missing_extension",
        A::UnsupportedExtension => "unsupported_extension",
        A::CertificateUnobtainable => "certificate_unobtainable",
        A::UnrecognisedName => "unrecognized_name",
        A::BadCertificateStatusResponse => "bad_certificate_status_response",
        A::BadCertificateHashValue => "bad_certificate_hash_value",
        A::UnknownPSKIdentity => "unknown_psk_identity",
        A::CertificateRequired => "certificate_required",
        A::NoApplicationProtocol => "no_application_protocol",
        A::EncryptedClientHelloRequired => "encrypted_client_hello_required",
        other => return Cow::Owned(format!("{} ({other:?})", u8::from(other))),
    };
    Cow::Borrowed(name)
}

/// What a TLS server (an upstream, the store, a JWKS host) did to rampart's handshake, in
/// words: `err` as the client's side of the handshake saw it, `cfg` the client's config
/// (whether it has a certificate to present, the ALPN protocols it offered). `None` for an
/// error with nothing more to say than rustls's own words.
///
/// A refusal of rampart's client certificate comes as an alert: in TLS 1.2 during the
/// handshake, in TLS 1.3 after the client's side of it ended (at the first read), so the
/// words do not say when it came.
pub(crate) fn refusal(err: &Error, cfg: &rustls::ClientConfig) -> Option<String> {
    use rustls::{AlertDescription as A, InvalidMessage, PeerIncompatible, PeerMisbehaved};
    let presents = cfg.client_auth_cert_resolver.has_certs();
    Some(match err {
        Error::InvalidCertificate(e) => format!("invalid peer certificate: {}", certificate(e)),
        Error::AlertReceived(a) => {
            let name = alert(*a);
            match a {
                A::CertificateRequired if !presents => format!(
                    "the server requires a client certificate and rampart presented none \
                     (alert {name}); set cert and key in its tls section"
                ),
                A::HandshakeFailure if !presents => format!(
                    "the server refused the handshake (alert {name}): it may require a client \
                     certificate, which rampart does not present (set cert and key in its tls \
                     section), or share no cipher suite with rampart"
                ),
                A::HandshakeFailure => format!(
                    "the server refused the handshake (alert {name}): it may not accept \
                     rampart's client certificate (the cert of its tls section), or share no \
                     cipher suite with rampart"
                ),
                A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                    if presents =>
                {
                    format!(
                        "the server refused rampart's client certificate, the cert of its tls \
                         section (alert {name})"
                    )
                }
                A::NoApplicationProtocol => format!(
                    "the server did not agree to {} by ALPN: it accepts none of the protocols \
                     rampart offered ({}) (alert {name})",
                    wanted(cfg),
                    offered(cfg)
                ),
                A::ProtocolVersion => format!(
                    "the server shares no TLS version with rampart, which speaks TLS 1.2 and \
                     1.3 (alert {name})"
                ),
                A::UnrecognisedName => format!(
                    "the server serves no name rampart sent as SNI (alert {name}); check \
                     server_name in its tls section"
                ),
                _ => format!("the server ended the handshake with alert {name}"),
            }
        }
        Error::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedApplicationProtocol) => format!(
            "the server chose an ALPN protocol rampart did not offer (it offered {})",
            offered(cfg)
        ),
        Error::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
        ) => "the server speaks neither TLS 1.2 nor 1.3, rampart's versions".to_string(),
        Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
        ) => "the server's answer to rampart's hello is not TLS (a plaintext server?)".to_string(),
        _ => return None,
    })
}

/// The ALPN protocols `cfg` offers, as a list (`h2`; `none` when it offers none).
fn offered(cfg: &rustls::ClientConfig) -> String {
    if cfg.alpn_protocols.is_empty() {
        return "none".to_string();
    }
    let names: Vec<Cow<'_, str>> = cfg
        .alpn_protocols
        .iter()
        .map(|p| String::from_utf8_lossy(p))
        .collect();
    names.join(", ")
}

/// The protocol `cfg`'s ALPN asks for, said as the HTTP version when it offers one alone.
fn wanted(cfg: &rustls::ClientConfig) -> &'static str {
    match cfg.alpn_protocols.as_slice() {
        [one] if one.as_slice() == b"h2" => "HTTP/2",
        [one] if one.as_slice() == b"http/1.1" => "HTTP/1.1",
        _ => "a protocol",
    }
}
