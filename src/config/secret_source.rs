//! Where a secret in the config comes from: inline, a file, or an environment variable.
//!
//! ```toml
//! password = "inline"                        # fine for tests, not for production
//! password = { file = "/run/secrets/pw" }   # read on every use, so rotation needs no restart
//! password = { env = "REGISTRY_PASSWORD" }
//! ```

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::secret::SecretString;

#[derive(Clone)]
pub enum SecretSource {
    Inline(SecretString),
    File(PathBuf),
    Env(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set (or not UTF-8)")]
    Env(String),
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Reads the current value. Files and variables are read on every call, so a rotated
    /// secret is picked up without a restart. One trailing newline is removed from files.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            SecretSource::Inline(s) => return Ok(s.clone()),
            SecretSource::File(path) => {
                let raw = super::read_text(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let trimmed = raw.strip_suffix('\n').unwrap_or(&raw);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                trimmed.to_owned()
            }
            SecretSource::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::Env(name.clone()))?
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.origin()));
        }
        Ok(SecretString::new(value))
    }

    /// Where the secret comes from, safe to print.
    pub fn origin(&self) -> String {
        match self {
            SecretSource::Inline(_) => "the config file".to_owned(),
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Env(n) => format!("environment variable {n}"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
            SecretSource::Env(n) => f.debug_tuple("Env").field(n).finish(),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;

        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SecretSource;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a string, { file = "/path" } or { env = "VARIABLE" }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
                Ok(SecretSource::Inline(SecretString::new(v)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
                let mut found: Option<SecretSource> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let source = match key.as_str() {
                        "file" => SecretSource::File(map.next_value::<PathBuf>()?),
                        "env" => SecretSource::Env(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a secret, expected `file` or `env`"
                            )));
                        }
                    };
                    if found.replace(source).is_some() {
                        return Err(de::Error::custom(
                            "a secret takes exactly one of `file` or `env`",
                        ));
                    }
                }
                found.ok_or_else(|| de::Error::custom("a secret table needs `file` or `env`"))
            }
        }

        deserializer.deserialize_any(SourceVisitor)
    }
}
