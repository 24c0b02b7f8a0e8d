//! Front doors: listeners that speak HTTP and hand typed routes to the pull engine.

mod metrics;
pub mod mirror;
pub mod response;

pub use metrics::serve_metrics;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::credentials::CredentialStore;
use crate::pull::PullService;
use crate::reference::RegistryHost;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::upstream::{ProxyEnv, Upstreams};
use response::Body;

/// Time given to open connections to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What every request handler shares.
pub struct AppState {
    pub pull: PullService,
    pub default_registry: RegistryHost,
    pub telemetry: Arc<Telemetry>,
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
        let default_registry = RegistryHost::parse(&config.routing.default_registry)
            .map_err(|e| StartError::Config(format!("routing.default-registry: {e}")))?;
        let credentials = Arc::new(CredentialStore::from_config(config));
        let telemetry = Arc::new(Telemetry::new());
        let upstreams = Upstreams::from_config(config, credentials, env, &telemetry)?;
        let tokens = upstreams.tokens();
        telemetry.observe_counter(crate::telemetry::names::TOKEN_FETCHES, move || {
            tokens.fetches()
        });
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
        Ok(Arc::new(Self {
            pull: PullService::new(upstreams, &config.upstream, store, telemetry.clone()),
            default_registry,
            telemetry,
        }))
    }
}

/// Serves the mirror API on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let mut resp = match mirror::handle(state, &req).await {
        Ok(r) => r,
        Err(e) => response::error(&e),
    };
    resp.headers_mut().insert(
        response::API_VERSION_HEADER,
        HeaderValue::from_static(response::API_VERSION),
    );
    state.telemetry.requests.add(
        1,
        &[
            opentelemetry::KeyValue::new("method", req.method().to_string()),
            opentelemetry::KeyValue::new("status", i64::from(resp.status().as_u16())),
        ],
    );
    tracing::info!(
        %peer,
        method = %req.method(),
        path = req.uri().path(),
        query = req.uri().query().unwrap_or(""),
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
