//! The servers under test, each started fresh (new state directory, new
//! process) so that caches and peak-RSS counters start from zero:
//! stevedore, distribution in proxy mode (both in front of a counting proxy
//! to the origin), and nginx serving the blob file with sendfile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::counter::{Counter, Upstream};
use crate::procs::{Proc, free_port, is_root, loopback};
use crate::setup::{self, Image, REPO};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stevedore,
    Distribution,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stevedore => "stevedore",
            Kind::Distribution => "distribution",
            Kind::Nginx => "nginx",
        }
    }
}

/// Where the binaries are and how stevedore is configured.
#[derive(Debug, Clone)]
pub struct Bins {
    pub stevedore: PathBuf,
    pub stevedore_extra_config: Option<String>,
    pub stevedore_log: String,
    pub registry: PathBuf,
    pub nginx: PathBuf,
}

/// What every target needs to know about the test setup.
pub struct World {
    pub dir: PathBuf,
    pub origin: SocketAddr,
    pub origin_pid: u32,
    pub image: Image,
    pub bins: Bins,
    starts: std::sync::atomic::AtomicU32,
}

impl World {
    pub fn new(
        dir: PathBuf,
        origin: SocketAddr,
        origin_pid: u32,
        image: Image,
        bins: Bins,
    ) -> World {
        World {
            dir,
            origin,
            origin_pid,
            image,
            bins,
            starts: Default::default(),
        }
    }

    /// A fresh state directory for one target instance.
    fn fresh_dir(&self, kind: Kind) -> Result<PathBuf> {
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(format!("{}-{n}", kind.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }
}

/// A running target.
pub struct Target {
    pub kind: Kind,
    proc: Proc,
    addr: SocketAddr,
    /// The same content over TLS (stevedore's TLS listener, nginx's ssl server), and the CA
    /// certificate (PEM) that its certificate chains to.
    pub tls: Option<(SocketAddr, String)>,
    /// stevedore's metrics listener.
    pub metrics: Option<SocketAddr>,
    /// Query string pullers add (`?ns=<origin>` for stevedore).
    query: String,
    counter: Option<Counter>,
    dir: PathBuf,
}

impl Target {
    pub async fn start(world: &World, kind: Kind) -> Result<Target> {
        let dir = world.fresh_dir(kind)?;
        let target = match kind {
            Kind::Stevedore => start_stevedore(world, dir).await,
            Kind::Distribution => start_distribution(world, dir).await,
            Kind::Nginx => start_nginx(world, dir).await,
        }
        .with_context(|| format!("start {}", kind.name()))?;
        eprintln!(
            "loadtest: started {} on {} (pid {})",
            kind.name(),
            target.addr,
            target.proc.pid()
        );
        Ok(target)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Path and query of the blob.
    pub fn blob_path(&self, digest: &str) -> String {
        format!("/v2/{REPO}/blobs/{digest}{}", self.query)
    }

    /// Path and query of a manifest.
    pub fn manifest_path(&self, reference: &str) -> String {
        format!("/v2/{REPO}/manifests/{reference}{}", self.query)
    }

    pub fn blob_url(&self, digest: &str) -> String {
        format!("http://{}{}", self.addr, self.blob_path(digest))
    }

    pub fn manifest_url(&self, reference: &str) -> String {
        format!("http://{}{}", self.addr, self.manifest_path(reference))
    }

    /// The target's processes (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        self.proc.pids()
    }

    /// Upstream traffic so far (`None` for nginx, which has no upstream).
    pub fn upstream(&self) -> Option<Upstream> {
        self.counter.as_ref().map(Counter::snapshot)
    }

    /// A metric of stevedore's metrics listener (`stevedore_…` as Prometheus text names it),
    /// summed over its series.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let addr = self.metrics?;
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .ok()?
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let values: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Fails if the process has died.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.proc.exited() {
            anyhow::bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name(),
                self.proc.log.display(),
                crate::procs::tail(&self.proc.log)
            );
        }
        Ok(())
    }

    /// Stops the process and deletes its state directory.
    pub async fn stop(self) {
        self.proc.stop().await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

async fn start_stevedore(world: &World, dir: PathBuf) -> Result<Target> {
    let counter = Counter::start(world.origin, &world.image.blob_digest).await?;
    let origin_host = world.origin.to_string();
    let store = dir.join("store");
    std::fs::create_dir_all(&store).with_context(|| format!("create {}", store.display()))?;
    let extra = world
        .bins
        .stevedore_extra_config
        .as_deref()
        .unwrap_or("")
        .replace("{store}", &store.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let mut last = None;
    for _ in 0..5 {
        let addr = loopback(free_port()?);
        let tls_addr = loopback(free_port()?);
        let metrics = loopback(free_port()?);
        let config = format!(
            "[server]\nlisten = \"{addr}\"\ntls-listen = \"{tls_addr}\"\n\
             metrics-listen = \"{metrics}\"\n\
             [server.tls]\nnames = [\"127.0.0.1\"]\n\n\
             [ca]\ndir = \"{ca}\"\n\n\
             [registries.\"{origin_host}\"]\nendpoints = [\"{upstream}\"]\n\
             allow-private-network = true\nproxy = \"none\"\n\n{extra}\n",
            upstream = counter.url(),
            ca = dir.join("ca").display(),
        );
        let path = dir.join("stevedore.toml");
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let mut cmd = tokio::process::Command::new(&world.bins.stevedore);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", &world.bins.stevedore_log);
        let mut proc =
            Proc::spawn("stevedore", cmd, &dir.join("stevedore.log")).with_context(|| {
                format!(
                    "{} (build it with `cargo build --release`)",
                    world.bins.stevedore.display()
                )
            })?;
        match proc.wait_ready(addr, Duration::from_secs(20)).await {
            Ok(()) => {
                let ca = std::fs::read_to_string(dir.join("ca").join("ca.pem")).ok();
                return Ok(Target {
                    kind: Kind::Stevedore,
                    proc,
                    addr,
                    tls: ca.map(|ca| (tls_addr, ca)),
                    metrics: Some(metrics),
                    query: format!("?ns={origin_host}"),
                    counter: Some(counter),
                    dir,
                });
            }
            Err(e) => {
                proc.stop().await;
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("stevedore did not start")))
}

async fn start_distribution(world: &World, dir: PathBuf) -> Result<Target> {
    let counter = Counter::start(world.origin, &world.image.blob_digest).await?;
    let (proc, addr) = setup::start_registry(
        &world.bins.registry,
        "distribution (proxy)",
        &dir,
        Some(&counter.url()),
    )
    .await?;
    Ok(Target {
        kind: Kind::Distribution,
        proc,
        addr,
        tls: None,
        metrics: None,
        query: String::new(),
        counter: Some(counter),
        dir,
    })
}

fn nginx_config(dir: &Path, addr: SocketAddr, tls_addr: SocketAddr, root: &Path) -> String {
    let user = if is_root() { "user root;\n" } else { "" };
    let d = dir.display();
    format!(
        "{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 65;
  server {{
    listen {addr};
    location = /v2/ {{ default_type application/json; return 200 '{{}}'; }}
    location /v2/{REPO}/blobs/ {{
      alias {root}/;
      default_type application/octet-stream;
    }}
    location /v2/{REPO}/manifests/ {{
      alias {root}/manifests/;
      default_type application/vnd.oci.image.manifest.v1+json;
    }}
  }}
  server {{
    listen {tls_addr} ssl http2;
    ssl_certificate {d}/tls.pem;
    ssl_certificate_key {d}/tls-key.pem;
    ssl_protocols TLSv1.3;
    location /v2/{REPO}/blobs/ {{
      alias {root}/;
      default_type application/octet-stream;
    }}
  }}
}}
",
        root = root.display()
    )
}

async fn start_nginx(world: &World, dir: PathBuf) -> Result<Target> {
    // nginx maps /v2/<repo>/blobs/<digest> to <root>/<digest>: a hard link
    // to the blob file (same tempdir, so same filesystem).
    let root = dir.join("root");
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let link = root.join(&world.image.blob_digest);
    std::fs::hard_link(&world.image.blob_path, &link)
        .or_else(|_| std::fs::copy(&world.image.blob_path, &link).map(|_| ()))
        .with_context(|| format!("link blob into {}", root.display()))?;
    // The manifest as a static file, by digest and by tag (small-answers).
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("create {}", manifests.display()))?;
    for name in [world.image.manifest_digest.as_str(), setup::TAG] {
        std::fs::write(manifests.join(name), &world.image.manifest_bytes)
            .with_context(|| format!("write the manifest into {}", manifests.display()))?;
    }
    let ca = write_tls_files(&dir)?;
    let mut last = None;
    for _ in 0..5 {
        let addr = loopback(free_port()?);
        let tls_addr = loopback(free_port()?);
        let path = dir.join("nginx.conf");
        std::fs::write(&path, nginx_config(&dir, addr, tls_addr, &root))
            .with_context(|| format!("write {}", path.display()))?;
        let mut cmd = tokio::process::Command::new(&world.bins.nginx);
        cmd.arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg("daemon off;");
        let mut proc = Proc::spawn("nginx", cmd, &dir.join("nginx.out")).with_context(|| {
            format!(
                "{} (install with `apt-get install -y nginx-light`)",
                world.bins.nginx.display()
            )
        })?;
        match proc.wait_ready(addr, Duration::from_secs(20)).await {
            Ok(()) => {
                return Ok(Target {
                    kind: Kind::Nginx,
                    proc,
                    addr,
                    tls: Some((tls_addr, ca.clone())),
                    metrics: None,
                    query: String::new(),
                    counter: None,
                    dir,
                });
            }
            Err(e) => {
                proc.stop().await;
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
}

/// A CA and a certificate for 127.0.0.1 signed by it, for nginx's TLS server: writes
/// `tls.pem` and `tls-key.pem` into `dir` and returns the CA certificate (PEM).
fn write_tls_files(dir: &Path) -> Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().context("CA key")?)
        .context("self-sign the CA")?;
    let key = KeyPair::generate().context("server key")?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .context("server params")?
        .signed_by(&key, &ca)
        .context("sign the server certificate")?;
    std::fs::write(dir.join("tls.pem"), cert.pem()).context("write tls.pem")?;
    std::fs::write(dir.join("tls-key.pem"), key.serialize_pem()).context("write tls-key.pem")?;
    Ok(ca.pem())
}
