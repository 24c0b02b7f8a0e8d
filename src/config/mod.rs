//! Configuration: serde data (`model.rs`) loaded and checked in one place (`Config::load`), so
//! a bad file is reported completely and precisely (file, key, what is wrong) before anything
//! starts.

pub mod contrast;
mod model;
mod observe;
mod peers;
pub mod policy;
mod remote;
mod secret_source;
mod store;
mod validate;

use std::fmt;
use std::path::Path;

pub use model::*;
pub use observe::{LogConfig, LogFormat, TracingConfig};
pub use peers::PeersConfig;
pub use remote::{S3Config, StoreBackend};
pub use secret_source::{SecretError, SecretSource};
pub use store::StoreConfig;
pub use validate::realm_host;

/// Largest file a config names (certificates, keys, secrets, tokens, Contrast files, the
/// config itself) that stevedore reads: they are a few KiB, and a path to a device such as
/// `/dev/zero` must fail, not read forever.
pub const MAX_CONFIGURED_FILE: u64 = 16 * 1024 * 1024;

/// Reads a file a config names, refusing more than [`MAX_CONFIGURED_FILE`] bytes.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIGURED_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIGURED_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIGURED_FILE} bytes"),
        ));
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The configuration used when `serve` gets no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`registries."ghcr.io".endpoints[0]`), or a `line L, column C` position
    /// when the file does not parse.
    pub key: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.file, p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The registry sections in effect: the config's, with those of the Contrast files
    /// merged in (a file that cannot be read now contributes nothing, and says so).
    pub fn effective_registries(&self) -> Registries {
        let files: Vec<_> = self
            .credentials
            .contrast
            .iter()
            .filter_map(|p| match contrast::read(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(file = %p.display(), error = %e, "Contrast file skipped");
                    None
                }
            })
            .collect();
        contrast::merge(&self.registries, &files)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = read_text(path).map_err(|e| ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                key: "(file)".to_owned(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Self::from_toml(&text, &file)
    }

    /// The built-in default configuration.
    pub fn builtin_default() -> Result<Config, ConfigError> {
        Self::from_toml(DEFAULT_CONFIG, "(built-in default config)")
    }

    /// Parses and validates TOML text; `file` names it in messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![parse_problem(text, &e)],
        })?;
        let mut problems = validate::check(&config);
        problems.extend(policy::problems(config.policy.as_ref()));
        problems.extend(observe::problems(&config.log, &config.tracing));
        problems.extend(peers::problems(config.peers.as_ref()));
        match remote::resolve(&config.store) {
            Ok(backend) => config.store.backend = backend,
            Err(p) => problems.extend(p),
        }
        for (i, path) in config.credentials.contrast.iter().enumerate() {
            if let Err(e) = contrast::read(path) {
                problems.push(Problem {
                    key: format!("credentials.contrast[{i}]"),
                    message: format!("{}: {e}", path.display()),
                });
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems,
            })
        }
    }
}

fn parse_problem(text: &str, e: &toml::de::Error) -> Problem {
    let key = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "(file)".to_owned(),
    };
    Problem {
        key,
        message: e.message().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_valid() {
        let c = Config::builtin_default().unwrap();
        assert_eq!(c.server.listen.port(), 5000);
        assert_eq!(c.routing.default_registry, "docker.io");
        assert!(c.registries.contains_key("docker.io"));
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config/stevedore.toml");
        if let Err(e) = Config::from_toml(text, "config/stevedore.toml") {
            panic!("{e}");
        }
    }

    #[test]
    fn unknown_key_names_its_line() {
        let e = Config::from_toml("[server]\nlisten = \"0.0.0.0:1\"\nlisen = 3\n", "x.toml")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("x.toml: line 3, column 1: unknown field `lisen`"),
            "{text}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml(
            "[registries.\"r.example\"]\nusername = \"u\"\npassword = \"hunter2\"\n",
            "x.toml",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn secret_table_errors_are_clear() {
        let e = Config::from_toml(
            "[registries.\"r.example\"]\nusername = \"u\"\npassword = { path = \"/x\" }\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown key `path` in a secret"),
            "{e}"
        );
    }
}
