//! One upstream registry: its endpoints in order, its HTTP client, and the authentication
//! dance (remembered challenges, cached tokens, one refresh on a refused token).

use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::Instrument as _;

use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use url::Url;

use super::auth::{TokenCache, TokenKey, TokenRequest, realm_may_receive_credentials};
use super::budget::{Budget, UpstreamLimits};
use super::challenge::{self, Challenge};
use super::error::{UpstreamError, describe};
use super::via::Via;
use crate::credentials::{Credential, CredentialStore};
use crate::policy::is_restricted_ip;
use crate::reference::{RegistryHost, Repository};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// One request to an upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    /// `/v2/<name>/…`
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub repository: Repository,
    /// Media types, one per `Accept` line (distribution 2.8 reads one type per line).
    pub accept: Vec<String>,
    pub range: Option<HeaderValue>,
}

/// A base URL and the challenge it answered with last.
struct Endpoint {
    base: Url,
    /// Another stevedore (or any mirror that routes the same way) named with its registry:
    /// `…/v2/<registry>` puts the registry in front of every repository path, `?ns=<registry>`
    /// adds it to every query.
    via: Via,
    challenge: RwLock<Option<Challenge>>,
}

impl Endpoint {
    fn challenge(&self) -> Option<Challenge> {
        self.challenge.read().ok().and_then(|c| c.clone())
    }

    /// Stores a new challenge; true when it differs from what was known.
    fn learn(&self, c: Challenge) -> bool {
        match self.challenge.write() {
            Ok(mut slot) => {
                let changed = slot.as_ref() != Some(&c);
                *slot = Some(c);
                changed
            }
            Err(_) => false,
        }
    }
}

pub struct Upstream {
    registry: RegistryHost,
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    allow_private: bool,
    extra_realms: Vec<String>,
    /// Whether the registry has a section of its own (see `pull::scope`).
    trusted: bool,
    budget: Option<Budget>,
    limits: Arc<UpstreamLimits>,
    shared: Arc<Shared>,
}

/// What every upstream shares: credentials, the token cache, and the request counter.
pub struct Shared {
    pub credentials: Arc<CredentialStore>,
    pub tokens: Arc<TokenCache>,
    /// Counts every HTTP request sent upstream (retries and redirects included).
    pub requests: opentelemetry::metrics::Counter<u64>,
}

/// What was put in `Authorization`, so a refusal can be answered precisely.
enum Sent {
    Nothing,
    Basic,
    Registry,
    /// A bearer token; `offered` tells whether the credential went to the realm.
    Token {
        key: TokenKey,
        offered: bool,
    },
}

impl Upstream {
    pub fn new(
        registry: RegistryHost,
        endpoints: Vec<Url>,
        http: reqwest::Client,
        allow_private: bool,
        extra_realms: Vec<String>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            registry,
            endpoints: endpoints
                .into_iter()
                .map(|url| {
                    let (base, via) = Via::split(&url).unwrap_or((url, Via::Direct));
                    Endpoint {
                        base,
                        via,
                        challenge: RwLock::new(None),
                    }
                })
                .collect(),
            http,
            allow_private,
            extra_realms,
            trusted: true,
            budget: None,
            limits: Arc::default(),
            shared,
        }
    }

    /// Limits what stevedore sends this registry (`[registries."…".budget]`).
    pub fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// Records what the registry says of its own rate limits in `limits` (shared with the
    /// upstreams that replace this one when sections are reloaded).
    pub fn with_limits(mut self, limits: Arc<UpstreamLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// Marks a registry reached only because unknown registries are allowed: anyone may
    /// run it, so its answers never prove that a repository holds content (`pull::scope`).
    pub fn untrusted(mut self) -> Self {
        self.trusted = false;
        self
    }

    /// Whether the registry has a section of its own in the config.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    pub fn registry(&self) -> &RegistryHost {
        &self.registry
    }

    /// Sends a request to the first endpoint that answers with success; the last endpoint's
    /// answer (or error) stands when none does.
    pub async fn send(&self, req: &UpstreamRequest) -> Result<reqwest::Response, UpstreamError> {
        self.spend(req)?;
        let credential = self
            .shared
            .credentials
            .lookup(&self.registry, &req.repository)
            .await
            .map_err(|e| UpstreamError::Credentials {
                registry: self.registry.to_string(),
                message: e.to_string(),
            })?;
        let last = self.endpoints.len().saturating_sub(1);
        let mut outcome = Err(UpstreamError::Unreachable {
            registry: self.registry.to_string(),
            reason: "no endpoints".to_owned(),
        });
        for (i, ep) in self.endpoints.iter().enumerate() {
            outcome = self.send_to(ep, req, credential.as_ref()).await;
            if let Ok(r) = &outcome {
                self.limits.observe(r.headers());
            }
            match &outcome {
                Ok(r) if r.status().is_success() => return outcome,
                _ if i == last => return outcome,
                Ok(r) => tracing::debug!(
                    endpoint = %ep.base, status = %r.status(), "endpoint declined, trying the next"
                ),
                Err(e) => {
                    tracing::warn!(endpoint = %ep.base, error = %e, "endpoint failed, trying the next")
                }
            }
        }
        outcome
    }

    /// Takes `req` from the budget, or says how long until it may be sent. Manifest GETs are
    /// what Docker Hub counts against pull limits, and what its `ratelimit-remaining` counts.
    fn spend(&self, req: &UpstreamRequest) -> Result<(), UpstreamError> {
        let manifest_get = req.method == Method::GET && req.path.contains("/manifests/");
        let spent = |retry_after: Duration, whose: &'static str| UpstreamError::BudgetSpent {
            registry: self.registry.to_string(),
            retry_after,
            whose,
        };
        if manifest_get && let Some(wait) = self.limits.spent() {
            return Err(spent(
                wait,
                "the registry's own rate limit (ratelimit-remaining: 0)",
            ));
        }
        match &self.budget {
            Some(b) => b
                .take(manifest_get)
                .map_err(|wait| spent(wait, "stevedore's budget for it")),
            None => Ok(()),
        }
    }

    async fn send_to(
        &self,
        ep: &Endpoint,
        req: &UpstreamRequest,
        credential: Option<&Credential>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut refreshed = false;
        let mut answered_late = false;
        // Up to three rounds: learn a challenge, present a token, refresh a refused token.
        for _ in 0..3 {
            let (authorization, sent) = self.authorization(ep, &req.repository, credential).await?;
            let resp = self.execute(ep, req, authorization).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges = challenge::parse_all(
                resp.headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let learned = pick_challenge(challenges)
                .map(|c| ep.learn(c))
                .unwrap_or(false);
            // A concurrent request may have learned the challenge first: having sent nothing,
            // this one answers it now too.
            let answerable = matches!(sent, Sent::Nothing) && ep.challenge().is_some();
            if learned || (answerable && !answered_late) {
                answered_late |= !learned;
                continue;
            }
            match sent {
                Sent::Token { key, .. } if !refreshed => {
                    tracing::debug!(registry = %self.registry, "token refused, fetching a new one");
                    self.shared.tokens.invalidate(&key).await;
                    refreshed = true;
                }
                sent => return Err(self.denied(req, credential, &sent)),
            }
        }
        Err(self.denied(req, credential, &Sent::Nothing))
    }

    fn denied(
        &self,
        req: &UpstreamRequest,
        credential: Option<&Credential>,
        sent: &Sent,
    ) -> UpstreamError {
        let what = match (credential, sent) {
            (None, _) => "requires credentials and stevedore has none for it (add them to its \
                 [registries] section or a configured docker config file)"
                .to_owned(),
            (Some(_), Sent::Nothing) => {
                "answered 401 without a challenge stevedore can answer (no usable \
                 WWW-Authenticate)"
                    .to_owned()
            }
            (Some(c), Sent::Token { offered: false, .. }) => format!(
                "refused the request; stevedore's {} credentials were not offered because \
                 the token realm is on another domain (list it in auth-realms if it is trusted)",
                c.kind()
            ),
            (Some(c), _) => format!("refused stevedore's {} credentials", c.kind()),
        };
        UpstreamError::Denied(format!(
            "registry {} {what} for repository {}",
            self.registry, req.repository
        ))
    }

    /// The `Authorization` value for a request to `ep`, from what its last challenge asked.
    async fn authorization(
        &self,
        ep: &Endpoint,
        repository: &Repository,
        credential: Option<&Credential>,
    ) -> Result<(Option<HeaderValue>, Sent), UpstreamError> {
        if let Some(Credential::RegistryToken(t)) = credential {
            return Ok((Some(bearer(t.expose())?), Sent::Registry));
        }
        let Some(challenge) = ep.challenge() else {
            return Ok((None, Sent::Nothing));
        };
        match challenge.scheme.as_str() {
            "basic" => match credential {
                Some(Credential::Basic { username, password }) => {
                    let value = basic(username, password.expose())?;
                    Ok((Some(value), Sent::Basic))
                }
                _ => Ok((None, Sent::Nothing)),
            },
            "bearer" => {
                let realm = challenge
                    .param("realm")
                    .and_then(|r| Url::parse(r).ok())
                    .ok_or_else(|| UpstreamError::Protocol {
                        registry: self.registry.to_string(),
                        reason: "Bearer challenge without a usable realm".to_owned(),
                    })?;
                self.check_url(&realm)?;
                let offered = credential.filter(|_| {
                    let ok = realm_may_receive_credentials(&realm, &ep.base, &self.extra_realms);
                    if !ok {
                        tracing::warn!(
                            registry = %self.registry,
                            realm = realm.host_str().unwrap_or("?"),
                            "token realm is on another domain: asking it anonymously"
                        );
                    }
                    ok
                });
                let scope = format!("repository:{repository}:pull");
                let service = challenge.param("service");
                let token = self
                    .shared
                    .tokens
                    .get(TokenRequest {
                        http: &self.http,
                        registry: self.registry.as_str(),
                        realm: &realm,
                        service,
                        scope: &scope,
                        credential: offered,
                    })
                    .await?;
                let key = TokenKey {
                    realm: realm.to_string(),
                    service: service.map(str::to_owned),
                    scope,
                    credential: offered.map(Credential::fingerprint),
                };
                let sent = Sent::Token {
                    key,
                    offered: offered.is_some(),
                };
                Ok((Some(bearer(token.value.expose())?), sent))
            }
            _ => Ok((None, Sent::Nothing)),
        }
    }

    /// Sends one request in its own span (registry, method and path; never a header).
    async fn execute(
        &self,
        ep: &Endpoint,
        req: &UpstreamRequest,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let span = tracing::info_span!(
            "upstream",
            otel.kind = "client",
            registry = %self.registry,
            method = %req.method,
            path = %req.path,
            http.response.status_code = tracing::field::Empty,
        );
        let sent = self
            .execute_once(ep, req, authorization)
            .instrument(span.clone())
            .await;
        if let Ok(resp) = &sent {
            span.record("http.response.status_code", resp.status().as_u16());
        }
        sent
    }

    /// Sends one request, following redirects by hand: `Authorization` never crosses to
    /// another origin (Docker Hub sends blob GETs to a CDN).
    async fn execute_once(
        &self,
        ep: &Endpoint,
        req: &UpstreamRequest,
        mut authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let path = ep.via.path(&req.path);
        let mut url = ep
            .base
            .join(&path)
            .map_err(|e| self.protocol(format!("bad path {path}: {e}")))?;
        if !req.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(req.query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        if let Via::Namespace(registry) = &ep.via {
            url.query_pairs_mut().append_pair("ns", registry);
        }
        for _ in 0..=MAX_REDIRECTS {
            self.check_url(&url)?;
            let mut b = self.http.request(req.method.clone(), url.clone());
            for t in &req.accept {
                b = b.header(ACCEPT, t.as_str());
            }
            if let Some(range) = &req.range {
                b = b.header(RANGE, range.clone());
            }
            if let Some(a) = &authorization {
                b = b.header(AUTHORIZATION, a.clone());
            }
            self.shared.requests.add(
                1,
                &[opentelemetry::KeyValue::new(
                    "method",
                    req.method.to_string(),
                )],
            );
            let resp = b
                .send()
                .await
                .map_err(|e| match super::http::restricted_name(&e) {
                    Some(host) => UpstreamError::RestrictedAddress {
                        registry: self.registry.to_string(),
                        host,
                    },
                    None => UpstreamError::Unreachable {
                        registry: self.registry.to_string(),
                        reason: format!("{}: {}", url.host_str().unwrap_or("?"), describe(&e)),
                    },
                })?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url
                .join(location)
                .map_err(|e| self.protocol(format!("bad redirect location: {e}")))?;
            if next.origin() != url.origin() {
                authorization = None;
            }
            tracing::debug!(registry = %self.registry, to = next.host_str().unwrap_or("?"), "following redirect");
            url = next;
        }
        Err(self.protocol(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Refuses IP literals in restricted ranges (names are checked by the resolver).
    fn check_url(&self, url: &Url) -> Result<(), UpstreamError> {
        if self.allow_private {
            return Ok(());
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(std::net::IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(std::net::IpAddr::V6(v6)),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                Some(std::net::IpAddr::from([127, 0, 0, 1]))
            }
            _ => None,
        };
        match ip {
            Some(ip) if is_restricted_ip(ip) => Err(UpstreamError::RestrictedAddress {
                registry: self.registry.to_string(),
                host: url.host_str().unwrap_or("?").to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            registry: self.registry.to_string(),
            reason,
        }
    }
}

/// Bearer is preferred over Basic when a registry offers both. Only `realm` and `service`
/// are kept: the `scope` of a challenge names one repository, and the token is asked for the
/// repository of each request anyway.
fn pick_challenge(challenges: Vec<Challenge>) -> Option<Challenge> {
    let mut basic = None;
    for mut c in challenges {
        c.params.retain(|(k, _)| k == "realm" || k == "service");
        match c.scheme.as_str() {
            "bearer" => return Some(c),
            "basic" => basic = Some(c),
            _ => {}
        }
    }
    basic
}

fn bearer(token: &str) -> Result<HeaderValue, UpstreamError> {
    sensitive(format!("Bearer {token}"))
}

fn basic(username: &str, password: &str) -> Result<HeaderValue, UpstreamError> {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    sensitive(format!("Basic {encoded}"))
}

fn sensitive(value: String) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(&value).map_err(|_| UpstreamError::Protocol {
        registry: String::new(),
        reason: "a credential holds characters not allowed in an HTTP header".to_owned(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}
