//! Names from the OCI distribution spec, validated before anything touches disk or network:
//! registry hosts, repository names, tags and digests.
//!
//! Grammar: OCI distribution-spec "Pulling manifests" (`<name>` and `<reference>`) and
//! image-spec "Digests".

mod pattern;

use std::fmt;

pub use pattern::{RegistryPattern, best_match};
use std::str::FromStr;

use sha2::Digest as _;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid registry host {0:?}: expected host[:port]")]
    Registry(String),
    #[error("invalid repository name {0:?}: see the OCI distribution spec <name> grammar")]
    Repository(String),
    #[error("invalid tag {0:?}: expected [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
    Digest(String),
}

/// The canonical name of a registry: lowercase `host[:port]`, with Docker Hub's aliases folded
/// into `docker.io`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(String);

pub const DOCKER_HUB: &str = "docker.io";

impl RegistryHost {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let lower = raw.trim().to_ascii_lowercase();
        if !is_host_port(&lower) {
            return Err(NameError::Registry(raw.to_owned()));
        }
        let canonical = match lower.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
            other => other,
        };
        Ok(Self(canonical.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_docker_hub(&self) -> bool {
        self.0 == DOCKER_HUB
    }

    /// The host without the port.
    pub fn hostname(&self) -> &str {
        split_host_port(&self.0).0
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `host[:port]`, keeping `[v6]` literals whole.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let host = &s[..end + 2];
            let after = &s[end + 2..];
            return match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                // Anything else after the literal (`[::1]/../x`): not a host at all.
                None => (s, None),
            };
        }
        return (s, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

fn is_host_port(s: &str) -> bool {
    let (host, port) = split_host_port(s);
    if let Some(port) = port
        && (port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err())
    {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a path component names a registry rather than a repository namespace: the rule
/// docker and containers/image use (`.` or `:` in it, or `localhost`).
pub fn looks_like_host(component: &str) -> bool {
    (component.contains('.') || component.contains(':') || component == "localhost")
        && is_host_port(&component.to_ascii_lowercase())
}

/// A repository name (`library/alpine`, `org/team/app`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository(String);

impl Repository {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() || raw.len() > 255 || !raw.split('/').all(is_path_component) {
            return Err(NameError::Repository(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: runs of lowercase letters and digits joined by exactly
/// one separator (`.`, `_`, `__`, or any number of `-`).
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One alphanumeric run is required here: at the start and after every separator.
        let run = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let start = i;
        let sep = bytes[i];
        while i < bytes.len() && bytes[i] == sep {
            i += 1;
        }
        let ok = match sep {
            b'.' => i - start == 1,
            b'_' => i - start <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            DigestAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A content digest this proxy can verify (sha256 or sha512, lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` in this digest's algorithm.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut h = self.algorithm.hasher();
        h.update(bytes);
        h.finish() == *self
    }
}

impl FromStr for Digest {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let err = || NameError::Digest(s.to_owned());
        let (algo, hex) = s.split_once(':').ok_or_else(err)?;
        let algorithm = match algo {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(err()),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(err());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// A running hash in the algorithm of the digest it will be compared with.
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.contains(':') {
            return raw.parse().map(Reference::Digest);
        }
        let b = raw.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(NameError::Tag(raw.to_owned()));
        }
        Ok(Reference::Tag(raw.to_owned()))
    }

    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        assert_eq!(
            RegistryHost::parse("Index.Docker.IO").unwrap().as_str(),
            "docker.io"
        );
        assert_eq!(
            RegistryHost::parse("registry.example:5000")
                .unwrap()
                .hostname(),
            "registry.example"
        );
        assert_eq!(
            RegistryHost::parse("[::1]:5000").unwrap().hostname(),
            "[::1]"
        );
        for bad in [
            "",
            "a b",
            "host:",
            "host:abc",
            "-x.io",
            "a..b",
            "h:123456",
            "h:99999",
            "[zz]:1",
            // Found by fuzzing: bytes after an IPv6 literal were kept.
            "[::1]?-ref",
            "[::1]/../..",
            "[::1]x",
            "[::1]:80/x",
        ] {
            assert!(RegistryHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repositories() {
        for good in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "a.b",
            "a__b",
            "a---b",
            "x_y",
            "0",
        ] {
            assert!(Repository::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "../etc", "a/..",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
        assert!(Repository::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn digests() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert!(
            format!("sha512:{}", "0".repeat(128))
                .parse::<Digest>()
                .is_ok()
        );
        for bad in [
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
            "sha256",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert!(Digest::sha256_of(b"hello").matches(b"hello"));
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag("latest".into())
        );
        assert!(Reference::parse(".x").is_err());
        assert!(Reference::parse(&"t".repeat(129)).is_err());
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "b".repeat(64))).unwrap(),
            Reference::Digest(_)
        ));
    }

    #[test]
    fn host_detection() {
        assert!(looks_like_host("ghcr.io"));
        assert!(looks_like_host("localhost"));
        assert!(looks_like_host("127.0.0.1:5000"));
        assert!(!looks_like_host("library"));
    }
}
