//! Credential keys: which `registry/repository` names a key applies to, and how specific it is.
//!
//! Keys come from docker `config.json` / containers `auth.json` files (`host`, `host/ns`,
//! `host/ns/repo`, or a legacy URL such as `https://index.docker.io/v1/`) and from the config
//! file (`[registries."<host>"]`, host only).

use std::fmt;

use crate::reference::{RegistryHost, Repository};

/// A host, optionally narrowed to a repository path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scope {
    host: RegistryHost,
    path: Option<String>,
}

impl Scope {
    /// A scope covering every repository of `host`.
    pub(super) fn host(host: RegistryHost) -> Self {
        Self { host, path: None }
    }

    /// Parses a key from a docker config / auth.json file.
    ///
    /// - `http://` and `https://` are stripped; a key that was a URL keeps only its host, since
    ///   the rest is an API path (`/v1/`, `/v2/`), as in containers/image.
    /// - A trailing `/` is stripped.
    /// - Docker Hub's legacy keys (`https://index.docker.io/v1/`, `index.docker.io/v1/`,
    ///   `index.docker.io`, `registry-1.docker.io`, `docker.io`) all mean `docker.io`.
    /// - The host is case-insensitive; a path must be a valid repository name prefix.
    pub(super) fn parse_key(raw: &str) -> Result<Self, KeyError> {
        let trimmed = raw.trim();
        let (was_url, rest) = strip_scheme(trimmed);
        let rest = rest.trim_end_matches('/');
        let (host, path) = match rest.split_once('/') {
            Some((host, _)) if was_url => (host, None),
            Some((host, path)) => (host, Some(path)),
            None => (rest, None),
        };
        let host = RegistryHost::parse(host).map_err(|_| KeyError::Host)?;
        let path = match path {
            Some(p) if host.is_docker_hub() && p.eq_ignore_ascii_case("v1") => None,
            Some(p) => Some(
                Repository::parse(p)
                    .map_err(|_| KeyError::Path)?
                    .as_str()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Self { host, path })
    }

    pub(super) fn registry(&self) -> &RegistryHost {
        &self.host
    }

    /// Whether this scope covers `registry/repository`: the same host, and the path (if any)
    /// equal to the repository or a prefix of it ending at a `/` boundary.
    pub(super) fn matches(&self, registry: &RegistryHost, repository: &Repository) -> bool {
        if self.host != *registry {
            return false;
        }
        let Some(prefix) = &self.path else {
            return true;
        };
        match repository.as_str().strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Length of the canonical key `host[/path]`: longer is more specific. Two scopes that
    /// match the same repository with equal specificity are the same key.
    pub(super) fn specificity(&self) -> usize {
        self.host.as_str().len() + self.path.as_ref().map_or(0, |p| 1 + p.len())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}/{path}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Why a key names no registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyError {
    Host,
    Path,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Host => "not a registry host[:port]",
            KeyError::Path => "the part after the host is not a repository name",
        })
    }
}

fn strip_scheme(s: &str) -> (bool, &str) {
    for scheme in ["https://", "http://"] {
        if s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return (true, &s[scheme.len()..]);
        }
    }
    (false, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> RegistryHost {
        RegistryHost::parse(s).unwrap()
    }

    fn repo(s: &str) -> Repository {
        Repository::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_legacy_keys_mean_docker_io() {
        for key in [
            "https://index.docker.io/v1/",
            "http://index.docker.io/v1/",
            "index.docker.io/v1/",
            "index.docker.io/v1",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
            "Docker.IO/",
            "https://registry-1.docker.io",
        ] {
            let scope = Scope::parse_key(key).unwrap();
            assert_eq!(scope, Scope::host(host("docker.io")), "{key}");
            assert_eq!(scope.specificity(), "docker.io".len());
        }
    }

    #[test]
    fn keys_are_normalised() {
        let s = Scope::parse_key("https://GHCR.io/").unwrap();
        assert_eq!(s.to_string(), "ghcr.io");
        let s = Scope::parse_key("https://ghcr.io/v2/").unwrap();
        assert_eq!(s.to_string(), "ghcr.io");
        let s = Scope::parse_key("Registry.Example:5000/team/app/").unwrap();
        assert_eq!(s.to_string(), "registry.example:5000/team/app");
        let s = Scope::parse_key("index.docker.io/library").unwrap();
        assert_eq!(s.to_string(), "docker.io/library");
        assert_eq!(Scope::parse_key("*.example.com"), Err(KeyError::Host));
        assert_eq!(Scope::parse_key(""), Err(KeyError::Host));
        assert_eq!(Scope::parse_key("ghcr.io/Bad_Path!"), Err(KeyError::Path));
    }

    #[test]
    fn prefixes_match_at_slash_boundaries() {
        let ns = Scope::parse_key("r.example/ns").unwrap();
        let r = host("r.example");
        assert!(ns.matches(&r, &repo("ns")));
        assert!(ns.matches(&r, &repo("ns/app")));
        assert!(ns.matches(&r, &repo("ns/team/app")));
        assert!(!ns.matches(&r, &repo("nsx/app")));
        assert!(!ns.matches(&r, &repo("nsx")));
        assert!(!ns.matches(&r, &repo("other/ns")));
        assert!(!ns.matches(&host("r.example:5000"), &repo("ns/app")));

        let whole = Scope::parse_key("r.example").unwrap();
        assert!(whole.matches(&r, &repo("anything/at/all")));
        assert!(!whole.matches(&host("rr.example"), &repo("x")));
        assert!(ns.specificity() > whole.specificity());
    }
}
