//! Test certificates: a CA and a server certificate signed by it (rcgen), as PEM files.

use std::path::PathBuf;

use tempfile::TempDir;

/// A test CA and a server certificate signed by it, as PEM files.
pub struct Pki {
    dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_key: String,
}

impl Pki {
    /// A CA and a certificate for `127.0.0.1`.
    pub fn new(name: &str) -> Pki {
        Self::for_names(name, &["127.0.0.1"])
    }

    /// A CA and a certificate for `names` (IP addresses become IP SANs).
    pub fn for_names(name: &str, names: &[&str]) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign the CA");

        let server_key = KeyPair::generate().expect("server key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&server_key, &ca)
            .expect("sign the server certificate");

        let dir = tempfile::Builder::new()
            .prefix("pki-")
            .tempdir()
            .expect("pki tempdir");
        let pki = Pki {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            ca_key: ca_key_pem,
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert, cert.pem()).expect("write server.pem");
        std::fs::write(&pki.key, server_key.serialize_pem()).expect("write server-key.pem");
        pki
    }

    /// The CA's private key as a PEM file, for tests that hand the CA to stevedore.
    pub fn ca_key_file(&self) -> PathBuf {
        self.file("ca-key.pem", &self.ca_key)
    }

    /// A client certificate for `name` signed by this PKI's CA: one PEM file holding the
    /// certificate and its key.
    pub fn client_identity(&self, name: &str) -> PathBuf {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let ca_pem = std::fs::read_to_string(&self.ca).expect("ca.pem");
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&self.ca_key).expect("CA key"))
                .expect("CA issuer");
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("client params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("sign the client");
        self.file(
            &format!("client-{name}.pem"),
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        )
    }

    /// A file in the PKI's directory.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }
}
