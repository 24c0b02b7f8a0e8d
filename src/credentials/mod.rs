//! Central credentials: where stevedore finds what to present to an upstream registry.
//!
//! Sources, most specific match first (a `host/namespace/repo` key beats a `host` key; on a
//! tie the config file beats docker config files, which beat Kubernetes secrets, each in the
//! order listed): per-registry entries in the config, docker `config.json` / containers
//! `auth.json` files (with `credHelpers` / `credsStore`), and Kubernetes
//! `kubernetes.io/dockerconfigjson` secrets mounted as files. Files are re-read when they
//! change, so rotation needs no restart.

use std::fmt;

use base64::Engine as _;
use sha2::Digest as _;

use crate::secret::SecretString;

mod config_entry;
mod docker_config;
mod error;
mod helper;
mod scope;
mod store;
mod watch;

pub use error::CredentialError;
pub use store::CredentialStore;

/// What stevedore presents to a registry (or its token realm).
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password: Basic to the registry, or to the realm's `GET` token endpoint.
    Basic {
        username: String,
        password: SecretString,
    },
    /// An OAuth2 refresh token, exchanged with `POST realm` `grant_type=refresh_token`.
    IdentityToken {
        username: Option<String>,
        token: SecretString,
    },
    /// A bearer token sent to the registry as it is, without a token exchange.
    RegistryToken(SecretString),
}

impl Credential {
    /// A short stable identifier of this credential for cache keys: a hash, never the secret.
    pub fn fingerprint(&self) -> String {
        let mut h = sha2::Sha256::new();
        match self {
            Credential::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.expose().as_bytes());
            }
            Credential::IdentityToken { username, token } => {
                h.update(b"identity\0");
                h.update(username.as_deref().unwrap_or("").as_bytes());
                h.update(b"\0");
                h.update(token.expose().as_bytes());
            }
            Credential::RegistryToken(t) => {
                h.update(b"registry\0");
                h.update(t.expose().as_bytes());
            }
        }
        hex::encode(&h.finalize()[..12])
    }

    /// The kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Basic { .. } => "basic",
            Credential::IdentityToken { .. } => "identity-token",
            Credential::RegistryToken(_) => "registry-token",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// Decodes a docker-config `auth` value: base64 of `username:password`.
pub fn decode_auth(b64: &str) -> Option<(String, SecretString)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_owned(), SecretString::new(pass)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_decoding() {
        let (u, p) = decode_auth("dXNlcjpwYTpzcw==").unwrap();
        assert_eq!(u, "user");
        assert_eq!(p.expose(), "pa:ss");
        assert!(decode_auth("not base64!").is_none());
        assert!(decode_auth("bm9jb2xvbg==").is_none());
    }

    #[test]
    fn debug_redacts_and_fingerprints_differ() {
        let a = Credential::Basic {
            username: "u".into(),
            password: "secret-one".into(),
        };
        let b = Credential::Basic {
            username: "u".into(),
            password: "secret-two".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(!a.fingerprint().contains("secret"));
    }
}
