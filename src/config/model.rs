//! The configuration file's shape: plain serde data, kebab-case keys, unknown keys refused.
//! Meaning and cross-field rules live in `validate.rs`; every key is documented in
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret_source::SecretSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// Upstream registries by host name as clients spell it (`docker.io`, `ghcr.io`,
    /// `registry.example:5000`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address of the mirror listener (OCI distribution API, HTTP/1.1 and h2c).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5000))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoutingConfig {
    /// Registry for requests that name none (`/v2/alpine/...` → `docker.io/library/alpine`).
    #[serde(default = "default_registry")]
    pub default_registry: String,
    /// Serve registries that have no `[registries."<host>"]` section. Off by default: an open
    /// proxy lets anyone use stevedore's network position.
    #[serde(default)]
    pub allow_unknown_registries: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_registry: default_registry(),
            allow_unknown_registries: false,
        }
    }
}

fn default_registry() -> String {
    "docker.io".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// Time allowed to open a TCP (and TLS) connection to an upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for an upstream to send response headers, and between body chunks.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Largest manifest accepted from an upstream (distribution refuses over 4 MiB too).
    #[serde(default = "default_max_manifest_bytes")]
    pub max_manifest_bytes: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            max_manifest_bytes: default_max_manifest_bytes(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_manifest_bytes() -> usize {
    4 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CredentialsConfig {
    /// docker `config.json` / containers `auth.json` files, read on every change.
    #[serde(default)]
    pub docker_config: Vec<PathBuf>,
    /// Kubernetes `kubernetes.io/dockerconfigjson` secrets mounted as files: the
    /// `.dockerconfigjson` file itself or the directory that holds it.
    #[serde(default)]
    pub kubernetes_secrets: Vec<PathBuf>,
    /// Longest a `docker-credential-<name> get` may run.
    #[serde(default = "default_helper_timeout", with = "humantime_serde")]
    pub helper_timeout: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            docker_config: Vec::new(),
            kubernetes_secrets: Vec::new(),
            helper_timeout: default_helper_timeout(),
        }
    }
}

fn default_helper_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Endpoints tried in order (mirrors first, then the origin). Default: `https://<host>`
    /// (`https://registry-1.docker.io` for docker.io).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Extra CA certificates (PEM files) trusted for this registry's endpoints.
    #[serde(default)]
    pub ca_certs: Vec<PathBuf>,
    /// Accept any TLS certificate. For lab registries only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Allow this registry's endpoints, realms and redirects to resolve to loopback, private,
    /// link-local or metadata addresses.
    #[serde(default)]
    pub allow_private_network: bool,
    /// Token realms (URLs or host names) on other domains that may receive this registry's
    /// credentials. Realms on the registry's own registrable domain always may.
    #[serde(default)]
    pub auth_realms: Vec<String>,
    /// Outbound proxy: `"env"` (default: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`), `"none"`, or a
    /// proxy URL.
    #[serde(default)]
    pub proxy: Option<String>,
    pub username: Option<SecretSource>,
    pub password: Option<SecretSource>,
    /// base64 of `username:password`, as in docker config files.
    pub auth: Option<SecretSource>,
    /// An OAuth2 refresh token, exchanged at the realm with `grant_type=refresh_token`.
    pub identitytoken: Option<SecretSource>,
    /// A bearer token sent to the registry as it is.
    pub registrytoken: Option<SecretSource>,
}

/// Keys of the credential fields, for messages.
pub const CREDENTIAL_KEYS: [&str; 5] = [
    "username",
    "password",
    "auth",
    "identitytoken",
    "registrytoken",
];

/// All registries with a section keep this shape; `BTreeMap` keeps messages in a stable order.
pub type Registries = BTreeMap<String, RegistryConfig>;
