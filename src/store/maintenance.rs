//! Maintenance of a store directory from outside the server: listing, re-hashing, removing
//! and size-bounded eviction (the `stevedore cache` commands).
//!
//! [`StoreDir`] only reads until asked to remove something, and never touches `tmp/`: a
//! server may be running on the same directory, and its fills in progress live there
//! ([`DiskLayout::open`](super::DiskLayout::open) would remove them). The on-disk format is
//! the one `disk.rs` documents: `blobs/<algorithm>/<hh>/<hex>` plus `<hex>.type` for
//! manifests.

use std::fs::{self, File};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{DiskLayout, Index};
use crate::reference::{Digest, DigestAlgorithm};

/// One committed item of a store.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub digest: Digest,
    pub size: u64,
    /// Set for manifests (the media type they were served with).
    pub media_type: Option<String>,
    /// Last access (or modification, where access times are not kept).
    pub last_use: SystemTime,
    pub path: PathBuf,
}

/// What a listing of `blobs/` found besides items.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Committed items, in no particular order.
    pub items: Vec<StoredItem>,
    /// Files under `blobs/` that are neither content nor a media type record.
    pub unrecognised: Vec<PathBuf>,
}

/// What [`StoreDir::evict_to`] removed.
#[derive(Debug, Clone, Default)]
pub struct Evicted {
    pub removed: Vec<StoredItem>,
    pub bytes: u64,
    /// Items that could not be removed, with the reason.
    pub failed: Vec<(StoredItem, String)>,
}

/// A store directory, opened for maintenance without side effects.
#[derive(Debug, Clone)]
pub struct StoreDir {
    root: PathBuf,
}

impl StoreDir {
    /// Opens an existing store directory; fails with `NotFound` when there is none.
    pub fn open(root: &Path) -> io::Result<Self> {
        if !fs::metadata(root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The committed path of `digest`.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        DiskLayout::at(&self.root).path(digest)
    }

    fn type_path(&self, digest: &Digest) -> PathBuf {
        DiskLayout::at(&self.root).type_path(digest)
    }

    /// Every committed item, and any file that does not belong under `blobs/`.
    pub fn list(&self) -> io::Result<Listing> {
        let mut listing = Listing::default();
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let dir = self.root.join("blobs").join(algorithm.as_str());
            let prefixes = match fs::read_dir(&dir) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for prefix in prefixes {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    listing.unrecognised.push(prefix.path());
                    continue;
                }
                for file in fs::read_dir(prefix.path())? {
                    let file = file?;
                    self.classify(algorithm, &file, &mut listing);
                }
            }
        }
        Ok(listing)
    }

    fn classify(&self, algorithm: DigestAlgorithm, file: &fs::DirEntry, listing: &mut Listing) {
        let path = file.path();
        let name = file.file_name().to_string_lossy().into_owned();
        let (hex, is_type) = match name.strip_suffix(".type") {
            Some(hex) => (hex, true),
            None => (name.as_str(), false),
        };
        let digest = format!("{}:{hex}", algorithm.as_str()).parse::<Digest>();
        let Ok(digest) = digest else {
            listing.unrecognised.push(path);
            return;
        };
        if is_type {
            return;
        }
        // Vanished meanwhile (a server evicted it): not an item any more.
        let Ok(meta) = file.metadata() else { return };
        if !meta.is_file() {
            listing.unrecognised.push(path);
            return;
        }
        let media_type = fs::read_to_string(self.type_path(&digest))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        listing.items.push(StoredItem {
            last_use: meta
                .accessed()
                .or_else(|_| meta.modified())
                .unwrap_or(std::time::UNIX_EPOCH),
            size: meta.len(),
            media_type,
            digest,
            path,
        });
    }

    /// Files in `tmp/`: fills in progress, or left by a run that was interrupted (a server
    /// removes those when it starts).
    pub fn temp_files(&self) -> io::Result<usize> {
        match fs::read_dir(self.root.join("tmp")) {
            Ok(entries) => Ok(entries.count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The repository index (`registry/repository` names), if the store has one.
    pub fn repositories(&self) -> Vec<String> {
        if !self.root.join("repos").is_dir() {
            return Vec::new();
        }
        Index::open(&self.root)
            .map(|i| i.repositories())
            .unwrap_or_default()
    }

    /// Removes an item and its media type record. Readers that have it open keep reading.
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        let _ = fs::remove_file(self.type_path(digest));
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes least-recently-used items (by file access time) until the items total at most
    /// `max` bytes.
    pub fn evict_to(&self, max: u64) -> io::Result<Evicted> {
        let mut items = self.list()?.items;
        let mut total: u64 = items.iter().map(|i| i.size).sum();
        items.sort_by_key(|i| i.last_use);
        let mut out = Evicted::default();
        for item in items {
            if total <= max {
                break;
            }
            match self.remove(&item.digest) {
                Ok(()) => {
                    total -= item.size;
                    out.bytes += item.size;
                    out.removed.push(item);
                }
                Err(e) => out.failed.push((item, e.to_string())),
            }
        }
        Ok(out)
    }
}

/// The digest of a file's content in `algorithm`, read in 1 MiB pieces. Blocking: call it
/// from a blocking thread.
pub fn rehash(path: &Path, algorithm: DigestAlgorithm) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DiskLayout;

    #[test]
    fn list_rehash_and_evict() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout::open(dir.path()).unwrap();
        let a = Digest::sha256_of(b"aaaa");
        let b = Digest::sha256_of(b"bbbbbbbb");
        layout.put(&a, b"aaaa", Some("application/x-a")).unwrap();
        layout.put(&b, b"bbbbbbbb", None).unwrap();
        fs::write(dir.path().join("blobs/sha256/stray"), b"?").unwrap();
        let t = layout.temp(&a).unwrap();

        let store = StoreDir::open(dir.path()).unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.items.len(), 2);
        assert_eq!(listing.unrecognised.len(), 1);
        let item_a = listing.items.iter().find(|i| i.digest == a).unwrap();
        assert_eq!(item_a.media_type.as_deref(), Some("application/x-a"));
        assert_eq!(rehash(&item_a.path, a.algorithm()).unwrap(), a);
        assert_eq!(store.temp_files().unwrap(), 1);

        let evicted = store.evict_to(8).unwrap();
        assert_eq!(evicted.removed.len(), 1);
        assert_eq!(store.list().unwrap().items.len(), 1);
        assert_eq!(store.evict_to(0).unwrap().bytes, 8 + 4 - evicted.bytes);
        assert!(store.list().unwrap().items.is_empty());
        assert_eq!(store.temp_files().unwrap(), 1, "tmp/ is never touched");
        drop(t);
        assert!(StoreDir::open(&dir.path().join("nope")).is_err());
    }
}
