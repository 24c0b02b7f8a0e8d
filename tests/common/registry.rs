//! A real upstream registry: CNCF distribution 2.8 (`docker-registry serve`)
//! running as a child process on loopback with filesystem storage in a
//! tempdir.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use super::token_server::{Credentials, TokenServer};
use super::util::{SCRUBBED_ENV, free_port, http_status, read_log, wait_until};

/// Path of the distribution binary shipped by Debian's `docker-registry`.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
enum AuthMode {
    Open,
    /// All listed users may push and pull everything; the first is the
    /// "admin" used for seeding.
    Htpasswd(Vec<Credentials>),
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert_pem: String,
        admin: Credentials,
    },
}

/// Where the registry listens.
#[derive(Debug, Clone, Copy)]
enum Listen {
    /// `ip:<free port>`.
    FreePort(Ipv4Addr),
    /// A fixed address.
    Fixed(SocketAddr),
    /// Port 80 on a fresh loopback address, so that `host()` has no port.
    Portless,
}

/// Builder for [`Registry`]; see [`Registry::builder`].
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    listen: Listen,
    auth: AuthMode,
    /// `(certificate PEM, key PEM)` paths: serve HTTPS instead of HTTP.
    tls: Option<(PathBuf, PathBuf)>,
    /// Storage root to use instead of a fresh one in the registry's tempdir.
    storage: Option<PathBuf>,
}

impl RegistryBuilder {
    /// Listen on a free port of `ip` (default 127.0.0.1).
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.listen = Listen::FreePort(ip);
        self
    }

    /// Listen on exactly `addr` (no retry if it is taken).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.listen = Listen::Fixed(addr);
        self
    }

    /// Listen on port 80 of a fresh loopback address `127.77.x.y`, so that
    /// [`Registry::host`] is a bare IP without a port.
    ///
    /// This matters for path-prefix mirrors: in a docker reference the
    /// upstream host becomes a *path component* of the mirror reference
    /// (`127.0.0.1:5000/<upstream>/repo`), and path components may not
    /// contain `:`. containers/image (skopeo, podman) and oci-client reject
    /// `127.0.0.1:5000/127.0.0.1:6000/repo` as an invalid reference.
    /// (Binding port 80 needs root or CAP_NET_BIND_SERVICE.)
    pub fn portless(mut self) -> Self {
        self.listen = Listen::Portless;
        self
    }

    /// No authentication.
    pub fn open(mut self) -> Self {
        self.auth = AuthMode::Open;
        self
    }

    /// htpasswd (bcrypt) authentication; every user may push and pull.
    pub fn htpasswd(mut self, users: &[(&str, &str)]) -> Self {
        assert!(
            !users.is_empty(),
            "htpasswd registry needs at least one user"
        );
        self.auth = AuthMode::Htpasswd(
            users
                .iter()
                .map(|(u, p)| Credentials::new(*u, *p))
                .collect(),
        );
        self
    }

    /// Token authentication delegated to `server`.
    pub fn token(mut self, server: &TokenServer) -> Self {
        self.auth = AuthMode::Token {
            realm: server.url().to_string(),
            service: server.service().to_string(),
            issuer: server.issuer().to_string(),
            cert_pem: server.cert_pem().to_string(),
            admin: server.admin().clone(),
        };
        self
    }

    /// Serve HTTPS with this certificate (chain) and private key, both PEM
    /// files (distribution's `http.tls.certificate` / `http.tls.key`); then
    /// [`Registry::url`] is `https://…`. The files are copied into the
    /// registry's tempdir at start.
    pub fn tls(mut self, cert_pem_path: impl AsRef<Path>, key_pem_path: impl AsRef<Path>) -> Self {
        self.tls = Some((
            cert_pem_path.as_ref().to_path_buf(),
            key_pem_path.as_ref().to_path_buf(),
        ));
        self
    }

    /// Use `dir` as the filesystem storage root (e.g. another registry's
    /// [`Registry::storage_dir`]), so two registries serve the same content —
    /// one over HTTP for pushing, one over HTTPS for pulling.
    pub fn storage_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.storage = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Starts the registry and waits until `GET /v2/` answers.
    pub fn start(self) -> Registry {
        Registry::start(self)
    }
}

/// A running distribution registry; the child process is killed on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    admin: Option<Credentials>,
    tls: bool,
    storage: PathBuf,
}

impl Registry {
    /// Builder defaulting to an open registry on a free 127.0.0.1 port.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            listen: Listen::FreePort(Ipv4Addr::LOCALHOST),
            auth: AuthMode::Open,
            tls: None,
            storage: None,
        }
    }

    /// Registry without authentication.
    pub fn open() -> Registry {
        Self::builder().start()
    }

    /// Registry with htpasswd authentication for a single user (who may push
    /// and pull everything).
    pub fn htpasswd(user: &str, pass: &str) -> Registry {
        Self::builder().htpasswd(&[(user, pass)]).start()
    }

    /// Registry using `server` for token authentication.
    pub fn token(server: &TokenServer) -> Registry {
        Self::builder().token(server).start()
    }

    /// `127.0.0.1:PORT` (or a bare IP for [`RegistryBuilder::portless`]) —
    /// the host part of image references.
    pub fn host(&self) -> String {
        if self.addr.port() == 80 {
            self.addr.ip().to_string()
        } else {
            self.addr.to_string()
        }
    }

    /// `http://<host>`, or `https://<host>` for [`RegistryBuilder::tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Credentials allowed to push: the first htpasswd user, or the token
    /// server's admin. `None` for an open registry.
    pub fn admin_credentials(&self) -> Option<&Credentials> {
        self.admin.as_ref()
    }

    /// Kills the registry process (e.g. to simulate an upstream outage).
    /// The storage directory is kept until the `Registry` is dropped.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the registry has logged so far (including access log).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// Root of the filesystem storage driver.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage.clone()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn start(cfg: RegistryBuilder) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .expect("create registry tempdir");
        let auth_yaml = write_auth_files(dir.path(), &cfg.auth);
        let tls_yaml = write_tls_files(dir.path(), cfg.tls.as_ref());
        let storage = cfg
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("storage"));
        let admin = match &cfg.auth {
            AuthMode::Open => None,
            AuthMode::Htpasswd(users) => users.first().cloned(),
            AuthMode::Token { admin, .. } => Some(admin.clone()),
        };

        // Port choice is racy (bind, drop, hand to the child); retry with a
        // new address if the child could not bind.
        const ATTEMPTS: usize = 5;
        let mut last_failure = String::new();
        for _ in 0..ATTEMPTS {
            let addr = match cfg.listen {
                Listen::FreePort(ip) => SocketAddr::new(IpAddr::V4(ip), free_port(IpAddr::V4(ip))),
                Listen::Fixed(addr) => addr,
                Listen::Portless => portless_addr(),
            };
            let http = HttpSetup {
                addr,
                storage: &storage,
                tls_yaml: &tls_yaml,
            };
            match spawn_and_wait(dir.path(), &http, &auth_yaml) {
                Ok(child) => {
                    return Registry {
                        child,
                        addr,
                        dir,
                        admin,
                        tls: cfg.tls.is_some(),
                        storage,
                    };
                }
                Err(failure) => {
                    let retry = failure.addr_in_use && !matches!(cfg.listen, Listen::Fixed(_));
                    last_failure = failure.message;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry failed to start:\n{last_failure}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct StartFailure {
    message: String,
    addr_in_use: bool,
}

/// Where and how the registry serves and stores.
struct HttpSetup<'a> {
    addr: SocketAddr,
    storage: &'a Path,
    /// `  tls:` lines under `http:`, or empty for plain HTTP.
    tls_yaml: &'a str,
}

/// Writes config for `addr`, spawns the registry and waits for `/v2/`.
fn spawn_and_wait(
    dir: &Path,
    setup: &HttpSetup<'_>,
    auth_yaml: &str,
) -> Result<Child, StartFailure> {
    let config_path = dir.join("config.yml");
    let HttpSetup {
        addr,
        storage,
        tls_yaml,
    } = *setup;
    let config = format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: stevedore-test-secret
{tls_yaml}health:
  storagedriver:
    enabled: false
{auth_yaml}",
        storage = storage.display(),
    );
    std::fs::write(&config_path, config).expect("write registry config.yml");

    let log_path = dir.join("registry.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open registry log file");
    let log_err = log.try_clone().expect("clone registry log handle");

    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // distribution lets REGISTRY_* variables override the config file; keep
    // the child hermetic.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {REGISTRY_BIN} ({e}); install it with \
             `apt-get install -y docker-registry`"
        )
    });

    let host = addr.to_string();
    let ready = wait_until(Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(format!("exited early with {status}")));
        }
        match http_status(addr, &host, "/v2/") {
            Some(200 | 401) => Some(Ok(())),
            // A TLS listener answers plain HTTP with Go's "400 Client sent an
            // HTTP request to an HTTPS server": it is up.
            Some(400) if !tls_yaml.is_empty() => Some(Ok(())),
            _ => None,
        }
    });
    let problem = match ready {
        Some(Ok(())) => return Ok(child),
        Some(Err(problem)) => problem,
        None => {
            let _ = child.kill();
            "did not answer GET /v2/ within 20s".to_string()
        }
    };
    let _ = child.wait();
    let log = read_log(&log_path);
    Err(StartFailure {
        addr_in_use: log.contains("address already in use"),
        message: format!("registry on {addr} {problem}; log:\n{log}"),
    })
}

/// Copies the TLS certificate and key into `dir` and returns the `tls:`
/// lines of the `http:` section (empty without TLS).
fn write_tls_files(dir: &Path, tls: Option<&(PathBuf, PathBuf)>) -> String {
    let Some((cert, key)) = tls else {
        return String::new();
    };
    let cert_copy = dir.join("tls-cert.pem");
    let key_copy = dir.join("tls-key.pem");
    std::fs::copy(cert, &cert_copy)
        .unwrap_or_else(|e| panic!("copy TLS certificate {}: {e}", cert.display()));
    std::fs::copy(key, &key_copy).unwrap_or_else(|e| panic!("copy TLS key {}: {e}", key.display()));
    format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        cert_copy.display(),
        key_copy.display()
    )
}

/// Creates htpasswd / cert files as needed and returns the `auth:` section.
fn write_auth_files(dir: &Path, auth: &AuthMode) -> String {
    match auth {
        AuthMode::Open => String::new(),
        AuthMode::Htpasswd(users) => {
            let path = dir.join("htpasswd");
            let mut content = String::new();
            for user in users {
                content.push_str(&htpasswd_line(user));
            }
            std::fs::write(&path, content).expect("write htpasswd file");
            format!(
                "auth:\n  htpasswd:\n    realm: stevedore-test-registry\n    path: {}\n",
                path.display()
            )
        }
        AuthMode::Token {
            realm,
            service,
            issuer,
            cert_pem,
            ..
        } => {
            // Own copy, so the registry does not depend on the token server's
            // tempdir lifetime.
            let path = dir.join("token-rootcertbundle.pem");
            std::fs::write(&path, cert_pem).expect("write token root cert bundle");
            format!(
                "auth:\n  token:\n    realm: \"{realm}\"\n    service: \"{service}\"\n    \
                 issuer: \"{issuer}\"\n    rootcertbundle: {}\n",
                path.display()
            )
        }
    }
}

/// One bcrypt htpasswd line, produced by Apache's `htpasswd -Bbn`
/// (distribution only accepts bcrypt entries).
fn htpasswd_line(user: &Credentials) -> String {
    let output = Command::new("htpasswd")
        .args(["-Bbn", &user.username, &user.password])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run htpasswd ({e}); install it with `apt-get install -y apache2-utils`")
        });
    assert!(
        output.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Output is "user:$2y$...\n\n"; keep exactly one line.
    let text = String::from_utf8(output.stdout).expect("htpasswd output is UTF-8");
    format!("{}\n", text.trim())
}

/// Picks `127.77.x.y:80` where nothing is listening yet. The counter makes
/// concurrent tests in one process use different addresses; the pid offset
/// separates concurrently running test binaries.
fn portless_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 200 * 250;
    for _ in 0..1000 {
        let n = base + NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, 77, ((n / 250) % 250) as u8 + 1, (n % 250) as u8 + 1);
        let addr = SocketAddr::new(IpAddr::V4(ip), 80);
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free 127.77.x.y:80 address (binding port 80 needs root/CAP_NET_BIND_SERVICE)");
}
