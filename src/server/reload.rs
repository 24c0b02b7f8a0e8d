//! Config reload: on SIGHUP or when the config file changes, the file is read and validated
//! first; a bad file keeps the running config and every problem is logged (file, key, why).
//! A good one swaps registries and their credentials, the routing default, `[policy]`,
//! `[proxy]`, `[limits]` and the log level, for new requests and connections; requests in
//! flight and fills keep what they started with. Settings that only a restart applies
//! (listeners, the store, the CA, …) are named in a warning and otherwise left as they are.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;

use super::AppState;
use super::state::Live;
use crate::config::Config;
use crate::telemetry::logs::LogControl;

/// How often the config file is checked for a change.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// Reloads `path` on SIGHUP and whenever it changes, until the process ends.
pub fn watch(state: Arc<AppState>, path: PathBuf, started: Config, logs: LogControl) {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = stamp(&path);
        loop {
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let why = tokio::select! {
                () = hup_fired => "SIGHUP",
                () = tokio::time::sleep(FILE_CHECK) => {
                    let now = stamp(&path);
                    if now == seen {
                        continue;
                    }
                    "the file changed"
                }
            };
            seen = stamp(&path);
            let p = path.clone();
            let Ok(loaded) = tokio::task::spawn_blocking(move || Config::load(&p)).await else {
                continue;
            };
            match loaded {
                Err(e) => {
                    for p in &e.problems {
                        tracing::error!(file = %e.file, key = %p.key, problem = %p.message, "config reload rejected");
                    }
                    tracing::error!(file = %path.display(), trigger = why, problems = e.problems.len(), "config reload rejected: the running config stays in effect");
                    count(&state, "rejected");
                }
                Ok(new) => match apply(&state, &new) {
                    Ok(()) => {
                        // Compared with what the process started with: that is what runs.
                        for key in needs_restart(&started, &new) {
                            tracing::warn!(file = %path.display(), key, "changed, but only a restart applies it: still running with the old value");
                        }
                        tracing::info!(file = %path.display(), trigger = why, "config reloaded");
                        count(&state, "ok");
                        // Last, so that the lines above are written at the old level.
                        logs.set_level(&new.log.level);
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), trigger = why, error = %e, "config reload rejected: the running config stays in effect");
                        count(&state, "rejected");
                    }
                },
            }
        }
    });
}

fn count(state: &AppState, result: &'static str) {
    state
        .telemetry
        .config_reloads
        .add(1, &[KeyValue::new("result", result)]);
}

/// Length, modification time and inode: enough to see an edit, a rename over the file, or
/// a Kubernetes ConfigMap's symlink swap.
fn stamp(path: &Path) -> Option<(u64, Option<std::time::SystemTime>, u64)> {
    std::fs::metadata(path).ok().map(|m| {
        (
            m.len(),
            m.modified().ok(),
            std::os::unix::fs::MetadataExt::ino(&m),
        )
    })
}

/// Puts the swappable settings of `new` in effect. Nothing changes when it fails.
pub fn apply(state: &AppState, new: &Config) -> Result<(), String> {
    let live = Live::from_config(new).map_err(|e| e.to_string())?;
    let registries = new.effective_registries();
    state
        .pull
        .upstreams()
        .reload(&registries)
        .map_err(|e| e.to_string())?;
    state.credentials.reload(&registries);
    *state
        .own_registries
        .write()
        .unwrap_or_else(PoisonError::into_inner) = new.registries.clone();
    state.set_live(live);
    Ok(())
}

/// The settings that differ between `a` and `b` and that only a restart applies.
pub fn needs_restart(a: &Config, b: &Config) -> Vec<&'static str> {
    let same =
        |x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| format!("{x:?}") == format!("{y:?}");
    let s = (&a.server, &b.server);
    let checks: [(&'static str, bool); 13] = [
        ("server.listen", s.0.listen == s.1.listen),
        (
            "server.metrics-listen",
            s.0.metrics_listen == s.1.metrics_listen,
        ),
        ("server.tls-listen", s.0.tls_listen == s.1.tls_listen),
        ("server.tls", same(&s.0.tls, &s.1.tls)),
        (
            "server.drain-timeout",
            s.0.drain_timeout == s.1.drain_timeout,
        ),
        (
            "server.shutdown-delay",
            s.0.shutdown_delay == s.1.shutdown_delay,
        ),
        ("store", same(&a.store, &b.store)),
        ("ca", same(&a.ca, &b.ca)),
        ("upstream", same(&a.upstream, &b.upstream)),
        (
            "routing.allow-unknown-registries",
            a.routing.allow_unknown_registries == b.routing.allow_unknown_registries,
        ),
        ("credentials", same(&a.credentials, &b.credentials)),
        ("log.format", a.log.format == b.log.format),
        ("tracing", same(&a.tracing, &b.tracing)),
    ];
    checks
        .into_iter()
        .filter(|(_, unchanged)| !unchanged)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_are_named() {
        let a = Config::from_toml("", "a").unwrap();
        let b = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:5999\"\n[store]\nmax-size = \"1GiB\"\n[limits]\nrequests-per-second = 5\n",
            "b",
        )
        .unwrap();
        assert_eq!(needs_restart(&a, &b), ["server.listen", "store"]);
        assert!(needs_restart(&a, &a).is_empty());
    }
}
