//! The pull service: manifests, blobs, tags and referrers for a [`Route`]. With a content
//! store the cached paths (`manifests.rs`, `blobs.rs`) serve them; without one every request
//! is streamed from upstream by the functions here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK};
use http::{HeaderValue, Method, StatusCode};

use super::accept::ManifestAccept;
use super::blobs::FillOutcome;
use super::error::PullError;
use super::flight::Flights;
use super::range::ByteRange;
use super::stream::Verifying;
use super::wire::{
    check, content_length, header_str, media_type_of, read_limited, rewrite_link, send,
    verify_manifest,
};
use crate::body::{BlobBody, ByteStream};
use crate::config::UpstreamConfig;
use crate::reference::{Digest, Reference};
use crate::route::Route;
use crate::store::{Store, TagRecord};
use crate::telemetry::Telemetry;
use crate::upstream::{Upstream, Upstreams};

/// `Docker-Content-Digest` (distribution spec, "Pulling manifests").
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Largest tags list or referrers index accepted from an upstream.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// A manifest, its exact bytes (never re-serialised), and what identifies it.
#[derive(Debug, Clone)]
pub struct ManifestReply {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `None` for HEAD.
    pub body: Option<Bytes>,
    /// Served from the store past the tag's freshness because the upstream could not be
    /// asked (unreachable, 5xx, 429, or stevedore's own budget for it spent).
    pub stale: bool,
}

/// A blob or part of one.
pub struct BlobReply {
    pub digest: Digest,
    /// `Some(content-range)` for a 206 answer.
    pub content_range: Option<String>,
    /// Bytes in this answer, when known.
    pub length: Option<u64>,
    /// `None` for HEAD.
    pub body: Option<BlobBody>,
}

/// A JSON document passed through: a tags list or a referrers index.
#[derive(Debug, Clone)]
pub struct DocumentReply {
    pub content_type: String,
    pub body: Bytes,
    /// `Link` header already rewritten to stevedore's URL form.
    pub link: Option<String>,
    /// `OCI-Filters-Applied` for referrers.
    pub filters_applied: Option<String>,
}

pub struct PullService {
    pub(super) upstreams: Arc<Upstreams>,
    pub(super) max_manifest_bytes: usize,
    pub(super) store: Option<Arc<Store>>,
    /// Tag records by registry, repository, tag and Accept set; concurrent revalidations of
    /// one tag make one upstream request.
    pub(super) tags: moka::future::Cache<String, TagRecord>,
    /// Blob fills by digest.
    pub(super) fills: Flights<Digest, FillOutcome>,
    /// Manifest fetches by registry, repository and digest.
    pub(super) manifest_fetches: Flights<String, Result<ManifestReply, PullError>>,
    /// How long a request waits for another's upstream answer.
    pub(super) wait_timeout: Duration,
    pub(super) telemetry: Arc<Telemetry>,
    /// The other replicas, when blobs are shared out among them.
    pub(super) peers: Option<Arc<crate::peers::Peers>>,
}

impl PullService {
    pub fn new(
        upstreams: Arc<Upstreams>,
        upstream: &UpstreamConfig,
        store: Option<Arc<Store>>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let ttl = store
            .as_ref()
            .map_or(Duration::from_secs(1), |s| s.config().tag_ttl);
        Self {
            upstreams,
            max_manifest_bytes: upstream.max_manifest_bytes,
            store,
            tags: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(super::manifests::TagFreshness { ttl })
                .build(),
            fills: Flights::default(),
            manifest_fetches: Flights::default(),
            // The leader's own exchange is bounded by these (a token fetch, a redirect and
            // the request itself); waiters give it that long and some more.
            wait_timeout: (upstream.connect_timeout + upstream.read_timeout) * 3,
            telemetry,
            peers: None,
        }
    }

    /// Shares blob fetches out among `peers`.
    pub fn with_peers(mut self, peers: Option<Arc<crate::peers::Peers>>) -> Self {
        self.peers = peers;
        self
    }

    pub fn peers(&self) -> Option<&Arc<crate::peers::Peers>> {
        self.peers.as_ref()
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Waits until a fill of `digest` still in progress has committed (or failed): a
    /// client's transfer ends once the bytes are verified, before the blob is durable in the
    /// store. For callers that need it kept, not only served.
    pub async fn settled(&self, digest: &Digest) {
        let Some(waiter) = self.fills.watch(digest) else {
            return;
        };
        if let super::flight::Outcome::Done(FillOutcome::Running(fill)) =
            waiter.wait(self.wait_timeout).await
        {
            fill.finished().await;
        }
    }

    /// Blob fills and manifest fetches in flight.
    pub fn flights(&self) -> usize {
        self.fills.len() + self.manifest_fetches.len()
    }

    /// A manifest by tag or digest, from the store when there is one.
    pub async fn manifest(
        &self,
        route: &Route,
        reference: &Reference,
        accept: ManifestAccept,
    ) -> Result<ManifestReply, PullError> {
        match &self.store {
            Some(store) => self.manifest_cached(store, route, reference, accept).await,
            None => self.manifest_upstream(route, reference, accept).await,
        }
    }

    /// A blob, from the store (filling it on a miss) when there is one.
    pub async fn blob(
        &self,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobReply, PullError> {
        match &self.store {
            Some(store) => self.blob_cached(store, route, digest, range, true).await,
            None => self.blob_upstream(route, digest, range).await,
        }
    }

    /// A blob asked for by another replica (which owns nothing here): served or filled by
    /// this replica itself, never passed on to a third.
    pub async fn blob_for_peer(
        &self,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobReply, PullError> {
        match &self.store {
            Some(store) => self.blob_cached(store, route, digest, range, false).await,
            None => self.blob_upstream(route, digest, range).await,
        }
    }

    /// A manifest by tag or digest from upstream.
    pub(super) async fn manifest_upstream(
        &self,
        route: &Route,
        reference: &Reference,
        accept: ManifestAccept,
    ) -> Result<ManifestReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let upstream = &upstream;
        let accept = accept.media_types();
        if route.head
            && let Some(reply) = self
                .manifest_head(upstream, route, reference, &accept)
                .await?
        {
            return Ok(reply);
        }
        let resp = send(upstream, route, Method::GET, accept, None).await?;
        let resp = check(resp, upstream, route).await?;
        let header_digest = header_str(resp.headers(), DOCKER_CONTENT_DIGEST)
            .and_then(|d| d.parse::<Digest>().ok());
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let body = read_limited(resp, self.max_manifest_bytes, upstream).await?;
        let digest = verify_manifest(upstream, reference, header_digest, &body)?;
        let media_type = content_type
            .filter(|t| !t.is_empty() && *t != "application/octet-stream")
            .or_else(|| media_type_of(&body))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
        Ok(ManifestReply {
            digest,
            media_type,
            size: body.len() as u64,
            body: (!route.head).then_some(body),
            stale: false,
        })
    }

    /// HEAD upstream (Docker Hub does not count HEADs against pull limits). `None` when the
    /// answer lacks what a client needs, so the caller falls back to GET.
    pub(super) async fn manifest_head(
        &self,
        upstream: &Upstream,
        route: &Route,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Option<ManifestReply>, PullError> {
        let resp = send(upstream, route, Method::HEAD, accept.to_vec(), None).await?;
        let resp = check(resp, upstream, route).await?;
        let headers = resp.headers();
        let digest = header_str(headers, DOCKER_CONTENT_DIGEST)
            .and_then(|d| d.parse::<Digest>().ok())
            .or_else(|| reference.digest().cloned());
        let media_type = header_str(headers, CONTENT_TYPE.as_str());
        let size = header_str(headers, CONTENT_LENGTH.as_str()).and_then(|l| l.parse().ok());
        match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size)) => {
                if let Reference::Digest(expected) = reference
                    && *expected != digest
                {
                    return Err(PullError::DigestMismatch {
                        registry: route.registry.to_string(),
                        expected: expected.clone(),
                        actual: digest,
                    });
                }
                Ok(Some(ManifestReply {
                    digest,
                    media_type,
                    size,
                    body: None,
                    stale: false,
                }))
            }
            _ => Ok(None),
        }
    }

    /// A blob streamed from upstream. A whole-blob GET is verified against its digest on the
    /// way: a mismatch aborts the client's transfer instead of ending it cleanly.
    pub(super) async fn blob_upstream(
        &self,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let method = if route.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let range = range.and_then(|r| HeaderValue::from_str(&r.header()).ok());
        let resp = send(&upstream, route, method, Vec::new(), range).await?;
        let resp = check(resp, &upstream, route).await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        let content_range = header_str(resp.headers(), CONTENT_RANGE.as_str());
        if partial && content_range.is_none() {
            return Err(PullError::BadUpstreamResponse {
                registry: route.registry.to_string(),
                reason: "206 without Content-Range".to_owned(),
            });
        }
        let length = content_length(&resp);
        let body = (!route.head).then(|| {
            let raw = upstream_bytes(resp);
            BlobBody::unpaced(if partial {
                raw
            } else {
                Box::pin(Verifying::new(raw, digest.clone(), length)) as ByteStream
            })
        });
        Ok(BlobReply {
            digest: digest.clone(),
            content_range: if partial { content_range } else { None },
            length,
            body,
        })
    }

    /// A tags list or referrers index, passed through with its `Link` rewritten.
    pub async fn document(&self, route: &Route) -> Result<DocumentReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let resp = send(&upstream, route, Method::GET, Vec::new(), None).await?;
        let resp = check(resp, &upstream, route).await?;
        let headers = resp.headers();
        let content_type = header_str(headers, CONTENT_TYPE.as_str())
            .unwrap_or_else(|| "application/json".to_owned());
        let link = header_str(headers, LINK.as_str()).and_then(|l| rewrite_link(&l, route));
        let filters_applied = header_str(headers, "oci-filters-applied");
        let body = read_limited(resp, MAX_DOCUMENT_BYTES, &upstream).await?;
        Ok(DocumentReply {
            content_type,
            body,
            link,
            filters_applied,
        })
    }
}

/// An upstream response's body as a byte stream.
pub(super) fn upstream_bytes(resp: reqwest::Response) -> ByteStream {
    Box::pin(resp.bytes_stream().map_err(std::io::Error::other))
}
