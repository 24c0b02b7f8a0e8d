//! The upstream side: one [`Upstream`] per registry, built from the config, plus on-demand
//! upstreams for unconfigured registries when `routing.allow-unknown-registries` is on.

mod auth;
mod budget;
mod challenge;
mod client;
mod error;
mod http;

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

pub use auth::{CLIENT_ID, TokenCache, realm_may_receive_credentials};
pub use budget::{Budget, UpstreamLimits};
pub use challenge::{Challenge, parse as parse_challenge};
pub use client::{Shared, Upstream, UpstreamRequest};
pub use error::UpstreamError;
pub use http::{ClientBuildError, ProxyEnv};

use crate::config::{Config, RegistryConfig};
use crate::credentials::CredentialStore;
use crate::reference::{RegistryHost, RegistryPattern, best_match};
use crate::telemetry::Telemetry;

/// All upstream registries stevedore may talk to.
pub struct Upstreams {
    /// Registries with a section of their own.
    configured: HashMap<RegistryHost, Arc<Upstream>>,
    /// Sections for several registries (`".domain."`, `"."`, and unknown registries when
    /// they are allowed); the most specific one applies.
    patterns: Vec<PatternSection>,
    /// Upstreams of registries that fell under a pattern: built on first use, kept a while.
    matched: moka::sync::Cache<RegistryHost, Arc<Upstream>>,
    shared: Arc<Shared>,
}

struct PatternSection {
    pattern: RegistryPattern,
    config: RegistryConfig,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
#[error("registries.{registry:?}: {source}")]
pub struct BuildError {
    registry: String,
    source: ClientBuildError,
}

impl Upstreams {
    pub fn from_config(
        config: &Config,
        credentials: Arc<CredentialStore>,
        env: &ProxyEnv,
        telemetry: &Telemetry,
    ) -> Result<Self, BuildError> {
        let shared = Arc::new(Shared {
            credentials,
            tokens: Arc::new(TokenCache::default()),
            requests: telemetry.upstream_requests.clone(),
        });
        let ctx = http::ClientContext {
            upstream: &config.upstream,
            env,
            own_listen: config.server.listen,
        };
        let mut configured = HashMap::new();
        let mut patterns = Vec::new();
        for (name, reg) in &config.registries {
            // Names were validated by Config::load.
            let Ok(pattern) = RegistryPattern::parse(name) else {
                continue;
            };
            let client = http::build_client(reg, &ctx).map_err(|source| BuildError {
                registry: name.clone(),
                source,
            })?;
            match pattern {
                RegistryPattern::Exact(host) => {
                    let upstream = Upstream::new(
                        host.clone(),
                        endpoints(&host, reg),
                        client,
                        reg.allow_private_network,
                        reg.auth_realms.clone(),
                        shared.clone(),
                    )
                    .with_budget(reg.budget.as_ref().map(Budget::from_config));
                    configured.insert(host, Arc::new(upstream));
                }
                pattern => patterns.push(PatternSection {
                    pattern,
                    config: reg.clone(),
                    http: client,
                }),
            }
        }
        let has_catch_all = patterns.iter().any(|p| p.pattern == RegistryPattern::All);
        if config.routing.allow_unknown_registries && !has_catch_all {
            let http = http::build_client(&RegistryConfig::default(), &ctx).map_err(|source| {
                BuildError {
                    registry: "(unknown registries)".to_owned(),
                    source,
                }
            })?;
            patterns.push(PatternSection {
                pattern: RegistryPattern::All,
                config: RegistryConfig::default(),
                http,
            });
        }
        Ok(Self {
            configured,
            patterns,
            matched: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
            shared,
        })
    }

    /// The upstream for a registry, or why there is none.
    pub fn get(&self, registry: &RegistryHost) -> Result<Arc<Upstream>, UpstreamError> {
        if let Some(u) = self.configured.get(registry) {
            return Ok(u.clone());
        }
        let Some(i) = best_match(self.patterns.iter().map(|p| &p.pattern), registry) else {
            return Err(UpstreamError::NotConfigured {
                registry: registry.to_string(),
            });
        };
        let section = &self.patterns[i];
        Ok(self.matched.get_with(registry.clone(), || {
            Arc::new(
                Upstream::new(
                    registry.clone(),
                    endpoints(registry, &section.config),
                    section.http.clone(),
                    section.config.allow_private_network,
                    section.config.auth_realms.clone(),
                    self.shared.clone(),
                )
                .with_budget(section.config.budget.as_ref().map(Budget::from_config))
                // A pattern vouches for no single registry (see pull::scope).
                .untrusted(),
            )
        }))
    }

    /// Whether `registry` falls under a section (or unknown registries are allowed).
    pub fn serves(&self, registry: &RegistryHost) -> bool {
        self.configured.contains_key(registry)
            || best_match(self.patterns.iter().map(|p| &p.pattern), registry).is_some()
    }

    /// What each configured registry said of its rate limits, for metrics.
    pub fn limits(&self) -> Vec<(String, Arc<UpstreamLimits>)> {
        self.configured
            .iter()
            .map(|(host, u)| (host.to_string(), u.limits()))
            .collect()
    }

    /// The token cache, for metrics.
    pub fn tokens(&self) -> Arc<TokenCache> {
        self.shared.tokens.clone()
    }
}

/// A registry's endpoints: as configured, else `https://<host>` (Docker Hub's API host for
/// docker.io).
fn endpoints(host: &RegistryHost, reg: &RegistryConfig) -> Vec<Url> {
    let configured: Vec<Url> = reg
        .endpoints
        .iter()
        .filter_map(|e| Url::parse(e).ok())
        .collect();
    if !configured.is_empty() {
        return configured;
    }
    let default = if host.is_docker_hub() {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{host}")
    };
    Url::parse(&default).into_iter().collect()
}
