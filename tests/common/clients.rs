//! Real clients pulling through a pull-through mirror (the proxy under test)
//! or directly from a registry: skopeo, containerd/ctr and oci-client.
//!
//! Every pull returns a [`PullResult`] so tests can compare digests with
//! what was pushed upstream ([`super::images::PushedImage`]).
//!
//! Mirror addressing used here:
//! * skopeo and oci-client use the *path-prefix* form: the mirror reference
//!   is `127.0.0.1:MIRROR_PORT/<upstream host>/<repo>`, i.e. requests go to
//!   `/v2/<upstream host>/<repo>/...`. Because the upstream host becomes a
//!   reference path component it must not contain a port (see
//!   [`super::registry::RegistryBuilder::portless`]).
//! * containerd uses its `hosts.toml` mirror support: requests go to
//!   `/v2/<repo>/...?ns=<upstream host>` (a port in the host is fine there).

mod containerd;
mod oci;
mod skopeo;

#[allow(unused_imports)]
pub use containerd::*;
#[allow(unused_imports)]
pub use oci::*;
#[allow(unused_imports)]
pub use skopeo::*;

use super::images::{DOCKER_MANIFEST_LIST, OCI_INDEX};

/// What a client ended up with.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// Digest the client recorded for the reference: the index digest when
    /// the client kept the index (containerd, `skopeo --all`, oci-client
    /// when the tag is an index), else the image manifest digest.
    pub reference_digest: String,
    /// Digest of the single-platform image manifest (linux/amd64 for an
    /// index).
    pub manifest_digest: String,
    /// Layer digests of that manifest, in order.
    pub layer_digests: Vec<String>,
    /// Config digest of that manifest.
    pub config_digest: String,
    /// Combined client output, for debugging failed assertions.
    pub output: String,
}

/// Linux/amd64 entry of an index/manifest list.
fn amd64_entry(index: &serde_json::Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == "linux" && p["architecture"] == "amd64")
            .then(|| m["digest"].as_str().map(str::to_string))
            .flatten()
    })
}

fn is_index(manifest: &serde_json::Value) -> bool {
    let mt = manifest["mediaType"].as_str().unwrap_or_default();
    mt == OCI_INDEX
        || mt == DOCKER_MANIFEST_LIST
        || (mt.is_empty() && manifest.get("manifests").is_some())
}

/// `(config digest, layer digests)` of an image manifest.
fn manifest_parts(manifest: &serde_json::Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let layers = manifest["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (config, layers)
}
