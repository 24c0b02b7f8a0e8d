//! The command-line tools besides `serve`: `prefetch` warms the content store through the pull
//! engine, `cache` inspects and maintains a store directory, `ca show` prints stevedore's CA.
//!
//! Exit status: 0 on success, 1 when the work failed (an image could not be prefetched,
//! `cache verify` found bad content), 2 when it could not start (a bad config, no store).

pub mod ca;
pub mod cache;
pub mod health;
pub mod image;
pub mod platform;
pub mod prefetch;
mod progress;
pub mod serve;
mod walk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;

/// Why a command stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The process exit status.
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// The command could not start: configuration or usage problem (exit 2).
    pub fn setup(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// The command ran and failed (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

/// Prints a command's error, if any, and turns its outcome into the exit status.
pub fn finish(outcome: Result<ExitCode, CliError>) -> ExitCode {
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stevedore: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A loaded configuration and how to name it in messages.
pub struct LoadedConfig {
    pub config: Config,
    /// The file, or "the built-in default config".
    pub source: String,
}

/// Loads `--config FILE` (or `STEVEDORE_CONFIG`), else the built-in default config.
pub fn load_config(path: Option<&Path>) -> Result<LoadedConfig, CliError> {
    let (loaded, source) = match path {
        Some(p) => (Config::load(p), p.display().to_string()),
        None => (
            Config::builtin_default(),
            "the built-in default config".to_owned(),
        ),
    };
    loaded
        .map(|config| LoadedConfig { config, source })
        .map_err(|e| CliError::setup(e.to_string()))
}

impl LoadedConfig {
    /// The configured `[store] path`; `what` names the command in the error when there is
    /// none.
    pub fn store_path(&self, what: &str) -> Result<PathBuf, CliError> {
        self.config.store.path.clone().ok_or_else(|| {
            CliError::setup(format!(
                "no [store] path configured in {}: {what} needs a content store \
                 (add `[store]` with `path = \"/var/lib/stevedore\"`, pass --config FILE \
                 or set STEVEDORE_CONFIG)",
                self.source
            ))
        })
    }
}

/// Standard output that a closed pipe (`stevedore cache ls | head`) ends quietly instead of
/// with a panic.
#[derive(Default)]
pub(crate) struct Out {
    closed: bool,
}

impl Out {
    /// Prints one line; after a write error, prints nothing more.
    pub fn line(&mut self, text: impl AsRef<str>) {
        use std::io::Write as _;
        if self.closed {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{}", text.as_ref())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            self.closed = true;
        }
    }
}

/// A tokio runtime for a command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::setup(format!("cannot start the async runtime: {e}")))
}

/// `1536` → `1.5 KiB`: sizes for people (exact byte counts go in JSON).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3_565_158), "3.4 MiB");
        assert_eq!(human_bytes(20 << 30), "20.0 GiB");
    }

    #[test]
    fn no_store_is_a_setup_error() {
        let loaded = LoadedConfig {
            config: Config::from_toml("", "x.toml").unwrap(),
            source: "x.toml".to_owned(),
        };
        let e = loaded.store_path("prefetch").unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("no [store] path configured in x.toml"),
            "{e:?}"
        );
        assert!(
            e.message.contains("prefetch needs a content store"),
            "{e:?}"
        );
    }
}
