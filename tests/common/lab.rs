//! The lab for guest tests: the HTTPS registry with bearer-token auth (distribution over TLS
//! with its own CA, behind the token server), a recording TLS proxy in front of it, and
//! stevedore holding the credentials, reached by guests as their HTTPS proxy under the name
//! `registry.test` (Go clients never proxy loopback literals).

use std::path::PathBuf;

use super::faults::FaultProxy;
use super::images::{self, ImageSpec, PushedImage};
use super::pki::Pki;
use super::registry::Registry;
use super::stevedore::Stevedore;
use super::token_server::TokenServer;

/// The lab's registry: `team/app:v1` pushed over plain HTTP, served over TLS (its own CA)
/// with bearer tokens from the token server, where `puller` / `puller-secret` may pull `team/`.
pub struct LabRegistry {
    pub tokens: TokenServer,
    pub plain: Registry,
    pub tls: Registry,
    pub pki: Pki,
    pub image: PushedImage,
}

impl LabRegistry {
    pub async fn start(seed: u64) -> LabRegistry {
        let tokens = TokenServer::builder()
            .user("puller", "puller-secret", &["team/"])
            .start();
        let plain = Registry::open();
        let image = images::push_image(&plain, "team/app", "v1", &ImageSpec::seed(seed)).await;
        let pki = Pki::new("lab");
        let tls = Registry::builder()
            .tls(&pki.cert, &pki.key)
            .token(&tokens)
            .storage_dir(plain.storage_dir())
            .start();
        LabRegistry {
            tokens,
            plain,
            tls,
            pki,
            image,
        }
    }
}

/// The name guests use for the lab registry.
pub const REGISTRY: &str = "registry.test";

pub struct Lab {
    pub tokens: TokenServer,
    /// The same storage over plain HTTP without auth (the push side, and a "CDN").
    pub plain: Registry,
    pub _tls: Registry,
    pub faults: FaultProxy,
    pub pki: Pki,
    pub image: PushedImage,
    pub proxy: Stevedore,
    /// stevedore's CA certificate, PEM, and a directory holding it as `ca.crt`.
    pub ca_pem: String,
    pub ca_dir: tempfile::TempDir,
}

impl Lab {
    /// The lab with stevedore holding the puller's password in its section; `extra` is
    /// appended to the config, after the section's keys.
    pub async fn start(seed: u64, extra: &str) -> Lab {
        Self::start_with(
            seed,
            &format!("username = \"puller\"\npassword = \"puller-secret\"\n{extra}"),
        )
        .await
    }

    /// The lab with `config` appended to stevedore's section for the registry (it may open
    /// other tables), which holds no credentials of its own.
    pub async fn start_with(seed: u64, config: &str) -> Lab {
        let LabRegistry {
            tokens,
            plain: push,
            tls,
            pki,
            image,
        } = LabRegistry::start(seed).await;
        let faults = FaultProxy::start_tls_to("127.0.0.1", &tls.url(), &pki, Some(&pki.ca)).await;
        // The token server speaks plain HTTP: listed with its scheme, it may get credentials.
        let realm = url::Url::parse(tokens.url()).expect("realm URL");
        let proxy = Stevedore::start(&format!(
            "[registries.\"{REGISTRY}\"]\nendpoints = [\"https://{}\"]\nca-certs = [\"{}\"]\n\
             allow-private-network = true\nauth-realms = [\"{}\"]\n{config}",
            faults.host(),
            pki.ca.display(),
            realm.origin().ascii_serialization(),
        ))
        .await;
        let ca_pem = proxy
            .state
            .tls
            .as_ref()
            .expect("stevedore has a CA")
            .leaves
            .ca()
            .cert_pem()
            .to_owned();
        let ca_dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(ca_dir.path().join("ca.crt"), &ca_pem).expect("write ca.crt");
        Lab {
            tokens,
            plain: push,
            _tls: tls,
            faults,
            pki,
            image,
            proxy,
            ca_pem,
            ca_dir,
        }
    }

    pub fn proxy_url(&self) -> String {
        self.proxy.url()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca_dir.path().join("ca.crt")
    }

    /// Requests stevedore answered with this status so far.
    pub async fn answered(&self, status: u16) -> u64 {
        let telemetry = self.proxy.state.telemetry.clone();
        let text = tokio::task::spawn_blocking(move || telemetry.render())
            .await
            .expect("render");
        text.lines()
            .filter(|l| {
                l.starts_with("stevedore_requests_total{")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}
