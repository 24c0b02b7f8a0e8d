//! The mirror front door: `/v2/…` requests in every client's form. Handlers are thin:
//! parse → policy → pull service → response.

use http::header::{ACCEPT, RANGE};
use http::{HeaderMap, Request, Response};

use super::pacing::Pacer;
use super::response::{self, Body, Failure};
use super::{AppState, Live, access};
use crate::policy::Caller;
use crate::pull::{ByteRange, ManifestAccept};
use crate::reference::RegistryHost;
use crate::route::{self, ApiRequest, Route, RouteContext, RouteKind};
use crate::telemetry::request;

/// Serves a mirror request; `authority` is the registry of a forward-proxy request (the only
/// one it may name).
pub async fn handle<B>(
    state: &AppState,
    live: &Live,
    req: &Request<B>,
    caller: Option<&Caller>,
    pacer: &Pacer,
    authority: Option<&RegistryHost>,
) -> Result<Response<Body>, Failure> {
    let ctx = RouteContext {
        default_registry: &live.default_registry,
        authority,
    };
    let uri = req.uri();
    let policy = live.policy.as_ref();
    match route::parse(req.method(), uri.path(), uri.query(), &ctx)? {
        ApiRequest::Ping => {
            request::set_route("ping");
            access::check_ping(policy, caller)?;
            Ok(response::ping())
        }
        ApiRequest::Read(route) => {
            request::set_route(match route.kind {
                RouteKind::Manifest(_) => "manifest",
                RouteKind::Blob(_) => "blob",
                RouteKind::Tags { .. } => "tags",
                RouteKind::Referrers { .. } => "referrers",
            });
            let outcome = match access::check(policy, caller, &route) {
                Ok(()) => read(state, &route, req.headers(), pacer).await,
                Err(refused) => Err(refused),
            };
            access::audit(caller, &route, &outcome);
            outcome
        }
    }
}

/// Serves a parsed read request; shared by every front door.
pub async fn read(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    pacer: &Pacer,
) -> Result<Response<Body>, Failure> {
    match &route.kind {
        RouteKind::Manifest(reference) => {
            let accept = ManifestAccept::parse(
                headers
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let m = state.pull.manifest(route, reference, accept).await?;
            Ok(response::manifest(m))
        }
        RouteKind::Blob(digest) => {
            let range = headers
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(ByteRange::parse);
            let b = state.pull.blob(route, digest, range).await?;
            Ok(response::blob(b, pacer))
        }
        RouteKind::Tags { .. } | RouteKind::Referrers { .. } => {
            let doc = state.pull.document(route).await?;
            Ok(response::document(doc, route.head))
        }
    }
}
