//! stevedore itself, started in-process on 127.0.0.1:0 from a TOML config.

use std::net::SocketAddr;
use std::sync::Arc;

use stevedore::config::Config;
use stevedore::server::{self, AppState};
use stevedore::upstream::ProxyEnv;

pub struct Stevedore {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _ca_dir: tempfile::TempDir,
}

impl Stevedore {
    /// Starts stevedore with `config` (TOML; `[server] listen` is ignored).
    pub async fn start(config: &str) -> Self {
        Self::start_with_env(config, &ProxyEnv::default()).await
    }

    /// [`Stevedore::start`] with `env` as the process's proxy environment
    /// (`HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`, read once at start-up by the
    /// real binary), used by registries with `proxy = "env"` (the default).
    pub async fn start_with_env(config: &str, env: &ProxyEnv) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stevedore");
        Self::start_on(listener, config, env).await
    }

    /// Starts stevedore serving on `listener` (bound by the caller, so a test
    /// can write its address into the config, e.g. as `[server] listen`).
    pub async fn start_on(listener: tokio::net::TcpListener, config: &str, env: &ProxyEnv) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // Each instance gets a CA of its own unless the test configures one.
        let ca_dir = tempfile::tempdir().expect("CA tempdir");
        let config = if config.contains("[ca]") {
            config.to_owned()
        } else {
            format!("{config}\n[ca]\ndir = \"{}\"\n", ca_dir.path().display())
        };
        let config = match Config::from_toml(&config, "test config") {
            Ok(c) => c,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let addr = listener.local_addr().expect("stevedore address");
        let state = match AppState::new(&config, env) {
            Ok(s) => s,
            Err(e) => panic!("stevedore failed to start: {e}"),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve_state = state.clone();
        let task = tokio::spawn(async move {
            let _ = server::serve(listener, serve_state, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
            _ca_dir: ca_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops serving and waits for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Stevedore {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A `[registries."<host>"]` section for a test upstream on loopback.
pub fn registry_section(host: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "[registries.\"{host}\"]\nendpoints = [\"{endpoint}\"]\nallow-private-network = true\n{extra}\n"
    )
}
