//! Where verified content is kept for good, behind the local directory: the backend
//! `[store] type` names. [`Store`](super::Store) is the tiered facade the engine talks to
//! (local directory, fills, fan-out, eviction) and asks its backend only what the local tier
//! does not know. `disk` keeps nothing beyond the local directory; `s3` (`remote.rs`) is a
//! bucket shared by replicas.
//!
//! A backend never vouches for bytes: whatever it returns is verified again against its
//! digest before it is kept or served, and it is handed only content that was verified.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::fill::FillSource;
use super::index::TagRecord;
use crate::config::StoreBackend;
use crate::reference::{Digest, RegistryHost, Repository};

/// What stays of the store when the local directory loses it. Failures are logged by the
/// backend and read as "not there": the local tier and the upstream stand in.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// `disk` or `s3`, for logs.
    fn name(&self) -> &'static str;
    /// `digest`'s bytes as a fill source (resumable), if the backend holds them.
    async fn blob_source(&self, digest: &Digest) -> Option<FillSource>;
    /// Keeps the committed local file of `digest` (checked against the digest again while it
    /// is copied; nothing is kept on a mismatch).
    async fn put_blob(&self, digest: &Digest, file: PathBuf);
    /// Whether the backend holds `digest`.
    async fn contains(&self, digest: &Digest) -> bool;
    /// Forgets `digest`, whose bytes did not match it.
    async fn remove_blob(&self, digest: &Digest);
    /// A manifest and its media type, if it is at most `limit` bytes.
    async fn manifest(&self, digest: &Digest, limit: u64) -> Option<(Bytes, String)>;
    /// Keeps a verified manifest with its media type.
    async fn put_manifest(&self, digest: &Digest, bytes: Bytes, media_type: &str);
    /// Whether `repo` of `registry` is recorded to contain `digest`.
    async fn is_member(&self, registry: &RegistryHost, repo: &Repository, d: &Digest) -> bool;
    /// Records that `repo` of `registry` contains `digests`.
    async fn add_members(&self, registry: &RegistryHost, repo: &Repository, digests: &[Digest]);
    /// The tag record kept for `tag` and the Accept key `key`.
    async fn tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        key: &str,
    ) -> Option<TagRecord>;
    /// Keeps a tag record (the last writer wins).
    async fn put_tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        key: &str,
        record: &TagRecord,
    );
}

/// `type = "disk"`: the local directory is all there is.
pub struct Disk;

#[async_trait::async_trait]
impl Backend for Disk {
    fn name(&self) -> &'static str {
        "disk"
    }
    async fn blob_source(&self, _: &Digest) -> Option<FillSource> {
        None
    }
    async fn put_blob(&self, _: &Digest, _: PathBuf) {}
    async fn contains(&self, _: &Digest) -> bool {
        false
    }
    async fn remove_blob(&self, _: &Digest) {}
    async fn manifest(&self, _: &Digest, _: u64) -> Option<(Bytes, String)> {
        None
    }
    async fn put_manifest(&self, _: &Digest, _: Bytes, _: &str) {}
    async fn is_member(&self, _: &RegistryHost, _: &Repository, _: &Digest) -> bool {
        false
    }
    async fn add_members(&self, _: &RegistryHost, _: &Repository, _: &[Digest]) {}
    async fn tag(&self, _: &RegistryHost, _: &Repository, _: &str, _: &str) -> Option<TagRecord> {
        None
    }
    async fn put_tag(&self, _: &RegistryHost, _: &Repository, _: &str, _: &str, _: &TagRecord) {}
}

/// The backend `config` names.
pub fn open(config: &StoreBackend) -> Result<Arc<dyn Backend>, super::remote::RemoteError> {
    Ok(match config {
        StoreBackend::Disk => Arc::new(Disk),
        StoreBackend::S3(s3) => Arc::new(super::remote::Remote::from_config(s3)?),
    })
}
