//! The `stevedore` command: `serve` runs the proxy, `check-config` validates a config file,
//! `prefetch` warms the content store and `cache` maintains it (see `stevedore::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stevedore::cli::{
    self, ca::CaCommand, cache::CacheCommand, health::HealthArgs, prefetch::PrefetchArgs,
};
use stevedore::config::Config;
use stevedore::server::{self, AppState};
use stevedore::upstream::ProxyEnv;

#[derive(Parser)]
#[command(name = "stevedore", version, about = "OCI registry pull-through proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (built-in default config: a Docker Hub mirror on 0.0.0.0:5000).
    Serve {
        /// Configuration file (TOML); see docs/configuration.md.
        #[arg(long, short, env = "STEVEDORE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and report every problem in it.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Fetch images (manifests, configs, layers) into the content store through the pull
    /// engine, verified.
    Prefetch(PrefetchArgs),
    /// Inspect and maintain the content store directory (also while a server uses it).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// stevedore's certificate authority (for intercepted registries and the TLS listener).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Ask a running stevedore's admin listener whether it is ready (exit 0) or not (exit 1),
    /// for container health checks.
    Healthcheck(HealthArgs),
}

fn main() -> ExitCode {
    // reqwest and the TLS listeners share one process-wide rustls provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // The server logs each request; the tools print their own output and log only problems.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Prefetch(args) => cli::finish(cli::prefetch::run(args)),
        Command::Cache { command } => cli::finish(cli::cache::run(command)),
        Command::Ca { command } => cli::finish(cli::ca::run(command)),
        Command::Healthcheck(args) => cli::finish(cli::health::run(args)),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let loaded = match &config {
                Some(path) => Config::load(path),
                None => Config::builtin_default(),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stevedore: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every client connection is a file,
/// and `limits.max-connections` should be reachable.
fn raise_open_files(wanted: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let have = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    if have < wanted {
        tracing::warn!(
            open_files = have,
            max_connections = wanted,
            "the open-file limit is below limits.max-connections plus what the store needs: \
             raise it (ulimit -n) or lower limits.max-connections"
        );
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    raise_open_files(config.limits.max_connections.saturating_mul(2) + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let state = AppState::new(&config, &ProxyEnv::from_process())?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        // `stop` closes the client listeners (and drains them); `admin_stop` the admin
        // listener, last, so probes see the drain.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut listeners = Vec::new();
        let mut admin = None;
        if let Some(addr) = config.server.metrics_listen {
            let metrics = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (server.metrics-listen): {e}"))?;
            tracing::info!(listen = %addr, "admin listener: /metrics, /healthz, /readyz");
            admin = Some(tokio::spawn(server::serve_metrics(
                metrics,
                state.clone(),
                until_stopped(admin_stopped),
            )));
        }
        if let Some(addr) = config.server.tls_listen {
            let ca = state.tls.as_ref().map(|t| t.leaves.ca().clone());
            let tls = stevedore::tls::listener_config(&config, ca.as_deref())
                .map_err(|e| format!("server.tls-listen: {e}"))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (server.tls-listen): {e}"))?;
            tracing::info!(listen = %addr, "TLS mirror listener");
            listeners.push(tokio::spawn(server::serve_tls(
                listener,
                state.clone(),
                until_stopped(stopped.clone()),
                tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls)),
            )));
        }
        listeners.push(tokio::spawn(server::serve(
            listener,
            state.clone(),
            until_stopped(stopped),
        )));
        state.lifecycle.listeners_bound();
        tracing::info!(listen = %config.server.listen, registries = config.registries.len(), "stevedore serving");

        shutdown_signal().await;
        state.lifecycle.start_draining();
        // A second signal while draining ends the process at once (unfinished fills are
        // removed by the next start).
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second shutdown signal: exiting without finishing the drain");
            std::process::exit(1);
        });
        let delay = config.server.shutdown_delay;
        tracing::info!(?delay, drain = ?config.server.drain_timeout, "shutting down: not ready any more");
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
        for l in listeners {
            if let Ok(Err(e)) = l.await {
                tracing::warn!(error = %e, "listener ended with an error");
            }
        }
        if let Some(store) = state.pull.store() {
            let aborted = store.abort_fills(std::time::Duration::from_secs(10)).await;
            if aborted > 0 {
                tracing::warn!(fills = aborted, "fills still running at shutdown were aborted (nothing partial is kept)");
            }
        }
        let _ = admin_stop.send(true);
        if let Some(a) = admin {
            let _ = a.await;
        }
        tracing::info!("stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    // Blocking work (fills' writers removing their temp files) finishes before the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
