//! Test images generated in Rust (no network) and pushed to a real registry
//! over the distribution push API.
//!
//! * Layers are real gzip'ed tar archives with deterministic content derived
//!   from a seed (fixed mtimes/owners, fixed gzip header), so the same seed
//!   always yields the same digests.
//! * [`large_layer`] produces an incompressible layer of a chosen size.
//! * Images can be OCI (`application/vnd.oci.image.manifest.v1+json`) or
//!   Docker schema 2, single-platform or a linux/amd64 + linux/arm64 index.
//!
//! [`RegistryClient`] is a small distribution API client that handles the
//! `401` challenge (Basic or Bearer via the realm) the way real clients do.
//! It is also handy for raw requests against the proxy under test.

mod build;
mod client;
mod push;

#[allow(unused_imports)]
pub use build::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use push::*;

use bytes::Bytes;
use serde_json::json;

use super::util::sha256_digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for `Accept` headers.
pub const ALL_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Content-addressed bytes plus the media type they are referenced with.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Bytes,
}

impl Blob {
    pub fn new(media_type: &str, bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// OCI descriptor JSON (`mediaType`, `digest`, `size`).
    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size() })
    }
}

/// A compressed layer and the digest of its uncompressed tar (`diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    /// Docker image manifest v2, schema 2 (and manifest list v2).
    Docker,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_MANIFEST_LIST,
        }
    }
    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    fn layer_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_LAYER_GZIP,
            Format::Docker => DOCKER_LAYER_GZIP,
        }
    }
}

/// `os`/`architecture`/`variant` of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    pub fn linux_arm64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    fn json(&self) -> serde_json::Value {
        let mut v = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            v["variant"] = variant.clone().into();
        }
        v
    }
}

/// What to generate. Same spec + platform => same bytes.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub seed: u64,
    /// Number of small layers (each a tar with a few files).
    pub small_layers: usize,
    /// Size in bytes of an additional incompressible layer, if any.
    pub large_layer: Option<usize>,
    pub format: Format,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            seed: 1,
            small_layers: 2,
            large_layer: None,
            format: Format::Oci,
        }
    }
}

impl ImageSpec {
    pub fn seed(seed: u64) -> ImageSpec {
        ImageSpec {
            seed,
            ..ImageSpec::default()
        }
    }
    pub fn small_layers(mut self, n: usize) -> Self {
        self.small_layers = n;
        self
    }
    pub fn large_layer(mut self, bytes: usize) -> Self {
        self.large_layer = Some(bytes);
        self
    }
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
}

/// A generated single-platform image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub platform: Platform,
    pub format: Format,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
}
