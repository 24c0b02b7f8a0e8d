//! Contrast's image-puller configuration (TOML) as a source of registry sections, so an
//! operator can hand stevedore, unchanged, the file they give guests today:
//!
//! ```toml
//! [extra-env]                       # ignored: stevedore is the proxy
//! HTTPS_PROXY = "https://proxy.corp"
//!
//! [registries."registry.corp."]     # keys matched as in [registries] (trailing dot, leading dot, ".")
//! ca-certs = '''-----BEGIN CERTIFICATE-----…'''   # replaces the roots for this registry
//! insecure-skip-verify = false
//! auth = "…"                        # or username + password, identitytoken, registrytoken
//! ```
//!
//! A section of stevedore's own config with the same key keeps what it sets; the file fills
//! in what it does not (credentials, CA certificates, `insecure-skip-verify`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{RegistryConfig, SecretSource};
use crate::reference::RegistryPattern;
use crate::secret::SecretString;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ContrastFile {
    #[serde(default)]
    registries: BTreeMap<String, ContrastRegistry>,
    #[serde(default)]
    #[allow(dead_code)]
    extra_env: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContrastRegistry {
    ca_certs: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// The registry sections of a Contrast image-puller file, keyed as written.
pub fn read(path: &Path) -> Result<BTreeMap<String, RegistryConfig>, String> {
    let text = super::read_text(path).map_err(|e| format!("cannot read: {e}"))?;
    parse(&text)
}

fn parse(text: &str) -> Result<BTreeMap<String, RegistryConfig>, String> {
    let file: ContrastFile = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
    let mut out = BTreeMap::new();
    for (key, r) in file.registries {
        RegistryPattern::parse(&key).map_err(|e| format!("registries.{key:?}: {e}"))?;
        let secret = |v: Option<String>| v.map(|s| SecretSource::Inline(SecretString::new(s)));
        out.insert(
            key,
            RegistryConfig {
                ca_pem: r.ca_certs,
                insecure_skip_verify: r.insecure_skip_verify,
                username: secret(r.username),
                password: secret(r.password),
                auth: secret(r.auth),
                identitytoken: secret(r.identitytoken),
                registrytoken: secret(r.registrytoken),
                ..RegistryConfig::default()
            },
        );
    }
    Ok(out)
}

/// `config`'s registry sections with those of the files merged in: a section of the config
/// keeps what it sets, the files fill in the rest (the first file naming a key wins).
pub fn merge(
    config: &BTreeMap<String, RegistryConfig>,
    files: &[BTreeMap<String, RegistryConfig>],
) -> BTreeMap<String, RegistryConfig> {
    let mut out = config.clone();
    for file in files {
        for (key, from_file) in file {
            let pattern = RegistryPattern::parse(key).ok();
            let existing = out
                .iter_mut()
                .find(|(k, _)| RegistryPattern::parse(k).ok() == pattern)
                .map(|(_, v)| v);
            match existing {
                Some(section) => fill(section, from_file),
                None => {
                    out.insert(key.clone(), from_file.clone());
                }
            }
        }
    }
    out
}

fn fill(section: &mut RegistryConfig, from: &RegistryConfig) {
    let has_credential = section.username.is_some()
        || section.password.is_some()
        || section.auth.is_some()
        || section.identitytoken.is_some()
        || section.registrytoken.is_some();
    if !has_credential {
        section.username.clone_from(&from.username);
        section.password.clone_from(&from.password);
        section.auth.clone_from(&from.auth);
        section.identitytoken.clone_from(&from.identitytoken);
        section.registrytoken.clone_from(&from.registrytoken);
    }
    if section.ca_pem.is_none() && section.ca_certs.is_empty() {
        section.ca_pem.clone_from(&from.ca_pem);
    }
    section.insecure_skip_verify |= from.insecure_skip_verify;
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[extra-env]
HTTP_PROXY = "https://proxy.corp"
NO_PROXY = ".corp"

[registries."registry.corp."]
ca-certs = '''
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
'''

[registries."ghcr.io."]
auth = "YnVyZ2VyZGV2OnRoaXNpc25vdG15cGFzc3dvcmQ="

[registries."."]
insecure-skip-verify = true
"#;

    #[test]
    fn sections_of_a_contrast_file() {
        let s = parse(FILE).unwrap();
        assert_eq!(s.len(), 3);
        assert!(
            s["registry.corp."]
                .ca_pem
                .as_deref()
                .unwrap()
                .contains("BEGIN")
        );
        assert!(s["ghcr.io."].auth.is_some());
        assert!(s["."].insecure_skip_verify);
        assert!(
            !format!("{s:?}").contains("YnVyZ2Vy"),
            "secrets never print"
        );
        assert!(parse("[registries.\"..\"]\n").is_err());
        assert!(
            parse("[registries.\"a.\"]\npasword = \"x\"\n")
                .unwrap_err()
                .contains("pasword")
        );
    }

    #[test]
    fn the_config_keeps_what_it_sets() {
        let file = parse(FILE).unwrap();
        let mut config = BTreeMap::new();
        config.insert(
            "ghcr.io".to_owned(),
            RegistryConfig {
                username: Some(SecretSource::Inline(SecretString::new("me"))),
                password: Some(SecretSource::Inline(SecretString::new("pw"))),
                ..RegistryConfig::default()
            },
        );
        config.insert(
            "registry.corp".to_owned(),
            RegistryConfig {
                allow_private_network: true,
                ..RegistryConfig::default()
            },
        );
        let merged = merge(&config, &[file]);
        assert_eq!(
            merged.len(),
            3,
            "ghcr.io. is ghcr.io, registry.corp. is registry.corp"
        );
        assert!(
            merged["ghcr.io"].auth.is_none(),
            "the config's credential stands"
        );
        assert!(merged["registry.corp"].allow_private_network);
        assert!(
            merged["registry.corp"].ca_pem.is_some(),
            "the file's CA fills in"
        );
        assert!(merged["."].insecure_skip_verify);
    }
}
