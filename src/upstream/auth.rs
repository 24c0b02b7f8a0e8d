//! Upstream authentication: who may receive credentials, token exchange, and the token cache.
//!
//! Token flows follow the distribution token spec: `GET realm?service=&scope=` with Basic
//! credentials (or none), and the OAuth2 flow `POST realm` with
//! `grant_type=refresh_token&refresh_token=…&client_id=…&service=…&scope=…` for identity
//! tokens. A token without `expires_in` lives 60 s (token spec, "Token Response Fields").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use moka::Expiry;
use serde::Deserialize;
use url::Url;

use super::error::{UpstreamError, describe};
use crate::credentials::Credential;
use crate::secret::SecretString;

/// `client_id` sent in OAuth2 token requests.
pub const CLIENT_ID: &str = "stevedore";

/// Lifetime assumed when a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a token is kept, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Largest token response read (Docker Hub's are a few KiB).
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

fn too_large(registry: &str, realm_host: &str) -> UpstreamError {
    UpstreamError::Protocol {
        registry: registry.to_owned(),
        reason: format!(
            "token service {realm_host} sent a response larger than {MAX_TOKEN_RESPONSE} bytes"
        ),
    }
}

/// Whether a token realm may receive the credentials meant for a registry endpoint: same
/// host, same registrable domain (public suffix list), or listed in the registry's
/// `auth-realms`; and never over plain HTTP when the registry is reached over HTTPS.
pub fn realm_may_receive_credentials(realm: &Url, endpoint: &Url, extra_realms: &[String]) -> bool {
    // A realm listed as a full URL (scheme, host, port) is trusted as listed, plain HTTP
    // included: the operator said so explicitly.
    if extra_realms
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|u| u.has_host() && u.origin() == realm.origin())
    {
        return true;
    }
    if realm.scheme() == "http" && endpoint.scheme() == "https" {
        return false;
    }
    let (Some(realm_host), Some(endpoint_host)) = (realm.host(), endpoint.host()) else {
        return false;
    };
    let realm_name = realm_host.to_string().to_ascii_lowercase();
    if realm_name == endpoint_host.to_string().to_ascii_lowercase() {
        return true;
    }
    if extra_realms
        .iter()
        .filter_map(|r| crate::config::realm_host(r))
        .any(|h| h == realm_name)
    {
        return true;
    }
    match (realm_host, endpoint_host) {
        (url::Host::Domain(r), url::Host::Domain(e)) => {
            match (
                psl::domain_str(&r.to_ascii_lowercase()),
                psl::domain_str(&e.to_ascii_lowercase()),
            ) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
        // IP literals match only themselves (handled above).
        _ => false,
    }
}

/// A bearer token and how long it may be used.
pub struct Token {
    pub value: SecretString,
    pub lifetime: Duration,
    pub fetched: Instant,
}

impl Token {
    /// How long the cache keeps it: refreshed a margin before it expires, so a request never
    /// leaves with a token about to lapse.
    fn refresh_after(&self) -> Duration {
        let margin = (self.lifetime / 10)
            .max(Duration::from_secs(5))
            .min(self.lifetime / 2);
        self.lifetime - margin
    }
}

/// A token's identity: which realm, for which service and scope, with which credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub realm: String,
    pub service: Option<String>,
    pub scope: String,
    /// [`Credential::fingerprint`] of what was presented, `None` for anonymous.
    pub credential: Option<String>,
}

struct TokenExpiry;

impl Expiry<TokenKey, Arc<Token>> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Token>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.refresh_after())
    }
}

/// Bearer tokens by realm, service, scope and credential. Concurrent misses for one key make
/// one token request (`try_get_with`).
pub struct TokenCache {
    cache: moka::future::Cache<TokenKey, Arc<Token>>,
    fetches: AtomicU64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
            fetches: AtomicU64::new(0),
        }
    }
}

/// What a token request needs.
pub struct TokenRequest<'a> {
    pub http: &'a reqwest::Client,
    pub registry: &'a str,
    pub realm: &'a Url,
    pub service: Option<&'a str>,
    pub scope: &'a str,
    /// The credential to present, already cleared for this realm.
    pub credential: Option<&'a Credential>,
}

impl TokenCache {
    /// A cached token, or a new one from the realm.
    pub async fn get(&self, req: TokenRequest<'_>) -> Result<Arc<Token>, UpstreamError> {
        let key = TokenKey {
            realm: req.realm.to_string(),
            service: req.service.map(str::to_owned),
            scope: req.scope.to_owned(),
            credential: req.credential.map(Credential::fingerprint),
        };
        self.cache
            .try_get_with(key, async {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!(
                    "token",
                    otel.kind = "client",
                    realm = req.realm.host_str().unwrap_or("?"),
                    scope = req.scope,
                );
                fetch(&req).instrument(span).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<UpstreamError>| (*e).clone())
    }

    /// Forgets a token the registry refused, so the next `get` asks the realm again.
    pub async fn invalidate(&self, key: &TokenKey) {
        self.cache.invalidate(key).await;
    }

    /// Token requests made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

async fn fetch(req: &TokenRequest<'_>) -> Result<Token, UpstreamError> {
    let realm_host = req.realm.host_str().unwrap_or("?").to_owned();
    let builder = match req.credential {
        Some(Credential::IdentityToken { token, .. }) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token.expose()),
                ("client_id", CLIENT_ID),
                ("scope", req.scope),
            ];
            if let Some(service) = req.service {
                form.push(("service", service));
            }
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            req.http
                .post(req.realm.clone())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
        }
        other => {
            let mut url = req.realm.clone();
            {
                let mut q = url.query_pairs_mut();
                if let Some(service) = req.service {
                    q.append_pair("service", service);
                }
                q.append_pair("scope", req.scope);
            }
            let mut b = req.http.get(url);
            if let Some(Credential::Basic { username, password }) = other {
                b = b.basic_auth(username, Some(password.expose()));
            }
            b
        }
    };
    let mut resp = builder
        .send()
        .await
        .map_err(|e| UpstreamError::Unreachable {
            registry: req.registry.to_owned(),
            reason: format!("token service {realm_host}: {}", describe(&e)),
        })?;
    let status = resp.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        let who = match req.credential {
            Some(c) => format!("stevedore's {} credentials", c.kind()),
            None => "an anonymous token request".to_owned(),
        };
        return Err(UpstreamError::Denied(format!(
            "token service {realm_host} of registry {} refused {who} for {} ({status})",
            req.registry, req.scope
        )));
    }
    if !status.is_success() {
        let reason = format!("token service {realm_host} answered {status}");
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            UpstreamError::Unreachable {
                registry: req.registry.to_owned(),
                reason,
            }
        } else {
            UpstreamError::Protocol {
                registry: req.registry.to_owned(),
                reason,
            }
        });
    }
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_TOKEN_RESPONSE as u64)
    {
        return Err(too_large(req.registry, &realm_host));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| UpstreamError::Unreachable {
        registry: req.registry.to_owned(),
        reason: format!("token service {realm_host}: {}", describe(&e)),
    })? {
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(too_large(req.registry, &realm_host));
        }
        body.extend_from_slice(&chunk);
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
            registry: req.registry.to_owned(),
            reason: format!("token service {realm_host} sent an unreadable token response: {e}"),
        })?;
    let value = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::Protocol {
            registry: req.registry.to_owned(),
            reason: format!("token service {realm_host} sent no token"),
        })?;
    let lifetime = parsed
        .expires_in
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .min(MAX_TOKEN_LIFETIME);
    Ok(Token {
        value: SecretString::new(value),
        lifetime,
        fetched: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(realm: &str, endpoint: &str, extra: &[&str]) -> bool {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        realm_may_receive_credentials(
            &Url::parse(realm).unwrap(),
            &Url::parse(endpoint).unwrap(),
            &extra,
        )
    }

    #[test]
    fn realms_on_the_registrable_domain_only() {
        assert!(ok(
            "https://auth.docker.io/token",
            "https://registry-1.docker.io",
            &[]
        ));
        assert!(ok("https://ghcr.io/token", "https://ghcr.io", &[]));
        assert!(ok("http://127.0.0.1:9/token", "http://127.0.0.1:5000", &[]));
        assert!(!ok(
            "http://127.0.0.2:9/token",
            "http://127.0.0.1:5000",
            &[]
        ));
        assert!(!ok(
            "https://evil.example/token",
            "https://registry-1.docker.io",
            &[]
        ));
        // Different customers on one public suffix are different domains.
        assert!(!ok("https://a.github.io/t", "https://b.github.io", &[]));
        assert!(!ok(
            "http://auth.docker.io/token",
            "https://registry-1.docker.io",
            &[]
        ));
        assert!(ok(
            "https://login.example.net/t",
            "https://r.example.com",
            &["login.example.net"]
        ));
        assert!(ok(
            "https://login.example.net/t",
            "https://r.example.com",
            &["https://login.example.net/oauth"]
        ));
        // A plain-HTTP realm of an HTTPS registry only when listed with its scheme and port.
        assert!(!ok(
            "http://127.0.0.1:9/token",
            "https://127.0.0.1:5000",
            &["127.0.0.1"]
        ));
        assert!(ok(
            "http://127.0.0.1:9/token",
            "https://127.0.0.1:5000",
            &["http://127.0.0.1:9"]
        ));
        assert!(!ok(
            "http://127.0.0.1:10/token",
            "https://127.0.0.1:5000",
            &["http://127.0.0.1:9"]
        ));
    }

    #[test]
    fn refresh_margin() {
        let t = |s| Token {
            value: "x".into(),
            lifetime: Duration::from_secs(s),
            fetched: Instant::now(),
        };
        assert_eq!(t(300).refresh_after(), Duration::from_secs(270));
        assert_eq!(t(60).refresh_after(), Duration::from_secs(54));
        assert_eq!(t(4).refresh_after(), Duration::from_secs(2));
    }
}
