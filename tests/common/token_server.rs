//! A Docker-style token server ("docker registry v2 token authentication")
//! that the real distribution registry trusts.
//!
//! It implements just enough of the protocol used by registries and clients:
//!
//! * `GET /token?service=..&scope=..&scope=..[&offline_token=true]` with an
//!   optional `Authorization: Basic` header. Anonymous requests succeed but
//!   only receive the access anonymous users are allowed (possibly none).
//! * `POST /token` (OAuth2 form) with `grant_type=password` or
//!   `grant_type=refresh_token`.
//!
//! Tokens are ES256 JWTs whose header carries the signing certificate in
//! `x5c`; the registry is configured with that certificate as its
//! `rootcertbundle` (see [`TokenServer::cert_path`]).
//!
//! The server runs on its own thread with its own tokio runtime, so it keeps
//! answering even while a test blocks its own runtime (e.g. waiting on a
//! child process from a `current_thread` `#[tokio::test]`).
//!
//! Every request is recorded ([`TokenServer::requests`]) so tests can assert
//! on how often, and with which credentials, the proxy asked for tokens.

mod handler;
mod server;
mod tokens;

#[allow(unused_imports)]
pub use server::{TokenServer, TokenServerBuilder};
#[allow(unused_imports)]
pub use tokens::parse_scope;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use tokens::parse_basic;

/// A username/password pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Value for an `Authorization` header: `Basic base64(user:pass)`.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// A configured account and the repository-name prefixes it may pull from.
#[derive(Debug, Clone)]
struct User {
    password: String,
    /// `true` for the admin: push + pull (+ delete) on every repository and
    /// `registry:catalog:*`.
    admin: bool,
    pull_prefixes: Vec<String>,
}

/// One requested (or granted) scope entry, as it appears in the JWT
/// `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Record of one HTTP request the token server received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    /// Path and query exactly as received, e.g.
    /// `/token?scope=repository%3Afoo%3Apull&service=...`.
    pub path_and_query: String,
    /// Raw `Authorization` header, if any (e.g. `Basic dXNlcjpwYXNz`).
    pub authorization: Option<String>,
    /// Scheme of the `Authorization` header (`Basic`, `Bearer`, ...).
    pub auth_scheme: Option<String>,
    /// Decoded form fields of a POST body (includes secrets on purpose, so
    /// tests can check which credentials arrived).
    pub form: Vec<(String, String)>,
    /// `service` parameter (query or form).
    pub service: Option<String>,
    /// Individual scope strings requested (query `scope` params, or the
    /// space-separated form `scope` field).
    pub scopes: Vec<String>,
    /// The authenticated subject, `None` for anonymous or failed requests.
    pub subject: Option<String>,
    /// HTTP status the server answered with.
    pub status: u16,
    /// Access that was granted in the issued token (empty if none/failed).
    pub granted: Vec<Access>,
}

impl TokenRequest {
    /// Decodes a `Basic` authorization header into credentials.
    pub fn basic_credentials(&self) -> Option<Credentials> {
        parse_basic(self.authorization.as_deref()?)
    }

    /// Value of a form field of a POST request.
    pub fn form_field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Mutable state shared between the server thread and the test.
struct State {
    users: HashMap<String, User>,
    anonymous_pull: Vec<String>,
    /// refresh token -> username
    refresh_tokens: HashMap<String, String>,
    expires_in: Option<u64>,
    token_lifetime: Duration,
    /// Bytes of filler added to every token response (a hostile token service).
    padding: usize,
    log: Vec<TokenRequest>,
    per_scope: HashMap<String, u64>,
}

struct Shared {
    state: Mutex<State>,
    service: String,
    issuer: String,
    signing_key: jsonwebtoken::EncodingKey,
    /// Base64 (standard alphabet) DER of the signing certificate, for `x5c`.
    cert_b64: String,
    counter: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; keep
        // serving so that test reports its own (first) error.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
