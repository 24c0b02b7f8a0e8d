//! Credential files that are re-read when they change: docker config files and Kubernetes
//! secrets mounted as files.
//!
//! Every lookup stats the file (following symlinks, so the `..data` symlink swap Kubernetes
//! uses to update a mounted secret is seen as a new inode) and re-parses only when the
//! metadata changed. A file that does not parse keeps serving its last good content: rotation
//! must never break pulls because a writer was caught halfway.

use std::fs::Metadata;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sha2::Digest as _;

use super::CredentialError;
use super::docker_config::{self, AuthFile, FormatError, Helpers};

/// Larger files are refused: credential files are a few KiB.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A file modified this shortly before it was read may be modified again without its
/// metadata changing (timestamps are coarse and a rewrite can keep the size), so its content
/// is compared again until it is older than this.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The file name inside a mounted `kubernetes.io/dockerconfigjson` secret.
pub(super) const DOCKERCONFIGJSON: &str = ".dockerconfigjson";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A docker `config.json` / containers `auth.json` file.
    DockerConfig,
    /// A `.dockerconfigjson` file, or a directory holding one.
    KubernetesSecret,
    /// A `containers-auth.json` as Confidential Containers give guests: the docker config
    /// format without credential helpers.
    ContainersAuth,
}

pub(super) struct WatchedFile {
    path: PathBuf,
    kind: Kind,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last content that parsed.
    good: Option<Arc<AuthFile>>,
    /// The version last read, good or not.
    seen: Option<Seen>,
    /// The problem last reported, so each is logged once rather than on every lookup.
    reported: Option<String>,
}

struct Seen {
    stamp: Stamp,
    digest: [u8; 32],
    read_at: SystemTime,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

enum Refresh {
    /// The content is the one seen last time (good or not).
    Unchanged,
    /// New content parsed.
    Loaded,
}

/// The usable content of a file now, and a problem to report if a new one appeared.
pub(super) struct Snapshot {
    pub(super) file: Option<Arc<AuthFile>>,
    pub(super) problem: Option<CredentialError>,
}

impl WatchedFile {
    pub(super) fn new(path: PathBuf, kind: Kind) -> Self {
        Self {
            path,
            kind,
            state: Mutex::new(State::default()),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn kind(&self) -> Kind {
        self.kind
    }

    /// Brings the file up to date (a stat, and a read and parse when it changed). Blocking.
    pub(super) fn snapshot(&self) -> Snapshot {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let problem = match self.refresh(&mut state) {
            Ok(Refresh::Unchanged) => None,
            Ok(Refresh::Loaded) => {
                state.reported = None;
                None
            }
            Err(problem) => {
                let message = problem.to_string();
                let new = state.reported.as_deref() != Some(message.as_str());
                state.reported = Some(message);
                new.then_some(problem)
            }
        };
        Snapshot {
            file: state.good.clone(),
            problem,
        }
    }

    fn refresh(&self, state: &mut State) -> Result<Refresh, CredentialError> {
        let located = self.locate().and_then(|(path, meta)| {
            let stamp = Stamp::of(&meta);
            if let Some(seen) = &state.seen
                && seen.stamp == stamp
                && !is_racy(seen)
            {
                return Ok(None);
            }
            read_limited(&path, &meta).map(|bytes| Some((path, stamp, bytes)))
        });
        let (path, stamp, bytes) = match located {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(Refresh::Unchanged),
            Err(e) => {
                // Read again once readable; a deleted file takes its credentials with it.
                state.seen = None;
                if is_not_found(&e) {
                    state.good = None;
                }
                return Err(e);
            }
        };
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let unchanged = state.seen.as_ref().is_some_and(|s| s.digest == digest);
        state.seen = Some(Seen {
            stamp,
            digest,
            read_at: SystemTime::now(),
        });
        if unchanged {
            return Ok(Refresh::Unchanged);
        }
        let helpers = match self.kind {
            Kind::DockerConfig => Helpers::Allowed,
            Kind::KubernetesSecret | Kind::ContainersAuth => Helpers::Ignored,
        };
        match docker_config::parse(&path, &bytes, helpers) {
            Ok(parsed) => {
                state.good = Some(Arc::new(parsed));
                Ok(Refresh::Loaded)
            }
            Err(e) => Err(format_error(path, e)),
        }
    }

    /// The file to read, and its metadata (symlinks followed). For a Kubernetes secret the
    /// configured path may be the mount directory.
    fn locate(&self) -> Result<(PathBuf, Metadata), CredentialError> {
        let stat = |path: &Path| {
            std::fs::metadata(path).map_err(|source| CredentialError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let meta = stat(&self.path)?;
        if self.kind == Kind::KubernetesSecret && meta.is_dir() {
            let file = self.path.join(DOCKERCONFIGJSON);
            let meta = stat(&file)?;
            return Ok((file, meta));
        }
        Ok((self.path.clone(), meta))
    }
}

impl std::fmt::Debug for WatchedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedFile")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &CredentialError) -> bool {
    matches!(e, CredentialError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

fn is_racy(seen: &Seen) -> bool {
    match seen.stamp.modified {
        Some(modified) => seen
            .read_at
            .duration_since(modified)
            .map_or(true, |age| age < RACY_WINDOW),
        None => true,
    }
}

fn read_limited(path: &Path, meta: &Metadata) -> Result<Vec<u8>, CredentialError> {
    let too_large = || CredentialError::TooLarge {
        path: path.to_owned(),
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let read = || -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read().map_err(|source| CredentialError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

fn format_error(path: PathBuf, e: FormatError) -> CredentialError {
    match e {
        FormatError::Json(detail) => CredentialError::Json { path, detail },
        FormatError::Shape(detail) => CredentialError::Shape { path, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"auths": {"r.example": {"auth": "dTpwYXNzLW9uZQ=="}}}"#; // u:pass-one
    const V2: &str = r#"{"auths": {"r.example": {"auth": "dTpwYXNzLXR3bw=="}}}"#; // u:pass-two

    fn password(file: &Option<Arc<AuthFile>>) -> Option<String> {
        let file = file.as_ref()?;
        match &file.auths.first()?.credential {
            super::super::Credential::Basic { password, .. } => Some(password.expose().to_owned()),
            _ => None,
        }
    }

    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn unchanged_files_are_not_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, V1).unwrap();
        age(&path);
        let watched = WatchedFile::new(path.clone(), Kind::DockerConfig);
        let first = watched.snapshot().file.unwrap();
        let second = watched.snapshot().file.unwrap();
        assert!(Arc::ptr_eq(&first, &second));

        // Rewritten in place with the same size and the old mtime: ctime still tells.
        std::fs::write(&path, V2).unwrap();
        age(&path);
        assert_eq!(
            password(&watched.snapshot().file).as_deref(),
            Some("pass-two")
        );
    }

    #[test]
    fn quick_same_size_rewrites_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let watched = WatchedFile::new(path.clone(), Kind::DockerConfig);
        std::fs::write(&path, V1).unwrap();
        assert_eq!(
            password(&watched.snapshot().file).as_deref(),
            Some("pass-one")
        );
        std::fs::write(&path, V2).unwrap();
        assert_eq!(
            password(&watched.snapshot().file).as_deref(),
            Some("pass-two")
        );
    }

    #[test]
    fn broken_content_keeps_the_last_good_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let watched = WatchedFile::new(path.clone(), Kind::DockerConfig);
        std::fs::write(&path, V1).unwrap();
        assert!(watched.snapshot().problem.is_none());

        // Half-written: cut inside the secret.
        std::fs::write(&path, &V1[..40]).unwrap();
        let snap = watched.snapshot();
        assert_eq!(password(&snap.file).as_deref(), Some("pass-one"));
        let message = snap.problem.unwrap().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
        assert!(!message.contains("dTpw"), "{message}");
        let again = watched.snapshot();
        assert!(again.problem.is_none());
        assert_eq!(password(&again.file).as_deref(), Some("pass-one"));

        std::fs::write(&path, V2).unwrap();
        let fixed = watched.snapshot();
        assert!(fixed.problem.is_none());
        assert_eq!(password(&fixed.file).as_deref(), Some("pass-two"));
    }

    #[test]
    fn deleted_files_take_their_credentials_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let watched = WatchedFile::new(path.clone(), Kind::DockerConfig);
        let missing = watched.snapshot();
        assert!(missing.file.is_none());
        assert!(matches!(
            missing.problem,
            Some(CredentialError::Read { .. })
        ));
        assert!(watched.snapshot().problem.is_none(), "reported once");

        std::fs::write(&path, V1).unwrap();
        assert_eq!(
            password(&watched.snapshot().file).as_deref(),
            Some("pass-one")
        );
        std::fs::remove_file(&path).unwrap();
        let gone = watched.snapshot();
        assert!(gone.file.is_none());
        assert!(gone.problem.is_some());
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let snap = WatchedFile::new(path, Kind::DockerConfig).snapshot();
        assert!(matches!(
            snap.problem,
            Some(CredentialError::TooLarge { .. })
        ));
    }

    #[test]
    fn kubernetes_secret_directories_hold_dockerconfigjson() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DOCKERCONFIGJSON), V1).unwrap();
        let by_dir = WatchedFile::new(dir.path().to_owned(), Kind::KubernetesSecret);
        assert_eq!(
            password(&by_dir.snapshot().file).as_deref(),
            Some("pass-one")
        );
        let by_file = WatchedFile::new(dir.path().join(DOCKERCONFIGJSON), Kind::KubernetesSecret);
        assert_eq!(
            password(&by_file.snapshot().file).as_deref(),
            Some("pass-one")
        );
    }
}
