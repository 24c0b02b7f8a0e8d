//! stevedore's certificate authority. Guests trust it for the registries stevedore intercepts;
//! the TLS listener can use a certificate from it.
//!
//! Given as files (`[ca] cert` + `key`, e.g. a Kubernetes secret), or generated on first start
//! into `[ca] dir` (`ca.pem`, and `ca-key.pem` with mode 0600). A generated CA is, by default,
//! name-constrained (RFC 5280 §4.2.1.10) to the names it was generated for, and may sign only
//! end-entity certificates (path length 0), so its key cannot impersonate anything else. The
//! key never leaves the process: not in logs, errors or `Debug` output.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::CaConfig;

/// File names of a generated CA.
const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";
/// The names a generated CA is constrained to, one per line (absent: unconstrained).
const NAMES_FILE: &str = "ca-names.txt";
/// Validity of a generated CA, and of the leaves it signs.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot generate a CA in {dir}: {reason}")]
    Generate { dir: PathBuf, reason: String },
    #[error("cannot issue a certificate for {name}: {reason}")]
    Issue { name: String, reason: String },
}

/// A name a certificate is for: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertName {
    Dns(String),
    Ip(IpAddr),
}

impl CertName {
    /// A host as clients name it (`[::1]` and `host` alike; no port).
    pub fn parse(host: &str) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Dns(bare.trim_end_matches('.').to_ascii_lowercase()),
        }
    }

    fn san(&self) -> Result<SanType, rcgen::Error> {
        Ok(match self {
            Self::Dns(d) => SanType::DnsName(d.clone().try_into()?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => f.write_str(d),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What a CA may be constrained to: names and subtrees (`.domain` covers its subdomains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Name(CertName),
    Subdomains(String),
}

pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The names a generated, constrained CA covers; `None` when unconstrained or given.
    constrained_to: Option<Vec<String>>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("constrained_to", &self.constrained_to)
            .finish_non_exhaustive()
    }
}

fn file_error(path: &Path, reason: impl fmt::Display) -> CaError {
    CaError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl Ca {
    /// The CA of `config`: its files, or the one generated in its directory (generated now,
    /// constrained to `permits` when the config says so, if there is none yet).
    pub fn load(config: &CaConfig, permits: &[Permit]) -> Result<Ca, CaError> {
        if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
            return Self::from_files(cert, key, None);
        }
        let (cert, key) = (config.dir.join(CERT_FILE), config.dir.join(KEY_FILE));
        if cert.exists() || key.exists() {
            let names = std::fs::read_to_string(config.dir.join(NAMES_FILE))
                .ok()
                .map(|t| t.lines().map(str::to_owned).collect());
            return Self::from_files(&cert, &key, names);
        }
        let constrain = config.name_constraints && !permits.is_empty();
        Self::generate(&config.dir, constrain.then_some(permits))
    }

    fn from_files(cert: &Path, key: &Path, names: Option<Vec<String>>) -> Result<Ca, CaError> {
        let cert_pem = crate::config::read_text(cert).map_err(|e| file_error(cert, e))?;
        let key_pem = crate::config::read_text(key).map_err(|e| file_error(key, e))?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .map_err(|_| file_error(key, "not a PEM private key stevedore can use"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
            .map_err(|_| file_error(cert, "not a PEM CA certificate"))?;
        let cert_der = {
            use rustls::pki_types::pem::PemObject as _;
            CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|_| file_error(cert, "not a PEM certificate"))?
        };
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer,
            constrained_to: names,
        })
    }

    fn generate(dir: &Path, permits: Option<&[Permit]>) -> Result<Ca, CaError> {
        let fail = |reason: String| CaError::Generate {
            dir: dir.to_owned(),
            reason,
        };
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "stevedore registry proxy CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "stevedore");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_DAYS);
        if let Some(permits) = permits {
            params.name_constraints = Some(NameConstraints {
                permitted_subtrees: permits.iter().map(subtree).collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())
            .map_err(|e| fail(format!("{KEY_FILE}: {e}")))?;
        std::fs::write(dir.join(CERT_FILE), cert.pem()).map_err(|e| fail(e.to_string()))?;
        let names: Option<Vec<String>> = permits.map(|p| p.iter().map(permit_label).collect());
        if let Some(names) = &names {
            std::fs::write(dir.join(NAMES_FILE), names.join("\n"))
                .map_err(|e| fail(e.to_string()))?;
        }
        tracing::info!(
            dir = %dir.display(),
            constrained_to = ?names,
            "generated a CA for intercepted registries (give guests {}/{CERT_FILE})",
            dir.display()
        );
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            constrained_to: names,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Names of `wanted` a constrained CA cannot sign for.
    pub fn uncovered(&self, wanted: &[Permit]) -> Vec<String> {
        let Some(covered) = &self.constrained_to else {
            return Vec::new();
        };
        wanted
            .iter()
            .filter(|w| !covered.iter().any(|c| covers(c, w)))
            .map(permit_label)
            .collect()
    }

    /// An end-entity certificate for `name` (CA:false, server authentication), signed by this
    /// CA: the chain (leaf, CA) and the leaf's key.
    pub fn issue(
        &self,
        name: &CertName,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        self.issue_for(std::slice::from_ref(name))
    }

    /// Like [`Ca::issue`], for several names (the first is the subject's common name).
    pub fn issue_for(
        &self,
        names: &[CertName],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let label = names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let fail = |reason: String| CaError::Issue {
            name: label.clone(),
            reason,
        };
        let first = names.first().ok_or_else(|| fail("no name".to_owned()))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(e.to_string()))?;
        params.subject_alt_names = names
            .iter()
            .map(CertName::san)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, first.to_string());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key))
    }
}

fn subtree(p: &Permit) -> GeneralSubtree {
    match p {
        Permit::Name(CertName::Dns(d)) => GeneralSubtree::DnsName(d.clone()),
        Permit::Name(CertName::Ip(ip)) => {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
        }
        // RFC 5280: a DNS name constraint covers the name and its subdomains.
        Permit::Subdomains(d) => GeneralSubtree::DnsName(d.clone()),
    }
}

fn permit_label(p: &Permit) -> String {
    match p {
        Permit::Name(n) => n.to_string(),
        Permit::Subdomains(d) => format!(".{d}"),
    }
}

/// Whether a recorded constraint label covers `wanted`.
fn covers(label: &str, wanted: &Permit) -> bool {
    let domain = label.trim_start_matches('.');
    match wanted {
        Permit::Name(CertName::Dns(d)) | Permit::Subdomains(d) => {
            d == domain || d.ends_with(&format!(".{domain}"))
        }
        Permit::Name(CertName::Ip(ip)) => label == ip.to_string(),
    }
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> CaConfig {
        CaConfig {
            cert: None,
            key: None,
            dir: dir.to_owned(),
            name_constraints: true,
        }
    }

    #[test]
    fn a_generated_ca_is_kept_constrained_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let permits = [
            Permit::Name(CertName::parse("registry.corp")),
            Permit::Subdomains("svc.cluster.local".into()),
            Permit::Name(CertName::parse("10.0.0.5")),
        ];
        let ca = Ca::load(&config(dir.path()), &permits).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        // Loaded again, the same CA, and it knows what it covers.
        let again = Ca::load(&config(dir.path()), &[]).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert!(again.uncovered(&permits).is_empty());
        assert_eq!(
            again.uncovered(&[
                Permit::Name(CertName::parse("a.svc.cluster.local")),
                Permit::Name(CertName::parse("ghcr.io")),
            ]),
            vec!["ghcr.io"]
        );
        let (chain, _key) = again.issue(&CertName::parse("registry.corp")).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], *again.cert_der());
    }

    #[test]
    fn leaves_verify_against_the_ca_and_are_not_cas() {
        // Two providers are compiled in (the S3 client brings ring): pick stevedore's, as
        // `main` does.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load(
            &config(dir.path()),
            &[Permit::Name(CertName::parse("registry.corp"))],
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        let check = |leaf_name: &str, server_name: &str| {
            let (chain, _) = ca.issue(&CertName::parse(leaf_name)).unwrap();
            verifier.verify_server_cert(
                &chain[0],
                &chain[1..],
                &rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        assert!(check("registry.corp", "registry.corp").is_ok());
        assert!(check("registry.corp", "other.corp").is_err(), "wrong name");
        // Outside the name constraints: refused by the verifier even though the CA signed it.
        assert!(check("ghcr.io", "ghcr.io").is_err(), "name constraints");
    }

    #[test]
    fn given_files_must_be_a_ca_and_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "junk").unwrap();
        std::fs::write(&key, "junk").unwrap();
        let cfg = CaConfig {
            cert: Some(cert),
            key: Some(key.clone()),
            ..config(dir.path())
        };
        let e = Ca::load(&cfg, &[]).unwrap_err().to_string();
        assert!(
            e.contains("k.pem") && e.contains("not a PEM private key"),
            "{e}"
        );
    }
}
