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

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tempfile::TempDir;

use super::util::{rfc3339, unix_now};

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

/// Builder for [`TokenServer`]; obtain with [`TokenServer::builder`].
#[derive(Debug, Clone)]
pub struct TokenServerBuilder {
    bind_ip: IpAddr,
    realm_host: Option<String>,
    service: String,
    issuer: String,
    admin: Credentials,
    users: Vec<(Credentials, Vec<String>)>,
    anonymous_pull: Vec<String>,
    expires_in: Option<u64>,
    token_lifetime: Duration,
}

impl TokenServerBuilder {
    /// Address to listen on (default 127.0.0.1). Use e.g. 127.0.0.2 to
    /// simulate a token server on "another domain".
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    /// Host (without port) advertised in [`TokenServer::url`]; defaults to
    /// the bind IP.
    pub fn realm_host(mut self, host: impl Into<String>) -> Self {
        self.realm_host = Some(host.into());
        self
    }

    /// `service` name (the JWT `aud`), default `stevedore-test-registry`.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// JWT `iss`, default `stevedore-test-token-issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// Admin account (push + pull everywhere), default `admin`/`admin-secret`.
    pub fn admin(mut self, username: &str, password: &str) -> Self {
        self.admin = Credentials::new(username, password);
        self
    }

    /// Adds a user who may pull repositories whose name starts with any of
    /// `pull_prefixes` (plain string prefix match; `""` matches everything).
    pub fn user(mut self, username: &str, password: &str, pull_prefixes: &[&str]) -> Self {
        self.users.push((
            Credentials::new(username, password),
            pull_prefixes.iter().map(|p| p.to_string()).collect(),
        ));
        self
    }

    /// Lets anonymous clients pull repositories starting with `prefix`.
    pub fn anonymous_pull(mut self, prefix: &str) -> Self {
        self.anonymous_pull.push(prefix.to_string());
        self
    }

    /// `expires_in` in the JSON reply (seconds); `None` omits the field.
    /// Also sets the JWT lifetime when `Some`.
    pub fn expires_in(mut self, secs: Option<u64>) -> Self {
        self.expires_in = secs;
        if let Some(s) = secs {
            self.token_lifetime = Duration::from_secs(s);
        }
        self
    }

    /// Lifetime of the JWT itself (`exp - iat`), independently of the
    /// advertised `expires_in`. Note that distribution 2.8 allows 60 s of
    /// clock-skew leeway on `exp`.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Generates the signing key and certificate and starts serving.
    pub fn start(self) -> TokenServer {
        TokenServer::start(self)
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

/// A running token server. Stops (and joins its thread) on drop.
pub struct TokenServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    realm: String,
    admin: Credentials,
    cert_pem: String,
    _dir: TempDir,
    cert_path: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Builder with defaults: listens on 127.0.0.1, admin `admin` /
    /// `admin-secret`, no other users, no anonymous access, `expires_in`
    /// 300.
    pub fn builder() -> TokenServerBuilder {
        TokenServerBuilder {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            realm_host: None,
            service: "stevedore-test-registry".into(),
            issuer: "stevedore-test-token-issuer".into(),
            admin: Credentials::new("admin", "admin-secret"),
            users: Vec::new(),
            anonymous_pull: Vec::new(),
            expires_in: Some(300),
            token_lifetime: Duration::from_secs(300),
        }
    }

    fn start(cfg: TokenServerBuilder) -> TokenServer {
        // Self-signed P-256 certificate. distribution 2.8 verifies the x5c
        // chain with x509.Verify against `rootcertbundle`; since the leaf is
        // itself in the root pool no CA / key-usage extensions are needed.
        let key_pair = rcgen::KeyPair::generate().expect("generate P-256 signing key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("token signing certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cfg.issuer.clone());
        let cert = params
            .self_signed(&key_pair)
            .expect("self-sign token signing certificate");
        let cert_pem = cert.pem();
        let signing_key =
            jsonwebtoken::EncodingKey::from_ec_pem(key_pair.serialize_pem().as_bytes())
                .expect("load rcgen P-256 key into jsonwebtoken");

        let dir = tempfile::Builder::new()
            .prefix("token-server-")
            .tempdir()
            .expect("create token server tempdir");
        let cert_path = dir.path().join("token-signing-cert.pem");
        std::fs::write(&cert_path, &cert_pem).expect("write token signing certificate");

        let mut users = HashMap::new();
        users.insert(
            cfg.admin.username.clone(),
            User {
                password: cfg.admin.password.clone(),
                admin: true,
                pull_prefixes: Vec::new(),
            },
        );
        for (creds, prefixes) in &cfg.users {
            users.insert(
                creds.username.clone(),
                User {
                    password: creds.password.clone(),
                    admin: false,
                    pull_prefixes: prefixes.clone(),
                },
            );
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                users,
                anonymous_pull: cfg.anonymous_pull.clone(),
                refresh_tokens: HashMap::new(),
                expires_in: cfg.expires_in,
                token_lifetime: cfg.token_lifetime,
                padding: 0,
                log: Vec::new(),
                per_scope: HashMap::new(),
            }),
            service: cfg.service.clone(),
            issuer: cfg.issuer.clone(),
            signing_key,
            cert_b64: B64.encode(cert.der()),
            counter: AtomicU64::new(0),
        });

        // Bind synchronously so the port is known (and reserved) before
        // returning; the listener is handed to the server thread.
        let std_listener = std::net::TcpListener::bind((cfg.bind_ip, 0))
            .unwrap_or_else(|e| panic!("token server: cannot bind {}:0: {e}", cfg.bind_ip));
        std_listener
            .set_nonblocking(true)
            .expect("set token server listener non-blocking");
        let addr = std_listener.local_addr().expect("token server local_addr");

        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("token-server-{}", addr))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server tokio runtime");
                rt.block_on(serve(std_listener, thread_shared, shutdown_rx));
            })
            .expect("spawn token server thread");

        let realm_host = cfg
            .realm_host
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        TokenServer {
            shared,
            addr,
            realm: format!("http://{realm_host}:{}/token", addr.port()),
            admin: cfg.admin,
            cert_pem,
            _dir: dir,
            cert_path,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Realm URL, e.g. `http://127.0.0.1:PORT/token`.
    pub fn url(&self) -> &str {
        &self.realm
    }

    /// The `service` (JWT audience) this server issues tokens for.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The `iss` claim of issued tokens.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Admin credentials (push + pull everywhere).
    pub fn admin(&self) -> &Credentials {
        &self.admin
    }

    /// PEM of the signing certificate (the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of a file holding [`Self::cert_pem`].
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Adds (or replaces) a user at runtime.
    pub fn add_user(&self, username: &str, password: &str, pull_prefixes: &[&str]) {
        self.shared.lock().users.insert(
            username.to_string(),
            User {
                password: password.to_string(),
                admin: false,
                pull_prefixes: pull_prefixes.iter().map(|p| p.to_string()).collect(),
            },
        );
    }

    /// Removes a user (their refresh tokens stop working too).
    pub fn remove_user(&self, username: &str) {
        self.shared.lock().users.remove(username);
    }

    /// Allows anonymous pulls of repositories starting with `prefix`.
    pub fn allow_anonymous_pull(&self, prefix: &str) {
        self.shared.lock().anonymous_pull.push(prefix.to_string());
    }

    /// Registers a refresh ("identity") token acting as `username`.
    pub fn add_refresh_token(&self, token: &str, username: &str) {
        self.shared
            .lock()
            .refresh_tokens
            .insert(token.to_string(), username.to_string());
    }

    /// Changes `expires_in` (and, if `Some`, the JWT lifetime) for tokens
    /// issued from now on.
    pub fn set_expires_in(&self, secs: Option<u64>) {
        let mut state = self.shared.lock();
        state.expires_in = secs;
        if let Some(s) = secs {
            state.token_lifetime = Duration::from_secs(s);
        }
    }

    /// Adds `bytes` of filler to every token response from now on.
    pub fn set_padding(&self, bytes: usize) {
        self.shared.lock().padding = bytes;
    }

    /// All requests received since start or the last [`Self::reset`].
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.lock().log.clone()
    }

    /// Number of requests received since start or the last reset.
    pub fn count(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// Number of requests that asked for exactly this scope string (e.g.
    /// `repository:private/app:pull`), counting each scope of a
    /// multi-scope request separately.
    pub fn count_scope(&self, scope: &str) -> u64 {
        self.shared
            .lock()
            .per_scope
            .get(scope)
            .copied()
            .unwrap_or(0)
    }

    /// Per-scope request counters.
    pub fn scope_counts(&self) -> HashMap<String, u64> {
        self.shared.lock().per_scope.clone()
    }

    /// Clears the request log and counters (not users or tokens).
    pub fn reset(&self) {
        let mut state = self.shared.lock();
        state.log.clear();
        state.per_scope.clear();
    }

    /// Issues a token directly, without HTTP (for tests that need a valid or
    /// deliberately broad token). `subject` is not checked against users.
    pub fn mint_token(&self, subject: &str, access: &[Access]) -> String {
        let lifetime = self.shared.lock().token_lifetime;
        sign_token(&self.shared, subject, access, lifetime)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never turn a test failure into a double panic.
            let _ = thread.join();
        }
    }
}

async fn serve(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("token server: cannot register listener: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(req, &shared).await) }
                    });
                    // Connection errors (client hung up) are irrelevant here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// Outcome of processing a request, before it is logged.
struct Reply {
    status: StatusCode,
    body: serde_json::Value,
    subject: Option<String>,
    granted: Vec<Access>,
}

impl Reply {
    fn error(status: StatusCode, code: &str, detail: &str) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": code, "error_description": detail,
                "errors": [{ "code": "UNAUTHORIZED", "message": detail }] }),
            subject: None,
            granted: Vec::new(),
        }
    }
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let auth_scheme = authorization
        .as_deref()
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_string);

    let form: Vec<(String, String)> = if method == Method::POST {
        match req.into_body().collect().await {
            Ok(body) => url::form_urlencoded::parse(&body.to_bytes())
                .into_owned()
                .collect(),
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };

    // GET carries parameters in the query, POST in the form body.
    let params = if method == Method::POST {
        &form
    } else {
        &query
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let service = param("service");
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_string))
        .collect();

    let reply = if path != "/token" {
        Reply::error(StatusCode::NOT_FOUND, "not_found", "unknown path")
    } else if method == Method::GET {
        let offline = param("offline_token").as_deref() == Some("true");
        handle_get(shared, authorization.as_deref(), &scopes, offline)
    } else if method == Method::POST {
        handle_post(shared, &param, &scopes)
    } else {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "only GET and POST",
        )
    };

    let status = reply.status;
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    {
        let mut state = shared.lock();
        for scope in &scopes {
            *state.per_scope.entry(scope.clone()).or_default() += 1;
        }
        state.log.push(TokenRequest {
            method: method.to_string(),
            path_and_query,
            authorization,
            auth_scheme,
            form,
            service,
            scopes,
            subject: reply.subject,
            status: status.as_u16(),
            granted: reply.granted,
        });
    }

    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"stevedore-test-token-server\""),
        );
    }
    response
}

/// `GET /token`: Basic credentials are optional; anonymous gets anonymous
/// access.
fn handle_get(
    shared: &Shared,
    authorization: Option<&str>,
    scopes: &[String],
    offline: bool,
) -> Reply {
    let subject = match authorization {
        None => None,
        Some(header) => match parse_basic(header) {
            Some(creds) if check_password(shared, &creds) => Some(creds.username),
            _ => {
                return Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "invalid credentials",
                );
            }
        },
    };
    // Docker's spec: with offline_token=true an authenticated client also
    // gets a refresh token.
    let refresh = match (&subject, offline) {
        (Some(user), true) => Some(new_refresh_token(shared, user)),
        _ => None,
    };
    issue(shared, subject, scopes, refresh)
}

/// `POST /token`: OAuth2 password and refresh_token grants.
fn handle_post(
    shared: &Shared,
    param: &dyn Fn(&str) -> Option<String>,
    scopes: &[String],
) -> Reply {
    if param("client_id").is_none_or(|c| c.is_empty()) {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing client_id",
        );
    }
    let offline = param("access_type").as_deref() == Some("offline");
    match param("grant_type").as_deref() {
        Some("password") => {
            let creds = Credentials::new(
                param("username").unwrap_or_default(),
                param("password").unwrap_or_default(),
            );
            if !check_password(shared, &creds) {
                return Reply::error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "invalid credentials",
                );
            }
            // The password grant always hands out a refresh token.
            let refresh = new_refresh_token(shared, &creds.username);
            issue(shared, Some(creds.username), scopes, Some(refresh))
        }
        Some("refresh_token") => {
            let Some(token) = param("refresh_token") else {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "missing refresh_token",
                );
            };
            let user = {
                let state = shared.lock();
                state
                    .refresh_tokens
                    .get(&token)
                    .filter(|u| state.users.contains_key(*u))
                    .cloned()
            };
            match user {
                Some(user) => issue(shared, Some(user), scopes, offline.then_some(token)),
                None => Reply::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                ),
            }
        }
        _ => Reply::error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be password or refresh_token",
        ),
    }
}

fn check_password(shared: &Shared, creds: &Credentials) -> bool {
    shared
        .lock()
        .users
        .get(&creds.username)
        .is_some_and(|u| u.password == creds.password)
}

fn new_refresh_token(shared: &Shared, user: &str) -> String {
    let n = shared.counter.fetch_add(1, Ordering::Relaxed);
    let token = format!("refresh-{user}-{n}-{}", unix_now());
    shared
        .lock()
        .refresh_tokens
        .insert(token.clone(), user.to_string());
    token
}

/// Computes the granted access for `subject` and builds the JSON reply.
fn issue(
    shared: &Shared,
    subject: Option<String>,
    scopes: &[String],
    refresh_token: Option<String>,
) -> Reply {
    let (granted, expires_in, lifetime, padding) = {
        let state = shared.lock();
        let user = subject.as_ref().and_then(|s| state.users.get(s));
        let granted: Vec<Access> = scopes
            .iter()
            .filter_map(|s| parse_scope(s))
            .filter_map(|requested| grant(&state, user, requested))
            .collect();
        (
            granted,
            state.expires_in,
            state.token_lifetime,
            state.padding,
        )
    };
    let token = sign_token(shared, subject.as_deref().unwrap_or(""), &granted, lifetime);
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "issued_at": rfc3339(unix_now()),
    });
    if let Some(secs) = expires_in {
        body["expires_in"] = secs.into();
    }
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = refresh.into();
    }
    if padding > 0 {
        body["padding"] = "x".repeat(padding).into();
    }
    Reply {
        status: StatusCode::OK,
        body,
        subject,
        granted,
    }
}

/// Intersects a requested scope with what the (possibly anonymous) user may
/// do. Returns `None` if nothing is granted.
fn grant(state: &State, user: Option<&User>, requested: Access) -> Option<Access> {
    let name = requested.name.as_str();
    let allowed: BTreeSet<&str> = match (requested.kind.as_str(), user) {
        (_, Some(u)) if u.admin => ["pull", "push", "delete", "*"].into(),
        ("repository", Some(u)) if u.pull_prefixes.iter().any(|p| name.starts_with(p)) => {
            ["pull"].into()
        }
        ("repository", _) if state.anonymous_pull.iter().any(|p| name.starts_with(p)) => {
            ["pull"].into()
        }
        _ => BTreeSet::new(),
    };
    let actions: Vec<String> = requested
        .actions
        .into_iter()
        .filter(|a| allowed.contains(a.as_str()))
        .collect();
    (!actions.is_empty()).then_some(Access {
        kind: requested.kind,
        name: requested.name,
        actions,
    })
}

/// Parses `type:name:actions`. Repository names may contain `:` (a registry
/// host with a port), so the name is everything between the first and the
/// last colon.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

fn parse_basic(header: &str) -> Option<Credentials> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = B64.decode(value.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(Credentials::new(user, pass))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Access],
}

fn sign_token(shared: &Shared, subject: &str, access: &[Access], lifetime: Duration) -> String {
    let now = unix_now();
    let claims = Claims {
        iss: &shared.issuer,
        sub: subject,
        aud: &shared.service,
        exp: now + lifetime.as_secs(),
        // Small back-dating so tokens are usable immediately even with
        // second-granularity rounding.
        nbf: now.saturating_sub(1),
        iat: now,
        jti: format!(
            "jti-{}-{now}",
            shared.counter.fetch_add(1, Ordering::Relaxed)
        ),
        access,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![shared.cert_b64.clone()]);
    jsonwebtoken::encode(&header, &claims, &shared.signing_key)
        .expect("sign JWT with the generated ES256 key")
}
