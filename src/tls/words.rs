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
