//! [`TokenServer`] and its builder: signing key and certificate, server thread, runtime controls.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tempfile::TempDir;

use super::handler::serve;
use super::tokens::sign_token;
use super::{Access, Credentials, Shared, State, TokenRequest, User};

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
