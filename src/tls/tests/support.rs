//! A throwaway PKI: a CA that issues leaves, written as PEM files into a temp dir.

use std::net::IpAddr;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

/// A certificate authority with its own key.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub(crate) pem: String,
}

/// What to put in a leaf certificate.
#[derive(Default)]
pub(crate) struct Leaf {
    pub(crate) cn: Option<&'static str>,
    pub(crate) dns: Vec<&'static str>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) uri: Option<&'static str>,
    pub(crate) serial: u64,
    pub(crate) not_before: Option<(i32, u8, u8)>,
    pub(crate) not_after: Option<(i32, u8, u8)>,
}

/// A leaf certificate and its key, PEM.
pub(crate) struct Issued {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// A temp dir that test files are written into; removed on drop.
pub(crate) struct Files {
    dir: tempfile::TempDir,
}

// === impl Ca ===

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        let pem = params.self_signed(&key).expect("ca self-signs").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    pub(crate) fn issue(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        if let Some(cn) = leaf.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for dns in leaf.dns {
            let name = dns.try_into().expect("dns name is ia5");
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        if let Some(ip) = leaf.ip {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        if let Some(uri) = leaf.uri {
            let uri = uri.try_into().expect("uri is ia5");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        if let Some((y, m, d)) = leaf.not_before {
            params.not_before = rcgen::date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = leaf.not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("ca signs leaf");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// An intermediate CA named `name`, signed by this one, valid from `not_before` to
    /// `not_after`: its leaves' chain files carry its certificate after theirs.
    pub(crate) fn intermediate(
        &self,
        name: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("intermediate key");
        let pem = params
            .signed_by(&key, &self.issuer)
            .expect("ca signs")
            .pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server leaf for `localhost` and 127.0.0.1.
    pub(crate) fn server(&self, serial: u64) -> Issued {
        self.issue(Leaf {
            cn: Some("localhost"),
            dns: vec!["localhost"],
            ip: Some([127, 0, 0, 1].into()),
            serial,
            ..Leaf::default()
        })
    }
}

// === impl Files ===

impl Files {
    pub(crate) fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// Writes `issued` as `<name>.pem` and `<name>-key.pem`.
    pub(crate) fn pair(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &issued.cert),
            self.write(&format!("{name}-key.pem"), &issued.key),
        )
    }

    pub(crate) fn ca(&self, name: &str, ca: &Ca) -> PathBuf {
        self.write(&format!("{name}.pem"), &ca.pem)
    }
}

/// The serial number of a DER certificate, as a number.
pub(crate) fn serial_of(cert: &CertificateDer<'_>) -> u64 {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).expect("peer cert parses");
    parsed
        .raw_serial()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Re-encodes a PKCS#8 EC key as a SEC1 `EC PRIVATE KEY` PEM: PKCS#8 wraps the SEC1
/// structure in its third field, an OCTET STRING.
pub(crate) fn sec1_of(pkcs8_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pkcs8_pem.as_bytes())
        .expect("rcgen writes PKCS#8");
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8.secret_pkcs8_der()).expect("der");
    let fields = info.as_sequence().expect("PrivateKeyInfo is a sequence");
    let sec1 = fields[2].as_slice().expect("privateKey is an octet string");
    pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.to_vec()))
}
