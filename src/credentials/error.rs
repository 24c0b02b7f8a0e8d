//! Why a credential source could not be used. Each message names the source (config key, file
//! path or helper program) and never holds a secret: values from files and helpers are never
//! quoted, only positions and shapes.

use std::path::PathBuf;

use crate::config::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A credential field of a `[registries."<host>"]` section could not be read.
    #[error("{key}.{field} ({origin}): {source}")]
    ConfigSecret {
        /// `registries."<host>"`, as the config spells the host.
        key: String,
        field: &'static str,
        /// Where the value comes from (`file /run/secrets/pw`, `environment variable X`).
        origin: String,
        source: SecretError,
    },
    /// A config `auth` value is not base64 of `user:password`.
    #[error("{key}.auth ({origin}): the value is not base64 of user:password")]
    ConfigAuth { key: String, origin: String },
    /// A docker config file or Kubernetes secret could not be read.
    #[error("cannot read credential file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A credential file is larger than any real one.
    #[error("credential file {path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    /// A credential file is not JSON; `detail` gives the position, never content.
    #[error("credential file {path} is not valid JSON: {detail}")]
    Json { path: PathBuf, detail: String },
    /// A credential file is JSON of the wrong shape.
    #[error("credential file {path}: {detail}")]
    Shape { path: PathBuf, detail: String },
    /// A credential helper failed, timed out or answered something unusable.
    #[error("credential helper {program} for {server_url}: {problem}")]
    Helper {
        /// `docker-credential-<name>`.
        program: String,
        server_url: String,
        problem: String,
    },
    /// The blocking task that reads credential files did not finish.
    #[error("reading credential files failed: the task was cancelled or panicked")]
    Task,
}
