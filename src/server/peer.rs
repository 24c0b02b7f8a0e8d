//! The peer path: `/_stevedore/peer/id` (who this replica is) and
//! `/_stevedore/peer/v2/<repository>/blobs/<digest>?ns=<registry>` (a blob another replica
//! misses and this one owns), for requests that present the replicas' shared secret only.
//! Policy and per-client rate limits are the asking replica's business; repository scoping
//! is enforced here as for any request.

use http::header::RANGE;
use http::{Request, Response};

use super::pacing::Pacer;
use super::response::{self, Body, Failure};
use super::{AppState, Live};
use crate::peers::{PATH_PREFIX, SECRET_HEADER};
use crate::pull::ByteRange;
use crate::route::{self, ApiRequest, RouteContext, RouteError, RouteKind};

/// Whether `req` is on the peer path and presents the replicas' shared secret.
pub fn admitted<B>(state: &AppState, req: &Request<B>) -> bool {
    if !req.uri().path().starts_with(PATH_PREFIX) {
        return false;
    }
    let presented = req
        .headers()
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    state.pull.peers().is_some_and(|p| p.admits(presented))
}

/// Serves an admitted peer request.
pub async fn handle<B>(
    state: &AppState,
    live: &Live,
    req: &Request<B>,
    pacer: &Pacer,
) -> Result<Response<Body>, Failure> {
    let path = req.uri().path();
    let not_here = || Failure::Route(RouteError::NotApi(path.to_owned()));
    let Some(peers) = state.pull.peers() else {
        return Err(not_here());
    };
    let rest = path.strip_prefix(PATH_PREFIX).unwrap_or_default();
    if rest == "/id" {
        return Ok(response::text(bytes::Bytes::from(peers.id().to_owned())));
    }
    let ctx = RouteContext {
        default_registry: &live.default_registry,
        authority: None,
    };
    let ApiRequest::Read(route) = route::parse(req.method(), rest, req.uri().query(), &ctx)? else {
        return Err(not_here());
    };
    let RouteKind::Blob(digest) = &route.kind else {
        return Err(not_here());
    };
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse);
    let blob = state.pull.blob_for_peer(&route, digest, range).await?;
    Ok(response::blob(blob, pacer))
}
