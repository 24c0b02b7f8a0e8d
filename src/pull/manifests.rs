//! Manifests and tags with a content store: manifests by digest from memory or disk, fetched
//! once per repository and digest however many ask at once; tags revalidated by a single
//! upstream HEAD after their TTL and served stale when the upstream cannot be asked.
//!
//! Repository scoping comes first: a digest is read from the store for a repository only
//! once that repository is known to contain it (see `scope.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::accept::ManifestAccept;
use super::error::PullError;
use super::flight::{Outcome, Role};
use super::scope::referenced_digests;
use super::service::{ManifestReply, PullService};
use super::wire::media_type_of;
use crate::reference::{Digest, Reference};
use crate::route::{Route, RouteKind};
use crate::store::{Store, StoredManifest, TagRecord, now};
use crate::upstream::Upstream;

/// Times a request waits for others' fetches that were given up before fetching itself.
pub(super) const MAX_ROUNDS: usize = 4;

/// Keeps a tag record in memory for what is left of its freshness.
pub(super) struct TagFreshness {
    pub ttl: Duration,
}

impl moka::Expiry<String, TagRecord> for TagFreshness {
    fn expire_after_create(&self, _k: &String, v: &TagRecord, _at: Instant) -> Option<Duration> {
        Some(self.ttl.saturating_sub(v.age()))
    }
}

impl PullService {
    pub(super) async fn manifest_cached(
        &self,
        store: &Arc<Store>,
        route: &Route,
        reference: &Reference,
        accept: ManifestAccept,
    ) -> Result<ManifestReply, PullError> {
        let upstream = self.upstreams.get(&route.registry)?;
        let (digest, stale) = match reference {
            Reference::Digest(d) => (d.clone(), false),
            Reference::Tag(tag) => {
                self.resolve_tag(store, &upstream, route, tag, accept)
                    .await?
            }
        };
        if self
            .may_serve_stored(store, &upstream, route, &digest)
            .await?
            && let Some(m) = store
                .manifest(&digest, self.max_manifest_bytes as u64)
                .await?
        {
            self.telemetry.cache("manifest", "hit");
            return Ok(from_store(digest, m, route.head, stale));
        }
        self.telemetry.cache("manifest", "miss");
        let mut reply = self
            .fetch_manifest(store, &upstream, route, &digest)
            .await?;
        reply.stale = stale;
        if route.head {
            reply.body = None;
        }
        Ok(reply)
    }

    /// Fetches a manifest by digest for a repository, once however many ask at once.
    async fn fetch_manifest(
        &self,
        store: &Arc<Store>,
        upstream: &Arc<Upstream>,
        route: &Route,
        digest: &Digest,
    ) -> Result<ManifestReply, PullError> {
        let key = format!("{}/{}@{digest}", route.registry, route.repository);
        let reference = Reference::Digest(digest.clone());
        for _ in 0..MAX_ROUNDS {
            match self.manifest_fetches.join(&key) {
                Role::Lead(permit) => {
                    // Content by digest is what it is: ask with every type, so one client's
                    // narrow Accept never becomes another's 404.
                    let fetched = self
                        .fetch_and_store(
                            store,
                            upstream,
                            route,
                            &reference,
                            ManifestAccept::default(),
                        )
                        .await;
                    permit.publish(fetched.clone());
                    return fetched;
                }
                Role::Wait(waiter) => match waiter.wait(self.wait_timeout).await {
                    Outcome::Done(fetched) => {
                        self.telemetry.cache("manifest", "joined");
                        return fetched;
                    }
                    Outcome::GiveUp => continue,
                    Outcome::Timeout => return Err(PullError::timeout(route, self.wait_timeout)),
                },
            }
        }
        Err(PullError::timeout(route, self.wait_timeout))
    }

    /// GETs a manifest upstream, stores it (verified) and records it as a member of the
    /// repository, with what it references when the registry is one stevedore trusts to
    /// enforce that (see `scope.rs`).
    async fn fetch_and_store(
        &self,
        store: &Arc<Store>,
        upstream: &Upstream,
        route: &Route,
        reference: &Reference,
        accept: ManifestAccept,
    ) -> Result<ManifestReply, PullError> {
        let get = Route {
            head: false,
            kind: RouteKind::Manifest(reference.clone()),
            ..route.clone()
        };
        let reply = self.manifest_upstream(&get, reference, accept).await?;
        let body = reply.body.clone().unwrap_or_default();
        let mut members = vec![reply.digest.clone()];
        if upstream.trusted() {
            members.extend(referenced_digests(&body));
        }
        if let Err(e) = store
            .put_manifest(&reply.digest, body, reply.media_type.clone())
            .await
        {
            tracing::warn!(digest = %reply.digest, error = %e, "could not store a manifest; serving it anyway");
        }
        if let Err(e) = store
            .add_members(&route.registry, &route.repository, members)
            .await
        {
            tracing::warn!(error = %e, "could not record repository membership");
        }
        Ok(reply)
    }

    /// The digest a tag points to: from a fresh record, else revalidated upstream (one HEAD,
    /// shared by concurrent requests), else — when the upstream cannot be asked — from a
    /// record no older than `stale-max-age`, marked stale.
    async fn resolve_tag(
        &self,
        store: &Arc<Store>,
        upstream: &Arc<Upstream>,
        route: &Route,
        tag: &str,
        accept: ManifestAccept,
    ) -> Result<(Digest, bool), PullError> {
        let key = accept.key();
        let cache_key = format!("{}/{}:{tag}#{key}", route.registry, route.repository);
        let ttl = store.config().tag_ttl;
        // A fresh record in memory answers without touching the disk or the upstream.
        let outcome = self
            .tags
            .try_get_with(cache_key, async {
                let previous = store
                    .tag(&route.registry, &route.repository, tag, &key)
                    .await;
                if let Some(rec) = &previous
                    && rec.age() < ttl
                    && store.contains(&parse_digest(rec)?).await
                {
                    return Ok(rec.clone());
                }
                self.revalidate_tag(store, upstream, route, tag, accept, previous.is_some())
                    .await
            })
            .await;
        let e = match outcome {
            Ok(rec) => return Ok((parse_digest(&rec)?, false)),
            Err(e) => (*e).clone(),
        };
        if !e.is_upstream_unavailable() {
            return Err(e);
        }
        match store
            .tag(&route.registry, &route.repository, tag, &key)
            .await
        {
            Some(rec)
                if rec.age() <= store.config().stale_max_age
                    && store.contains(&parse_digest(&rec)?).await =>
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
        upstream: &Arc<Upstream>,
        route: &Route,
        tag: &str,
        accept: ManifestAccept,
        known_before: bool,
    ) -> Result<TagRecord, PullError> {
        let reference = Reference::Tag(tag.to_owned());
        // A known tag is checked with HEAD (Docker Hub does not count HEADs); the manifest is
        // fetched only when its digest changed. A registry stevedore does not trust to keep
        // repositories apart must show the content (GET), not just name a digest.
        let mut head = None;
        if known_before {
            let probe = Route {
                head: true,
                ..route.clone()
            };
            head = self
                .manifest_head(upstream, &probe, &reference, &accept.media_types())
                .await?;
        }
        let reply = match head {
            Some(h) if upstream.trusted() && store.contains(&h.digest).await => {
                store
                    .add_members(&route.registry, &route.repository, vec![h.digest.clone()])
                    .await?;
                h
            }
            Some(h) => {
                self.fetch_manifest(store, upstream, route, &h.digest)
                    .await?
            }
            None => {
                self.fetch_and_store(store, upstream, route, &reference, accept)
                    .await?
            }
        };
        let record = TagRecord {
            digest: reply.digest.to_string(),
            media_type: reply.media_type.clone(),
            size: reply.size,
            checked_at: now(),
        };
        store
            .put_tag(
                &route.registry,
                &route.repository,
                tag,
                &accept.key(),
                record.clone(),
            )
            .await?;
        Ok(record)
    }
}

fn from_store(digest: Digest, m: StoredManifest, head: bool, stale: bool) -> ManifestReply {
    let media_type = m
        .media_type
        .or_else(|| media_type_of(&m.bytes))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    ManifestReply {
        digest,
        media_type,
        size: m.bytes.len() as u64,
        body: (!head).then_some(m.bytes),
        stale,
    }
}

fn parse_digest(rec: &TagRecord) -> Result<Digest, PullError> {
    rec.digest
        .parse()
        .map_err(|e| PullError::Store(format!("a stored tag record is damaged: {e}")))
}
