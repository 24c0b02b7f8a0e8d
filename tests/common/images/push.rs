//! Pushing generated images to a registry and the [`PushedImage`] record of what was pushed.

use bytes::Bytes;

use super::{
    Blob, BuiltImage, Format, ImageSpec, Platform, RegistryClient, build_image, build_index,
};
use crate::common::registry::Registry;
use crate::common::util::BoxError;

/// What was pushed, for comparison with what clients pulled through the
/// proxy.
///
/// For a multi-platform push the tag points at the index
/// (`index_digest`); the single-image fields (`manifest_digest`,
/// `config_digest`, `layers`, ...) then describe the **linux/amd64** image,
/// which is what clients on this host resolve to. All platform images are in
/// `platforms`.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_bytes: Bytes,
    pub media_type: String,
    pub config_digest: String,
    /// `(digest, compressed size)` in manifest order.
    pub layers: Vec<(String, u64)>,
    pub index_digest: Option<String>,
    pub index_bytes: Option<Bytes>,
    pub index_media_type: Option<String>,
    /// Every platform image that was pushed (one for single-platform pushes).
    pub platforms: Vec<BuiltImage>,
}

impl PushedImage {
    /// Digest the tag resolves to (index if any, else the manifest).
    pub fn tag_digest(&self) -> &str {
        self.index_digest
            .as_deref()
            .unwrap_or(&self.manifest_digest)
    }

    /// Layer digests in manifest order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Content of any pushed blob or manifest (config, layer, platform
    /// manifest, index) by digest.
    pub fn content(&self, digest: &str) -> Option<Bytes> {
        if self.index_digest.as_deref() == Some(digest) {
            return self.index_bytes.clone();
        }
        self.platforms.iter().find_map(|img| {
            std::iter::once(&img.manifest)
                .chain(std::iter::once(&img.config))
                .chain(img.layers.iter().map(|l| &l.blob))
                .find(|b| b.digest == digest)
                .map(|b| b.bytes.clone())
        })
    }
}

/// Pushes a single-platform linux/amd64 image described by `spec` to
/// `registry` as `repo:tag`, using the registry's admin credentials.
pub async fn push_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    push_image_with(&RegistryClient::admin(registry), repo, tag, spec).await
}

/// Like [`push_image`] but forcing a Docker schema 2 manifest.
pub async fn push_docker_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let spec = spec.clone().format(Format::Docker);
    push_image_with(&RegistryClient::admin(registry), repo, tag, &spec).await
}

/// Pushes a linux/amd64 + linux/arm64 image index (or Docker manifest list
/// for [`Format::Docker`]) as `repo:tag`.
pub async fn push_multiplatform(
    registry: &Registry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    push_multiplatform_with(&RegistryClient::admin(registry), repo, tag, spec).await
}

/// [`push_image`] with an explicit client (any registry URL/credentials).
pub async fn push_image_with(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let image = build_image(spec, &Platform::linux_amd64());
    client
        .push_built(repo, Some(tag), &image)
        .await
        .unwrap_or_else(|e| panic!("pushing {repo}:{tag} to {} failed: {e}", client.base_url()));
    pushed(repo, tag, vec![image], None)
}

/// [`push_multiplatform`] with an explicit client.
pub async fn push_multiplatform_with(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let images: Vec<BuiltImage> = [Platform::linux_amd64(), Platform::linux_arm64()]
        .iter()
        .map(|p| build_image(spec, p))
        .collect();
    let index = build_index(&images, spec.format);
    let result: Result<(), BoxError> = async {
        for image in &images {
            client.push_built(repo, None, image).await?;
        }
        client.push_manifest(repo, tag, &index).await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!(
            "pushing index {repo}:{tag} to {} failed: {e}",
            client.base_url()
        );
    }
    pushed(repo, tag, images, Some(index))
}

fn pushed(repo: &str, tag: &str, platforms: Vec<BuiltImage>, index: Option<Blob>) -> PushedImage {
    let main = &platforms[0]; // linux/amd64 comes first
    PushedImage {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest_digest: main.manifest.digest.clone(),
        manifest_bytes: main.manifest.bytes.clone(),
        media_type: main.manifest.media_type.clone(),
        config_digest: main.config.digest.clone(),
        layers: main
            .layers
            .iter()
            .map(|l| (l.blob.digest.clone(), l.blob.size()))
            .collect(),
        index_digest: index.as_ref().map(|i| i.digest.clone()),
        index_bytes: index.as_ref().map(|i| i.bytes.clone()),
        index_media_type: index.as_ref().map(|i| i.media_type.clone()),
        platforms,
    }
}
