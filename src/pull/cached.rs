//! The engine's cached paths: manifests and blobs served from the content store, filled from
//! upstream once per digest, with tags revalidated by a single upstream HEAD after their TTL,
//! served stale when the upstream cannot be asked, and repository scoping on every read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, StatusCode};

use super::ByteStream;
use super::error::PullError;
use super::service::{
    BlobReply, ManifestReply, PullService, check, header_str, manifest_accept, media_type_of, send,
};
use crate::reference::{Digest, Reference};
use crate::route::{Route, RouteKind};
use crate::store::{
    FillSource, FillState, Joined, Resume, Store, Stored, TagRecord, accept_key, now,
};
use crate::upstream::{Upstream, UpstreamRequest};

/// Keeps a tag record in memory for what is left of its freshness.
pub(super) struct TagFreshness {
    pub ttl: Duration,
}

impl moka::Expiry<String, TagRecord> for TagFreshness {
    fn expire_after_create(&self, _k: &String, v: &TagRecord, _at: Instant) -> Option<Duration> {
        Some(self.ttl.saturating_sub(v.age()))
    }
}

/// A byte range asked for with `Range`, resolved against the content's size.
enum Span {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n`; anything else (several ranges, other units) is
/// answered with the whole content, which RFC 9110 §14.2 allows.
fn span(range: Option<&HeaderValue>, size: u64) -> Span {
    let Some(spec) = range
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.trim().strip_prefix("bytes="))
    else {
        return Span::Whole;
    };
    if spec.contains(',') {
        return Span::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Span::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b
            .parse::<u64>()
            .ok()
            .map(|n| (size.saturating_sub(n), size)),
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if e >= s => Some((s, (e + 1).min(size))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Span::Whole,
        Some((start, end)) if start >= size || start >= end => Span::Unsatisfiable,
        Some((start, end)) => Span::Part { start, end },
    }
}

impl PullService {
    pub(super) async fn manifest_cached(
        &self,
        store: &Arc<Store>,
        route: &Route,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestReply, PullError> {
        let (digest, stale) = match reference {
            Reference::Digest(d) => (d.clone(), false),
            Reference::Tag(tag) => self.resolve_tag(store, route, tag, accept).await?,
        };
        if let Some((bytes, media_type)) = store.manifest(&digest)? {
            self.telemetry.cache("manifest", "hit");
            if !store
                .index()
                .is_member(&route.registry, &route.repository, &digest)
            {
                self.confirm_membership(store, route, &digest, accept)
                    .await?;
            }
            let media_type = media_type
                .or_else(|| media_type_of(&bytes))
                .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
            return Ok(ManifestReply {
                digest,
                media_type,
                size: bytes.len() as u64,
                body: (!route.head).then_some(bytes),
                stale,
            });
        }
        self.telemetry.cache("manifest", "miss");
        let mut reply = self
            .fetch_and_store(store, route, &Reference::Digest(digest), accept)
            .await?;
        reply.stale = stale;
        if route.head {
            reply.body = None;
        }
        Ok(reply)
    }

    /// GETs a manifest upstream, stores it (verified) and records what it references as
    /// members of the repository.
    async fn fetch_and_store(
        &self,
        store: &Arc<Store>,
        route: &Route,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestReply, PullError> {
        let get = Route {
            head: false,
            kind: RouteKind::Manifest(reference.clone()),
            ..route.clone()
        };
        let reply = self.manifest_upstream(&get, reference, accept).await?;
        let body = reply.body.clone().unwrap_or_default();
        let (digest, media_type) = (reply.digest.clone(), reply.media_type.clone());
        let (registry, repository) = (route.registry.clone(), route.repository.clone());
        on_store(store, move |store| {
            store.put_manifest(&digest, &body, &media_type)?;
            let index = store.index();
            index.add_member(&registry, &repository, &digest)?;
            for child in referenced_digests(&body) {
                index.add_member(&registry, &repository, &child)?;
            }
            Ok(())
        })
        .await?;
        Ok(reply)
    }

    /// The digest a tag points to: from a fresh record, else revalidated upstream (one HEAD,
    /// shared by concurrent requests), else — when the upstream cannot be asked — from a
    /// record no older than `stale-max-age`, marked stale.
    async fn resolve_tag(
        &self,
        store: &Arc<Store>,
        route: &Route,
        tag: &str,
        accept: &[String],
    ) -> Result<(Digest, bool), PullError> {
        let accept = manifest_accept(accept);
        let key = accept_key(&accept);
        let cache_key = format!("{}/{}:{tag}#{key}", route.registry, route.repository);
        let index = store.index();
        let ttl = store.config().tag_ttl;
        // A fresh record in memory answers without touching the disk or the upstream.
        let outcome = self
            .tags
            .try_get_with(cache_key, async {
                let previous = index.get_tag(&route.registry, &route.repository, tag, &key);
                if let Some(rec) = &previous
                    && rec.age() < ttl
                    && store.size_of_manifest(rec)
                {
                    return Ok(rec.clone());
                }
                self.revalidate_tag(store, route, tag, &accept, previous.as_ref(), &key)
                    .await
            })
            .await;
        let e = match outcome {
            Ok(rec) => return Ok((parse_digest(&rec)?, false)),
            Err(e) => (*e).clone(),
        };
        match index.get_tag(&route.registry, &route.repository, tag, &key) {
            Some(rec)
                if e.is_upstream_unavailable()
                    && rec.age() <= store.config().stale_max_age
                    && store.size_of_manifest(&rec) =>
            {
                tracing::warn!(
                    registry = %route.registry, repository = %route.repository, tag,
                    age_s = rec.age().as_secs(), error = %e,
                    "upstream unavailable: serving the tag's last known digest (stale)"
                );
                Ok((parse_digest(&rec)?, true))
            }
            _ => Err(e),
        }
    }

    async fn revalidate_tag(
        &self,
        store: &Arc<Store>,
        route: &Route,
        tag: &str,
        accept: &[String],
        previous: Option<&TagRecord>,
        key: &str,
    ) -> Result<TagRecord, PullError> {
        let reference = Reference::Tag(tag.to_owned());
        // A known tag is checked with HEAD (Docker Hub does not count HEADs); the manifest is
        // fetched only when its digest changed.
        let mut known = None;
        if previous.is_some() {
            let upstream = self.upstreams.get(&route.registry)?;
            let head = Route {
                head: true,
                ..route.clone()
            };
            known = self
                .manifest_head(&upstream, &head, &reference, accept)
                .await?;
        }
        let reply = match known {
            Some(h) if store.size(&h.digest).is_some() => h,
            Some(h) => {
                self.fetch_and_store(store, route, &Reference::Digest(h.digest.clone()), accept)
                    .await?
            }
            None => {
                self.fetch_and_store(store, route, &reference, accept)
                    .await?
            }
        };
        let record = TagRecord {
            digest: reply.digest.to_string(),
            media_type: reply.media_type.clone(),
            size: reply.size,
            checked_at: now(),
        };
        let (registry, repo, tag, key, rec) = (
            route.registry.clone(),
            route.repository.clone(),
            tag.to_owned(),
            key.to_owned(),
            record.clone(),
        );
        on_store(store, move |store| {
            store.index().put_tag(&registry, &repo, &tag, &key, &rec)?;
            store.index().add_member(&registry, &repo, &reply.digest)
        })
        .await?;
        Ok(record)
    }

    /// Asks the upstream whether `route`'s repository contains `digest` (HEAD), and records
    /// it if so. Guessing a digest never reads another repository's content.
    async fn confirm_membership(
        &self,
        store: &Arc<Store>,
        route: &Route,
        digest: &Digest,
        accept: &[String],
    ) -> Result<(), PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let kind = match route.kind {
            RouteKind::Manifest(_) => RouteKind::Manifest(Reference::Digest(digest.clone())),
            _ => RouteKind::Blob(digest.clone()),
        };
        let probe = Route {
            head: true,
            kind,
            ..route.clone()
        };
        let accept = match probe.kind {
            RouteKind::Manifest(_) => manifest_accept(accept),
            _ => Vec::new(),
        };
        let resp = send(&upstream, &probe, Method::HEAD, accept, None).await?;
        check(resp, &upstream, &probe).await?;
        store
            .index()
            .add_member(&route.registry, &route.repository, digest)?;
        Ok(())
    }

    pub(super) async fn blob_cached(
        &self,
        store: &Arc<Store>,
        route: &Route,
        digest: &Digest,
        range: Option<HeaderValue>,
    ) -> Result<BlobReply, PullError> {
        let member = store
            .index()
            .is_member(&route.registry, &route.repository, digest);
        if let Some(stored) = store.open_blob(digest)? {
            if !member {
                self.confirm_membership(store, route, digest, &[]).await?;
            }
            self.telemetry.cache("blob", "hit");
            return serve_stored(stored, route, digest, range.as_ref());
        }
        if route.head {
            // Never a full download for a HEAD, and never a false 404 (chained caches).
            self.telemetry.cache("blob", "miss");
            let reply = self.blob_upstream(route, digest, None).await?;
            store
                .index()
                .add_member(&route.registry, &route.repository, digest)?;
            return Ok(reply);
        }
        let joined = store
            .join_or_start(digest, self.fill_source(route, digest))
            .await?;
        let fill = match joined {
            Joined::Stored => {
                if !member {
                    self.confirm_membership(store, route, digest, &[]).await?;
                }
                let stored = store
                    .open_blob(digest)?
                    .ok_or_else(|| PullError::Store(format!("{digest} vanished after its fill")))?;
                return serve_stored(stored, route, digest, range.as_ref());
            }
            Joined::Fill { fill, started } => {
                self.telemetry
                    .cache("blob", if started { "miss" } else { "joined" });
                if started {
                    store
                        .index()
                        .add_member(&route.registry, &route.repository, digest)?;
                } else if !member {
                    self.confirm_membership(store, route, digest, &[]).await?;
                }
                fill
            }
        };
        // Without a known size a range cannot be placed: the whole blob is the answer.
        let (start, end, content_range) = match fill.total {
            Some(total) => resolve_span(range.as_ref(), total)?,
            None => (0, None, None),
        };
        let body = fill
            .reader(start, end, Some(store.pin(digest)))
            .map_err(|e| match fill.state() {
                FillState::Failed(reason) => PullError::BadUpstreamResponse {
                    registry: route.registry.to_string(),
                    reason,
                },
                _ => PullError::from(e),
            })?;
        Ok(BlobReply {
            digest: digest.clone(),
            length: end.or(fill.total).map(|e| e - start),
            content_range,
            body: Some(body),
        })
    }

    /// The upstream GET that starts a fill, and how to resume it from an offset.
    fn fill_source(
        &self,
        route: &Route,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<FillSource, PullError>> + Send + 'static {
        let upstream = self.upstreams.get(&route.registry);
        let route = Route {
            head: false,
            kind: RouteKind::Blob(digest.clone()),
            ..route.clone()
        };
        async move {
            let upstream: Arc<Upstream> = upstream?;
            let resp = send(&upstream, &route, Method::GET, Vec::new(), None).await?;
            let resp = check(resp, &upstream, &route).await?;
            let total = resp.content_length().or_else(|| {
                header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|l| l.parse().ok())
            });
            let body = byte_stream(resp);
            let resume: Resume = Box::new(move |offset| {
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
                        StatusCode::PARTIAL_CONTENT => Ok((byte_stream(resp), true)),
                        StatusCode::OK => Ok((byte_stream(resp), false)),
                        other => Err(format!("upstream answered {other} to a resume")),
                    }
                })
            });
            Ok(FillSource {
                total,
                body,
                resume,
            })
        }
    }
}

/// Runs store bookkeeping (small file writes) on a blocking thread.
async fn on_store<T: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> std::io::Result<T> + Send + 'static,
) -> Result<T, PullError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| PullError::Store(e.to_string()))?
        .map_err(PullError::from)
}

fn byte_stream(resp: reqwest::Response) -> ByteStream {
    use futures_util::TryStreamExt;
    Box::pin(resp.bytes_stream().map_err(std::io::Error::other))
}

/// Serves committed content.
fn serve_stored(
    stored: Stored,
    route: &Route,
    digest: &Digest,
    range: Option<&HeaderValue>,
) -> Result<BlobReply, PullError> {
    let size = stored.size;
    if route.head {
        return Ok(BlobReply {
            digest: digest.clone(),
            content_range: None,
            length: Some(size),
            body: None,
        });
    }
    let (start, end, content_range) = resolve_span(range, size)?;
    Ok(BlobReply {
        digest: digest.clone(),
        content_range,
        length: Some(end.unwrap_or(size) - start),
        body: Some(stored.stream(start, end)),
    })
}

/// Start, exclusive end and `Content-Range` for a `Range` against content of `total` bytes.
fn resolve_span(
    range: Option<&HeaderValue>,
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

fn parse_digest(rec: &TagRecord) -> Result<Digest, PullError> {
    rec.digest
        .parse()
        .map_err(|e| PullError::Store(format!("a stored tag record is damaged: {e}")))
}

/// Digests a manifest references: its config, layers, index children, blobs and subject.
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
    for single in ["config", "subject"] {
        if let Some(d) = v.get(single) {
            take(d);
        }
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

    fn h(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn ranges() {
        assert!(matches!(span(None, 10), Span::Whole));
        assert!(matches!(
            span(Some(&h("bytes=2-")), 10),
            Span::Part { start: 2, end: 10 }
        ));
        assert!(matches!(
            span(Some(&h("bytes=2-4")), 10),
            Span::Part { start: 2, end: 5 }
        ));
        assert!(matches!(
            span(Some(&h("bytes=2-40")), 10),
            Span::Part { start: 2, end: 10 }
        ));
        assert!(matches!(
            span(Some(&h("bytes=-3")), 10),
            Span::Part { start: 7, end: 10 }
        ));
        assert!(matches!(
            span(Some(&h("bytes=10-")), 10),
            Span::Unsatisfiable
        ));
        assert!(matches!(span(Some(&h("bytes=0-1,3-4")), 10), Span::Whole));
        assert!(matches!(span(Some(&h("items=0-1")), 10), Span::Whole));
    }

    #[test]
    fn references_of_a_manifest() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = format!(
            r#"{{"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"bad"}}],"manifests":[{{"digest":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        let got = referenced_digests(&Bytes::from(m));
        assert_eq!(got.len(), 3);
    }
}
