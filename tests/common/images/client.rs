//! [`RegistryClient`]: a minimal distribution API client that answers Basic and Bearer challenges.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{ALL_MANIFEST_TYPES, Blob, BuiltImage};
use crate::common::registry::Registry;
use crate::common::token_server::Credentials;
use crate::common::util::BoxError;

/// Blobs above this size are pushed with a chunked (PATCH) upload.
const CHUNKED_THRESHOLD: usize = 4 << 20;
const CHUNK_SIZE: usize = 4 << 20;

/// Response of a simple GET/HEAD.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Minimal distribution API client with challenge handling.
///
/// On `401` it reads `WWW-Authenticate`: for `Basic` it retries with the
/// configured credentials; for `Bearer` it fetches a token from the realm
/// (sending the credentials as Basic if configured, anonymously otherwise)
/// for the challenged scope and retries. Tokens are cached per repository.
pub struct RegistryClient {
    base: Url,
    creds: Option<Credentials>,
    http: reqwest::Client,
    /// repository name -> Authorization header value ("" key for /v2/).
    auth_cache: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    /// Client for `base_url` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base_url: &str, creds: Option<Credentials>) -> RegistryClient {
        let base =
            Url::parse(base_url).unwrap_or_else(|e| panic!("bad registry URL {base_url}: {e}"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build reqwest client");
        RegistryClient {
            base,
            creds,
            http,
            auth_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Client for `registry` using its admin credentials (if any).
    pub fn admin(registry: &Registry) -> RegistryClient {
        Self::new(&registry.url(), registry.admin_credentials().cloned())
    }

    /// Anonymous client for `registry`.
    pub fn anonymous(registry: &Registry) -> RegistryClient {
        Self::new(&registry.url(), None)
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Sends a request, answering one auth challenge if needed.
    /// `path_or_url` is either absolute or relative to the base URL.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, BoxError> {
        let url = self.base.join(path_or_url)?;
        let cache_key = repo_of_path(url.path());
        let cached = self.cached_auth(&cache_key);
        let response = self
            .attempt(&method, &url, headers, body.clone(), cached.as_deref())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(response);
        };
        let Some(auth) = self.answer_challenge(&challenge).await? else {
            return Ok(response);
        };
        // Basic credentials are valid for every path; tokens are per
        // repository (their scope names it).
        let key = if auth.starts_with("Basic ") {
            String::new()
        } else {
            cache_key
        };
        self.auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, auth.clone());
        self.attempt(&method, &url, headers, body, Some(&auth))
            .await
    }

    fn cached_auth(&self, key: &str) -> Option<String> {
        let cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
        // Fall back to the path-independent entry (Basic credentials).
        cache.get(key).or_else(|| cache.get("")).cloned()
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, BoxError> {
        let mut req = self.http.request(method.clone(), url.clone());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_LENGTH, body.len()).body(body);
        }
        Ok(req.send().await?)
    }

    /// Produces an Authorization header value for `challenge`, or `None` if
    /// the challenge cannot be answered (e.g. Basic without credentials).
    async fn answer_challenge(&self, challenge: &str) -> Result<Option<String>, BoxError> {
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(self.creds.as_ref().map(Credentials::basic_header));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| format!("Bearer challenge without realm: {challenge}"))?;
        let mut token_url = Url::parse(realm)?;
        {
            let mut q = token_url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                q.append_pair("service", service);
            }
            if let Some(scope) = params.get("scope") {
                // A challenge may carry several space-separated scopes.
                for s in scope.split(' ').filter(|s| !s.is_empty()) {
                    q.append_pair("scope", s);
                }
            }
        }
        let mut req = self.http.get(token_url.clone());
        if let Some(creds) = &self.creds {
            req = req.header(AUTHORIZATION, creds.basic_header());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            return Err(format!(
                "token request {token_url} failed with {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        let token = json["token"]
            .as_str()
            .or_else(|| json["access_token"].as_str())
            .ok_or_else(|| format!("token response without token: {json}"))?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// GET (or HEAD) returning status, headers and body.
    pub async fn fetch(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Fetched, BoxError> {
        let resp = self.send(method, path, headers, None).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(Fetched {
            status,
            headers,
            body,
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, BoxError> {
        let accept = ALL_MANIFEST_TYPES.join(", ");
        self.fetch(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", &accept)],
        )
        .await
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Fetched, BoxError> {
        self.fetch(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), &[])
            .await
    }

    /// Uploads `blob` unless the registry already has it; monolithic for
    /// small blobs, chunked above 4 MiB.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<(), BoxError> {
        let head = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", blob.digest),
                &[],
                None,
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        if blob.bytes.len() > CHUNKED_THRESHOLD {
            self.push_blob_chunked(repo, blob, CHUNK_SIZE).await
        } else {
            self.push_blob_monolithic(repo, blob).await
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/` then `PUT <location>?digest=` with
    /// the whole body.
    pub async fn push_blob_monolithic(&self, repo: &str, blob: &Blob) -> Result<(), BoxError> {
        let location = self.start_upload(repo).await?;
        let mut url = self.base.join(&location)?;
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .send(
                Method::PUT,
                url.as_str(),
                &[("Content-Type", "application/octet-stream")],
                Some(blob.bytes.clone()),
            )
            .await?;
        expect_status(resp, StatusCode::CREATED, "PUT blob upload").await
    }

    /// `POST` upload, `PATCH` chunks with `Content-Range`, final empty
    /// `PUT ?digest=`.
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        blob: &Blob,
        chunk_size: usize,
    ) -> Result<(), BoxError> {
        let mut location = self.start_upload(repo).await?;
        let mut offset = 0usize;
        while offset < blob.bytes.len() {
            let end = (offset + chunk_size).min(blob.bytes.len());
            let range = format!("{offset}-{}", end - 1);
            let resp = self
                .send(
                    Method::PATCH,
                    &location,
                    &[
                        ("Content-Type", "application/octet-stream"),
                        ("Content-Range", &range),
                    ],
                    Some(blob.bytes.slice(offset..end)),
                )
                .await?;
            location = location_of(&resp).ok_or("PATCH upload: no Location header")?;
            expect_status(resp, StatusCode::ACCEPTED, "PATCH blob chunk").await?;
            offset = end;
        }
        let mut url = self.base.join(&location)?;
        url.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .send(Method::PUT, url.as_str(), &[], Some(Bytes::new()))
            .await?;
        expect_status(resp, StatusCode::CREATED, "PUT finish chunked upload").await
    }

    async fn start_upload(&self, repo: &str) -> Result<String, BoxError> {
        let resp = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Some(Bytes::new()),
            )
            .await?;
        let location = location_of(&resp);
        expect_status(resp, StatusCode::ACCEPTED, "POST blob upload").await?;
        location.ok_or_else(|| "POST blob upload: no Location header".into())
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; returns the digest the
    /// registry reports (checked against our own computation).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> Result<String, BoxError> {
        let resp = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", &manifest.media_type)],
                Some(manifest.bytes.clone()),
            )
            .await?;
        let digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        expect_status(resp, StatusCode::CREATED, "PUT manifest").await?;
        match digest {
            Some(d) if d != manifest.digest => {
                Err(format!("registry computed digest {d}, expected {}", manifest.digest).into())
            }
            _ => Ok(manifest.digest.clone()),
        }
    }

    /// Pushes all blobs and the manifest of `image` (manifest by digest when
    /// `reference` is `None`).
    pub async fn push_built(
        &self,
        repo: &str,
        reference: Option<&str>,
        image: &BuiltImage,
    ) -> Result<(), BoxError> {
        self.push_blob(repo, &image.config).await?;
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await?;
        }
        self.push_manifest(
            repo,
            reference.unwrap_or(&image.manifest.digest),
            &image.manifest,
        )
        .await?;
        Ok(())
    }
}

fn location_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn expect_status(
    resp: reqwest::Response,
    want: StatusCode,
    what: &str,
) -> Result<(), BoxError> {
    let status = resp.status();
    if status == want {
        return Ok(());
    }
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{what} {url}: expected {want}, got {status}: {body}").into())
}

/// Repository name from a `/v2/<name>/{blobs,manifests,tags}/...` path
/// (empty for anything else, e.g. `/v2/`).
fn repo_of_path(path: &str) -> String {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return String::new();
    };
    for marker in ["/blobs/", "/manifests/", "/tags/"] {
        if let Some(idx) = rest.rfind(marker) {
            return rest[..idx].to_string();
        }
    }
    String::new()
}

/// Parses `Scheme k="v",k2="v2"` (values may be quoted and contain commas).
pub fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        // key
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() {
            break;
        }
        // value, quoted or token
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(repo_of_path("/v2/a/b/blobs/uploads/x"), "a/b");
    }
}
