//! Blobs with a content store: served from disk when stored, else filled from upstream once
//! per digest however many clients ask at once, each reading the blob as it lands.
//!
//! The fill table (`flight.rs`) decides who fills. The leader asks the upstream and
//! publishes one outcome: the running fill (everyone reads it), "stored" (it committed
//! meanwhile), "not stored" (the store cannot keep it: everyone streams it themselves) or
//! the upstream's negative answer (404, 401/403, 429…), which requests for the same
//! repository share instead of asking again. A leader whose request was cancelled gives up
//! and one of the waiters leads.

use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, StatusCode};

use super::error::PullError;
use super::flight::{Outcome, Permit, Role};
use super::manifests::MAX_ROUNDS;
use super::range::{ByteRange, Span, span};
use super::service::{BlobReply, PullService, upstream_bytes};
use super::stream::Verifying;
use super::wire::{check, header_str, send};
use crate::body::{BlobBody, ChunkLimit, hold};
use crate::reference::{Digest, RegistryHost, Repository};
use crate::route::{Route, RouteKind};
use crate::store::{Fill, FillFailure, FillSource, FillState, Resume, Store, Stored};
use crate::upstream::{Upstream, UpstreamRequest};

/// What the leader of a blob's flight tells the requests waiting on it.
#[derive(Clone)]
pub(crate) enum FillOutcome {
    /// A fill is running (or just ended): read it.
    Running(Arc<Fill>),
    /// The blob was committed meanwhile: read it from the store.
    Stored,
    /// The store cannot keep it (low on space, too large): fetch it yourself.
    NotStored,
    /// The upstream's answer for this registry and repository.
    Failed {
        registry: RegistryHost,
        repository: Repository,
        error: PullError,
    },
}

impl PullService {
    pub(super) async fn blob_cached(
        &self,
        store: &Arc<Store>,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
        ask_peers: bool,
    ) -> Result<BlobReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        if let Some(stored) = store.open_blob(digest).await? {
            return self
                .serve_stored(store, &upstream, route, digest, range, stored)
                .await;
        }
        if route.head {
            // Never a full download for a HEAD, and never a false 404 (chained caches).
            self.telemetry.cache("blob", "miss");
            let reply = self.blob_upstream(route, digest, None).await?;
            if upstream.trusted() {
                store
                    .add_members(&route.registry, &route.repository, vec![digest.clone()])
                    .await?;
            }
            return Ok(reply);
        }
        for _ in 0..MAX_ROUNDS {
            let outcome = match self.fills.join(digest) {
                Role::Lead(permit) => {
                    return self
                        .lead_fill(store, &upstream, route, digest, range, permit, ask_peers)
                        .await;
                }
                Role::Wait(waiter) => waiter.wait(self.wait_timeout).await,
            };
            match outcome {
                Outcome::Done(FillOutcome::Running(fill)) => {
                    crate::telemetry::request::link_current(&fill.span);
                    if !self
                        .may_serve_stored(store, &upstream, route, digest)
                        .await?
                    {
                        return self.pass_through(store, route, digest, range).await;
                    }
                    self.telemetry.cache("blob", "joined");
                    return read_fill(store, route, &fill, range).await;
                }
                Outcome::Done(FillOutcome::Stored) => {
                    if let Some(stored) = store.open_blob(digest).await? {
                        return self
                            .serve_stored(store, &upstream, route, digest, range, stored)
                            .await;
                    }
                }
                Outcome::Done(FillOutcome::NotStored) => {
                    return self.pass_through(store, route, digest, range).await;
                }
                Outcome::Done(FillOutcome::Failed {
                    registry,
                    repository,
                    error,
                }) if registry == route.registry && repository == route.repository => {
                    return Err(error);
                }
                // Another repository's answer says nothing about this one: ask again.
                Outcome::Done(FillOutcome::Failed { .. }) | Outcome::GiveUp => {}
                Outcome::Timeout => return Err(PullError::timeout(route, self.wait_timeout)),
            }
        }
        Err(PullError::timeout(route, self.wait_timeout))
    }

    /// Serves committed content once the repository may see it; otherwise streams it from
    /// the upstream, which proves the upstream has it.
    async fn serve_stored(
        &self,
        store: &Arc<Store>,
        upstream: &Upstream,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
        stored: Stored,
    ) -> Result<BlobReply, PullError> {
        if !self
            .may_serve_stored(store, upstream, route, digest)
            .await?
        {
            drop(stored);
            return self.pass_through(store, route, digest, range).await;
        }
        self.telemetry.cache("blob", "hit");
        let size = stored.size;
        if route.head {
            return Ok(BlobReply {
                digest: digest.clone(),
                content_range: None,
                length: Some(size),
                body: None,
            });
        }
        let (start, end, content_range) = resolve(range, size)?;
        let chunk = ChunkLimit::default();
        Ok(BlobReply {
            digest: digest.clone(),
            content_range,
            length: Some(end.unwrap_or(size) - start),
            body: Some(BlobBody {
                stream: stored.stream(start, end, chunk.clone()),
                chunk_limit: Some(chunk),
            }),
        })
    }

    /// Leads the flight of a missing blob: asks the upstream, then fills, streams without
    /// storing, or shares the upstream's refusal.
    #[allow(clippy::too_many_arguments)]
    async fn lead_fill(
        &self,
        store: &Arc<Store>,
        upstream: &Arc<Upstream>,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
        permit: Permit<Digest, FillOutcome>,
        ask_peers: bool,
    ) -> Result<BlobReply, PullError> {
        // A fill may have committed between the miss and taking the lead.
        if let Some(stored) = store.open_blob(digest).await? {
            permit.publish(FillOutcome::Stored);
            drop(permit);
            return self
                .serve_stored(store, upstream, route, digest, range, stored)
                .await;
        }
        let failed = |error: &PullError| FillOutcome::Failed {
            registry: route.registry.clone(),
            repository: route.repository.clone(),
            error: error.clone(),
        };
        let Some(slot) = store.fill_slot() else {
            let e = PullError::Busy;
            permit.publish(failed(&e));
            return Err(e);
        };
        // Another replica may have put it in the shared bucket: filled from there, verified
        // again, if this repository may see it.
        let shared = match store.shared_blob(digest).await {
            Some(source) => {
                let may = self
                    .may_serve_stored(store, upstream, route, digest)
                    .await?;
                may.then_some(source)
            }
            None => None,
        };
        let from_bucket = shared.is_some();
        // Else the digest's owner among the replicas fills it for all of them.
        let from_peer = match (&shared, &self.peers) {
            (None, Some(peers)) if ask_peers => {
                let owners = peers.owners(digest);
                if owners.is_empty() {
                    None
                } else {
                    let fallback = upstream_resume(upstream.clone(), route, digest);
                    peers.source(owners, route, digest, fallback).await
                }
            }
            _ => None,
        };
        let peer_fill = from_peer.is_some();
        let source = match shared.or(from_peer) {
            Some(source) => source,
            None => match fill_source(upstream.clone(), route, digest).await {
                Ok(source) => source,
                Err(e) => {
                    permit.publish(failed(&e));
                    return Err(e);
                }
            },
        };
        self.telemetry.cache(
            "blob",
            match (from_bucket, peer_fill) {
                (true, _) => "shared",
                (_, true) => "peer",
                _ => "miss",
            },
        );
        if let Err(reason) = store.may_keep(source.total) {
            permit.publish(FillOutcome::NotStored);
            drop(permit);
            store.passed_through();
            tracing::info!(%digest, ?reason, "streaming a blob without storing it");
            if range.is_some() {
                drop(source);
                return self.pass_through(store, route, digest, range).await;
            }
            let verified = Verifying::new(source.body, digest.clone(), source.total);
            return Ok(BlobReply {
                digest: digest.clone(),
                content_range: None,
                length: source.total,
                body: Some(BlobBody::unpaced(hold(Box::pin(verified), slot))),
            });
        }
        let fill = match store.start_fill(slot, digest, source).await {
            Ok(fill) => fill,
            Err(e) => {
                let e = PullError::from(e);
                permit.publish(failed(&e));
                return Err(e);
            }
        };
        permit.publish(FillOutcome::Running(fill.clone()));
        if !from_bucket {
            // The upstream is sending this repository the blob: it holds it.
            store
                .add_members(&route.registry, &route.repository, vec![digest.clone()])
                .await?;
        }
        let running = fill.clone();
        tokio::spawn(async move {
            running.finished().await;
            drop(permit);
        });
        read_fill(store, route, &fill, range).await
    }

    /// Streams a blob from upstream without the store, as one of the bounded transfers.
    async fn pass_through(
        &self,
        store: &Arc<Store>,
        route: &Route,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobReply, PullError> {
        let slot = store.fill_slot().ok_or(PullError::Busy)?;
        store.passed_through();
        let mut reply = self.blob_upstream(route, digest, range).await?;
        reply.body = reply.body.map(|b| BlobBody::unpaced(hold(b.stream, slot)));
        Ok(reply)
    }
}

/// A reader of a running fill for `range`.
async fn read_fill(
    store: &Arc<Store>,
    route: &Route,
    fill: &Fill,
    range: Option<ByteRange>,
) -> Result<BlobReply, PullError> {
    // Without a known size a range cannot be placed: the whole blob is the answer.
    let (start, end, content_range) = match fill.total {
        Some(total) => resolve(range, total)?,
        None => (0, None, None),
    };
    let chunk = ChunkLimit::default();
    let stream = fill
        .reader(start, end, Some(store.pin(&fill.digest)), chunk.clone())
        .await?;
    // A fill that failed before this reader started answers with its error, not a broken body.
    if let FillState::Failed(failure) = fill.state() {
        return Err(failure_error(route, &failure));
    }
    Ok(BlobReply {
        digest: fill.digest.clone(),
        length: end.or(fill.total).map(|e| e - start),
        content_range,
        body: Some(BlobBody {
            stream,
            chunk_limit: Some(chunk),
        }),
    })
}

fn failure_error(route: &Route, failure: &FillFailure) -> PullError {
    match failure {
        FillFailure::Upstream(reason) | FillFailure::Corrupt(reason) => {
            PullError::BadUpstreamResponse {
                registry: route.registry.to_string(),
                reason: reason.clone(),
            }
        }
        FillFailure::Store { reason, full: true } => PullError::StoreFull(reason.clone()),
        FillFailure::Store { reason, .. } => PullError::Store(reason.clone()),
    }
}

/// Start, exclusive end and `Content-Range` for a range against content of `total` bytes.
fn resolve(
    range: Option<ByteRange>,
    total: u64,
) -> Result<(u64, Option<u64>, Option<String>), PullError> {
    match span(range, total) {
        Span::Whole => Ok((0, None, None)),
        Span::Part { start, end } => Ok((
            start,
            Some(end),
            Some(format!("bytes {start}-{}/{total}", end - 1)),
        )),
        Span::Unsatisfiable => Err(PullError::RangeNotSatisfiable {
            content_range: Some(format!("bytes */{total}")),
        }),
    }
}

/// The upstream GET that starts a fill, and how to resume it from an offset.
async fn fill_source(
    upstream: Arc<Upstream>,
    route: &Route,
    digest: &Digest,
) -> Result<FillSource, PullError> {
    let route = Route {
        head: false,
        kind: RouteKind::Blob(digest.clone()),
        ..route.clone()
    };
    let resp = send(&upstream, &route, Method::GET, Vec::new(), None).await?;
    let resp = check(resp, &upstream, &route).await?;
    let total = resp.content_length().or_else(|| {
        header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|l| l.parse().ok())
    });
    Ok(FillSource {
        total,
        body: upstream_bytes(resp),
        resume: upstream_resume(upstream, &route, digest),
        from_bucket: false,
    })
}

/// Resumes a fill from the upstream with a ranged GET.
fn upstream_resume(upstream: Arc<Upstream>, route: &Route, digest: &Digest) -> Resume {
    let route = Route {
        head: false,
        kind: RouteKind::Blob(digest.clone()),
        ..route.clone()
    };
    Box::new(move |offset| {
        let upstream = upstream.clone();
        let req = UpstreamRequest {
            method: Method::GET,
            path: route.upstream_path(),
            query: Vec::new(),
            repository: route.repository.clone(),
            accept: Vec::new(),
            range: HeaderValue::from_str(&format!("bytes={offset}-")).ok(),
        };
        Box::pin(async move {
            let resp = upstream.send(&req).await.map_err(|e| e.to_string())?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => Ok((upstream_bytes(resp), true)),
                StatusCode::OK => Ok((upstream_bytes(resp), false)),
                other => Err(format!("upstream answered {other} to a resume")),
            }
        })
    })
}
