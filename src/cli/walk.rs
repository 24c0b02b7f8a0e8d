//! Walks an image through the pull engine: the manifest its reference names, the children of
//! an index (all platforms, or those asked for), and the config and layers of each image
//! manifest. Manifests land in the store as they are fetched; blobs are listed for
//! `prefetch` to fetch.

use std::collections::{HashSet, VecDeque};

use serde::Deserialize;

use super::image::ImageRef;
use super::platform::{PlatformSpec, describe};
use super::progress::Progress;
use crate::pull::{ManifestAccept, PullService};
use crate::reference::{Digest, Reference};
use crate::route::RouteKind;

/// Indexes nest at most this deep (an index of indexes is legal, but rare).
const MAX_DEPTH: usize = 4;

/// A blob an image needs.
#[derive(Debug, Clone)]
pub struct BlobJob {
    pub digest: Digest,
    /// Size the manifest announces.
    pub size: u64,
}

/// What an image consists of.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifests: usize,
    pub blobs: Vec<BlobJob>,
    /// Layers that registries do not serve (foreign / non-distributable), not fetched.
    pub skipped: usize,
}

/// A descriptor, whichever parser read it.
#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct LooseIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct LooseManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// A manifest, parsed.
enum Document {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

fn from_oci(d: &oci_spec::image::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size(),
        platform: d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }),
    }
}

/// Reads an index / manifest list or an image manifest: with `oci-spec` first, then
/// leniently (Docker manifest lists and manifests that omit what OCI requires).
fn parse(media_type: &str, body: &[u8]) -> Result<Document, String> {
    let is_index = media_type.contains("index") || media_type.contains("manifest.list");
    let probe_index = media_type.is_empty() || media_type.ends_with("/json");
    if is_index || (probe_index && serde_json::from_slice::<LooseIndex>(body).is_ok()) {
        if let Ok(index) = serde_json::from_slice::<oci_spec::image::ImageIndex>(body) {
            return Ok(Document::Index(
                index.manifests().iter().map(from_oci).collect(),
            ));
        }
        return serde_json::from_slice::<LooseIndex>(body)
            .map(|i| Document::Index(i.manifests))
            .map_err(|e| format!("cannot read the image index ({media_type}): {e}"));
    }
    if media_type.contains("distribution.manifest.v1") {
        return Err(format!(
            "{media_type} (Docker schema 1) is not supported; push the image again with a \
             current client"
        ));
    }
    if let Ok(m) = serde_json::from_slice::<oci_spec::image::ImageManifest>(body) {
        return Ok(Document::Image {
            config: from_oci(m.config()),
            layers: m.layers().iter().map(from_oci).collect(),
        });
    }
    serde_json::from_slice::<LooseManifest>(body)
        .map(|m| Document::Image {
            config: m.config,
            layers: m.layers,
        })
        .map_err(|e| format!("cannot read the manifest ({media_type}): {e}"))
}

/// Layers registries do not serve: they are fetched from elsewhere (`urls`) by the runtime.
fn is_foreign(media_type: &str) -> bool {
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

fn digest_of(d: &Descriptor) -> Result<Digest, String> {
    d.digest
        .parse()
        .map_err(|e| format!("the manifest references {e}"))
}

/// Fetches `image`'s manifests through the engine (so they are stored) and lists its blobs.
pub async fn resolve(
    pull: &PullService,
    image: &ImageRef,
    platforms: &[PlatformSpec],
    progress: &Progress,
) -> Result<Plan, String> {
    let accept = ManifestAccept::default();
    let mut plan = Plan {
        manifests: 0,
        blobs: Vec::new(),
        skipped: 0,
    };
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([(image.reference(), 0usize)]);
    while let Some((reference, depth)) = queue.pop_front() {
        let route = image.route(RouteKind::Manifest(reference.clone()));
        let reply = pull
            .manifest(&route, &reference, accept)
            .await
            .map_err(|e| e.to_string())?;
        let body = reply
            .body
            .ok_or_else(|| format!("no manifest body for {reference}"))?;
        plan.manifests += 1;
        match parse(&reply.media_type, &body)? {
            Document::Index(children) => {
                if depth >= MAX_DEPTH {
                    return Err(format!("image indexes nest deeper than {MAX_DEPTH} levels"));
                }
                let chosen = select(&children, platforms, image)?;
                progress.line(format!(
                    "prefetch {image} index {} ({} of {} manifests)",
                    reply.digest,
                    chosen.len(),
                    children.len()
                ));
                for child in chosen {
                    let digest = digest_of(child)?;
                    if seen.insert(digest.clone()) {
                        queue.push_back((Reference::Digest(digest), depth + 1));
                    }
                }
            }
            Document::Image { config, layers } => {
                progress.line(format!(
                    "prefetch {image} manifest {} ({} layers)",
                    reply.digest,
                    layers.len()
                ));
                for d in std::iter::once(&config).chain(&layers) {
                    if is_foreign(&d.media_type) {
                        plan.skipped += 1;
                        continue;
                    }
                    let digest = digest_of(d)?;
                    if !plan.blobs.iter().any(|b| b.digest == digest) {
                        plan.blobs.push(BlobJob {
                            digest,
                            size: d.size,
                        });
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// The index entries to prefetch: all, or those matching one of `platforms`.
fn select<'a>(
    children: &'a [Descriptor],
    platforms: &[PlatformSpec],
    image: &ImageRef,
) -> Result<Vec<&'a Descriptor>, String> {
    if platforms.is_empty() {
        return Ok(children.iter().collect());
    }
    let chosen: Vec<&Descriptor> = children
        .iter()
        .filter(|c| {
            c.platform.as_ref().is_some_and(|p| {
                platforms
                    .iter()
                    .any(|want| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
        })
        .collect();
    if chosen.is_empty() {
        let available: Vec<String> = children
            .iter()
            .filter_map(|c| c.platform.as_ref())
            .map(|p| describe(&p.os, &p.architecture, p.variant.as_deref()))
            .collect();
        let wanted: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        return Err(format!(
            "{image} has no manifest for {} (it has: {})",
            wanted.join(", "),
            if available.is_empty() {
                "no platform-specific manifests".to_owned()
            } else {
                available.join(", ")
            }
        ));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn docker_manifest_list_and_manifest() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{D}","size":7,
            "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
        );
        let Ok(Document::Index(children)) = parse(
            "application/vnd.docker.distribution.manifest.list.v2+json",
            list.as_bytes(),
        ) else {
            panic!("not an index");
        };
        let p = children[0].platform.as_ref().unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant.as_deref(), Some("v8"));

        // No mediaType on the descriptors: oci-spec refuses, the lenient reader does not.
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":2}},"layers":[
            {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D}","size":3}}]}}"#
        );
        let Ok(Document::Image { config, layers }) = parse("", manifest.as_bytes()) else {
            panic!("not a manifest");
        };
        assert_eq!(config.size, 2);
        assert!(is_foreign(&layers[0].media_type));
    }

    #[test]
    fn schema1_is_refused() {
        let e = parse(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{}",
        );
        assert!(matches!(e, Err(m) if m.contains("schema 1")));
    }
}
