//! The content store: verified content by digest on local disk, repository membership and tag
//! records, fills of missing blobs, and size-bounded LRU eviction.
//!
//! The pull engine talks to [`Store`]: the local directory (its format private to `disk.rs`
//! and `index.rs`), fills, fan-out and eviction, in front of a [`Backend`] (`backend.rs`)
//! that keeps content beyond the local directory when `[store] type` says so: nothing for
//! `disk`, a bucket shared by replicas for `s3` (`remote.rs`). Every method the engine calls
//! from async code is either in memory or runs its file I/O on a blocking thread.

mod backend;
mod disk;
mod evict;
mod fill;
mod index;
pub mod maintenance;
mod reader;
mod remote;
mod space;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

pub use backend::Backend;
pub use disk::{CommitError, DiskLayout};
pub use fill::{Fill, FillPermit, FillSource, PassReason, Resume};
pub use index::{Index, TagRecord, accept_key, now};
pub use reader::{FillFailure, FillState, Guard};

use crate::body::{ByteStream, ChunkLimit};
use crate::config::StoreConfig;
use crate::reference::{Digest, RegistryHost, Repository};

/// Bytes of manifests kept in memory (they are small and asked for often).
const MANIFEST_MEMORY: u64 = 64 * 1024 * 1024;

/// Counters of what the store did.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub fills: AtomicU64,
    pub resumes: AtomicU64,
    pub digest_mismatches: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub evictions: AtomicU64,
    /// Misses streamed without being stored (store full, low on space, blob too large).
    pub pass_throughs: AtomicU64,
}

/// What `cache stats` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreSummary {
    pub path: String,
    pub items: usize,
    pub bytes: u64,
    pub reserved_bytes: u64,
    pub max_bytes: u64,
    pub fills_in_flight: usize,
    pub free_bytes: u64,
    pub low_space: bool,
}

/// Committed content, open: its size is known and it cannot be truncated by eviction.
pub struct Stored {
    file: std::fs::File,
    pub size: u64,
    pin: Guard,
}

impl Stored {
    /// A stream of `[start, end)`, its chunks sized by `chunk`.
    pub fn stream(self, start: u64, end: Option<u64>, chunk: ChunkLimit) -> ByteStream {
        reader::committed(self.file, self.size, start, end, Some(self.pin), chunk)
    }
}

/// A stored manifest.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
}

pub struct Store {
    layout: DiskLayout,
    index: Index,
    lru: evict::Lru,
    fill_slots: Arc<tokio::sync::Semaphore>,
    manifests: moka::sync::Cache<Digest, StoredManifest>,
    space: space::Space,
    config: StoreConfig,
    pub stats: StoreStats,
    /// Cancelled when the process shuts down: fills still running then are aborted, their
    /// temp files removed.
    stopping: tokio_util::sync::CancellationToken,
    /// What keeps content beyond the local directory (`[store] type`).
    backend: Arc<dyn Backend>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Wakes the eviction task so that it sees the store is gone and ends.
        self.lru.released().notify_one();
    }
}

impl Store {
    /// Opens the store of `config.path`; `None` when no path is configured (no caching).
    pub fn open(config: &StoreConfig) -> io::Result<Option<Arc<Store>>> {
        let Some(path) = &config.path else {
            return Ok(None);
        };
        let backend = backend::open(&config.backend).map_err(io::Error::other)?;
        let layout = DiskLayout::open(path)?;
        let index = Index::open(path)?;
        let lru = evict::Lru::new(config.max_size.0);
        let mut items = layout.scan()?;
        // Oldest first, so recency at start-up follows the files' access times.
        items.sort_by_key(|(_, _, when)| *when);
        for (digest, size, _) in &items {
            lru.insert(digest, *size);
        }
        let store = Arc::new(Store {
            space: space::Space::new(path, config.min_free_space.0),
            layout,
            index,
            lru,
            fill_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_fills)),
            manifests: moka::sync::Cache::builder()
                .weigher(|_, m: &StoredManifest| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .max_capacity(MANIFEST_MEMORY)
                .build(),
            config: config.clone(),
            stats: StoreStats::default(),
            stopping: tokio_util::sync::CancellationToken::new(),
            backend,
        });
        store.remove_victims(store.lru.take_victims(config.max_size.0));
        store.evict_on_release();
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

    /// Runs file work on a blocking thread.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Store) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(io::Error::other)?
    }

    /// Size of committed content (a `stat`: for the command line, or blocking threads).
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        self.layout.size(digest)
    }

    /// Whether committed content exists.
    pub async fn contains(self: &Arc<Self>, digest: &Digest) -> bool {
        if self.manifests.contains_key(digest) {
            return true;
        }
        let d = digest.clone();
        if self
            .blocking(move |s| Ok(s.layout.size(&d).is_some()))
            .await
            .unwrap_or(false)
        {
            return true;
        }
        self.backend.contains(digest).await
    }

    /// A stored manifest: from memory, else read from disk when it is a manifest (stored with
    /// a media type) of at most `limit` bytes. Content stored as a blob is never read whole
    /// here, however it is asked for.
    #[tracing::instrument(name = "store.read", level = "debug", skip_all, fields(%digest, kind = "manifest"))]
    pub async fn manifest(
        self: &Arc<Self>,
        digest: &Digest,
        limit: u64,
    ) -> io::Result<Option<StoredManifest>> {
        if let Some(m) = self.manifests.get(digest) {
            self.lru.touch(digest);
            return Ok(Some(m));
        }
        let d = digest.clone();
        let found = self.blocking(move |s| s.read_manifest(&d, limit)).await?;
        if let Some(m) = &found {
            self.lru.touch(digest);
            self.manifests.insert(digest.clone(), m.clone());
            return Ok(found);
        }
        // Another replica may have stored it: verified again before it is kept or served.
        let Some((bytes, media_type)) = self.backend.manifest(digest, limit).await else {
            return Ok(None);
        };
        let mut hasher = digest.algorithm().hasher();
        hasher.update(&bytes);
        if hasher.finish() != *digest {
            tracing::warn!(%digest, backend = self.backend.name(), "a stored manifest does not match its digest; ignored");
            return Ok(None);
        }
        self.keep_manifest(digest, bytes.clone(), media_type.clone())
            .await?;
        Ok(Some(StoredManifest {
            bytes,
            media_type: Some(media_type),
        }))
    }

    fn read_manifest(&self, digest: &Digest, limit: u64) -> io::Result<Option<StoredManifest>> {
        use std::io::Read as _;
        let Some(media_type) = self.layout.media_type(digest) else {
            return Ok(None);
        };
        let Some(file) = self.layout.open_blob(digest)? else {
            return Ok(None);
        };
        if file.metadata()?.len() > limit {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Ok(None);
        }
        Ok(Some(StoredManifest {
            bytes: Bytes::from(bytes),
            media_type: Some(media_type),
        }))
    }

    /// Stores a verified manifest with its media type; false when it was not kept (the
    /// store is below its free-space watermark).
    pub async fn put_manifest(
        self: &Arc<Self>,
        digest: &Digest,
        bytes: Bytes,
        media_type: String,
    ) -> io::Result<bool> {
        let (backend, d, b, t) = (
            self.backend.clone(),
            digest.clone(),
            bytes.clone(),
            media_type.clone(),
        );
        tokio::spawn(async move { backend.put_manifest(&d, b, &t).await });
        self.keep_manifest(digest, bytes, media_type).await
    }

    /// Stores a verified manifest in the local tier.
    async fn keep_manifest(
        self: &Arc<Self>,
        digest: &Digest,
        bytes: Bytes,
        media_type: String,
    ) -> io::Result<bool> {
        let manifest = StoredManifest {
            bytes: bytes.clone(),
            media_type: Some(media_type.clone()),
        };
        if self.space.is_low(bytes.len() as u64) {
            return Ok(false);
        }
        let d = digest.clone();
        let victims = self
            .blocking(move |s| {
                s.layout.put(&d, &bytes, Some(&media_type))?;
                s.lru.insert(&d, bytes.len() as u64);
                Ok(s.lru.take_victims(s.config.max_size.0))
            })
            .await?;
        self.manifests.insert(digest.clone(), manifest);
        self.evict_later(victims);
        Ok(true)
    }

    /// Opens committed content, pinned against eviction until it is streamed and dropped.
    #[tracing::instrument(name = "store.read", level = "debug", skip_all, fields(%digest, kind = "blob"))]
    pub async fn open_blob(self: &Arc<Self>, digest: &Digest) -> io::Result<Option<Stored>> {
        let d = digest.clone();
        let Some((file, size)) = self
            .blocking(move |s| {
                let Some(file) = s.layout.open_blob(&d)? else {
                    return Ok(None);
                };
                let size = file.metadata()?.len();
                Ok(Some((file, size)))
            })
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Stored {
            file,
            size,
            pin: Box::new(self.lru.pin(digest)),
        }))
    }

    /// `digest` from the backend as a fill source, if it holds what the local tier lost.
    pub async fn shared_blob(&self, digest: &Digest) -> Option<FillSource> {
        self.backend.blob_source(digest).await
    }

    /// A pin for readers of a fill: it protects the blob from the moment it commits.
    pub fn pin(&self, digest: &Digest) -> Guard {
        Box::new(self.lru.pin(digest))
    }

    /// Whether `repo` of `registry` is known to contain `digest`.
    pub async fn is_member(
        self: &Arc<Self>,
        registry: &RegistryHost,
        repo: &Repository,
        digest: &Digest,
    ) -> bool {
        if let Some(known) = self.index.is_known_member(registry, repo, digest) {
            return known;
        }
        let (r, p, d) = (registry.clone(), repo.clone(), digest.clone());
        if self
            .blocking(move |s| Ok(s.index.is_member(&r, &p, &d)))
            .await
            .unwrap_or(false)
        {
            return true;
        }
        if !self.backend.is_member(registry, repo, digest).await {
            return false;
        }
        let (r, p, d) = (registry.clone(), repo.clone(), digest.clone());
        let _ = self.blocking(move |s| s.index.add_member(&r, &p, &d)).await;
        true
    }

    /// Records that `repo` of `registry` contains each of `digests`.
    pub async fn add_members(
        self: &Arc<Self>,
        registry: &RegistryHost,
        repo: &Repository,
        digests: Vec<Digest>,
    ) -> io::Result<()> {
        let missing: Vec<Digest> = digests
            .into_iter()
            .filter(|d| self.index.is_known_member(registry, repo, d).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Recorded in the backend before it is relied on here, so that a replica that
        // serves from a shared bucket never knows more than the bucket does.
        self.backend.add_members(registry, repo, &missing).await;
        let (r, p) = (registry.clone(), repo.clone());
        self.blocking(move |s| {
            for d in &missing {
                s.index.add_member(&r, &p, d)?;
            }
            Ok(())
        })
        .await
    }

    /// The tag record stored for `tag` and `accept_key`.
    pub async fn tag(
        self: &Arc<Self>,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        accept_key: &str,
    ) -> Option<TagRecord> {
        let (r, p, t, k) = (
            registry.clone(),
            repo.clone(),
            tag.to_owned(),
            accept_key.to_owned(),
        );
        let local = self
            .blocking(move |s| Ok(s.index.get_tag(&r, &p, &t, &k)))
            .await
            .ok()
            .flatten();
        // The backend's record is newer when another replica confirmed the tag since.
        let shared = self.backend.tag(registry, repo, tag, accept_key).await;
        match (local, shared) {
            (Some(l), Some(s)) if s.checked_at > l.checked_at => Some(s),
            (Some(l), _) => Some(l),
            (None, s) => s,
        }
    }

    /// Writes a tag record (skipped below the free-space watermark).
    pub async fn put_tag(
        self: &Arc<Self>,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        accept_key: &str,
        record: TagRecord,
    ) -> io::Result<()> {
        self.backend
            .put_tag(registry, repo, tag, accept_key, &record)
            .await;
        if self.space.is_low(0) {
            return Ok(());
        }
        let (r, p, t, k) = (
            registry.clone(),
            repo.clone(),
            tag.to_owned(),
            accept_key.to_owned(),
        );
        self.blocking(move |s| s.index.put_tag(&r, &p, &t, &k, &record))
            .await
    }

    /// Evicts what the store could not while it was being read, when its last reader leaves
    /// (without a runtime, as in some CLI paths, the next fill does it).
    fn evict_on_release(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let released = self.lru.released();
        let store = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                released.notified().await;
                let Some(store) = store.upgrade() else {
                    return;
                };
                let victims = store.lru.take_victims(store.config.max_size.0);
                store.evict_later(victims);
            }
        });
    }

    /// Unlinks evicted content on a blocking thread (a multi-GiB unlink takes a while).
    fn evict_later(self: &Arc<Self>, victims: Vec<(Digest, u64)>) {
        if victims.is_empty() {
            return;
        }
        for (d, _) in &victims {
            self.manifests.invalidate(d);
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.remove_victims(victims));
    }

    fn remove_victims(&self, victims: Vec<(Digest, u64)>) {
        for (digest, size) in victims {
            self.manifests.invalidate(&digest);
            match self.layout.remove(&digest) {
                Ok(()) => {
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%digest, size, "evicted");
                }
                Err(e) => tracing::warn!(%digest, error = %e, "eviction failed"),
            }
        }
        self.space.invalidate();
    }

    /// Whether the store is below its free-space watermark now.
    pub fn low_on_space(&self) -> bool {
        self.space.is_low(0)
    }

    /// Aborts every fill still running (their temp files are removed, nothing partial is
    /// committed) and waits up to `wait` for them to end. Returns how many were aborted.
    pub async fn abort_fills(&self, wait: std::time::Duration) -> usize {
        let running = self.summary().fills_in_flight;
        self.stopping.cancel();
        let deadline = tokio::time::Instant::now() + wait;
        while self.summary().fills_in_flight > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        running
    }

    /// Whether a file can be created in the store now (for readiness).
    pub async fn writable(self: &Arc<Self>) -> bool {
        self.blocking(|s| s.layout.probe_write()).await.is_ok()
    }

    pub fn summary(&self) -> StoreSummary {
        StoreSummary {
            path: self.layout.root().display().to_string(),
            items: self.lru.count(),
            bytes: self.lru.total(),
            reserved_bytes: self.lru.reserved(),
            max_bytes: self.config.max_size.0,
            fills_in_flight: self
                .config
                .max_concurrent_fills
                .saturating_sub(self.fill_slots.available_permits()),
            free_bytes: self.space.free(),
            low_space: self.space.was_low(),
        }
    }
}
