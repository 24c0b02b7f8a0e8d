//! Repository scoping: content in the store is shared by digest, but a digest is served for
//! a repository only once that repository is known to contain it. Guessing a digest must
//! never read another repository's private content.
//!
//! What makes a repository a member of a digest:
//! - stevedore fetched the content from that repository (the upstream showed it has it);
//! - a manifest fetched from that repository references the digest as its config, a layer, a
//!   blob or an index child, *and* the registry has a section of its own. Registries enforce
//!   that these exist in the repository a manifest is pushed to. They do not enforce it for
//!   `subject` (the distribution spec lets a manifest name a subject that is not there), so
//!   `subject` never confers membership;
//! - the upstream confirms it with a HEAD, again only for registries with a section.
//!
//! A registry reached only because `routing.allow-unknown-registries` is on may be run by
//! anyone, so nothing it says is taken as proof: its manifests' references and HEAD answers
//! unlock nothing. For such registries stored content that is not yet a member is served by
//! fetching it from that registry again (verified against its digest), which proves the
//! registry has it.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use super::accept::ManifestAccept;
use super::error::PullError;
use super::service::PullService;
use super::wire::{check, send};
use crate::reference::{Digest, Reference};
use crate::route::{Route, RouteKind};
use crate::store::Store;
use crate::upstream::Upstream;

impl PullService {
    /// Whether stored content of `digest` may be served for `route`'s repository. `false`
    /// means the caller must fetch it from the upstream instead.
    pub(super) async fn may_serve_stored(
        &self,
        store: &Arc<Store>,
        upstream: &Upstream,
        route: &Route,
        digest: &Digest,
    ) -> Result<bool, PullError> {
        if store
            .is_member(&route.registry, &route.repository, digest)
            .await
        {
            return Ok(true);
        }
        if !upstream.trusted() {
            return Ok(false);
        }
        let (kind, accept) = match route.kind {
            RouteKind::Manifest(_) => (
                RouteKind::Manifest(Reference::Digest(digest.clone())),
                ManifestAccept::default().media_types(),
            ),
            _ => (RouteKind::Blob(digest.clone()), Vec::new()),
        };
        let probe = Route {
            head: true,
            kind,
            ..route.clone()
        };
        let resp = send(upstream, &probe, Method::HEAD, accept, None).await?;
        check(resp, upstream, &probe).await?;
        store
            .add_members(&route.registry, &route.repository, vec![digest.clone()])
            .await?;
        Ok(true)
    }
}

/// Digests whose presence in the repository a registry checks when a manifest is pushed:
/// its config, layers, blobs and index children. Never its `subject`.
pub fn referenced_digests(manifest: &Bytes) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut take = |d: &serde_json::Value| {
        if let Some(Ok(digest)) = d.get("digest").and_then(|x| x.as_str()).map(str::parse) {
            out.push(digest);
        }
    };
    if let Some(config) = v.get("config") {
        take(config);
    }
    for list in ["layers", "manifests", "blobs"] {
        if let Some(items) = v.get(list).and_then(|l| l.as_array()) {
            items.iter().for_each(&mut take);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_a_manifest_never_include_the_subject() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = format!(
            r#"{{"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"bad"}}],"manifests":[{{"digest":"{}"}}],"subject":{{"digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let got: Vec<String> = referenced_digests(&Bytes::from(m))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, vec![d('a'), d('b'), d('c')]);
    }
}
