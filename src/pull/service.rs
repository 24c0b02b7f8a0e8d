//! The pull service: manifests, blobs, tags and referrers for a [`Route`].

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RETRY_AFTER};
use http::{HeaderValue, Method, StatusCode};

use super::DEFAULT_MANIFEST_ACCEPT;
use super::error::{ErrorCode, PullError};
use super::stream::{ByteStream, Verifying};
use crate::reference::{Digest, Reference};
use crate::route::{Route, RouteKind};
use crate::store::{Store, TagRecord};
use crate::telemetry::Telemetry;
use crate::upstream::{Upstream, UpstreamRequest, Upstreams};
use std::sync::Arc;

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
    /// asked (unreachable, 5xx, 429).
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
    pub body: Option<ByteStream>,
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
    pub(super) upstreams: Upstreams,
    max_manifest_bytes: usize,
    pub(super) store: Option<Arc<Store>>,
    /// Tag records by registry, repository, tag and Accept key; concurrent revalidations of
    /// one tag make one upstream request.
    pub(super) tags: moka::future::Cache<String, TagRecord>,
    pub(super) telemetry: Arc<Telemetry>,
}

impl PullService {
    pub fn new(
        upstreams: Upstreams,
        max_manifest_bytes: usize,
        store: Option<Arc<Store>>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let ttl = store
            .as_ref()
            .map_or(std::time::Duration::from_secs(1), |s| s.config().tag_ttl);
        Self {
            upstreams,
            max_manifest_bytes,
            store,
            tags: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(super::cached::TagFreshness { ttl })
                .build(),
            telemetry,
        }
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// A manifest by tag or digest, from the store when there is one.
    pub async fn manifest(
        &self,
        route: &Route,
        reference: &Reference,
        accept: &[String],
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
        range: Option<HeaderValue>,
    ) -> Result<BlobReply, PullError> {
        match &self.store {
            Some(store) => self.blob_cached(store, route, digest, range).await,
            None => self.blob_upstream(route, digest, range).await,
        }
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// A manifest by tag or digest from upstream. `accept` is the client's list of media types.
    pub(super) async fn manifest_upstream(
        &self,
        route: &Route,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let accept = manifest_accept(accept);
        let upstream = &upstream;
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

    /// A blob, streamed. A whole-blob GET is verified against its digest on the way: a
    /// mismatch aborts the client's transfer instead of ending it cleanly.
    pub(super) async fn blob_upstream(
        &self,
        route: &Route,
        digest: &Digest,
        range: Option<HeaderValue>,
    ) -> Result<BlobReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let method = if route.head {
            Method::HEAD
        } else {
            Method::GET
        };
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
        let body = if route.head {
            None
        } else {
            let raw: ByteStream = Box::pin(resp.bytes_stream().map_err(std::io::Error::other));
            Some(if partial {
                raw
            } else {
                Box::pin(Verifying::new(raw, digest.clone(), length)) as ByteStream
            })
        };
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

/// The client's `Accept` list, plus the manifest types stevedore understands when the client
/// named none (`*/*` alone makes distribution 2.8 refuse OCI manifests).
pub(super) fn manifest_accept(client: &[String]) -> Vec<String> {
    let generic = |t: &String| {
        let t = t.split(';').next().unwrap_or("").trim();
        matches!(t, "*/*" | "application/*" | "application/json" | "")
    };
    let mut out = client.to_vec();
    if client.iter().all(generic) {
        out.splice(0..0, DEFAULT_MANIFEST_ACCEPT.iter().map(|s| s.to_string()));
    }
    out
}

pub(super) async fn send(
    upstream: &Upstream,
    route: &Route,
    method: Method,
    accept: Vec<String>,
    range: Option<HeaderValue>,
) -> Result<reqwest::Response, PullError> {
    let req = UpstreamRequest {
        method,
        path: route.upstream_path(),
        query: route.upstream_query(),
        repository: route.repository.clone(),
        accept,
        range,
    };
    Ok(upstream.send(&req).await?)
}

/// Maps a non-success upstream status to the error a client should see.
pub(super) async fn check(
    resp: reqwest::Response,
    upstream: &Upstream,
    route: &Route,
) -> Result<reqwest::Response, PullError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let registry = upstream.registry().to_string();
    let retry_after = header_str(resp.headers(), RETRY_AFTER.as_str());
    let what = describe_route(route);
    Err(match status {
        StatusCode::NOT_FOUND => {
            let code = match route.kind {
                RouteKind::Manifest(_) => ErrorCode::ManifestUnknown,
                RouteKind::Blob(_) => ErrorCode::BlobUnknown,
                RouteKind::Tags { .. } | RouteKind::Referrers { .. } => ErrorCode::NameUnknown,
            };
            PullError::NotFound {
                code,
                message: format!("{what} not found at {registry}"),
                body: oci_error_body(resp).await,
            }
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PullError::Denied(format!(
            "registry {registry} denied stevedore access to repository {} ({status})",
            route.repository
        )),
        StatusCode::TOO_MANY_REQUESTS => PullError::RateLimited {
            registry,
            retry_after,
        },
        StatusCode::RANGE_NOT_SATISFIABLE => PullError::RangeNotSatisfiable {
            content_range: header_str(resp.headers(), CONTENT_RANGE.as_str()),
        },
        _ => PullError::UpstreamStatus {
            registry,
            status,
            what,
            retry_after,
        },
    })
}

/// The upstream's error body when it is OCI error JSON (kept as bytes), read up to 64 KiB.
async fn oci_error_body(resp: reqwest::Response) -> Option<Bytes> {
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        if body.len() + chunk.len() > 64 * 1024 {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<serde_json::Value>,
    }
    let parsed: Errors = serde_json::from_slice(&body).ok()?;
    (!parsed.errors.is_empty()).then(|| body.freeze())
}

fn describe_route(route: &Route) -> String {
    let repo = format!("{}/{}", route.registry, route.repository);
    match &route.kind {
        RouteKind::Manifest(r) => format!("manifest {repo}:{r}"),
        RouteKind::Blob(d) => format!("blob {d} in {repo}"),
        RouteKind::Tags { .. } => format!("tags of {repo}"),
        RouteKind::Referrers { digest, .. } => format!("referrers of {digest} in {repo}"),
    }
}

/// The response's `Content-Length`: the header first, since for HEAD reqwest reports the
/// (empty) body's length.
pub(super) fn content_length(resp: &reqwest::Response) -> Option<u64> {
    header_str(resp.headers(), CONTENT_LENGTH.as_str())
        .and_then(|l| l.parse().ok())
        .or_else(|| resp.content_length())
}

pub(super) fn header_str(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
    upstream: &Upstream,
) -> Result<Bytes, PullError> {
    let registry = upstream.registry().to_string();
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(PullError::ManifestTooLarge { registry, limit });
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            PullError::Upstream(crate::upstream::UpstreamError::Unreachable {
                registry: registry.clone(),
                reason: format!("reading the response: {e}"),
            })
        })?;
        if body.len() + chunk.len() > limit {
            return Err(PullError::ManifestTooLarge { registry, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The manifest's digest: the one asked for (verified), or the upstream's header (verified),
/// or computed.
fn verify_manifest(
    upstream: &Upstream,
    reference: &Reference,
    header: Option<Digest>,
    body: &[u8],
) -> Result<Digest, PullError> {
    let expected = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => header,
    };
    match expected {
        Some(d) if d.matches(body) => Ok(d),
        Some(d) => {
            let mut h = d.algorithm().hasher();
            h.update(body);
            Err(PullError::DigestMismatch {
                registry: upstream.registry().to_string(),
                expected: d,
                actual: h.finish(),
            })
        }
        None => Ok(Digest::sha256_of(body)),
    }
}

/// The `mediaType` field of a manifest, for upstreams that send no usable `Content-Type`.
pub(super) fn media_type_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body).ok()?.media_type
}

/// Rewrites `<…/v2/<name>/tags/list?n=2&last=b>; rel="next"` into stevedore's form.
fn rewrite_link(link: &str, route: &Route) -> Option<String> {
    let start = link.find('<')?;
    let end = link[start..].find('>')? + start;
    let target = &link[start + 1..end];
    let path_and_query = match url::Url::parse(target) {
        Ok(abs) => match abs.query() {
            Some(q) => format!("{}?{q}", abs.path()),
            None => abs.path().to_owned(),
        },
        Err(_) => target.to_owned(),
    };
    let rewritten = route.client_link(&path_and_query)?;
    Some(format!("<{rewritten}>{}", &link[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::RegistryHost;
    use crate::route::{self, ApiRequest, RouteContext};

    fn route_of(path: &str, query: Option<&str>) -> Route {
        let d = RegistryHost::parse("docker.io").unwrap();
        let ctx = RouteContext {
            default_registry: &d,
            authority: None,
        };
        match route::parse(&Method::GET, path, query, &ctx).unwrap() {
            ApiRequest::Read(r) => r,
            ApiRequest::Ping => panic!("ping"),
        }
    }

    #[test]
    fn links_are_rewritten() {
        let r = route_of("/v2/r.example/app/tags/list", None);
        assert_eq!(
            rewrite_link("</v2/app/tags/list?last=b&n=2>; rel=\"next\"", &r).unwrap(),
            "</v2/r.example/app/tags/list?last=b&n=2>; rel=\"next\""
        );
        let r = route_of("/v2/app/tags/list", Some("ns=r.example"));
        assert_eq!(
            rewrite_link("<https://r.example/v2/app/tags/list?n=2>; rel=\"next\"", &r).unwrap(),
            "</v2/app/tags/list?n=2&ns=r.example>; rel=\"next\""
        );
    }

    #[test]
    fn accept_lists() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(manifest_accept(&[]).len(), 4);
        let wild = manifest_accept(&v(&["*/*"]));
        assert_eq!(wild.len(), 5);
        assert_eq!(wild[4], "*/*");
        let docker = v(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            "*/*",
        ]);
        assert_eq!(manifest_accept(&docker), docker);
    }

    #[test]
    fn media_type_probe() {
        assert_eq!(
            media_type_of(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
            )
            .as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(media_type_of(b"not json"), None);
    }
}
