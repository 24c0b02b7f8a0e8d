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
use std::sync::Arc;

use super::config_entry::ConfigEntry;
use super::docker_config::AuthFile;
use super::helper::{self, HelperFailure, HelperRunner};
use super::watch::{Kind, WatchedFile};
use super::{Credential, CredentialError};
use crate::config::Config;
use crate::reference::{RegistryHost, Repository};

/// Every credential source stevedore knows, re-read as they change.
pub struct CredentialStore {
    sources: Arc<Sources>,
    helpers: HelperRunner,
}

/// What is consulted on the blocking pool: config entries and watched files.
struct Sources {
    registries: Vec<ConfigEntry>,
    /// Docker config files first, then Kubernetes secrets, each in configured order.
    files: Vec<WatchedFile>,
}

/// A source that may hold the credential, not yet asked.
#[derive(Debug)]
enum Candidate {
    /// `Sources::registries[i]`.
    Config(usize),
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
    pub fn from_config(config: &Config) -> Self {
        Self::build(config, None)
    }

    /// A store that runs credential helpers from `dir` instead of `PATH`.
    #[cfg(test)]
    pub(crate) fn with_helper_dir(config: &Config, dir: PathBuf) -> Self {
        Self::build(config, Some(dir))
    }

    fn build(config: &Config, helper_dir: Option<PathBuf>) -> Self {
        let registries = config
            .registries
            .iter()
            .filter_map(|(name, reg)| ConfigEntry::from_section(name, reg))
            .collect();
        let creds = &config.credentials;
        let docker = creds
            .docker_config
            .iter()
            .map(|p| WatchedFile::new(p.clone(), Kind::DockerConfig));
        let k8s = creds
            .kubernetes_secrets
            .iter()
            .map(|p| WatchedFile::new(p.clone(), Kind::KubernetesSecret));
        Self {
            sources: Arc::new(Sources {
                registries,
                files: docker.chain(k8s).collect(),
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
                Candidate::Config(i) => {
                    let sources = Arc::clone(&self.sources);
                    let i = *i;
                    tokio::task::spawn_blocking(move || sources.registries[i].read())
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
        let host_specificity = registry.as_str().len();
        let mut ranked: Vec<Ranked> = self
            .registries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.host() == registry)
            .map(|(i, _)| Ranked {
                specificity: host_specificity,
                source: 0,
                within: 0,
                candidate: Candidate::Config(i),
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

    /// Where a candidate comes from, for logs.
    fn describe(&self, candidate: &Candidate) -> String {
        let file = |i: usize| self.files.get(i).map(|f| f.path().display().to_string());
        match candidate {
            Candidate::Config(i) => self
                .registries
                .get(*i)
                .map_or_else(String::new, |e| e.key().to_owned()),
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
        let registries: Vec<&str> = self.sources.registries.iter().map(|e| e.key()).collect();
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
            .field("helper_timeout", &self.helpers.timeout())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine as _;

    use super::*;
    use crate::credentials::helper::write_test_helper;

    fn b64(user: &str, pass: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    }

    fn basic(user: &str, pass: &str) -> Credential {
        Credential::Basic {
            username: user.into(),
            password: pass.into(),
        }
    }

    /// A docker config / .dockerconfigjson with `auth` entries.
    fn auths(entries: &[(&str, &str, &str)]) -> String {
        let map: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(key, user, pass)| {
                (
                    (*key).to_owned(),
                    serde_json::json!({ "auth": b64(user, pass) }),
                )
            })
            .collect();
        serde_json::json!({ "auths": map }).to_string()
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn toml_paths(paths: &[&Path]) -> String {
        let quoted: Vec<String> = paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    fn config(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    fn store(text: &str) -> CredentialStore {
        CredentialStore::from_config(&config(text))
    }

    async fn get(store: &CredentialStore, host: &str, repo: &str) -> Option<Credential> {
        let host = RegistryHost::parse(host).unwrap();
        let repo = Repository::parse(repo).unwrap();
        store.lookup(&host, &repo).await.unwrap()
    }

    #[tokio::test]
    async fn the_longest_matching_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (docker, k8s) = (dir.path().join("config.json"), dir.path().join("k8s.json"));
        write(
            &docker,
            &auths(&[
                ("r.example/team", "docker", "p1"),
                ("r.example/te", "short", "p0"),
            ]),
        );
        write(&k8s, &auths(&[("r.example/team/app", "k8s", "p2")]));
        let s = store(&format!(
            "[registries.\"r.example\"]\nusername = \"config\"\npassword = \"p3\"\n\
             [credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
            toml_paths(&[&docker]),
            toml_paths(&[&k8s])
        ));
        assert_eq!(
            get(&s, "r.example", "team/app").await,
            Some(basic("k8s", "p2"))
        );
        assert_eq!(
            get(&s, "r.example", "team/app/sub").await,
            Some(basic("k8s", "p2"))
        );
        assert_eq!(
            get(&s, "r.example", "team/other").await,
            Some(basic("docker", "p1"))
        );
        assert_eq!(
            get(&s, "r.example", "team").await,
            Some(basic("docker", "p1"))
        );
        // `r.example/te` and `r.example/team` must not match `teamx`: only the host key does.
        assert_eq!(
            get(&s, "r.example", "teamx/app").await,
            Some(basic("config", "p3"))
        );
        assert_eq!(
            get(&s, "r.example", "te/app").await,
            Some(basic("short", "p0"))
        );
        assert_eq!(get(&s, "other.example", "team/app").await, None);
    }

    #[tokio::test]
    async fn ties_go_to_config_then_docker_configs_then_kubernetes_secrets_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = dir.path().join("d1.json");
        let d2 = dir.path().join("d2.json");
        let k1 = dir.path().join("k1.json");
        let k2 = dir.path().join("k2.json");
        write(
            &d1,
            &auths(&[("b.example", "d1", "p"), ("c.example/ns", "d1", "p")]),
        );
        write(
            &d2,
            &auths(&[
                ("a.example", "d2", "p"),
                ("b.example", "d2", "p"),
                ("c.example/ns", "d2", "p"),
            ]),
        );
        write(
            &k1,
            &auths(&[("a.example", "k1", "p"), ("d.example", "k1", "p")]),
        );
        write(
            &k2,
            &auths(&[("d.example", "k2", "p"), ("e.example", "k2", "p")]),
        );
        let s = store(&format!(
            "[registries.\"A.example\"]\nusername = \"config\"\npassword = \"p\"\n\
             [credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
            toml_paths(&[&d1, &d2]),
            toml_paths(&[&k1, &k2])
        ));
        assert_eq!(get(&s, "a.example", "x").await, Some(basic("config", "p")));
        assert_eq!(get(&s, "b.example", "x").await, Some(basic("d1", "p")));
        assert_eq!(get(&s, "c.example", "ns/x").await, Some(basic("d1", "p")));
        assert_eq!(get(&s, "d.example", "x").await, Some(basic("k1", "p")));
        assert_eq!(get(&s, "e.example", "x").await, Some(basic("k2", "p")));
    }

    #[tokio::test]
    async fn docker_hub_legacy_keys_serve_docker_io() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        write(
            &docker,
            &auths(&[
                ("https://index.docker.io/v1/", "legacy", "p"),
                ("docker.io/myorg", "org", "p"),
            ]),
        );
        let s = store(&format!(
            "[credentials]\ndocker-config = {}\n",
            toml_paths(&[&docker])
        ));
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                get(&s, host, "library/alpine").await,
                Some(basic("legacy", "p"))
            );
            assert_eq!(get(&s, host, "myorg/app").await, Some(basic("org", "p")));
        }
    }

    #[tokio::test]
    async fn a_canonical_key_beats_an_alias_of_it_in_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        write(
            &docker,
            &auths(&[
                ("https://index.docker.io/v1/", "legacy", "p"),
                ("docker.io", "modern", "p"),
            ]),
        );
        let s = store(&format!(
            "[credentials]\ndocker-config = {}\n",
            toml_paths(&[&docker])
        ));
        assert_eq!(
            get(&s, "docker.io", "library/alpine").await,
            Some(basic("modern", "p"))
        );
    }

    #[tokio::test]
    async fn token_entries_are_returned_as_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        write(
            &docker,
            r#"{"auths": {"id.example": {"username": "me", "identitytoken": "refresh"},
                          "rt.example": {"registrytoken": "bearer"}}}"#,
        );
        let s = store(&format!(
            "[credentials]\ndocker-config = {}\n",
            toml_paths(&[&docker])
        ));
        assert_eq!(
            get(&s, "id.example", "x").await,
            Some(Credential::IdentityToken {
                username: Some("me".into()),
                token: "refresh".into()
            })
        );
        assert_eq!(
            get(&s, "rt.example", "x").await,
            Some(Credential::RegistryToken("bearer".into()))
        );
    }

    #[tokio::test]
    async fn a_rotated_docker_config_takes_effect_on_the_next_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        write(&docker, &auths(&[("r.example", "u", "pass-one")]));
        let s = store(&format!(
            "[credentials]\ndocker-config = {}\n",
            toml_paths(&[&docker])
        ));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-one"))
        );
        // In place, same size, right away.
        write(&docker, &auths(&[("r.example", "u", "pass-two")]));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-two"))
        );
        // Atomically replaced.
        let tmp = dir.path().join("config.json.tmp");
        write(&tmp, &auths(&[("r.example", "u", "pass-three")]));
        std::fs::rename(&tmp, &docker).unwrap();
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-three"))
        );
    }

    /// The layout of a mounted secret: `.dockerconfigjson -> ..data/.dockerconfigjson`,
    /// `..data -> ..<timestamp>`; an update writes a new timestamped directory and renames a
    /// new `..data` symlink over the old one.
    fn mount_secret_version(secret: &Path, version: &str, content: &str) {
        use std::os::unix::fs::symlink;
        let versioned = secret.join(format!("..{version}"));
        std::fs::create_dir(&versioned).unwrap();
        write(&versioned.join(".dockerconfigjson"), content);
        let tmp = secret.join("..data_tmp");
        symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, secret.join("..data")).unwrap();
        let link = secret.join(".dockerconfigjson");
        if std::fs::symlink_metadata(&link).is_err() {
            symlink("..data/.dockerconfigjson", &link).unwrap();
        }
    }

    #[tokio::test]
    async fn a_kubernetes_secret_update_by_symlink_swap_takes_effect() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pull-secret");
        std::fs::create_dir(&secret).unwrap();
        mount_secret_version(
            &secret,
            "2024_01_01",
            &auths(&[("r.example", "u", "pass-one")]),
        );
        let s = store(&format!(
            "[credentials]\nkubernetes-secrets = {}\n",
            toml_paths(&[&secret])
        ));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-one"))
        );
        mount_secret_version(
            &secret,
            "2024_01_02",
            &auths(&[("r.example", "u", "pass-two")]),
        );
        std::fs::remove_dir_all(secret.join("..2024_01_01")).unwrap();
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-two"))
        );
    }

    #[tokio::test]
    async fn a_broken_file_keeps_its_last_good_credentials_and_others_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let broken = dir.path().join("broken.json");
        let k8s = dir.path().join("k8s.json");
        write(&docker, &auths(&[("r.example", "u", "pass-one")]));
        write(&broken, "{\"auths\": {\"s.example\": {\"auth\": \"c2VjcmV0");
        write(&k8s, &auths(&[("s.example", "k8s", "p")]));
        let s = store(&format!(
            "[credentials]\ndocker-config = {}\nkubernetes-secrets = {}\n",
            toml_paths(&[&docker, &broken, Path::new("/nonexistent/config.json")]),
            toml_paths(&[&k8s])
        ));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-one"))
        );
        assert_eq!(get(&s, "s.example", "x").await, Some(basic("k8s", "p")));

        write(&docker, "{\"auths\": {\"r.exa");
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-one"))
        );
        write(&docker, &auths(&[("r.example", "u", "pass-two")]));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-two"))
        );
    }

    #[tokio::test]
    async fn config_secrets_are_reread_and_their_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        write(&pw, "pass-one\n");
        let s = store(&format!(
            "[registries.\"r.example\"]\nusername = \"u\"\npassword = {{ file = {:?} }}\n",
            pw.display().to_string()
        ));
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-one"))
        );
        write(&pw, "pass-two\n");
        assert_eq!(
            get(&s, "r.example", "x").await,
            Some(basic("u", "pass-two"))
        );
        std::fs::remove_file(&pw).unwrap();
        let host = RegistryHost::parse("r.example").unwrap();
        let repo = Repository::parse("x").unwrap();
        let e = s.lookup(&host, &repo).await.unwrap_err().to_string();
        assert!(
            e.starts_with("registries.\"r.example\".password (file "),
            "{e}"
        );
        assert!(!e.contains("pass-"), "{e}");
    }

    fn helper_store(dir: &Path, docker_json: &str, timeout: &str) -> CredentialStore {
        let docker = dir.join("config.json");
        write(&docker, docker_json);
        let cfg = config(&format!(
            "[credentials]\ndocker-config = {}\nhelper-timeout = {timeout:?}\n",
            toml_paths(&[&docker])
        ));
        CredentialStore::with_helper_dir(&cfg, dir.to_owned())
    }

    const ECHO_HELPER: &str = r#"host=$(cat)
printf '{"ServerURL":"%s","Username":"%s","Secret":"s3cret-from-helper"}' "$host" "$host""#;

    #[tokio::test]
    async fn cred_helpers_and_creds_store_run_helpers() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(dir.path(), "echo", ECHO_HELPER);
        write_test_helper(
            dir.path(),
            "nothing",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let s = helper_store(
            dir.path(),
            &format!(
                r#"{{"credsStore": "echo",
                    "credHelpers": {{"gcr.io": "echo", "none.example": "nothing",
                                     "fallback.example": "nothing"}},
                    "auths": {{"r.example": {{"auth": "{}"}},
                               "fallback.example/ns": {{"auth": "{}"}},
                               "fallback.example": {{"auth": "{}"}}}}}}"#,
                b64("static", "p"),
                b64("ns", "p"),
                b64("host", "p")
            ),
            "10s",
        );
        let user = |c: Option<Credential>| match c {
            Some(Credential::Basic { username, .. }) => Some(username),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            user(get(&s, "docker.io", "library/alpine").await).as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert_eq!(
            user(get(&s, "gcr.io", "p/app").await).as_deref(),
            Some("gcr.io")
        );
        assert_eq!(
            user(get(&s, "q.example", "app").await).as_deref(),
            Some("q.example")
        );
        // An auths entry beats credsStore for its host.
        assert_eq!(
            user(get(&s, "r.example", "app").await).as_deref(),
            Some("static")
        );
        // credHelpers replaces credsStore for its host; "not found" means no match, so the
        // next candidate is asked.
        assert_eq!(get(&s, "none.example", "app").await, None);
        assert_eq!(
            user(get(&s, "fallback.example", "app").await).as_deref(),
            Some("host")
        );
        // A longer auths key beats the host's helper.
        assert_eq!(
            user(get(&s, "fallback.example", "ns/app").await).as_deref(),
            Some("ns")
        );
    }

    #[tokio::test]
    async fn helper_lookups_through_the_store_are_shared_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("calls");
        write_test_helper(
            dir.path(),
            "counted",
            &format!(
                "echo call >> '{}'\nsleep 0.3\n{ECHO_HELPER}",
                counter.display()
            ),
        );
        let s = helper_store(dir.path(), r#"{"credsStore": "counted"}"#, "10s");
        let (host, repo) = (
            RegistryHost::parse("r.example").unwrap(),
            Repository::parse("app").unwrap(),
        );
        let lookups = (0..50).map(|_| s.lookup(&host, &repo));
        for got in futures_util::future::join_all(lookups).await {
            assert!(got.unwrap().is_some());
        }
        let calls = std::fs::read_to_string(&counter).unwrap();
        assert_eq!(calls.lines().count(), 1, "{calls}");
    }

    #[tokio::test]
    async fn helper_failures_are_errors_that_name_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        write_test_helper(dir.path(), "slow", "exec sleep 30");
        let s = helper_store(dir.path(), r#"{"credsStore": "slow"}"#, "300ms");
        let host = RegistryHost::parse("r.example").unwrap();
        let repo = Repository::parse("app").unwrap();
        let e = s.lookup(&host, &repo).await.unwrap_err().to_string();
        assert!(
            e.starts_with("credential helper docker-credential-slow for r.example: no answer"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn debug_output_and_errors_hold_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        write(&docker, &auths(&[("r.example", "u", "file-secret")]));
        let broken = dir.path().join("broken.json");
        write(
            &broken,
            "{\"auths\": {\"x.example\": {\"password\": 8675309, \"auth\": \"trunc",
        );
        write_test_helper(dir.path(), "leaky", "echo 'helper-secret'; exit 2");
        let helper_cfg = dir.path().join("helper.json");
        write(&helper_cfg, r#"{"credsStore": "leaky"}"#);
        let inline_auth = b64("u", "inline-auth-secret");
        let cfg = config(&format!(
            "[registries.\"a.example\"]\nusername = \"u\"\npassword = \"inline-secret\"\n\
             [registries.\"b.example\"]\nauth = {inline_auth:?}\n\
             [registries.\"c.example\"]\nregistrytoken = \"inline-token-secret\"\n\
             [credentials]\ndocker-config = {}\n",
            toml_paths(&[&docker, &broken, &helper_cfg])
        ));
        let s = CredentialStore::with_helper_dir(&cfg, dir.path().to_owned());
        for host in ["a.example", "b.example", "c.example", "r.example"] {
            assert!(get(&s, host, "x").await.is_some());
        }
        let debug = format!("{s:?}");
        assert!(debug.contains("registries.\\\"a.example\\\""), "{debug}");
        assert!(debug.contains("config.json"), "{debug}");

        let problem = s.sources.files[1].snapshot().problem;
        let host = RegistryHost::parse("h.example").unwrap();
        let repo = Repository::parse("x").unwrap();
        let helper_error = s.lookup(&host, &repo).await.unwrap_err();
        let texts = [
            debug,
            format!("{problem:?}"),
            helper_error.to_string(),
            format!("{helper_error:?}"),
        ];
        let file_auth = b64("u", "file-secret");
        for text in texts {
            for secret in [
                "inline-secret",
                "inline-token-secret",
                "file-secret",
                "helper-secret",
                "8675309",
                "trunc",
                "inline-auth-secret",
                &inline_auth,
                &file_auth,
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}
