//! What every request handler shares ([`AppState`]), built once from the validated config, and
//! the background work that keeps it current (Contrast files, upstream rate-limit gauges).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::config::{Config, ForwardProxyConfig, LimitsConfig, RegistryConfig};
use crate::credentials::CredentialStore;
use crate::policy::Policy;
use crate::pull::PullService;
use crate::reference::RegistryHost;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::tls::Leaves;
use crate::upstream::{ProxyEnv, Upstreams};

use super::conn::{Admission, ClientKey};
use super::lifecycle::Lifecycle;
use super::pacing::StreamMemory;
use super::ratelimit;

/// What every request handler shares.
pub struct AppState {
    pub pull: PullService,
    pub telemetry: Arc<Telemetry>,
    /// The settings a config reload swaps; each request takes the current ones once.
    live: RwLock<Arc<Live>>,
    /// The registry sections of the config file in use (Contrast files are merged over them).
    pub(super) own_registries: Arc<RwLock<BTreeMap<String, RegistryConfig>>>,
    pub(super) credentials: Arc<CredentialStore>,
    pub(super) admission: Admission,
    pub streams: Arc<StreamMemory>,
    /// stevedore's CA and the leaves it mints; `None` when there is no CA to use.
    pub tls: Option<Arc<TlsState>>,
    /// Readiness and draining, for the probes and the listeners.
    pub lifecycle: Lifecycle,
    /// How long responses in flight may take to finish on shutdown (`server.drain-timeout`).
    pub drain_timeout: Duration,
}

/// The settings a config reload swaps.
pub struct Live {
    pub default_registry: RegistryHost,
    pub limits: LimitsConfig,
    pub policy: Option<Policy>,
    pub proxy: ForwardProxyConfig,
    pub(super) rates: Option<ratelimit::Rates<RateKey>>,
}

impl Live {
    pub(super) fn from_config(config: &Config) -> Result<Self, StartError> {
        let limits = config.limits.clone();
        Ok(Self {
            default_registry: RegistryHost::parse(&config.routing.default_registry)
                .map_err(|e| StartError::Config(format!("routing.default-registry: {e}")))?,
            rates: ratelimit::Rates::new(limits.requests_per_second, limits.request_burst),
            limits,
            policy: config.policy.as_ref().map(Policy::from_config),
            proxy: config.proxy.clone(),
        })
    }
}

/// What TLS interception needs.
pub struct TlsState {
    pub leaves: Leaves,
}

/// Whom a request rate is counted for: an identified caller, else its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum RateKey {
    Client(ClientKey),
    Identity(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::BuildError),
}

impl AppState {
    /// Builds the engine from a validated config. `env` carries the process's proxy
    /// variables (read once, in `main`).
    pub fn new(config: &Config, env: &ProxyEnv) -> Result<Arc<Self>, StartError> {
        Self::build(config, env, tls_state(config))
    }

    /// The engine alone, for the command-line tools: no CA is loaded or generated.
    pub fn engine_only(config: &Config, env: &ProxyEnv) -> Result<Arc<Self>, StartError> {
        Self::build(config, env, None)
    }

    fn build(
        config: &Config,
        env: &ProxyEnv,
        tls: Option<Arc<TlsState>>,
    ) -> Result<Arc<Self>, StartError> {
        let live = Live::from_config(config)?;
        let registries = config.effective_registries();
        let credentials = Arc::new(CredentialStore::from_config(config, &registries));
        let telemetry = Arc::new(Telemetry::new());
        let upstreams = Arc::new(Upstreams::from_config(
            config,
            &registries,
            credentials.clone(),
            env,
            &telemetry,
        )?);
        let tokens = upstreams.tokens();
        telemetry.observe_counter(crate::telemetry::names::TOKEN_FETCHES, move || {
            tokens.fetches()
        });
        observe_upstream_limits(&telemetry, &upstreams);
        let store = Store::open(&config.store).map_err(|e| {
            StartError::Config(format!(
                "store.path: cannot open the content store at {}: {e}",
                config
                    .store
                    .path
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string())
            ))
        })?;
        if let Some(store) = &store {
            telemetry.observe_store(store);
        }
        if let Some(t) = &tls {
            let t = Arc::downgrade(t);
            telemetry.observe_counter(crate::telemetry::names::TLS_LEAVES, move || {
                t.upgrade().map_or(0, |t| t.leaves.minted())
            });
        }
        let limits = config.limits.clone();
        warn_if_open(config);
        let peers = match (&config.peers, tokio::runtime::Handle::try_current()) {
            (Some(p), Ok(_)) => Some(crate::peers::Peers::start(p).map_err(StartError::Config)?),
            _ => None,
        };
        if let Some(p) = &peers {
            let p = Arc::downgrade(p);
            telemetry.observe_gauge(crate::telemetry::names::PEERS, move || {
                p.upgrade().map_or(0, |p| p.members().len() as u64)
            });
        }
        let own_registries = Arc::new(RwLock::new(config.registries.clone()));
        watch_contrast_files(config, &own_registries, &upstreams, &credentials);
        let state = Arc::new(Self {
            pull: PullService::new(upstreams, &config.upstream, store, telemetry.clone())
                .with_peers(peers),
            telemetry,
            admission: Admission::new(&limits),
            streams: StreamMemory::new(limits.stream_buffer.0 as usize),
            live: RwLock::new(Arc::new(live)),
            own_registries,
            credentials,
            tls,
            lifecycle: Lifecycle::default(),
            drain_timeout: config.server.drain_timeout,
        });
        let weak = Arc::downgrade(&state);
        state
            .telemetry
            .observe_gauge(crate::telemetry::names::CONNECTIONS, move || {
                weak.upgrade().map_or(0, |s| s.open_connections() as u64)
            });
        let streams = state.streams.clone();
        state
            .telemetry
            .observe_gauge(crate::telemetry::names::STREAM_BUFFER, move || {
                streams.used() as u64
            });
        Ok(state)
    }

    /// The settings in effect now.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts reloaded settings in effect for new requests and connections.
    pub(super) fn set_live(&self, live: Live) {
        self.admission.set_limits(&live.limits);
        self.streams
            .set_capacity(live.limits.stream_buffer.0 as usize);
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.admission.open()
    }
}

/// stevedore's CA, loaded or generated, when the forward proxy or the TLS listener needs it.
/// Without one interception is refused (and said so), but the mirror still serves.
fn tls_state(config: &Config) -> Option<Arc<TlsState>> {
    if !config.proxy.enabled && config.server.tls_listen.is_none() {
        return None;
    }
    let permits = crate::tls::permits(config);
    match crate::tls::Ca::load(&config.ca, &permits) {
        Ok(ca) => {
            let uncovered = ca.uncovered(&permits);
            if !uncovered.is_empty() {
                tracing::error!(
                    names = ?uncovered,
                    dir = %config.ca.dir.display(),
                    "stevedore's CA is name-constrained and does not cover these names: \
                     clients will refuse their certificates. Remove the CA directory to generate \
                     a new CA (and give clients the new certificate), or set \
                     [ca] name-constraints = false before generating it"
                );
            }
            Some(Arc::new(TlsState {
                leaves: Leaves::new(Arc::new(ca)),
            }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no CA: CONNECT to registries is refused");
            None
        }
    }
}

/// How often Contrast files are checked for a change.
const CONTRAST_CHECK: Duration = Duration::from_secs(5);

/// Re-reads the Contrast files when they change and swaps in the registry sections they give,
/// credentials and TLS settings alike. A file that does not parse keeps the sections in use.
fn watch_contrast_files(
    config: &Config,
    own: &Arc<RwLock<BTreeMap<String, RegistryConfig>>>,
    upstreams: &Arc<Upstreams>,
    credentials: &Arc<CredentialStore>,
) {
    let files = config.credentials.contrast.clone();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if files.is_empty() {
        return;
    }
    let own = own.clone();
    let (upstreams, credentials) = (Arc::downgrade(upstreams), Arc::downgrade(credentials));
    runtime.spawn(async move {
        let stamp = |files: &[std::path::PathBuf]| {
            files
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.len(), m.modified().ok(), std::os::unix::fs::MetadataExt::ino(&m)))
                })
                .collect::<Vec<_>>()
        };
        let mut last = stamp(&files);
        loop {
            tokio::time::sleep(CONTRAST_CHECK).await;
            let (Some(upstreams), Some(credentials)) = (upstreams.upgrade(), credentials.upgrade())
            else {
                return;
            };
            let files2 = files.clone();
            let Ok((now, parsed)) = tokio::task::spawn_blocking(move || {
                let now = stamp(&files2);
                let parsed: Result<Vec<_>, String> = files2
                    .iter()
                    .map(|p| crate::config::contrast::read(p).map_err(|e| format!("{}: {e}", p.display())))
                    .collect();
                (now, parsed)
            })
            .await
            else {
                continue;
            };
            if now == last {
                continue;
            }
            last = now;
            match parsed {
                Ok(sections) => {
                    let own = own.read().unwrap_or_else(PoisonError::into_inner).clone();
                    let merged = crate::config::contrast::merge(&own, &sections);
                    match upstreams.reload(&merged) {
                        Ok(()) => {
                            credentials.reload(&merged);
                            tracing::info!("Contrast files changed: registry sections reloaded");
                        }
                        Err(e) => tracing::error!(error = %e, "Contrast files changed, but a section cannot be used: keeping the current ones"),
                    }
                }
                Err(e) => tracing::error!(error = %e, "a Contrast file does not parse: keeping the current registry sections"),
            }
        }
    });
}

/// Exports what each registry says of its rate limits.
fn observe_upstream_limits(telemetry: &Telemetry, upstreams: &Arc<Upstreams>) {
    use crate::telemetry::names;
    let u = Arc::downgrade(upstreams);
    telemetry.observe_gauges(
        names::UPSTREAM_RATELIMIT_LIMIT,
        "registry",
        Box::new(move || {
            u.upgrade().map_or_else(Vec::new, |u| {
                u.limits()
                    .into_iter()
                    .filter_map(|(r, limit, _)| Some((r, limit?)))
                    .collect()
            })
        }),
    );
    let u = Arc::downgrade(upstreams);
    telemetry.observe_gauges(
        names::UPSTREAM_RATELIMIT_REMAINING,
        "registry",
        Box::new(move || {
            u.upgrade().map_or_else(Vec::new, |u| {
                u.limits()
                    .into_iter()
                    .filter_map(|(r, _, remaining)| Some((r, remaining?)))
                    .collect()
            })
        }),
    );
}

/// Says so at start-up when anyone who reaches the listener may pull with stevedore's
/// credentials.
fn warn_if_open(config: &Config) {
    let has_credentials = config.registries.values().any(|r| {
        r.username.is_some()
            || r.auth.is_some()
            || r.identitytoken.is_some()
            || r.registrytoken.is_some()
    }) || !config.credentials.docker_config.is_empty()
        || !config.credentials.kubernetes_secrets.is_empty()
        || !config.credentials.containers_auth.is_empty();
    if config.policy.is_none() && has_credentials && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.server.listen,
            "stevedore holds registry credentials and listens beyond loopback without a \
             [policy] section: anyone who can reach it can pull what those credentials can \
             (see docs/security.md)"
        );
    }
}
