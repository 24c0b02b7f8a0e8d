//! The configuration file's shape: plain serde data, kebab-case keys, unknown keys refused.
//! Meaning and cross-field rules live in `validate.rs`; every key is documented in
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret_source::SecretSource;
use super::store::StoreConfig;

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
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub proxy: ForwardProxyConfig,
    #[serde(default)]
    pub ca: CaConfig,
    #[serde(default)]
    pub log: super::LogConfig,
    #[serde(default)]
    pub tracing: super::TracingConfig,
    /// Who may pull what; without it every client may pull from every configured registry.
    pub policy: Option<super::policy::PolicyConfig>,
    /// The other replicas sharing the work of fetching (see `[peers]`).
    pub peers: Option<super::PeersConfig>,
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
    /// Address of the metrics listener (`GET /metrics`, Prometheus text format). Off when
    /// absent; keep it on a private address.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the TLS mirror listener (the same API over HTTPS, h2 by ALPN). Off when
    /// absent.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// The TLS mirror listener's certificate and client certificates.
    #[serde(default)]
    pub tls: TlsListenerConfig,
    /// On SIGTERM: how long responses in flight may take to finish once `/readyz` has turned
    /// unready and the listeners have closed; fills still running after it are aborted.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On SIGTERM: how long the listeners keep accepting after `/readyz` has turned unready,
    /// so load balancers and Kubernetes endpoints stop sending clients first.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            metrics_listen: None,
            tls_listen: None,
            tls: TlsListenerConfig::default(),
            drain_timeout: default_drain_timeout(),
            shutdown_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsListenerConfig {
    /// Certificate chain (PEM). Without it, one is issued from stevedore's CA for `names`.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// Host names and addresses clients use to reach the TLS listener, for the certificate
    /// issued from stevedore's CA.
    #[serde(default)]
    pub names: Vec<String>,
    /// CA certificates (PEM) that client certificates must chain to. Without it no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client-ca`: refuse clients without a certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// stevedore as the `HTTPS_PROXY` / `HTTP_PROXY` of its clients, on the mirror listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ForwardProxyConfig {
    /// Serve `CONNECT` (intercepting TLS for registries with a section) and absolute-form
    /// requests. When off they are refused.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `host:port` pairs a `CONNECT` may be tunnelled to as it is (no interception, no
    /// caching). Nothing else is ever tunnelled.
    #[serde(default)]
    pub tunnel: Vec<String>,
    /// Let `tunnel` destinations resolve to loopback, private or link-local addresses.
    #[serde(default)]
    pub tunnel_private_network: bool,
}

impl Default for ForwardProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tunnel: Vec::new(),
            tunnel_private_network: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// stevedore's certificate authority: it signs the certificates of intercepted registries
/// and, without a certificate of its own, of the TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CaConfig {
    /// The CA certificate (PEM), e.g. from a Kubernetes secret. Without it, a CA is
    /// generated in `dir` on first start.
    pub cert: Option<PathBuf>,
    /// The CA's private key (PEM).
    pub key: Option<PathBuf>,
    /// Where a generated CA is kept (`ca.pem`, `ca-key.pem` with mode 0600).
    #[serde(default = "default_ca_dir")]
    pub dir: PathBuf,
    /// Constrain a generated CA to the registries with a section (and the TLS listener's
    /// names), so its key cannot sign for anything else.
    #[serde(default = "yes")]
    pub name_constraints: bool,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            dir: default_ca_dir(),
            name_constraints: true,
        }
    }
}

fn default_ca_dir() -> PathBuf {
    PathBuf::from("/var/lib/stevedore/ca")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5000))
}

/// What one client, and all of them together, may cost stevedore. Every limit has a safe
/// default; going over one is answered (`503`/`429` with `Retry-After`, or the connection is
/// closed), never a crash or a hang.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Time a client has to send a request's headers once it started sending them.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A response whose client has not taken a byte for this long is abandoned.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open client connections, all clients together; past it new connections are answered
    /// `503` and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers); larger is `431`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Concurrent requests on one HTTP/2 connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Memory shared by all response streams for chunks in flight. Streams whose clients
    /// do not keep up, or that would exceed it, send small chunks.
    #[serde(default = "default_stream_buffer")]
    pub stream_buffer: ByteSize,
    /// Kernel send buffer (`SO_SNDBUF`) of each accepted connection; `0` leaves the
    /// kernel's auto-tuning. Bounds what a client that stops reading pins in the kernel.
    #[serde(default = "default_socket_send_buffer")]
    pub socket_send_buffer: ByteSize,
    /// Requests per second one client identity (its address when anonymous) may make;
    /// `0` turns the limit off. Past it: `429 TOOMANYREQUESTS` with `Retry-After`.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    /// Requests a client may make at once above its rate.
    #[serde(default = "default_request_burst")]
    pub request_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            send_timeout: default_send_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_header_bytes: default_max_header_bytes(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            stream_buffer: default_stream_buffer(),
            socket_send_buffer: default_socket_send_buffer(),
            requests_per_second: default_requests_per_second(),
            request_burst: default_request_burst(),
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_client() -> usize {
    256
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}

fn default_http2_max_concurrent_streams() -> u32 {
    128
}

fn default_stream_buffer() -> ByteSize {
    ByteSize(48 * 1024 * 1024)
}

fn default_socket_send_buffer() -> ByteSize {
    ByteSize(256 * 1024)
}

fn default_requests_per_second() -> u32 {
    200
}

fn default_request_burst() -> u32 {
    400
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
    /// `containers-auth.json` files as Confidential Containers give guests (the docker config
    /// format; credential helpers are ignored), read on every change.
    #[serde(default)]
    pub containers_auth: Vec<PathBuf>,
    /// Contrast image-puller configuration files (TOML): their `[registries."<name>."]`
    /// sections act as registry sections of this config (credentials, `ca-certs`,
    /// `insecure-skip-verify`), re-read when they change.
    #[serde(default)]
    pub contrast: Vec<PathBuf>,
    /// Longest a `docker-credential-<name> get` may run.
    #[serde(default = "default_helper_timeout", with = "humantime_serde")]
    pub helper_timeout: Duration,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            docker_config: Vec::new(),
            kubernetes_secrets: Vec::new(),
            containers_auth: Vec::new(),
            contrast: Vec::new(),
            helper_timeout: default_helper_timeout(),
        }
    }
}

fn default_helper_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A size in bytes, written as a number or with a unit: `"500MiB"`, `"20GiB"`, `"1TB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size (e.g. 500MiB, 20GiB, 1048576)"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        Ok(Self((value * factor as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
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
    /// CA certificates (PEM) that replace the roots for this registry: what a Contrast
    /// image-puller file's `ca-certs` says (not a key of stevedore's own config).
    #[serde(skip)]
    pub ca_pem: Option<String>,
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
    /// How many requests stevedore may send this registry (Docker Hub counts manifest GETs
    /// against pull limits). With the budget spent, tags are served stale and misses are
    /// answered `429` with `Retry-After` instead of going upstream.
    pub budget: Option<BudgetConfig>,
}

/// An upstream request budget: at most `manifest-gets` manifest GETs and `requests` requests
/// of any kind per `per`, refilled continuously.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BudgetConfig {
    pub manifest_gets: Option<u32>,
    pub requests: Option<u32>,
    #[serde(default = "default_budget_period", with = "humantime_serde")]
    pub per: Duration,
}

fn default_budget_period() -> Duration {
    Duration::from_secs(3600)
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

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1048576"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("20GiB"), Ok(ByteSize(20 << 30)));
        assert_eq!(ByteSize::parse("1.5 KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("2GB"), Ok(ByteSize(2_000_000_000)));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("3 parsecs").is_err());
    }
}
