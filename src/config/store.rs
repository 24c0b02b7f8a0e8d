//! `[store]`: the content store's local directory, its bounds, tag freshness and fills; the
//! backend `type` names (with `[store.s3]`) is resolved in `remote.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// Directory of the content store. Without it stevedore caches nothing and streams every
    /// request from upstream.
    pub path: Option<PathBuf>,
    /// Largest total size of stored content; least-recently-used blobs are evicted past it.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// How long a tag's digest is trusted before one upstream HEAD revalidates it.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How old a tag's digest may be when the upstream is unreachable, answers 5xx or 429,
    /// and stevedore serves it anyway (marked stale).
    #[serde(default = "default_stale_max_age", with = "humantime_serde")]
    pub stale_max_age: Duration,
    /// Longest one blob fill may take, with or without clients still waiting for it.
    #[serde(default = "default_fill_timeout", with = "humantime_serde")]
    pub fill_timeout: Duration,
    /// Times a fill resumes with `Range` after its upstream connection breaks.
    #[serde(default = "default_fill_retries")]
    pub fill_retries: u32,
    /// Most blob transfers from upstreams at once (fills, and misses streamed without being
    /// stored). Past it, a miss is answered `503` with `Retry-After`.
    #[serde(default = "default_max_concurrent_fills")]
    pub max_concurrent_fills: usize,
    /// Free space the store's file system keeps. Below it nothing new is stored (misses are
    /// streamed from upstream, verified, without being kept); cached content is still served.
    #[serde(default = "default_min_free_space")]
    pub min_free_space: ByteSize,
    /// `type`: `disk` (default) or `s3`, as written; read it as [`StoreConfig::backend`].
    #[serde(default, rename = "type")]
    pub(super) kind: super::remote::BackendKind,
    /// `[store.s3]` as written; read it as [`StoreConfig::backend`].
    pub(super) s3: Option<super::S3Config>,
    /// The backend `type` names with its own settings, resolved once when the file is
    /// loaded (a `type` without its section, or a section of another type, is refused).
    #[serde(skip)]
    pub backend: super::StoreBackend,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_size: default_max_size(),
            tag_ttl: default_tag_ttl(),
            stale_max_age: default_stale_max_age(),
            fill_timeout: default_fill_timeout(),
            fill_retries: default_fill_retries(),
            max_concurrent_fills: default_max_concurrent_fills(),
            min_free_space: default_min_free_space(),
            kind: super::remote::BackendKind::default(),
            s3: None,
            backend: super::StoreBackend::default(),
        }
    }
}

fn default_max_size() -> ByteSize {
    ByteSize(20 * 1024 * 1024 * 1024)
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_stale_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_fill_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_fill_retries() -> u32 {
    5
}

fn default_max_concurrent_fills() -> usize {
    64
}

fn default_min_free_space() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}
