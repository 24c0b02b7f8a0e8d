//! The upstream side: one [`Upstream`] per registry, built from the registry sections in
//! effect (the config's, and those of Contrast files), plus on-demand upstreams for registries
//! that fall under a pattern section, or under nothing when `routing.allow-unknown-registries`
//! is on. The sections can be swapped at run time ([`Upstreams::reload`]).

mod auth;
mod budget;
mod challenge;
mod client;
mod error;
mod http;
mod via;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use url::Url;

pub use auth::{CLIENT_ID, TokenCache, realm_may_receive_credentials};
pub use budget::{Budget, UpstreamLimits};
pub use challenge::{Challenge, parse as parse_challenge};
pub use client::{Shared, Upstream, UpstreamRequest};
pub use error::UpstreamError;
pub use http::{ClientBuildError, ProxyEnv};

use crate::config::{Config, Registries, RegistryConfig, UpstreamConfig};
use crate::credentials::CredentialStore;
use crate::reference::{RegistryHost, RegistryPattern, best_match};
use crate::telemetry::Telemetry;

/// All upstream registries stevedore may talk to.
pub struct Upstreams {
    table: RwLock<Arc<Table>>,
    shared: Arc<Shared>,
    /// What building clients needs besides a section.
    upstream: UpstreamConfig,
    env: ProxyEnv,
    own_listen: SocketAddr,
    allow_unknown: bool,
    /// What each registry said of its rate limits, kept across reloads (for metrics).
    limits: Mutex<HashMap<RegistryHost, Arc<UpstreamLimits>>>,
}

/// The registries of one set of sections.
struct Table {
    /// Registries with a section of their own.
    configured: HashMap<RegistryHost, Arc<Upstream>>,
    /// Sections for several registries (`".domain."`, `"."`, and unknown registries when
    /// they are allowed); the most specific one applies.
    patterns: Vec<PatternSection>,
    /// Upstreams of registries that fell under a pattern: built on first use, kept a while.
    matched: moka::sync::Cache<RegistryHost, Arc<Upstream>>,
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
    /// Upstreams for the sections of `registries` (see [`Config::effective_registries`]).
    pub fn from_config(
        config: &Config,
        registries: &Registries,
        credentials: Arc<CredentialStore>,
        env: &ProxyEnv,
        telemetry: &Telemetry,
    ) -> Result<Self, BuildError> {
        let shared = Arc::new(Shared {
            credentials,
            tokens: Arc::new(TokenCache::default()),
            requests: telemetry.upstream_requests.clone(),
        });
        let upstreams = Self {
            table: RwLock::new(Arc::new(Table::empty())),
            shared,
            upstream: config.upstream.clone(),
            env: env.clone(),
            own_listen: config.server.listen,
            allow_unknown: config.routing.allow_unknown_registries,
            limits: Mutex::default(),
        };
        upstreams.reload(registries)?;
        Ok(upstreams)
    }

    /// Swaps in the sections of `registries`. Requests in flight keep the upstream they
    /// have; a section that cannot be built leaves the current ones in place.
    pub fn reload(&self, registries: &Registries) -> Result<(), BuildError> {
        let table = self.build(registries)?;
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        Ok(())
    }

    fn build(&self, registries: &Registries) -> Result<Table, BuildError> {
        let ctx = http::ClientContext {
            upstream: &self.upstream,
            env: &self.env,
            own_listen: self.own_listen,
        };
        let mut configured = HashMap::new();
        let mut patterns = Vec::new();
        for (name, reg) in registries {
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
                    let upstream = self
                        .upstream_for(&host, reg, client)
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
        if self.allow_unknown && !has_catch_all {
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
        Ok(Table {
            configured,
            patterns,
            ..Table::empty()
        })
    }

    fn upstream_for(
        &self,
        host: &RegistryHost,
        reg: &RegistryConfig,
        http: reqwest::Client,
    ) -> Upstream {
        let limits = self
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host.clone())
            .or_default()
            .clone();
        Upstream::new(
            host.clone(),
            endpoints(host, reg),
            http,
            reg.allow_private_network,
            reg.auth_realms.clone(),
            self.shared.clone(),
        )
        .with_limits(limits)
    }

    fn table(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The upstream for a registry, or why there is none.
    pub fn get(&self, registry: &RegistryHost) -> Result<Arc<Upstream>, UpstreamError> {
        let table = self.table();
        if let Some(u) = table.configured.get(registry) {
            return Ok(u.clone());
        }
        let Some(i) = best_match(table.patterns.iter().map(|p| &p.pattern), registry) else {
            return Err(UpstreamError::NotConfigured {
                registry: registry.to_string(),
            });
        };
        let section = &table.patterns[i];
        Ok(table.matched.get_with(registry.clone(), || {
            Arc::new(
                self.upstream_for(registry, &section.config, section.http.clone())
                    .with_budget(section.config.budget.as_ref().map(Budget::from_config))
                    // A pattern vouches for no single registry (see pull::scope).
                    .untrusted(),
            )
        }))
    }

    /// Whether `registry` falls under a section (or unknown registries are allowed).
    pub fn serves(&self, registry: &RegistryHost) -> bool {
        let table = self.table();
        table.configured.contains_key(registry)
            || best_match(table.patterns.iter().map(|p| &p.pattern), registry).is_some()
    }

    /// What each registry said of its rate limits so far, for metrics.
    pub fn limits(&self) -> Vec<(String, Option<u64>, Option<u64>)> {
        self.limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(host, l)| (host.to_string(), l.limit(), l.remaining()))
            .collect()
    }

    /// The token cache, for metrics.
    pub fn tokens(&self) -> Arc<TokenCache> {
        self.shared.tokens.clone()
    }
}

impl Table {
    fn empty() -> Self {
        Self {
            configured: HashMap::new(),
            patterns: Vec::new(),
            matched: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
        }
    }
}

/// Whether `url` is a usable endpoint: a registry's base URL, or another stevedore naming the
/// registry by path prefix or `?ns=`. Some(true) when it names one.
pub fn endpoint_names_registry(url: &Url) -> Option<bool> {
    via::Via::split(url).map(|(_, via)| via != via::Via::Direct)
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
