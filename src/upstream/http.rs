//! Building the HTTP client for one registry: TLS roots, outbound proxy, timeouts, and a DNS
//! resolver that refuses restricted addresses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::config::{RegistryConfig, UpstreamConfig};
use crate::policy::is_restricted_ip;

/// The process environment's outbound proxy settings, read once at start-up.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    pub https: Option<String>,
    pub http: Option<String>,
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (either case).
    pub fn from_process() -> Self {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        Self {
            https: var(["HTTPS_PROXY", "https_proxy"]),
            http: var(["HTTP_PROXY", "http_proxy"]),
            no_proxy: var(["NO_PROXY", "no_proxy"]),
        }
    }
}

/// The resolver's refusal, found again in a request error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to loopback, private or link-local addresses")]
pub struct RestrictedName {
    pub host: String,
}

/// Whether a request failed because its host resolved only to restricted addresses.
pub fn restricted_name(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RestrictedName>() {
            return Some(r.host.clone());
        }
        source = s.source();
    }
    None
}

/// Resolves names, dropping restricted addresses unless the registry allows them, so a
/// client cannot steer stevedore to loopback, the LAN or a metadata service through DNS.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| !is_restricted_ip(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(RestrictedName { host }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Everything the client builder needs besides the registry's section.
pub struct ClientContext<'a> {
    pub upstream: &'a UpstreamConfig,
    pub env: &'a ProxyEnv,
    /// stevedore's own listen address: an outbound proxy pointing here would loop.
    pub own_listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("ca-certs: {0}")]
    Certs(String),
    #[error("proxy {0}: {1}")]
    Proxy(String, String),
    #[error("HTTP client: {0}")]
    Build(String),
}

pub fn build_client(
    reg: &RegistryConfig,
    ctx: &ClientContext<'_>,
) -> Result<reqwest::Client, ClientBuildError> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("stevedore/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(ctx.upstream.connect_timeout)
        .read_timeout(ctx.upstream.read_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .http2_adaptive_window(true)
        .tcp_nodelay(true)
        .no_proxy();
    if !reg.allow_private_network {
        b = b.dns_resolver(Arc::new(GuardedResolver));
    }
    let mut certs = Vec::new();
    for path in &reg.ca_certs {
        let pem = crate::config::read_file(path)
            .map_err(|e| ClientBuildError::Certs(format!("{}: {e}", path.display())))?;
        let bundle = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientBuildError::Certs(format!("{}: {e}", path.display())))?;
        certs.extend(bundle);
    }
    if let Some(pem) = &reg.ca_pem {
        // Contrast's ca-certs replace the roots; with no certificate in it nothing verifies.
        let only = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| ClientBuildError::Certs(format!("ca-certs of a Contrast file: {e}")))?;
        b = b.tls_certs_only(only);
    } else if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    if reg.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    for proxy in proxies(reg, ctx)? {
        b = b.proxy(proxy.proxy);
        if let Some((host, addrs)) = proxy.pinned {
            // The proxy is the operator's choice: resolve it here, past the guard.
            b = b.resolve_to_addrs(&host, &addrs);
        }
    }
    b.build()
        .map_err(|e| ClientBuildError::Build(e.to_string()))
}

struct ConfiguredProxy {
    proxy: reqwest::Proxy,
    pinned: Option<(String, Vec<SocketAddr>)>,
}

fn proxies(
    reg: &RegistryConfig,
    ctx: &ClientContext<'_>,
) -> Result<Vec<ConfiguredProxy>, ClientBuildError> {
    let setting = reg.proxy.as_deref().unwrap_or("env");
    let (https, http, no_proxy) = match setting {
        "none" => return Ok(Vec::new()),
        "env" => (
            ctx.env.https.clone(),
            ctx.env.http.clone(),
            ctx.env.no_proxy.clone(),
        ),
        url => (Some(url.to_owned()), Some(url.to_owned()), None),
    };
    let mut out = Vec::new();
    for (raw, https_only) in [(https, true), (http, false)] {
        let Some(raw) = raw else { continue };
        let url =
            Url::parse(&raw).map_err(|e| ClientBuildError::Proxy(raw.clone(), e.to_string()))?;
        if points_at_self(&url, ctx.own_listen) {
            tracing::warn!(proxy = %url, "ignoring an outbound proxy that points at stevedore itself");
            continue;
        }
        let make = if https_only {
            reqwest::Proxy::https
        } else {
            reqwest::Proxy::http
        };
        let proxy = make(url.as_str())
            .map_err(|e| ClientBuildError::Proxy(raw.clone(), e.to_string()))?
            .no_proxy(no_proxy.as_deref().and_then(reqwest::NoProxy::from_string));
        let pinned = match url.host() {
            Some(url::Host::Domain(d)) if !reg.allow_private_network => {
                let port = url.port_or_known_default().unwrap_or(80);
                let addrs: Vec<SocketAddr> = (d, port)
                    .to_socket_addrs()
                    .map_err(|e| ClientBuildError::Proxy(raw.clone(), e.to_string()))?
                    .collect();
                Some((d.to_owned(), addrs))
            }
            _ => None,
        };
        out.push(ConfiguredProxy { proxy, pinned });
    }
    Ok(out)
}

fn points_at_self(proxy: &Url, own: SocketAddr) -> bool {
    if proxy.port_or_known_default() != Some(own.port()) {
        return false;
    }
    match proxy.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V4(ip) == own.ip()
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V6(ip) == own.ip()
        }
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_loop_detection() {
        let own: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert!(points_at_self(
            &Url::parse("http://127.0.0.1:5000").unwrap(),
            own
        ));
        assert!(points_at_self(
            &Url::parse("http://localhost:5000").unwrap(),
            own
        ));
        assert!(!points_at_self(
            &Url::parse("http://127.0.0.1:3128").unwrap(),
            own
        ));
        assert!(!points_at_self(
            &Url::parse("http://proxy.corp:5000").unwrap(),
            own
        ));
    }
}
