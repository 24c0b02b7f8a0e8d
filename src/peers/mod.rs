//! Replicas that share the work of fetching: every blob digest has one owner among the live
//! replicas, by rendezvous (highest random weight) hashing of replica and digest. A replica
//! that misses a blob asks the owner, which fills it once for all of them and streams it
//! while filling; when the owner cannot be reached the next replica in the digest's order
//! takes over, and the last resort is the replica's own upstream. Ownership needs no
//! agreement protocol and no conditional writes: replicas that briefly disagree on who is
//! alive fetch a blob twice at worst, and content is verified wherever it lands.
//!
//! The peer path (`/_stevedore/peer/…`) is served only to requests that present the shared
//! secret; a request on it is answered by the replica itself (it never asks further peers).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use http::StatusCode;
use sha2::Digest as _;
use url::Url;

use crate::body::ByteStream;
use crate::config::PeersConfig;
use crate::reference::Digest;
use crate::route::Route;
use crate::secret::SecretString;
use crate::store::{FillSource, Resume};

/// The header that carries the shared secret on the peer path.
pub const SECRET_HEADER: &str = "x-stevedore-peer";
/// Where replicas ask each other.
pub const PATH_PREFIX: &str = "/_stevedore/peer";
/// Longest instance id a replica answers with (its ids are 64 hex digits).
const MAX_ID: u64 = 64;
/// Most replicas taken from a DNS answer (each is asked for its id at every refresh).
const MAX_REPLICAS: usize = 256;

/// One replica as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub base: Url,
    pub is_self: bool,
}

pub struct Peers {
    /// This process's id, answered on `/_stevedore/peer/id`: how a replica finds itself in
    /// the list.
    id: String,
    config: PeersConfig,
    secret: RwLock<SecretString>,
    members: RwLock<Arc<Vec<Member>>>,
    http: reqwest::Client,
}

impl Peers {
    /// Starts the refresh task; must run inside the runtime.
    pub fn start(config: &PeersConfig) -> Result<Arc<Self>, String> {
        let secret = config
            .secret
            .read()
            .map_err(|e| format!("peers.secret: {e}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("peers: HTTP client: {e}"))?;
        let peers = Arc::new(Self {
            id: hex::encode(sha2::Sha256::digest(
                format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
            ))[..32]
                .to_owned(),
            config: config.clone(),
            secret: RwLock::new(secret),
            members: RwLock::default(),
            http,
        });
        let weak = Arc::downgrade(&peers);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                p.refresh().await;
                let every = p.config.refresh;
                drop(p);
                tokio::time::sleep(every).await;
            }
        });
        Ok(peers)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `presented` is the shared secret (compared in constant time).
    pub fn admits(&self, presented: &str) -> bool {
        let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
        let (a, b) = (secret.expose().as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Live replicas, this one included.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The replicas to ask for `digest`, in its rendezvous order, up to this one (which
    /// then fetches itself). Empty when this replica is the owner.
    pub fn owners(&self, digest: &Digest) -> Vec<Member> {
        let mut ranked: Vec<(u64, Member)> = self
            .members()
            .iter()
            .map(|m| (score(&m.base, digest), m.clone()))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked
            .into_iter()
            .map(|(_, m)| m)
            .take_while(|m| !m.is_self)
            .collect()
    }

    /// Looks the replicas up and asks each who it is; those that do not answer are left out
    /// until they do.
    async fn refresh(&self) {
        if let Ok(s) = self.config.secret.read() {
            *self.secret.write().unwrap_or_else(PoisonError::into_inner) = s;
        }
        let bases = self.lookup().await;
        let asks = bases.into_iter().map(|base| async move {
            let id = self.ask_id(&base).await?;
            Some(Member {
                is_self: id == self.id,
                base,
            })
        });
        let mut live: Vec<Member> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        live.sort_by(|a, b| a.base.as_str().cmp(b.base.as_str()));
        live.dedup();
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        if **members != live {
            tracing::info!(
                replicas = live.len(),
                found_self = live.iter().any(|m| m.is_self),
                "peers changed"
            );
            *members = Arc::new(live);
        }
    }

    async fn lookup(&self) -> Vec<Url> {
        if let Some(dns) = &self.config.dns {
            return match tokio::net::lookup_host(dns.as_str()).await {
                Ok(addrs) => {
                    let (addrs, found) = first_replicas(addrs.collect());
                    if found > addrs.len() {
                        tracing::warn!(
                            dns,
                            found,
                            kept = addrs.len(),
                            "peers: more addresses than replicas are supported; the rest are left out"
                        );
                    }
                    addrs
                        .into_iter()
                        .filter_map(|a| Url::parse(&format!("http://{a}/")).ok())
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(dns, error = %e, "peers: lookup failed");
                    Vec::new()
                }
            };
        }
        self.config
            .addresses
            .iter()
            .filter_map(|a| Url::parse(a).ok())
            .collect()
    }

    async fn ask_id(&self, base: &Url) -> Option<String> {
        let url = base.join(&format!("{PATH_PREFIX}/id")).ok()?;
        let mut resp = self
            .http
            .get(url)
            .header(SECRET_HEADER, self.secret_value())
            .timeout(self.config.connect_timeout)
            .send()
            .await
            .ok()?;
        if resp.status() != StatusCode::OK || resp.content_length().is_some_and(|n| n > MAX_ID) {
            return None;
        }
        // Whatever answers at a replica's address is read only as far as an id can go.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.ok()? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_ID {
                return None;
            }
        }
        String::from_utf8(body).ok()
    }

    fn secret_value(&self) -> String {
        self.secret
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .expose()
            .to_owned()
    }

    /// Asks `member` for the blob of `route` from `offset`: its bytes as they arrive, and
    /// whether the answer starts at `offset`.
    pub async fn get(
        &self,
        member: &Member,
        route: &Route,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Option<u64>, ByteStream, bool), String> {
        let url = member
            .base
            .join(&format!(
                "{PATH_PREFIX}/v2/{}/blobs/{digest}?ns={}",
                route.repository, route.registry
            ))
            .map_err(|e| e.to_string())?;
        let mut req = self
            .http
            .get(url)
            .header(SECRET_HEADER, self.secret_value());
        if offset > 0 {
            req = req.header(http::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{}: {e}", member.base))?;
        let ranged = match resp.status() {
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT => true,
            other => return Err(format!("{} answered {other}", member.base)),
        };
        let total = resp.content_length().filter(|_| !ranged);
        let body: ByteStream = Box::pin(resp.bytes_stream().map_err(std::io::Error::other));
        Ok((total, body, ranged))
    }

    /// The blob from the first replica in `owners` that answers, as a fill source whose
    /// resumes ask the replicas again and finally `fallback` (the replica's own upstream).
    pub async fn source(
        self: &Arc<Self>,
        owners: Vec<Member>,
        route: &Route,
        digest: &Digest,
        fallback: Resume,
    ) -> Option<FillSource> {
        let mut first = None;
        for member in &owners {
            match self.get(member, route, digest, 0).await {
                Ok((total, body, _)) => {
                    tracing::debug!(%digest, owner = %member.base, "filling from the owner");
                    first = Some((total, body));
                    break;
                }
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "peer did not answer; asking the next");
                }
            }
        }
        let (total, body) = first?;
        let (peers, route, digest) = (self.clone(), route.clone(), digest.clone());
        let fallback = Arc::new(fallback);
        let resume: Resume = Box::new(move |offset| {
            let (peers, route, digest, fallback) = (
                peers.clone(),
                route.clone(),
                digest.clone(),
                fallback.clone(),
            );
            Box::pin(async move {
                for m in peers.owners(&digest) {
                    if let Ok((_, body, ranged)) = peers.get(&m, &route, &digest, offset).await {
                        return Ok((body, ranged));
                    }
                }
                fallback(offset).await
            })
        });
        Some(FillSource {
            total,
            body,
            resume,
            from_bucket: false,
        })
    }
}

/// The rendezvous weight of a replica for a digest.
fn score(base: &Url, digest: &Digest) -> u64 {
    let h = sha2::Sha256::digest(format!("{base}\n{digest}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first)
}

/// The replicas among a DNS answer: distinct addresses, the lowest [`MAX_REPLICAS`] (the same
/// cut on every replica, so that they agree on owners), and how many distinct ones there were.
fn first_replicas(mut addrs: Vec<std::net::SocketAddr>) -> (Vec<std::net::SocketAddr>, usize) {
    addrs.sort();
    addrs.dedup();
    let found = addrs.len();
    addrs.truncate(MAX_REPLICAS);
    (addrs, found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dns_answer_is_cut_to_the_same_lowest_replicas_whatever_its_order() {
        let addrs: Vec<std::net::SocketAddr> = (0..1000u32)
            .map(|i| std::net::SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 5000)))
            .collect();
        let mut reversed = addrs.clone();
        reversed.reverse();
        reversed.push(addrs[3]);
        let (kept, found) = super::first_replicas(reversed);
        assert_eq!((kept.len(), found), (super::MAX_REPLICAS, 1000));
        assert_eq!(kept, addrs[..super::MAX_REPLICAS]);
    }

    use super::*;

    #[test]
    fn owners_spread_and_stop_at_self() {
        let members: Vec<Member> = (1..=3)
            .map(|i| Member {
                base: Url::parse(&format!("http://10.0.0.{i}:5000/")).unwrap(),
                is_self: i == 2,
            })
            .collect();
        let mut owned = [0usize; 3];
        for n in 0..3000u32 {
            let d = Digest::sha256_of(&n.to_be_bytes());
            let mut ranked: Vec<_> = members.iter().map(|m| (score(&m.base, &d), m)).collect();
            ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
            let i = members.iter().position(|m| m == ranked[0].1).unwrap();
            owned[i] += 1;
        }
        // Each replica owns about a third.
        assert!(owned.iter().all(|&n| (800..1200).contains(&n)), "{owned:?}");
    }
}
