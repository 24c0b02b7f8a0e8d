//! TLS for the front doors: stevedore's CA and the leaf certificates it mints for intercepted
//! registries (`ca.rs`, `leaves.rs`), and server configurations for the TLS listener.

pub mod ca;
mod leaves;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;

pub use ca::{Ca, CaError, CertName, Permit};
pub use leaves::Leaves;

/// ALPN protocols offered by every TLS front door: HTTP/2, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server configuration presenting `chain` (leaf first), with ALPN `h2` and `http/1.1`,
/// verifying client certificates with `clients` when given.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, String> {
    // stevedore's provider, named: more than one is compiled in (the S3 client brings ring).
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A certificate chain from a PEM file.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = crate::config::read_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{}: not a PEM certificate chain", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(chain)
}

/// A private key from a PEM file. The key itself never appears in an error.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = crate::config::read_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| format!("{}: not a readable PEM private key", path.display()))
}

/// What a generated CA is constrained to: every registry with a section (for a `"."` section,
/// nothing can be constrained) and the TLS listener's names.
pub fn permits(config: &crate::config::Config) -> Vec<Permit> {
    use crate::reference::RegistryPattern;
    let mut out = Vec::new();
    for key in config.registries.keys() {
        match RegistryPattern::parse(key) {
            Ok(RegistryPattern::Exact(host)) => {
                out.push(Permit::Name(CertName::parse(host.hostname())));
            }
            Ok(RegistryPattern::Subdomains(d)) => out.push(Permit::Subdomains(d)),
            Ok(RegistryPattern::All) => return Vec::new(),
            Err(_) => {}
        }
    }
    if config.routing.allow_unknown_registries {
        return Vec::new();
    }
    for name in &config.server.tls.names {
        out.push(Permit::Name(CertName::parse(name)));
    }
    out.dedup();
    out
}

/// The TLS listener's server configuration: its own certificate, or one issued from `ca` for
/// `server.tls.names`; client certificates verified against `client-ca` when given.
pub fn listener_config(
    config: &crate::config::Config,
    ca: Option<&Ca>,
) -> Result<rustls::ServerConfig, String> {
    let tls = &config.server.tls;
    let (chain, key) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?),
        _ => {
            let ca = ca.ok_or("server.tls: no cert and key, and no CA to issue one from")?;
            let names: Vec<CertName> = tls.names.iter().map(|n| CertName::parse(n)).collect();
            ca.issue_for(&names)
                .map_err(|e| format!("server.tls.names: {e}"))?
        }
    };
    let clients = match &tls.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            );
            let builder = if tls.require_client_cert {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            Some(
                builder
                    .build()
                    .map_err(|e| format!("server.tls.client-ca: {e}"))?,
            )
        }
        None => None,
    };
    server_config(chain, key, clients)
}
