//! The content store: verified content by digest on local disk, repository membership and tag
//! records, one fill per digest, and size-bounded LRU eviction.
//!
//! The pull engine talks to [`Store`]; the on-disk format is private to `disk.rs` and
//! `index.rs`, so another backend can take their place behind the same facade.

mod disk;
mod evict;
mod fill;
mod index;
pub mod maintenance;
mod reader;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

pub use disk::{CommitError, DiskLayout};
pub use fill::{Fill, FillSource, Joined, Resume};
pub use index::{Index, TagRecord, accept_key, now};
pub use reader::{FillState, Guard};

use crate::config::StoreConfig;
use crate::pull::ByteStream;
use crate::reference::Digest;

/// Counters of what the store did.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub fills: AtomicU64,
    pub resumes: AtomicU64,
    pub digest_mismatches: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub evictions: AtomicU64,
}

/// What `cache stats` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreSummary {
    pub path: String,
    pub items: usize,
    pub bytes: u64,
    pub max_bytes: u64,
    pub fills_in_flight: usize,
}

/// Committed content, open: its size is known and it cannot be truncated by eviction.
pub struct Stored {
    file: std::fs::File,
    pub size: u64,
    pin: Guard,
}

impl Stored {
    /// A stream of `[start, end)`.
    pub fn stream(self, start: u64, end: Option<u64>) -> ByteStream {
        reader::committed(self.file, self.size, start, end, Some(self.pin))
    }
}

pub struct Store {
    layout: DiskLayout,
    index: Index,
    lru: evict::Lru,
    fills: fill::Fills,
    config: StoreConfig,
    pub stats: StoreStats,
}

impl Store {
    /// Opens the store of `config.path`; `None` when no path is configured (no caching).
    pub fn open(config: &StoreConfig) -> io::Result<Option<Arc<Store>>> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let layout = DiskLayout::open(path)?;
        let index = Index::open(path)?;
        let lru = evict::Lru::default();
        let mut items = layout.scan()?;
        // Oldest first, so recency at start-up follows the files' access times.
        items.sort_by_key(|(_, _, when)| *when);
        for (digest, size, _) in &items {
            lru.insert(digest, *size);
        }
        let store = Arc::new(Store {
            layout,
            index,
            lru,
            fills: fill::Fills::default(),
            config: config.clone(),
            stats: StoreStats::default(),
        });
        store.evict_to(config.max_size.0);
        Ok(Some(store))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn layout(&self) -> &DiskLayout {
        &self.layout
    }

    /// Size of committed content.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        self.layout.size(digest)
    }

    /// A stored manifest's bytes and media type.
    pub fn manifest(&self, digest: &Digest) -> io::Result<Option<(Bytes, Option<String>)>> {
        let path = self.layout.path(digest);
        match std::fs::read(&path) {
            Ok(bytes) => {
                drop(self.lru.pin(digest));
                Ok(Some((Bytes::from(bytes), self.layout.media_type(digest))))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a verified manifest with its media type.
    pub fn put_manifest(&self, digest: &Digest, bytes: &[u8], media_type: &str) -> io::Result<()> {
        self.layout.put(digest, bytes, Some(media_type))?;
        self.committed(digest, bytes.len() as u64);
        Ok(())
    }

    /// Opens committed content, pinned against eviction until it is streamed and dropped.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<Stored>> {
        let Some(file) = self.layout.open_blob(digest)? else {
            return Ok(None);
        };
        let size = file.metadata()?.len();
        Ok(Some(Stored {
            file,
            size,
            pin: Box::new(self.lru.pin(digest)),
        }))
    }

    /// A pin for readers of a fill (effective once it commits).
    pub fn pin(&self, digest: &Digest) -> Guard {
        Box::new(self.lru.pin(digest))
    }

    fn committed(&self, digest: &Digest, size: u64) {
        self.lru.insert(digest, size);
        self.evict_to(self.config.max_size.0);
    }

    /// Evicts least-recently-used, unpinned content until the store fits `max` bytes.
    /// Returns what was removed (count, bytes).
    pub fn evict_to(&self, max: u64) -> (usize, u64) {
        let mut removed = (0, 0);
        for (digest, size) in self.lru.victims(max) {
            match self.layout.remove(&digest) {
                Ok(()) => {
                    self.lru.forget(&digest);
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    removed.0 += 1;
                    removed.1 += size;
                    tracing::debug!(%digest, size, "evicted");
                }
                Err(e) => tracing::warn!(%digest, error = %e, "eviction failed"),
            }
        }
        removed
    }

    pub fn summary(&self) -> StoreSummary {
        StoreSummary {
            path: self.layout.root().display().to_string(),
            items: self.lru.count(),
            bytes: self.lru.total(),
            max_bytes: self.config.max_size.0,
            fills_in_flight: self.fills.in_flight(),
        }
    }
}

impl Store {
    /// Whether the manifest a tag record names is stored.
    pub fn size_of_manifest(&self, record: &TagRecord) -> bool {
        record
            .digest
            .parse::<Digest>()
            .is_ok_and(|d| self.layout.size(&d).is_some())
    }
}
