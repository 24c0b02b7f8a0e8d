//! The content-addressed store on local disk.
//!
//! ```text
//! <root>/blobs/<algorithm>/<hh>/<hex>        committed content, verified, never modified
//! <root>/blobs/<algorithm>/<hh>/<hex>.type   media type of a manifest (absent for blobs)
//! <root>/tmp/<random>                        fills in progress; removed at start-up
//! ```
//!
//! A writer's bytes go to a temp file and reach their digest path only in
//! [`TempBlob::commit`], after the digest and size were checked, the data fsynced, and the
//! rename done. A crash at any point leaves either nothing or a complete, verified file, so
//! nothing unverified is ever visible (the store survives `kill -9`).

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reference::{Digest, DigestAlgorithm};

/// Where stored content lives on disk.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DiskLayout {
    /// Opens (creating) a store at `root` and removes leftover temp files.
    pub fn open(root: &Path) -> io::Result<Self> {
        let layout = Self {
            root: root.to_owned(),
        };
        fs::create_dir_all(layout.blobs_dir())?;
        let tmp = layout.tmp_dir();
        if tmp.exists() {
            let mut removed = 0u64;
            for entry in fs::read_dir(&tmp)? {
                let entry = entry?;
                // A fill of another live process (a server next to `prefetch`) is left alone.
                let owner = temp_owner(&entry.file_name().to_string_lossy());
                if owner.is_some_and(|pid| pid != std::process::id() && process_alive(pid)) {
                    continue;
                }
                if fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            if removed > 0 {
                tracing::info!(removed, "removed unfinished fills left by an earlier run");
            }
        }
        fs::create_dir_all(&tmp)?;
        Ok(layout)
    }

    /// The layout of a store at `root`, without touching the disk (for maintenance next to a
    /// running server).
    pub(super) fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates, syncs and removes a small file where fills write: fails if the store cannot
    /// take new content (read-only, out of inodes, gone).
    pub fn probe_write(&self) -> io::Result<()> {
        let path = self.tmp_dir().join(format!(
            "probe-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = fs::File::create(&path).and_then(|mut f| {
            std::io::Write::write_all(&mut f, b"ok")?;
            f.sync_data()
        });
        let _ = fs::remove_file(&path);
        result
    }

    /// The committed path of `digest`.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_dir()
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub(super) fn type_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.path(digest).into_os_string();
        p.push(".type");
        PathBuf::from(p)
    }

    /// Size of committed content, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Opens committed content for reading.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<File>> {
        match File::open(self.path(digest)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored media type of a manifest.
    pub fn media_type(&self, digest: &Digest) -> Option<String> {
        fs::read_to_string(self.type_path(digest))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// Creates a temp file for content expected to have `digest`.
    pub fn temp(&self, digest: &Digest) -> io::Result<TempBlob> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir().join(format!(
            "{}-{}-{}-{n}",
            digest.algorithm().as_str(),
            &digest.hex()[..16],
            std::process::id()
        ));
        let file = File::options()
            .create_new(true)
            .write(true)
            .read(true)
            .open(&path)?;
        Ok(TempBlob {
            path,
            file: Some(file),
            digest: digest.clone(),
            hasher: Some(digest.algorithm().hasher()),
            actual: None,
            written: 0,
            committed: false,
        })
    }

    /// Stores small content (a manifest) whole: verified, fsynced, renamed.
    pub fn put(&self, digest: &Digest, bytes: &[u8], media_type: Option<&str>) -> io::Result<()> {
        if self.size(digest).is_some() {
            // Stored as a blob first (a manifest asked for under /blobs/): record its type.
            if let Some(mt) = media_type
                && self.media_type(digest).is_none()
            {
                let tmp = self.tmp_dir().join(format!(
                    "{}-{}-{}-type",
                    digest.algorithm().as_str(),
                    &digest.hex()[..16],
                    std::process::id()
                ));
                fs::write(&tmp, mt)?;
                fs::rename(&tmp, self.type_path(digest))?;
            }
            return Ok(());
        }
        let mut t = self.temp(digest)?;
        t.write(bytes)?;
        t.commit(self, media_type).map_err(|e| match e {
            CommitError::Io(e) => e,
            mismatch => io::Error::new(io::ErrorKind::InvalidData, mismatch.to_string()),
        })
    }

    /// Removes committed content. Open readers keep their file (POSIX unlink semantics).
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        let _ = fs::remove_file(self.type_path(digest));
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every committed item: digest, size, last modification (used as last access at start).
    pub fn scan(&self) -> io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let dir = self.blobs_dir().join(algorithm.as_str());
            let Ok(prefixes) = fs::read_dir(&dir) else {
                continue;
            };
            for prefix in prefixes.flatten() {
                let Ok(files) = fs::read_dir(prefix.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let Ok(digest) = format!("{}:{name}", algorithm.as_str()).parse::<Digest>()
                    else {
                        continue;
                    };
                    if let Ok(meta) = f.metadata() {
                        let when = meta
                            .accessed()
                            .or_else(|_| meta.modified())
                            .unwrap_or(std::time::UNIX_EPOCH);
                        out.push((digest, meta.len(), when));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The process that wrote a temp file: names are `<algorithm>-<hex16>-<pid>-<n>[.type]`.
fn temp_owner(name: &str) -> Option<u32> {
    let name = name.strip_suffix(".type").unwrap_or(name);
    let mut parts = name.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Content on its way into the store. Dropped without [`TempBlob::commit`], it is removed.
pub struct TempBlob {
    path: PathBuf,
    file: Option<File>,
    digest: Digest,
    hasher: Option<crate::reference::Hasher>,
    /// The digest of what was written, once checked.
    actual: Option<Digest>,
    written: u64,
    committed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("content does not match {expected}: got {actual} ({size} bytes)")]
    Mismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl TempBlob {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes, hashing them.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("temp blob already finished"))?;
        file.write_all(bytes)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(bytes);
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Takes the hasher out, for a caller that hashes the same bytes, in the same order,
    /// elsewhere and hands the result to [`TempBlob::set_hashed`].
    pub fn take_hasher(&mut self) -> Option<crate::reference::Hasher> {
        self.hasher.take()
    }

    /// The digest of what was written, computed by whoever took the hasher.
    pub fn set_hashed(&mut self, actual: Digest) {
        self.actual = Some(actual);
    }

    /// Checks the digest of what was written (once; later calls repeat the verdict).
    pub fn verify(&mut self) -> Result<(), CommitError> {
        if let Some(hasher) = self.hasher.take() {
            self.actual = Some(hasher.finish());
        }
        match &self.actual {
            Some(actual) if *actual == self.digest => Ok(()),
            Some(actual) => Err(CommitError::Mismatch {
                expected: self.digest.clone(),
                actual: actual.clone(),
                size: self.written,
            }),
            None => Err(io::Error::other("temp blob already finished").into()),
        }
    }

    /// Checks the digest; on a match fsyncs, writes the media type (manifests), and renames
    /// the file to its digest path. On a mismatch the temp file is removed.
    pub fn commit(
        mut self,
        layout: &DiskLayout,
        media_type: Option<&str>,
    ) -> Result<(), CommitError> {
        self.verify()?;
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let dest = layout.path(&self.digest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        if let Some(mt) = media_type {
            let type_path = layout.type_path(&self.digest);
            let tmp = self.path.with_extension("type");
            fs::write(&tmp, mt)?;
            fs::rename(&tmp, &type_path)?;
        }
        fs::rename(&self.path, &dest)?;
        if let Some(parent) = dest.parent()
            && let Ok(dir) = File::open(parent)
        {
            let _ = dir.sync_all();
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_only_on_match_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");

        let mut t = layout.temp(&d).unwrap();
        t.write(b"hellO").unwrap();
        let tmp_path = t.path().to_owned();
        assert!(matches!(
            t.commit(&layout, None),
            Err(CommitError::Mismatch { .. })
        ));
        assert!(!tmp_path.exists(), "a mismatched temp file is removed");
        assert!(layout.size(&d).is_none());

        let mut t = layout.temp(&d).unwrap();
        t.write(b"hel").unwrap();
        drop(t);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        layout
            .put(&d, b"hello", Some("application/x-test"))
            .unwrap();
        assert_eq!(layout.size(&d), Some(5));
        assert_eq!(layout.media_type(&d).as_deref(), Some("application/x-test"));
        assert_eq!(layout.scan().unwrap().len(), 1);
        layout.remove(&d).unwrap();
        assert!(layout.size(&d).is_none());
    }

    #[test]
    fn temp_owners() {
        assert_eq!(temp_owner("sha256-0123456789abcdef-4242-7"), Some(4242));
        assert_eq!(
            temp_owner("sha256-0123456789abcdef-4242-7.type"),
            Some(4242)
        );
        assert_eq!(temp_owner("junk"), None);
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let t = layout.temp(&Digest::sha256_of(b"x")).unwrap();
        std::mem::forget(t);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        DiskLayout::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
