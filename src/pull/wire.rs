//! The engine's side of an upstream exchange: sending a route's request, mapping the
//! upstream's status to the error a client should see, reading small bodies with a bound, and
//! verifying manifests.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, RETRY_AFTER};
use http::{HeaderValue, Method, StatusCode};

use super::error::{ErrorCode, PullError};
use crate::reference::{Digest, Reference};
use crate::route::{Route, RouteKind};
use crate::upstream::{Upstream, UpstreamRequest};

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
pub(super) async fn read_limited(
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
pub(super) fn verify_manifest(
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
pub(super) fn rewrite_link(link: &str, route: &Route) -> Option<String> {
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
