//! Keys of `[registries]` sections, and which section a registry falls under. Besides plain
//! `host[:port]` keys, sections are matched the way Contrast's image puller matches its
//! registry keys: a trailing dot makes a fully qualified name (`"registry.corp."` is exactly
//! `registry.corp`), a leading dot means subdomains only (`".registry.corp."` covers
//! `a.registry.corp`, not `registry.corp`), and `"."` is every registry. The most specific
//! match wins.

use std::fmt;

use super::{NameError, RegistryHost};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegistryPattern {
    /// One registry (`host[:port]`, or a fully qualified `host.`).
    Exact(RegistryHost),
    /// Every subdomain of the suffix (kept without its dots).
    Subdomains(String),
    /// Every registry.
    All,
}

impl RegistryPattern {
    pub fn parse(key: &str) -> Result<Self, NameError> {
        let key = key.trim();
        if key == "." {
            return Ok(Self::All);
        }
        if let Some(rest) = key.strip_prefix('.') {
            let suffix = rest.strip_suffix('.').unwrap_or(rest);
            // The suffix must itself be a host name without a port.
            let host = RegistryHost::parse(suffix)?;
            if host.as_str() != suffix.to_ascii_lowercase() || suffix.contains(':') {
                return Err(NameError::Registry(key.to_owned()));
            }
            return Ok(Self::Subdomains(host.as_str().to_owned()));
        }
        let name = key.strip_suffix('.').unwrap_or(key);
        if name.ends_with('.') {
            return Err(NameError::Registry(key.to_owned()));
        }
        RegistryHost::parse(name).map(Self::Exact)
    }

    /// How specific a match of `host` is (larger is more specific), or `None`.
    pub fn specificity(&self, host: &RegistryHost) -> Option<usize> {
        match self {
            Self::Exact(h) => (h == host).then_some(usize::MAX),
            Self::Subdomains(suffix) => {
                let name = host.as_str();
                (!name.contains(':')
                    && name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
                    .then_some(suffix.len() + 1)
            }
            Self::All => Some(0),
        }
    }

    /// Whether the key names one registry (not a pattern).
    pub fn is_exact(&self) -> bool {
        matches!(self, Self::Exact(_))
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => write!(f, "{h}"),
            Self::Subdomains(s) => write!(f, ".{s}."),
            Self::All => f.write_str("."),
        }
    }
}

/// The most specific of `patterns` that `host` falls under: its index.
pub fn best_match<'a>(
    patterns: impl IntoIterator<Item = &'a RegistryPattern>,
    host: &RegistryHost,
) -> Option<usize> {
    patterns
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| p.specificity(host).map(|s| (s, i)))
        .max_by_key(|(s, i)| (*s, std::cmp::Reverse(*i)))
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> RegistryHost {
        RegistryHost::parse(s).unwrap()
    }

    fn p(s: &str) -> RegistryPattern {
        RegistryPattern::parse(s).unwrap()
    }

    #[test]
    fn keys() {
        assert_eq!(
            p("registry.corp."),
            RegistryPattern::Exact(h("registry.corp"))
        );
        assert_eq!(
            p("registry.corp"),
            RegistryPattern::Exact(h("registry.corp"))
        );
        assert_eq!(
            p("r.example:5000"),
            RegistryPattern::Exact(h("r.example:5000"))
        );
        assert_eq!(
            p("index.docker.io."),
            RegistryPattern::Exact(h("docker.io"))
        );
        assert_eq!(
            p(".registry.corp."),
            RegistryPattern::Subdomains("registry.corp".into())
        );
        assert_eq!(p(".Corp"), RegistryPattern::Subdomains("corp".into()));
        assert_eq!(p("."), RegistryPattern::All);
        for bad in ["..", "a..", ".a:5000.", "", "a b.", "x..y"] {
            assert!(RegistryPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_most_specific_match_wins() {
        let keys = [
            p("."),
            p(".corp."),
            p(".registry.corp."),
            p("registry.corp."),
        ];
        let best = |host: &str| best_match(&keys, &h(host)).map(|i| keys[i].to_string());
        assert_eq!(best("registry.corp").as_deref(), Some("registry.corp"));
        assert_eq!(best("a.registry.corp").as_deref(), Some(".registry.corp."));
        assert_eq!(best("other.corp").as_deref(), Some(".corp."));
        assert_eq!(best("ghcr.io").as_deref(), Some("."));
        // Subdomain patterns name hosts without a port, and only whole labels.
        assert_eq!(best("a.registry.corp:5000").as_deref(), Some("."));
        assert_eq!(best("xregistry.corp").as_deref(), Some(".corp."));
        assert_eq!(best_match(&[p(".corp.")], &h("corp")), None);
    }
}
