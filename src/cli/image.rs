//! Docker-style image references on the command line: `[registry/]repository[:tag][@digest]`,
//! normalised the way docker does it.

use std::fmt;

use crate::reference::{Digest, Reference, RegistryHost, Repository, looks_like_host};
use crate::route::{Route, RouteKind, RouteStyle};

/// An image named on the command line, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: RegistryHost,
    pub repository: Repository,
    /// The tag given, or `latest` when neither a tag nor a digest was.
    pub tag: Option<String>,
    /// A digest pins the image; the tag is then only a label (as in docker).
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `raw`. Without a registry, the image comes from `default_registry`; a
    /// first component names a registry when it has a `.` or `:` or is `localhost`.
    /// Single-segment Docker Hub names get `library/`; no tag and no digest means `latest`.
    pub fn parse(raw: &str, default_registry: &RegistryHost) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid image reference {raw:?}: {why}");
        let (name, digest) = match raw.rsplit_once('@') {
            Some((name, d)) => (
                name,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (raw, None),
        };
        // A tag follows the last `:` after the last `/` (a registry's port comes before it).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let tag = match tag {
            Some(t) => match Reference::parse(t) {
                Ok(Reference::Tag(t)) => Some(t),
                _ => return Err(bad(&format!("invalid tag {t:?}"))),
            },
            None if digest.is_none() => Some("latest".to_owned()),
            None => None,
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (
                RegistryHost::parse(first).map_err(|e| bad(&e.to_string()))?,
                rest,
            ),
            _ => (default_registry.clone(), name),
        };
        if path.is_empty() {
            return Err(bad("no repository name"));
        }
        let path = if registry.is_docker_hub() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let repository = Repository::parse(&path).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".to_owned()),
        }
    }

    /// A GET route to this image's repository.
    pub fn route(&self, kind: RouteKind) -> Route {
        Route {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            kind,
            head: false,
            style: RouteStyle::Implicit,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, String> {
        let hub = RegistryHost::parse("docker.io").unwrap();
        ImageRef::parse(raw, &hub).map(|i| i.to_string())
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(parse("alpine").unwrap(), "docker.io/library/alpine:latest");
        assert_eq!(
            parse("alpine:3.20").unwrap(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            parse("bitnami/redis").unwrap(),
            "docker.io/bitnami/redis:latest"
        );
        assert_eq!(
            parse("index.docker.io/alpine").unwrap(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            parse("ghcr.io/org/team/app:v1").unwrap(),
            "ghcr.io/org/team/app:v1"
        );
        assert_eq!(
            parse("localhost/app").unwrap(),
            "localhost/app:latest",
            "localhost is a registry"
        );
        assert_eq!(
            parse("127.0.0.1:5000/team/app").unwrap(),
            "127.0.0.1:5000/team/app:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse(&format!("r.example:5000/app@{d}")).unwrap(),
            format!("r.example:5000/app@{d}")
        );
        assert_eq!(
            parse(&format!("app:v1@{d}")).unwrap(),
            format!("docker.io/library/app:v1@{d}")
        );
    }

    #[test]
    fn other_default_registry_keeps_single_segments() {
        let reg = RegistryHost::parse("r.example").unwrap();
        let i = ImageRef::parse("app", &reg).unwrap();
        assert_eq!(i.to_string(), "r.example/app:latest");
        assert_eq!(i.reference(), Reference::Tag("latest".into()));
    }

    #[test]
    fn invalid_references() {
        assert!(parse("Alpine").is_err(), "repository names are lowercase");
        assert!(parse("alpine:").is_err());
        assert!(parse("alpine@sha256:abc").is_err());
        assert!(parse("r.example/").is_err());
        assert!(parse("").is_err());
    }
}
