//! The S3 tier (`[store] type = "s3"`): verified content, tag records and repository
//! membership in a bucket that every replica shares. The local store stays in front of it as
//! the size-bounded tier: a local miss that the bucket holds is filled from the bucket (and
//! verified again on the way); content verified locally is uploaded after its commit, by a
//! multipart upload that is completed only when the uploaded bytes hash to the digest, and
//! aborted otherwise, so the bucket never holds unverified content.
//!
//! ```text
//! <prefix>blobs/<algorithm>/<hex>                           content (blobs and manifests)
//! <prefix>manifests/<algorithm>/<hex>.type                  a stored manifest's media type
//! <prefix>repos/<hash of registry/repository>/digests/<algorithm>/<hex>    membership marker
//! <prefix>repos/<hash of registry/repository>/tags/<tag>/<accept-key>.json a TagRecord
//! ```
//!
//! Nothing here relies on conditional writes (Garage ignores `If-None-Match` on PUT): every
//! object is either content under its own digest (the same bytes whoever writes it) or a
//! record whose last writer wins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt as _;

use super::backend::Backend;
use super::fill::{FillSource, Resume};
use super::index::TagRecord;
use crate::body::ByteStream;
use crate::config::S3Config;
use crate::reference::{Digest, RegistryHost, Repository};

/// Objects up to this size are uploaded in one PUT; larger ones in parts of this size.
const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

pub struct Remote {
    s3: Arc<dyn ObjectStore>,
    prefix: String,
    uploads: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("S3 bucket {bucket}: {source}")]
    S3 {
        bucket: String,
        source: object_store::Error,
    },
    #[error("store.s3.{key}: {message}")]
    Config { key: &'static str, message: String },
}

impl Remote {
    pub fn from_config(c: &S3Config) -> Result<Self, RemoteError> {
        let secret = |key: &'static str, s: &Option<crate::config::SecretSource>| {
            s.as_ref()
                .map(|s| {
                    s.read()
                        .map(|v| v.expose().to_owned())
                        .map_err(|e| RemoteError::Config {
                            key,
                            message: e.to_string(),
                        })
                })
                .transpose()
        };
        // Client options first: they hold allow-http, which they would reset.
        let mut b = AmazonS3Builder::from_env()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            )
            .with_endpoint(&c.endpoint)
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_allow_http(c.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(!c.path_style);
        if let Some(id) = secret("access-key-id", &c.access_key_id)? {
            b = b.with_access_key_id(id);
        }
        if let Some(key) = secret("secret-access-key", &c.secret_access_key)? {
            b = b.with_secret_access_key(key);
        }
        let s3 = b.build().map_err(|source| RemoteError::S3 {
            bucket: c.bucket.clone(),
            source,
        })?;
        Ok(Self {
            s3: Arc::new(s3),
            prefix: c.prefix.clone(),
            uploads: Arc::new(tokio::sync::Semaphore::new(c.max_concurrent_uploads)),
        })
    }

    fn blob_path(&self, d: &Digest) -> Path {
        Path::from(format!(
            "{}blobs/{}/{}",
            self.prefix,
            d.algorithm().as_str(),
            d.hex()
        ))
    }

    fn media_type_path(&self, d: &Digest) -> Path {
        Path::from(format!(
            "{}manifests/{}/{}.type",
            self.prefix,
            d.algorithm().as_str(),
            d.hex()
        ))
    }

    fn repo_dir(&self, registry: &RegistryHost, repo: &Repository) -> String {
        let name = Digest::sha256_of(format!("{registry}/{repo}").as_bytes());
        format!("{}repos/{}", self.prefix, name.hex())
    }

    fn member_path(&self, registry: &RegistryHost, repo: &Repository, d: &Digest) -> Path {
        Path::from(format!(
            "{}/digests/{}/{}",
            self.repo_dir(registry, repo),
            d.algorithm().as_str(),
            d.hex()
        ))
    }

    fn tag_path(&self, registry: &RegistryHost, repo: &Repository, tag: &str, key: &str) -> Path {
        Path::from(format!(
            "{}/tags/{tag}/{key}.json",
            self.repo_dir(registry, repo)
        ))
    }

    /// A small object, read whole if it is at most `limit` bytes.
    async fn small(&self, path: &Path, limit: u64) -> Option<Bytes> {
        let got = self.s3.get(path).await.ok()?;
        if got.meta.size > limit {
            return None;
        }
        got.bytes().await.ok()
    }
}

#[async_trait::async_trait]
impl Backend for Remote {
    fn name(&self) -> &'static str {
        "s3"
    }

    /// The bytes of `digest` as a fill source (resumable with ranged GETs), if the bucket
    /// holds it. The fill verifies them like any upstream's.
    async fn blob_source(&self, digest: &Digest) -> Option<FillSource> {
        let path = self.blob_path(digest);
        let got = match self.s3.get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "S3 tier: reading a blob failed; asking upstream");
                return None;
            }
        };
        let total = Some(got.meta.size);
        let body = stream(got.into_stream());
        let s3 = self.s3.clone();
        let resume: Resume = Box::new(move |offset| {
            let (s3, path) = (s3.clone(), path.clone());
            Box::pin(async move {
                let opts = GetOptions {
                    range: Some(GetRange::Offset(offset)),
                    ..GetOptions::default()
                };
                let got = s3.get_opts(&path, opts).await.map_err(|e| e.to_string())?;
                Ok((stream(got.into_stream()), true))
            })
        });
        Some(FillSource {
            total,
            body,
            resume,
            from_bucket: true,
        })
    }

    /// Uploads the committed file of `digest` unless the bucket has it, checking its hash on
    /// the way; a mismatch (the local file changed under it) aborts the upload.
    async fn put_blob(&self, digest: &Digest, file: PathBuf) {
        let Ok(_slot) = self.uploads.clone().acquire_owned().await else {
            return;
        };
        let path = self.blob_path(digest);
        let outcome = async {
            if self.s3.head(&path).await.is_ok() {
                return Ok(false);
            }
            let mut f = tokio::fs::File::open(&file).await.map_err(io_err)?;
            let size = f.metadata().await.map_err(io_err)?.len();
            let mut hasher = digest.algorithm().hasher();
            if size as usize <= PART {
                let mut buf = Vec::with_capacity(size as usize);
                f.read_to_end(&mut buf).await.map_err(io_err)?;
                hasher.update(&buf);
                if hasher.finish() != *digest {
                    return Err(mismatch(digest));
                }
                self.s3.put(&path, PutPayload::from(buf)).await?;
            } else {
                let upload = self.s3.put_multipart(&path).await?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = match f.read(&mut buf).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = w.abort().await;
                            return Err(io_err(e));
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    w.write(&buf[..n]);
                    w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                }
                if hasher.finish() != *digest {
                    let _ = w.abort().await;
                    return Err(mismatch(digest));
                }
                w.finish().await?;
            }
            Ok(true)
        }
        .await;
        match outcome {
            Ok(true) => tracing::debug!(%digest, "S3 tier: uploaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%digest, error = %e, "S3 tier: upload failed (the local copy stays)")
            }
        }
    }

    /// Whether the bucket holds `digest`.
    async fn contains(&self, digest: &Digest) -> bool {
        self.s3.head(&self.blob_path(digest)).await.is_ok()
    }

    /// Removes a blob whose bytes did not match its digest.
    async fn remove_blob(&self, digest: &Digest) {
        match self.s3.delete(&self.blob_path(digest)).await {
            Ok(()) => {
                tracing::warn!(%digest, "S3 tier: removed an object that did not match its digest")
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "S3 tier: removing a corrupt object failed")
            }
        }
    }

    /// A manifest stored in the bucket (with its media type), if any, up to `limit` bytes.
    /// The caller verifies it against its digest.
    async fn manifest(&self, digest: &Digest, limit: u64) -> Option<(Bytes, String)> {
        let media_type = self.small(&self.media_type_path(digest), 1024).await?;
        let bytes = self.small(&self.blob_path(digest), limit).await?;
        Some((bytes, String::from_utf8(media_type.to_vec()).ok()?))
    }

    async fn put_manifest(&self, digest: &Digest, bytes: Bytes, media_type: &str) {
        let r = async {
            self.s3
                .put(&self.blob_path(digest), PutPayload::from(bytes))
                .await?;
            self.s3
                .put(
                    &self.media_type_path(digest),
                    PutPayload::from(media_type.as_bytes().to_vec()),
                )
                .await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(%digest, error = %e, "S3 tier: storing a manifest failed");
        }
    }

    async fn is_member(&self, registry: &RegistryHost, repo: &Repository, d: &Digest) -> bool {
        self.s3
            .head(&self.member_path(registry, repo, d))
            .await
            .is_ok()
    }

    async fn add_members(&self, registry: &RegistryHost, repo: &Repository, digests: &[Digest]) {
        let puts = digests.iter().map(|d| {
            let path = self.member_path(registry, repo, d);
            async move { self.s3.put(&path, PutPayload::default()).await }
        });
        for r in futures_util::future::join_all(puts).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "S3 tier: recording membership failed");
            }
        }
    }

    async fn tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        key: &str,
    ) -> Option<TagRecord> {
        let bytes = self
            .small(&self.tag_path(registry, repo, tag, key), 64 * 1024)
            .await?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn put_tag(
        &self,
        registry: &RegistryHost,
        repo: &Repository,
        tag: &str,
        key: &str,
        record: &TagRecord,
    ) {
        let Ok(json) = serde_json::to_vec(record) else {
            return;
        };
        if let Err(e) = self
            .s3
            .put(
                &self.tag_path(registry, repo, tag, key),
                PutPayload::from(json),
            )
            .await
        {
            tracing::warn!(tag, error = %e, "S3 tier: storing a tag record failed");
        }
    }
}

fn stream(s: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>) -> ByteStream {
    Box::pin(s.map_err(|e| std::io::Error::other(e.to_string())).boxed())
}

fn io_err(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    }
}

fn mismatch(digest: &Digest) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3 tier",
        source: format!("the local copy of {digest} no longer matches its digest: not uploaded")
            .into(),
    }
}
