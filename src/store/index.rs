//! What the store knows besides content: which repositories contain which digests
//! (repository scoping), and which digest a tag pointed to when it was last checked.
//!
//! ```text
//! <root>/repos/<registry>/<repository>/_digests/<algorithm>/<hex>      empty marker files
//! <root>/repos/<registry>/<repository>/_tags/<tag>/<accept-key>.json   a TagRecord
//! ```
//!
//! Repository path components never start with `_` (OCI name grammar), so `_digests` and
//! `_tags` cannot collide with a nested repository.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::reference::{Digest, RegistryHost, Repository};

/// A tag's digest as last confirmed upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Unix seconds of the last upstream confirmation.
    pub checked_at: u64,
}

impl TagRecord {
    pub fn age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(now().saturating_sub(self.checked_at))
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Membership facts kept in memory; the markers on disk are the truth.
const KNOWN_MEMBERS: u64 = 200_000;

#[derive(Debug, Clone)]
pub struct Index {
    root: PathBuf,
    /// Memberships recently seen or recorded, so the hot path does not stat a marker.
    known: moka::sync::Cache<String, ()>,
}

impl Index {
    pub fn open(root: &Path) -> io::Result<Self> {
        let root = root.join("repos");
        fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            known: moka::sync::Cache::new(KNOWN_MEMBERS),
        })
    }

    fn member_key(registry: &RegistryHost, repo: &Repository, digest: &Digest) -> String {
        format!("{registry}/{repo}@{digest}")
    }

    /// Whether `repo` is known to contain `digest` from memory alone; `None` when the disk
    /// must be asked ([`Index::is_member`], on a blocking thread).
    pub fn is_known_member(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        digest: &Digest,
    ) -> Option<bool> {
        self.known
            .contains_key(&Self::member_key(registry, repo, digest))
            .then_some(true)
    }

    fn repo_dir(&self, registry: &RegistryHost, repo: &Repository) -> PathBuf {
        self.root.join(registry.as_str()).join(repo.as_str())
    }

    fn marker(&self, registry: &RegistryHost, repo: &Repository, digest: &Digest) -> PathBuf {
        self.repo_dir(registry, repo)
            .join("_digests")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Records that `repo` contains `digest`.
    pub fn add_member(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        digest: &Digest,
    ) -> io::Result<()> {
        let key = Self::member_key(registry, repo, digest);
        if self.known.contains_key(&key) {
            return Ok(());
        }
        let path = self.marker(registry, repo, digest);
        if !path.exists() {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, b"")?;
        }
        self.known.insert(key, ());
        Ok(())
    }

    /// Whether `repo` contains `digest` (memory, then the marker on disk).
    pub fn is_member(&self, registry: &RegistryHost, repo: &Repository, digest: &Digest) -> bool {
        if self.is_known_member(registry, repo, digest).is_some() {
            return true;
        }
        let found = self.marker(registry, repo, digest).exists();
        if found {
            self.known
                .insert(Self::member_key(registry, repo, digest), ());
        }
        found
    }

    fn tag_path(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        accept_key: &str,
    ) -> PathBuf {
        self.repo_dir(registry, repo)
            .join("_tags")
            .join(tag)
            .join(format!("{accept_key}.json"))
    }

    pub fn get_tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        accept_key: &str,
    ) -> Option<TagRecord> {
        let bytes = fs::read(self.tag_path(registry, repo, tag, accept_key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a tag record atomically (temp file + rename).
    pub fn put_tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        accept_key: &str,
        record: &TagRecord,
    ) -> io::Result<()> {
        let path = self.tag_path(registry, repo, tag, accept_key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec(record).map_err(io::Error::other)?)?;
        fs::rename(tmp, path)
    }

    /// Every repository with at least one recorded digest or tag, as `registry/repository`.
    pub fn repositories(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(registries) = fs::read_dir(&self.root) else {
            return out;
        };
        for reg in registries.flatten() {
            let name = reg.file_name().to_string_lossy().into_owned();
            walk_repos(&reg.path(), &name, &mut out);
        }
        out.sort();
        out
    }
}

fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut is_repo = false;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') {
            is_repo = true;
        } else if e.path().is_dir() {
            walk_repos(&e.path(), &format!("{prefix}/{name}"), out);
        }
    }
    if is_repo {
        out.push(prefix.to_owned());
    }
}

/// A short stable key for a client's `Accept` list: requests whose lists would select a
/// different manifest keep separate tag records.
pub fn accept_key(accept: &[String]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for t in accept {
        h.update(t.trim().as_bytes());
        h.update(b"\n");
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let reg = RegistryHost::parse("r.example:5000").unwrap();
        let a = Repository::parse("team/app").unwrap();
        let b = Repository::parse("team/app/sub").unwrap();
        let d = Digest::sha256_of(b"x");
        assert!(!idx.is_member(&reg, &a, &d));
        idx.add_member(&reg, &a, &d).unwrap();
        assert!(idx.is_member(&reg, &a, &d));
        assert!(!idx.is_member(&reg, &b, &d));

        let key = accept_key(&["application/vnd.oci.image.index.v1+json".to_owned()]);
        assert_ne!(key, accept_key(&["*/*".to_owned()]));
        let rec = TagRecord {
            digest: d.to_string(),
            media_type: "m".into(),
            size: 1,
            checked_at: now(),
        };
        idx.put_tag(&reg, &b, "v1", &key, &rec).unwrap();
        assert_eq!(idx.get_tag(&reg, &b, "v1", &key), Some(rec));
        assert_eq!(idx.get_tag(&reg, &a, "v1", &key), None);
        assert_eq!(
            idx.repositories(),
            vec!["r.example:5000/team/app", "r.example:5000/team/app/sub"]
        );
    }
}
