//! The credential store: every configured source, asked in precedence order.
//!
//! Precedence is "most specific match wins". Keys are matched against `registry/repository`:
//! a `host` key matches every repository of that host; `host/ns` or `host/ns/repo` matches
//! when it is a path prefix ending at a `/` boundary (`host/ns` does not match `host/nsx/…`).
//! The longest matching key wins. On a tie (the same key in several sources) the config file
//! beats docker config files (in `credentials.docker-config` order), which beat Kubernetes
//! secrets (in `credentials.kubernetes-secrets` order). Within one docker config file, for the
//! same host, `credHelpers` beats `auths`, and `credsStore` comes last (and does not apply to
//! hosts that have a `credHelpers` entry).
//!
//! A credential helper that answers "credentials not found" is no match, so the next
//! candidate is asked. Any other failure of the chosen candidate (an unreadable config secret,
//! a helper that fails or times out) is an error rather than a silent fall back to a less
//! specific credential. Broken or unreadable files are logged and skipped instead (keeping
//! their last good content), so one bad file never stops lookups in the others.

use std::cmp::Reverse;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use super::config_entry::ConfigEntry;
use super::docker_config::AuthFile;
use super::helper::{self, HelperFailure, HelperRunner};
use super::watch::{Kind, WatchedFile};
use super::{Credential, CredentialError};
use crate::config::{Config, Registries};
use crate::reference::{RegistryHost, RegistryPattern, Repository, best_match};

/// Every credential source stevedore knows, re-read as they change.
pub struct CredentialStore {
    sources: Arc<Sources>,
    helpers: HelperRunner,
}

/// What is consulted on the blocking pool: config entries and watched files.
struct Sources {
    /// The registry sections in effect, swapped whole when they are reloaded.
    sections: RwLock<Arc<Sections>>,
    /// Docker config files first, then Kubernetes secrets, then containers-auth files, each
    /// in configured order.
    files: Vec<WatchedFile>,
}

/// The credentials of the registry sections in effect.
struct Sections {
    registries: Vec<ConfigEntry>,
    /// Every section, with or without credentials: only the most specific one a registry
    /// falls under applies to it.
    patterns: Vec<RegistryPattern>,
}

impl Sections {
    fn of(registries: &Registries) -> Self {
        Self {
            registries: registries
                .iter()
                .filter_map(|(name, reg)| ConfigEntry::from_section(name, reg))
                .collect(),
            patterns: registries
                .keys()
                .filter_map(|k| RegistryPattern::parse(k).ok())
                .collect(),
        }
    }
}

/// A source that may hold the credential, not yet asked.
enum Candidate {
    /// A registry section with a credential.
    Config(ConfigEntry),
    /// An `auths` entry of `Sources::files[file]`.
    Entry { file: usize, credential: Credential },
    /// A `credHelpers` / `credsStore` helper named in `Sources::files[file]`.
    Helper { file: usize, name: String },
}

/// A candidate with its place in the precedence order.
struct Ranked {
    specificity: usize,
    /// 0 for the config file, then files in order.
    source: usize,
    /// Order within one source for the same key.
    within: u8,
    candidate: Candidate,
}

impl Ranked {
    fn order(&self) -> (Reverse<usize>, usize, u8) {
        (Reverse(self.specificity), self.source, self.within)
    }
}

// Order within one file for the same key (see the module docs).
const WITHIN_CRED_HELPER: u8 = 0;
const WITHIN_CANONICAL_KEY: u8 = 1;
const WITHIN_ALIAS_KEY: u8 = 2;
const WITHIN_CREDS_STORE: u8 = 3;

impl CredentialStore {
    /// The credential sources of `config`, with `registries` as the sections in effect (see
    /// `Config::effective_registries`).
    pub fn from_config(config: &Config, registries: &Registries) -> Self {
        Self::build(config, registries, None)
    }

    /// A store that runs credential helpers from `dir` instead of `PATH`.
    #[cfg(test)]
    pub(crate) fn with_helper_dir(config: &Config, dir: PathBuf) -> Self {
        Self::build(config, &config.registries, Some(dir))
    }

    /// Swaps in the credentials of `registries`.
    pub fn reload(&self, registries: &Registries) {
        *self
            .sources
            .sections
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Sections::of(registries));
    }

    fn build(config: &Config, registries: &Registries, helper_dir: Option<PathBuf>) -> Self {
        let creds = &config.credentials;
        let docker = creds
            .docker_config
            .iter()
            .map(|p| WatchedFile::new(p.clone(), Kind::DockerConfig));
        let k8s = creds
            .kubernetes_secrets
            .iter()
            .map(|p| WatchedFile::new(p.clone(), Kind::KubernetesSecret));
        let coco = creds
            .containers_auth
            .iter()
            .map(|p| WatchedFile::new(p.clone(), Kind::ContainersAuth));
        Self {
            sources: Arc::new(Sources {
                sections: RwLock::new(Arc::new(Sections::of(registries))),
                files: docker.chain(k8s).chain(coco).collect(),
            }),
            helpers: HelperRunner::new(creds.helper_timeout, helper_dir),
        }
    }

    /// The credential for `registry/repository`, or `None` to pull anonymously.
    pub async fn lookup(
        &self,
        registry: &RegistryHost,
        repository: &Repository,
    ) -> Result<Option<Credential>, CredentialError> {
        let candidates = {
            let sources = Arc::clone(&self.sources);
            let (registry, repository) = (registry.clone(), repository.clone());
            tokio::task::spawn_blocking(move || sources.candidates(&registry, &repository))
                .await
                .map_err(|_| CredentialError::Task)?
        };
        for candidate in candidates {
            let found = match &candidate {
                Candidate::Config(entry) => {
                    let entry = entry.clone();
                    tokio::task::spawn_blocking(move || entry.read())
                        .await
                        .map_err(|_| CredentialError::Task)??
                }
                Candidate::Entry { credential, .. } => Some(credential.clone()),
                Candidate::Helper { name, .. } => self
                    .helpers
                    .get(name, &helper::server_url(registry))
                    .await
                    .map_err(helper_error)?,
            };
            if let Some(credential) = found {
                tracing::debug!(
                    %registry,
                    %repository,
                    source = %self.sources.describe(&candidate),
                    kind = credential.kind(),
                    "credential found"
                );
                return Ok(Some(credential));
            }
        }
        tracing::debug!(%registry, %repository, "no credential: pulling anonymously");
        Ok(None)
    }
}

impl Sources {
    /// Every candidate for `registry/repository`, most preferred first. Blocking: stats (and
    /// when changed, reads) the files.
    fn candidates(&self, registry: &RegistryHost, repository: &Repository) -> Vec<Candidate> {
        let sections = self.sections();
        let best = best_match(&sections.patterns, registry).map(|i| &sections.patterns[i]);
        let mut ranked: Vec<Ranked> = sections
            .registries
            .iter()
            .filter(|entry| Some(entry.pattern()) == best)
            .filter_map(|entry| {
                // A pattern section is less specific than an entry naming the host itself.
                let specificity = match entry.pattern().specificity(registry)? {
                    usize::MAX => registry.as_str().len(),
                    s => s,
                };
                Some(Ranked {
                    specificity,
                    source: 0,
                    within: 0,
                    candidate: Candidate::Config(entry.clone()),
                })
            })
            .collect();
        for (file, watched) in self.files.iter().enumerate() {
            let Some(content) = current(watched) else {
                continue;
            };
            file_candidates(&content, file, registry, repository, &mut ranked);
        }
        ranked.sort_by_key(Ranked::order);
        ranked.into_iter().map(|r| r.candidate).collect()
    }

    fn sections(&self) -> Arc<Sections> {
        self.sections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where a candidate comes from, for logs.
    fn describe(&self, candidate: &Candidate) -> String {
        let file = |i: usize| self.files.get(i).map(|f| f.path().display().to_string());
        match candidate {
            Candidate::Config(entry) => entry.key().to_owned(),
            Candidate::Entry { file: i, .. } => {
                format!("auths in {}", file(*i).unwrap_or_default())
            }
            Candidate::Helper { file: i, name } => format!(
                "docker-credential-{name} named in {}",
                file(*i).unwrap_or_default()
            ),
        }
    }
}

/// The file's usable content, logging a new problem with it.
fn current(watched: &WatchedFile) -> Option<Arc<AuthFile>> {
    let snapshot = watched.snapshot();
    if let Some(problem) = &snapshot.problem {
        let kind = match watched.kind() {
            Kind::DockerConfig => "docker config",
            Kind::KubernetesSecret => "Kubernetes secret",
            Kind::ContainersAuth => "containers-auth.json",
        };
        if snapshot.file.is_some() {
            tracing::warn!(error = %problem, "{kind} skipped: still using its last good content");
        } else {
            tracing::warn!(error = %problem, "{kind} skipped: it provides no credentials");
        }
    }
    snapshot.file
}

/// Adds one file's candidates for `registry/repository` to `ranked`.
fn file_candidates(
    content: &AuthFile,
    file: usize,
    registry: &RegistryHost,
    repository: &Repository,
    ranked: &mut Vec<Ranked>,
) {
    let source = 1 + file;
    let host_specificity = registry.as_str().len();
    for entry in &content.auths {
        if entry.scope.matches(registry, repository) {
            ranked.push(Ranked {
                specificity: entry.scope.specificity(),
                source,
                within: if entry.canonical_key {
                    WITHIN_CANONICAL_KEY
                } else {
                    WITHIN_ALIAS_KEY
                },
                candidate: Candidate::Entry {
                    file,
                    credential: entry.credential.clone(),
                },
            });
        }
    }
    let helper = content
        .cred_helpers
        .iter()
        .find(|(host, _)| host == registry)
        .map(|(_, name)| (name, WITHIN_CRED_HELPER))
        .or_else(|| {
            content
                .creds_store
                .as_ref()
                .map(|n| (n, WITHIN_CREDS_STORE))
        });
    if let Some((name, within)) = helper {
        ranked.push(Ranked {
            specificity: host_specificity,
            source,
            within,
            candidate: Candidate::Helper {
                file,
                name: name.clone(),
            },
        });
    }
}

fn helper_error(f: HelperFailure) -> CredentialError {
    CredentialError::Helper {
        program: f.program,
        server_url: f.server_url,
        problem: f.problem,
    }
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sections = self.sources.sections();
        let registries: Vec<&str> = sections.registries.iter().map(|e| e.key()).collect();
        let files = |kind: Kind| {
            self.sources
                .files
                .iter()
                .filter(|w| w.kind() == kind)
                .map(|w| w.path())
                .collect::<Vec<_>>()
        };
        f.debug_struct("CredentialStore")
            .field("registries", &registries)
            .field("docker_config", &files(Kind::DockerConfig))
            .field("kubernetes_secrets", &files(Kind::KubernetesSecret))
            .field("containers_auth", &files(Kind::ContainersAuth))
            .field("helper_timeout", &self.helpers.timeout())
            .finish()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
