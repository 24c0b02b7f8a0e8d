//! Who may pull what (`[policy]`): clients are identified by their source address and by
//! the token they present, and rules grant identities registries, repository prefixes, and
//! tags or digests only.
//!
//! Tokens are kept as SHA-256 digests only, compared in constant time. Token files are read
//! again when they change (checked at most every few seconds, off the async threads), so a
//! rotated Kubernetes Secret needs no restart.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::Cidr;
use crate::config::policy::{ANONYMOUS, EVERYONE, PolicyConfig, References};
use crate::reference::{RegistryHost, Repository};
use crate::secret::SecretString;

/// How often token files are checked for a new token.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(5);

/// Credentials a client presented to stevedore itself (never forwarded anywhere).
#[derive(Debug)]
pub enum Presented {
    None,
    Bearer(SecretString),
    /// Basic credentials: the password is the token; the user name is only logged.
    Basic {
        user: String,
        secret: SecretString,
    },
}

/// The identities a request was found to have.
#[derive(Debug, Clone)]
pub struct Caller {
    names: Vec<Arc<str>>,
    /// Whether the client presented a token (that was recognised).
    pub authenticated: bool,
}

impl Caller {
    /// Identity names for logs: `anonymous` when none matched.
    pub fn label(&self) -> String {
        if self.names.is_empty() {
            ANONYMOUS.to_owned()
        } else {
            self.names.join(",")
        }
    }
}

/// What a request needs from a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Content by digest (manifests and blobs by digest, referrers).
    Digest,
    /// Resolving or listing tags.
    Tag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, but a token identity would be allowed: ask for credentials.
    Challenge(String),
    Deny(String),
}

/// A presented token no identity has.
#[derive(Debug, thiserror::Error)]
#[error("the credentials presented to stevedore are not recognised")]
pub struct Unrecognised;

struct Identity {
    name: Arc<str>,
    cidrs: Vec<Cidr>,
    tokens: Vec<[u8; 32]>,
    files: Vec<Arc<TokenFile>>,
    cert_names: Vec<rustls::pki_types::ServerName<'static>>,
}

impl Identity {
    fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || !self.files.is_empty()
    }
}

struct TokenFile {
    path: PathBuf,
    hash: RwLock<Option<[u8; 32]>>,
    checked: Mutex<Instant>,
}

impl TokenFile {
    fn load(path: PathBuf) -> Arc<Self> {
        let f = Arc::new(Self {
            path,
            hash: RwLock::new(None),
            checked: Mutex::new(Instant::now()),
        });
        f.refresh();
        f
    }

    fn refresh(&self) {
        let hash = crate::config::read_text(&self.path)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(|t| sha256(t.as_bytes()));
        if hash.is_none() {
            tracing::warn!(path = %self.path.display(), "policy token file is unreadable or empty: keeping its last token");
            return;
        }
        *self.hash.write().unwrap_or_else(PoisonError::into_inner) = hash;
    }

    fn current(&self) -> Option<[u8; 32]> {
        *self.hash.read().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Rule {
    name: String,
    identities: Vec<String>,
    registries: Vec<String>,
    repositories: Vec<String>,
    references: References,
}

pub struct Policy {
    identities: Vec<Identity>,
    files: Vec<Arc<TokenFile>>,
    rules: Vec<Rule>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Policy {
    /// Builds the policy from a validated section (invalid entries were reported by
    /// `Config::load` and are skipped here).
    pub fn from_config(config: &PolicyConfig) -> Self {
        let mut files = Vec::new();
        let identities = config
            .identities
            .iter()
            .map(|(name, id)| {
                let mut identity = Identity {
                    name: Arc::from(name.as_str()),
                    cidrs: id
                        .cidrs
                        .iter()
                        .filter_map(|c| Cidr::parse(c).ok())
                        .collect(),
                    tokens: id
                        .tokens_sha256
                        .iter()
                        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
                        .collect(),
                    files: Vec::new(),
                    cert_names: id
                        .client_cert_names
                        .iter()
                        .filter_map(|n| rustls::pki_types::ServerName::try_from(n.clone()).ok())
                        .collect(),
                };
                for path in &id.token_files {
                    let f = TokenFile::load(path.clone());
                    files.push(f.clone());
                    identity.files.push(f);
                }
                identity
            })
            .collect();
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule {
                name: r.name.clone().unwrap_or_else(|| format!("rules[{i}]")),
                identities: r.identities.clone(),
                registries: r
                    .registries
                    .iter()
                    .map(|h| RegistryHost::parse(h).map_or_else(|_| h.clone(), |h| h.to_string()))
                    .collect(),
                repositories: r
                    .repositories
                    .iter()
                    .map(|p| p.trim_end_matches('/').to_owned())
                    .collect(),
                references: r.references,
            })
            .collect();
        Self {
            identities,
            files,
            rules,
        }
    }

    /// Whether any identity is proven by a token: then clients are asked for credentials.
    pub fn wants_credentials(&self) -> bool {
        self.identities.iter().any(Identity::has_tokens)
    }

    /// The identities of a client at `peer` presenting `presented` (and, on the TLS
    /// listener, a verified client certificate).
    pub fn identify(
        &self,
        peer: IpAddr,
        presented: &Presented,
        client_cert: Option<&rustls::pki_types::CertificateDer<'_>>,
    ) -> Result<Caller, Unrecognised> {
        let cert = client_cert.and_then(|der| webpki::EndEntityCert::try_from(der).ok());
        self.refresh_files();
        let token = match presented {
            Presented::None => None,
            Presented::Bearer(t) | Presented::Basic { secret: t, .. } => {
                Some(sha256(t.expose().as_bytes()))
            }
        };
        let mut names = Vec::new();
        let mut token_matched = false;
        let mut cert_matched = false;
        for id in &self.identities {
            let has_tokens = id.has_tokens();
            let cert_ok = cert.as_ref().is_some_and(|c| {
                id.cert_names
                    .iter()
                    .any(|n| c.verify_is_valid_for_subject_name(n).is_ok())
            });
            let token_ok = match &token {
                Some(t) => {
                    id.tokens.iter().any(|h| constant_time_eq(h, t))
                        || id
                            .files
                            .iter()
                            .filter_map(|f| f.current())
                            .any(|h| constant_time_eq(&h, t))
                }
                None => false,
            };
            let cidr_ok = id.cidrs.iter().any(|c| c.contains(peer));
            // Every kind of proof the identity names must hold.
            let matched = (!has_tokens || token_ok)
                && (id.cert_names.is_empty() || cert_ok)
                && (id.cidrs.is_empty() || cidr_ok)
                && (has_tokens || !id.cert_names.is_empty() || !id.cidrs.is_empty());
            token_matched |= matched && has_tokens;
            cert_matched |= matched && !id.cert_names.is_empty();
            if matched {
                names.push(id.name.clone());
            }
        }
        if token.is_some() && !token_matched {
            return Err(Unrecognised);
        }
        Ok(Caller {
            names,
            authenticated: token_matched || cert_matched,
        })
    }

    /// Re-reads token files that were last checked a while ago, on a blocking thread; the
    /// request at hand uses the tokens known now.
    fn refresh_files(&self) {
        for f in &self.files {
            let mut checked = f.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.elapsed() < TOKEN_FILE_CHECK {
                continue;
            }
            *checked = Instant::now();
            let f = f.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || f.refresh());
            }
        }
    }

    /// Whether `caller` may pull from `repository` of `registry` what `need` says.
    pub fn authorize(
        &self,
        caller: &Caller,
        registry: &RegistryHost,
        repository: &Repository,
        need: Need,
    ) -> Decision {
        let registry = registry.as_str();
        let repo = repository.as_str();
        let for_caller = |r: &Rule| {
            r.identities.iter().any(|i| {
                i == EVERYONE
                    || (i == ANONYMOUS && caller.names.is_empty())
                    || caller.names.iter().any(|n| n.as_ref() == i)
            })
        };
        let covers = |r: &Rule| {
            r.registries.iter().any(|g| g == EVERYONE || g == registry)
                && (r.repositories.is_empty()
                    || r.repositories
                        .iter()
                        .any(|p| p == EVERYONE || repo == p || repo.starts_with(&format!("{p}/"))))
        };
        let allows = |r: &Rule| need == Need::Digest || r.references == References::Any;
        let mut digest_only = None;
        for rule in self.rules.iter().filter(|r| for_caller(r) && covers(r)) {
            if allows(rule) {
                return Decision::Allow;
            }
            digest_only.get_or_insert(rule.name.as_str());
        }
        let who = caller.label();
        if let Some(rule) = digest_only {
            return Decision::Deny(format!(
                "policy rule {rule:?} lets {who} pull {registry}/{repo} by digest only; \
                 tags are not resolved or listed for it"
            ));
        }
        // Would presenting a token help?
        if !caller.authenticated {
            let token_rule = self.rules.iter().find(|r| {
                covers(r)
                    && allows(r)
                    && r.identities.iter().any(|i| {
                        self.identities
                            .iter()
                            .any(|id| id.name.as_ref() == i && id.has_tokens())
                    })
            });
            if let Some(rule) = token_rule {
                return Decision::Challenge(format!(
                    "authentication required: policy rule {:?} allows {registry}/{repo} to \
                     clients with a token",
                    rule.name
                ));
            }
        }
        Decision::Deny(format!("no policy rule lets {who} pull {registry}/{repo}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::{IdentityConfig, RuleConfig};

    fn policy(token_file: Option<PathBuf>) -> Policy {
        let mut identities = std::collections::BTreeMap::new();
        identities.insert(
            "nodes".to_owned(),
            IdentityConfig {
                cidrs: vec!["10.0.0.0/8".into()],
                ..Default::default()
            },
        );
        identities.insert(
            "ci".to_owned(),
            IdentityConfig {
                tokens_sha256: vec![hex::encode(sha256(b"ci-secret"))],
                token_files: token_file.into_iter().collect(),
                ..Default::default()
            },
        );
        let rule = |name: &str, ids: &[&str], regs: &[&str], repos: &[&str], refs| RuleConfig {
            name: Some(name.into()),
            identities: ids.iter().map(|s| s.to_string()).collect(),
            registries: regs.iter().map(|s| s.to_string()).collect(),
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            references: refs,
        };
        Policy::from_config(&PolicyConfig {
            identities,
            rules: vec![
                rule(
                    "nodes-digests",
                    &["nodes"],
                    &["r.corp"],
                    &["team/"],
                    References::Digests,
                ),
                rule("ci-all", &["ci"], &["r.corp"], &[], References::Any),
                rule(
                    "public",
                    &["*"],
                    &["docker.io"],
                    &["library/"],
                    References::Any,
                ),
            ],
        })
    }

    fn at(ip: &str) -> IpAddr {
        ip.parse().unwrap()
    }

    fn reg(s: &str) -> RegistryHost {
        RegistryHost::parse(s).unwrap()
    }

    fn repo(s: &str) -> Repository {
        Repository::parse(s).unwrap()
    }

    #[test]
    fn cidr_identities_and_digest_only_rules() {
        let p = policy(None);
        let node = p.identify(at("10.1.2.3"), &Presented::None, None).unwrap();
        assert_eq!(node.label(), "nodes");
        let corp = reg("r.corp");
        assert_eq!(
            p.authorize(&node, &corp, &repo("team/app"), Need::Digest),
            Decision::Allow
        );
        let Decision::Deny(m) = p.authorize(&node, &corp, &repo("team/app"), Need::Tag) else {
            panic!("tags are refused")
        };
        assert!(
            m.contains("nodes-digests") && m.contains("by digest only"),
            "{m}"
        );
        // `team/` does not cover `teamx/…` nor `other/…`.
        assert!(matches!(
            p.authorize(&node, &corp, &repo("teamx/app"), Need::Digest),
            Decision::Challenge(_)
        ));
        // Everyone may pull docker.io/library/…
        let stranger = p.identify(at("192.0.2.1"), &Presented::None, None).unwrap();
        assert_eq!(stranger.label(), "anonymous");
        assert_eq!(
            p.authorize(
                &stranger,
                &reg("docker.io"),
                &repo("library/alpine"),
                Need::Tag
            ),
            Decision::Allow
        );
    }

    #[test]
    fn tokens_identify_and_unknown_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let p = policy(Some(file));
        assert!(p.wants_credentials());
        let ci = p
            .identify(
                at("192.0.2.1"),
                &Presented::Bearer(SecretString::new("ci-secret")),
                None,
            )
            .unwrap();
        assert!(ci.authenticated);
        assert_eq!(ci.label(), "ci");
        let via_file = p
            .identify(
                at("192.0.2.1"),
                &Presented::Basic {
                    user: "anything".into(),
                    secret: SecretString::new("from-file"),
                },
                None,
            )
            .unwrap();
        assert_eq!(via_file.label(), "ci");
        assert_eq!(
            p.authorize(&ci, &reg("r.corp"), &repo("any/thing"), Need::Tag),
            Decision::Allow
        );
        assert!(
            p.identify(
                at("192.0.2.1"),
                &Presented::Bearer(SecretString::new("wrong")),
                None,
            )
            .is_err()
        );
        // Without a token, a request the token would allow gets a challenge.
        let anon = p.identify(at("192.0.2.1"), &Presented::None, None).unwrap();
        let Decision::Challenge(m) = p.authorize(&anon, &reg("r.corp"), &repo("a/b"), Need::Tag)
        else {
            panic!("expected a challenge")
        };
        assert!(m.contains("ci-all"), "{m}");
        // Nobody may pull a registry no rule names.
        let Decision::Deny(m) = p.authorize(&ci, &reg("other.io"), &repo("a/b"), Need::Digest)
        else {
            panic!("expected a denial")
        };
        assert!(
            m.contains("no policy rule lets ci pull other.io/a/b"),
            "{m}"
        );
    }
}
