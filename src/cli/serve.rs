//! `stevedore serve`: starts the listeners, logs and span export, reloads the config on
//! SIGHUP or change, and on SIGTERM drains: readiness off, `server.shutdown-delay`, client
//! listeners closed, responses in flight finished within `server.drain-timeout`, fills still
//! running aborted (nothing partial kept), then the admin listener, then exit 0.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::server::{self, AppState};
use crate::telemetry::{logs, traces::Traces};
use crate::upstream::ProxyEnv;

/// Runs the proxy until a shutdown signal; `path` is the config file (reloaded) if any.
pub fn run(config: Config, path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    raise_open_files(config.limits.max_connections.saturating_mul(2) + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let traces = {
        let _entered = runtime.enter();
        Traces::start(&config.tracing)?
    };
    let (traces, tracer) = match traces {
        Some((t, tracer)) => (Some(t), Some(tracer)),
        None => (None, None),
    };
    let log_control = logs::init_server(&config.log, tracer);
    if traces.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    let served = runtime.block_on(serve(config, path, log_control));
    // The last spans go out while the runtime still runs (exports are sent on it).
    if let Some(t) = traces {
        t.shutdown();
    }
    // Blocking work (fills' writers removing their temp files) finishes before the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    served
}

async fn serve(
    config: Config,
    path: Option<PathBuf>,
    log_control: logs::LogControl,
) -> Result<(), Box<dyn std::error::Error>> {
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
        let tls = crate::tls::listener_config(&config, ca.as_deref())
            .map_err(|e| format!("server.tls-listen: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (server.tls-listen): {e}"))?;
        tracing::info!(listen = %addr, "TLS mirror listener");
        listeners.push(tokio::spawn(server::serve_tls(
            listener,
            state.clone(),
            until_stopped(stopped.clone()),
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        )));
    }
    listeners.push(tokio::spawn(server::serve(
        listener,
        state.clone(),
        until_stopped(stopped),
    )));
    state.lifecycle.listeners_bound();
    tracing::info!(listen = %config.server.listen, registries = config.registries.len(), "stevedore serving");
    let (drain, delay) = (config.server.drain_timeout, config.server.shutdown_delay);
    match path {
        Some(path) => server::reload::watch(state.clone(), path, config, log_control),
        None => drop(log_control),
    }

    shutdown_signal().await;
    state.lifecycle.start_draining();
    // A second signal while draining ends the process at once (unfinished fills are
    // removed by the next start).
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second shutdown signal: exiting without finishing the drain");
        std::process::exit(1);
    });
    tracing::info!(?delay, ?drain, "shutting down: not ready any more");
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
            tracing::warn!(
                fills = aborted,
                "fills still running at shutdown were aborted (nothing partial is kept)"
            );
        }
    }
    let _ = admin_stop.send(true);
    if let Some(a) = admin {
        let _ = a.await;
    }
    tracing::info!("stopped");
    Ok(())
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
