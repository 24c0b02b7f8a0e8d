//! Credentials given in the config file's `[registries."<host>"]` sections. Values are read
//! through [`SecretSource::read`] on every lookup, so a rotated secret file or variable takes
//! effect without a restart.

use std::fmt;

use super::{Credential, CredentialError, decode_auth};
use crate::config::{RegistryConfig, SecretSource};
use crate::reference::RegistryPattern;
use crate::secret::SecretString;

/// The credential fields of one registry section.
#[derive(Clone)]
pub(super) struct ConfigEntry {
    /// `registries."<host>"` as the config spells it, for messages.
    key: String,
    pattern: RegistryPattern,
    username: Option<SecretSource>,
    password: Option<SecretSource>,
    auth: Option<SecretSource>,
    identitytoken: Option<SecretSource>,
    registrytoken: Option<SecretSource>,
}

impl ConfigEntry {
    /// The section's credential, or `None` when it has no credential fields (or its name is
    /// not a host, which config validation already reported).
    pub(super) fn from_section(name: &str, reg: &RegistryConfig) -> Option<Self> {
        let has_credential = [
            &reg.username,
            &reg.password,
            &reg.auth,
            &reg.identitytoken,
            &reg.registrytoken,
        ]
        .iter()
        .any(|f| f.is_some());
        if !has_credential {
            return None;
        }
        let key = format!("registries.{name:?}");
        let Ok(pattern) = RegistryPattern::parse(name) else {
            tracing::warn!(
                key,
                "credentials skipped: the section name is not a registry host"
            );
            return None;
        };
        Some(Self {
            key,
            pattern,
            username: reg.username.clone(),
            password: reg.password.clone(),
            auth: reg.auth.clone(),
            identitytoken: reg.identitytoken.clone(),
            registrytoken: reg.registrytoken.clone(),
        })
    }

    pub(super) fn pattern(&self) -> &RegistryPattern {
        &self.pattern
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Reads the current credential (blocking: files and variables are read now). The kinds are
    /// exclusive (config validation enforces it); checked as docker would: registry token,
    /// identity token (with an optional username), `auth`, then username + password.
    pub(super) fn read(&self) -> Result<Option<Credential>, CredentialError> {
        if let Some(token) = self.field("registrytoken", &self.registrytoken)? {
            return Ok(Some(Credential::RegistryToken(token)));
        }
        if let Some(token) = self.field("identitytoken", &self.identitytoken)? {
            let username = self.field("username", &self.username)?;
            return Ok(Some(Credential::IdentityToken {
                username: username.map(|u| u.expose().to_owned()),
                token,
            }));
        }
        if let Some(auth) = self.field("auth", &self.auth)? {
            let (username, password) =
                decode_auth(auth.expose()).ok_or_else(|| CredentialError::ConfigAuth {
                    key: self.key.clone(),
                    origin: self
                        .auth
                        .as_ref()
                        .map(SecretSource::origin)
                        .unwrap_or_default(),
                })?;
            return Ok(Some(Credential::Basic { username, password }));
        }
        let username = self.field("username", &self.username)?;
        let password = self.field("password", &self.password)?;
        Ok(match (username, password) {
            (Some(username), Some(password)) => Some(Credential::Basic {
                username: username.expose().to_owned(),
                password,
            }),
            _ => None,
        })
    }

    fn field(
        &self,
        field: &'static str,
        source: &Option<SecretSource>,
    ) -> Result<Option<SecretString>, CredentialError> {
        let Some(source) = source else {
            return Ok(None);
        };
        source
            .read()
            .map(Some)
            .map_err(|e| CredentialError::ConfigSecret {
                key: self.key.clone(),
                field,
                origin: source.origin(),
                source: e,
            })
    }
}

impl fmt::Debug for ConfigEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `SecretSource`'s Debug redacts inline values and shows only paths and variable names.
        f.debug_struct("ConfigEntry")
            .field("key", &self.key)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("auth", &self.auth)
            .field("identitytoken", &self.identitytoken)
            .field("registrytoken", &self.registrytoken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_fields: &str) -> ConfigEntry {
        let reg: RegistryConfig = toml::from_str(toml_fields).unwrap();
        ConfigEntry::from_section("Ghcr.io", &reg).unwrap()
    }

    #[test]
    fn fields_map_to_credentials() {
        assert_eq!(
            entry("username = \"u\"\npassword = \"p\"").read().unwrap(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        // "user:pa:ss"
        assert_eq!(
            entry("auth = \"dXNlcjpwYTpzcw==\"").read().unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            entry("identitytoken = \"it\"").read().unwrap(),
            Some(Credential::IdentityToken {
                username: None,
                token: "it".into()
            })
        );
        assert_eq!(
            entry("identitytoken = \"it\"\nusername = \"me\"")
                .read()
                .unwrap(),
            Some(Credential::IdentityToken {
                username: Some("me".into()),
                token: "it".into()
            })
        );
        assert_eq!(
            entry("registrytoken = \"rt\"").read().unwrap(),
            Some(Credential::RegistryToken("rt".into()))
        );
        let e = entry("username = \"u\"");
        assert_eq!(e.pattern().to_string(), "ghcr.io");
        assert_eq!(e.key(), "registries.\"Ghcr.io\"");
    }

    #[test]
    fn sections_without_credentials_are_not_entries() {
        let reg: RegistryConfig = toml::from_str("endpoints = [\"https://x.example\"]").unwrap();
        assert!(ConfigEntry::from_section("x.example", &reg).is_none());
    }

    #[test]
    fn errors_name_key_field_and_origin_but_no_value() {
        let e = entry("auth = \"c2VjcmV0LXdpdGhvdXQtY29sb24=\"")
            .read()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "registries.\"Ghcr.io\".auth (the config file): the value is not base64 of \
             user:password"
        );
        assert!(!e.contains("c2VjcmV0"));

        let e = entry("username = \"u\"\npassword = { file = \"/nonexistent/stevedore-pw\" }")
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("registries.\"Ghcr.io\".password (file /nonexistent/stevedore-pw): "),
            "{e}"
        );
    }

    #[test]
    fn file_secrets_are_read_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "first\n").unwrap();
        let e = entry(&format!(
            "username = \"u\"\npassword = {{ file = {:?} }}",
            pw.display().to_string()
        ));
        let password = |e: &ConfigEntry| match e.read().unwrap() {
            Some(Credential::Basic { password, .. }) => password.expose().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(password(&e), "first");
        std::fs::write(&pw, "second\n").unwrap();
        assert_eq!(password(&e), "second");
        assert!(!format!("{e:?}").contains("second"));
    }
}
