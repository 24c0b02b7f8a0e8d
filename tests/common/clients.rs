//! Real clients pulling through a pull-through mirror (the proxy under test)
//! or directly from a registry: skopeo, containerd/ctr and oci-client.
//!
//! Every pull returns a [`PullResult`] so tests can compare digests with
//! what was pushed upstream ([`super::images::PushedImage`]).
//!
//! Mirror addressing used here:
//! * skopeo and oci-client use the *path-prefix* form: the mirror reference
//!   is `127.0.0.1:MIRROR_PORT/<upstream host>/<repo>`, i.e. requests go to
//!   `/v2/<upstream host>/<repo>/...`. Because the upstream host becomes a
//!   reference path component it must not contain a port (see
//!   [`super::registry::RegistryBuilder::portless`]).
//! * containerd uses its `hosts.toml` mirror support: requests go to
//!   `/v2/<repo>/...?ns=<upstream host>` (a port in the host is fine there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use tempfile::TempDir;

use super::images::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use super::token_server::Credentials;
use super::util::{
    BoxError, CommandError, SCRUBBED_ENV, describe, read_log, run_checked, sha256_digest,
    wait_until,
};

/// What a client ended up with.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// Digest the client recorded for the reference: the index digest when
    /// the client kept the index (containerd, `skopeo --all`, oci-client
    /// when the tag is an index), else the image manifest digest.
    pub reference_digest: String,
    /// Digest of the single-platform image manifest (linux/amd64 for an
    /// index).
    pub manifest_digest: String,
    /// Layer digests of that manifest, in order.
    pub layer_digests: Vec<String>,
    /// Config digest of that manifest.
    pub config_digest: String,
    /// Combined client output, for debugging failed assertions.
    pub output: String,
}

/// Linux/amd64 entry of an index/manifest list.
fn amd64_entry(index: &serde_json::Value) -> Option<String> {
    index["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == "linux" && p["architecture"] == "amd64")
            .then(|| m["digest"].as_str().map(str::to_string))
            .flatten()
    })
}

fn is_index(manifest: &serde_json::Value) -> bool {
    let mt = manifest["mediaType"].as_str().unwrap_or_default();
    mt == OCI_INDEX
        || mt == DOCKER_MANIFEST_LIST
        || (mt.is_empty() && manifest.get("manifests").is_some())
}

/// `(config digest, layer digests)` of an image manifest.
fn manifest_parts(manifest: &serde_json::Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let layers = manifest["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["digest"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (config, layers)
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

/// Where `skopeo copy` writes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkopeoDest {
    /// `oci:<dir>:x` with `--preserve-digests` (fails for Docker schema 2
    /// sources, which an OCI layout cannot hold without conversion).
    #[default]
    Oci,
    /// `dir:<dir>`: stores manifests byte-for-byte, works for every format.
    Dir,
}

/// Options for a skopeo pull.
#[derive(Debug, Clone, Default)]
pub struct SkopeoOptions {
    /// `--all`: copy every platform of an index (and keep the index).
    pub all_platforms: bool,
    pub dest: SkopeoDest,
    /// `--src-creds user:pass`; `None` means `--src-no-creds` and an empty
    /// auth file, so nothing can authenticate to an upstream directly.
    pub creds: Option<Credentials>,
    /// Content of the auth file (`REGISTRY_AUTH_FILE`), used instead of `--src-creds` /
    /// `--src-no-creds`: credentials for the mirror host itself.
    pub auth_file: Option<String>,
    /// `--src-cert-dir`: CA certificates (`*.crt`) to trust, with TLS verification on.
    pub cert_dir: Option<PathBuf>,
    /// Extra environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
    pub env: Vec<(String, String)>,
}

/// `registries.conf` mapping `upstream_host` to `primary_location` with one
/// insecure (plain-HTTP) mirror at `mirror_location`.
pub fn mirror_registries_conf(
    upstream_host: &str,
    primary_location: &str,
    mirror_location: &str,
) -> String {
    format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\n\
         prefix = \"{upstream_host}\"\n\
         location = \"{primary_location}\"\n\
         insecure = true\n\n\
         [[registry.mirror]]\n\
         location = \"{mirror_location}\"\n\
         insecure = true\n"
    )
}

/// Pulls `<upstream_host>/<repo>:<tag>` with skopeo through the path-prefix
/// mirror `127.0.0.1:<mirror_port>/<upstream_host>`.
///
/// skopeo falls back to the primary location if the mirror fails; with an
/// upstream that requires auth (and skopeo holding no credentials) such a
/// fallback fails, so success proves the mirror served the image. Use
/// [`skopeo_pull_via_mirror_only`] to rule fallback out completely.
pub async fn skopeo_pull_via_mirror(
    mirror_port: u16,
    upstream_host: &str,
    repo: &str,
    tag: &str,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let conf = mirror_registries_conf(
        upstream_host,
        upstream_host,
        &format!("127.0.0.1:{mirror_port}/{upstream_host}"),
    );
    skopeo_pull(&format!("{upstream_host}/{repo}:{tag}"), Some(&conf), opts).await
}

/// Like [`skopeo_pull_via_mirror`], but the primary location is an
/// unreachable address (`127.0.0.1:1`), so only the mirror can serve.
pub async fn skopeo_pull_via_mirror_only(
    mirror_port: u16,
    upstream_host: &str,
    repo: &str,
    tag: &str,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let conf = mirror_registries_conf(
        upstream_host,
        "127.0.0.1:1",
        &format!("127.0.0.1:{mirror_port}/{upstream_host}"),
    );
    skopeo_pull(&format!("{upstream_host}/{repo}:{tag}"), Some(&conf), opts).await
}

/// `skopeo copy docker://<reference> ...` with an optional `registries.conf`
/// content (`None`: an empty one, i.e. direct access).
pub async fn skopeo_pull(
    reference: &str,
    registries_conf: Option<&str>,
    opts: &SkopeoOptions,
) -> Result<PullResult, CommandError> {
    let dir = tempfile::Builder::new()
        .prefix("skopeo-")
        .tempdir()
        .map_err(|e| CommandError::other("skopeo setup".into(), e.to_string()))?;
    let setup = |name: &str, content: &str| -> Result<PathBuf, CommandError> {
        let path = dir.path().join(name);
        std::fs::write(&path, content).map_err(|e| {
            CommandError::other(
                "skopeo setup".into(),
                format!("write {}: {e}", path.display()),
            )
        })?;
        Ok(path)
    };
    let conf_path = setup(
        "registries.conf",
        registries_conf.unwrap_or("unqualified-search-registries = []\n"),
    )?;
    let auth_path = setup("auth.json", opts.auth_file.as_deref().unwrap_or("{}"))?;
    let policy_path = setup(
        "policy.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let registries_d = dir.path().join("registries.d");
    let tmp = dir.path().join("tmp");
    for d in [&registries_d, &tmp] {
        std::fs::create_dir_all(d)
            .map_err(|e| CommandError::other("skopeo setup".into(), e.to_string()))?;
    }
    let image_dir = dir.path().join("image");
    let dest = match opts.dest {
        SkopeoDest::Oci => format!("oci:{}:x", image_dir.display()),
        SkopeoDest::Dir => format!("dir:{}", image_dir.display()),
    };

    let mut cmd = tokio::process::Command::new("skopeo");
    // `--registries-conf` is a (hidden) global flag in skopeo 1.9; it replaces
    // /etc/containers/registries.conf and its drop-in directory.
    cmd.arg("--registries-conf")
        .arg(&conf_path)
        .arg("--registries.d")
        .arg(&registries_d)
        .arg("--policy")
        .arg(&policy_path)
        .arg("--tmpdir")
        .arg(&tmp)
        .arg("--command-timeout")
        .arg("120s")
        .arg("copy");
    match &opts.cert_dir {
        Some(dir) => {
            cmd.arg("--src-tls-verify=true")
                .arg("--src-cert-dir")
                .arg(dir);
        }
        None => {
            cmd.arg("--src-tls-verify=false");
        }
    }
    match (&opts.creds, &opts.auth_file) {
        (Some(c), _) => {
            cmd.arg("--src-creds")
                .arg(format!("{}:{}", c.username, c.password));
        }
        (None, Some(_)) => {}
        (None, None) => {
            cmd.arg("--src-no-creds");
        }
    }
    if opts.all_platforms {
        cmd.arg("--all");
    }
    if opts.dest == SkopeoDest::Oci {
        cmd.arg("--preserve-digests");
    }
    cmd.arg(format!("docker://{reference}")).arg(&dest);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    // No credentials from the environment, ever.
    cmd.env("REGISTRY_AUTH_FILE", &auth_path)
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_CONFIG_HOME", dir.path());
    let description = describe(cmd.as_std());
    let output = run_checked(cmd).await?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let read = |p: PathBuf| -> Result<Vec<u8>, CommandError> {
        std::fs::read(&p).map_err(|e| {
            CommandError::other(description.clone(), format!("read {}: {e}", p.display()))
        })
    };
    let parse = |bytes: &[u8]| -> Result<serde_json::Value, CommandError> {
        serde_json::from_slice(bytes)
            .map_err(|e| CommandError::other(description.clone(), format!("bad JSON: {e}")))
    };
    let fail = |msg: String| CommandError::other(description.clone(), msg);

    match opts.dest {
        SkopeoDest::Oci => {
            // oci layout: index.json -> top descriptor; blobs/sha256/<hex>.
            let blob = |digest: &str| read(image_dir.join("blobs").join(digest.replace(':', "/")));
            let layout_index = parse(&read(image_dir.join("index.json"))?)?;
            let top = layout_index["manifests"][0]["digest"]
                .as_str()
                .ok_or_else(|| fail(format!("no manifest in index.json: {layout_index}")))?
                .to_string();
            let top_json = parse(&blob(&top)?)?;
            let manifest_digest = if is_index(&top_json) {
                amd64_entry(&top_json)
                    .ok_or_else(|| fail("index has no linux/amd64 entry".into()))?
            } else {
                top.clone()
            };
            let manifest_bytes = blob(&manifest_digest)?;
            let (config_digest, layer_digests) = manifest_parts(&parse(&manifest_bytes)?);
            Ok(PullResult {
                reference_digest: top,
                manifest_digest,
                layer_digests,
                config_digest,
                output: log,
            })
        }
        SkopeoDest::Dir => {
            // dir transport: manifest.json is the top manifest verbatim;
            // with --all, instances are stored as <hex>.manifest.json.
            let top_bytes = read(image_dir.join("manifest.json"))?;
            let top = sha256_digest(&top_bytes);
            let top_json = parse(&top_bytes)?;
            let (manifest_digest, manifest_json) = if is_index(&top_json) {
                let d = amd64_entry(&top_json)
                    .ok_or_else(|| fail("index has no linux/amd64 entry".into()))?;
                let hex = d.trim_start_matches("sha256:");
                let bytes = read(image_dir.join(format!("{hex}.manifest.json")))?;
                (d, parse(&bytes)?)
            } else {
                (top.clone(), top_json)
            };
            let (config_digest, layer_digests) = manifest_parts(&manifest_json);
            Ok(PullResult {
                reference_digest: top,
                manifest_digest,
                layer_digests,
                config_digest,
                output: log,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// containerd / ctr
// ---------------------------------------------------------------------------

/// Namespace all harness images live in.
pub const CTR_NAMESPACE: &str = "stevedore-test";

/// A private containerd daemon (own root, state and socket in a tempdir),
/// killed on drop.
///
/// Note that with `ctr` the registry traffic (resolve, fetch) is done by the
/// `ctr` process itself, using `--hosts-dir`; the daemon stores content and
/// unpacks layers into the `native` snapshotter.
pub struct Containerd {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

/// Options for [`Containerd::pull`].
#[derive(Debug, Clone, Default)]
pub struct CtrPullOptions {
    /// `--user user:pass`.
    pub creds: Option<Credentials>,
    /// `--all-platforms`.
    pub all_platforms: bool,
    /// Use `ctr content fetch` (download only) instead of `ctr images pull`
    /// (download + unpack into the native snapshotter).
    pub fetch_only: bool,
    /// Extra environment for `ctr`, which fetches in its own process (`HTTPS_PROXY`).
    pub env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd with a minimal config: CRI and all snapshotters but
    /// `native` disabled. Panics with the daemon log if it does not come up.
    pub fn start() -> Containerd {
        // Short prefix: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir()
            .expect("create containerd tempdir");
        let socket = dir.path().join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"
"#,
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        std::fs::create_dir_all(dir.path().join("hosts")).expect("create hosts dir");

        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).expect("create containerd log");
        let log_err = log.try_clone().expect("clone containerd log handle");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run containerd ({e}); install it with `apt-get install -y containerd`")
        });

        let ready = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("exited early with {status}")));
            }
            // Ready when the socket exists and `ctr version` talks to it.
            if !socket.exists() {
                return None;
            }
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => Containerd { child, dir, socket },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "containerd did not start ({}); log:\n{}",
                    match other {
                        Some(Err(e)) => e,
                        _ => "timeout".into(),
                    },
                    read_log(&log_path)
                );
            }
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Directory passed as `--hosts-dir`.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("containerd.log"))
    }

    /// Writes `<hosts-dir>/<host>/hosts.toml` verbatim.
    pub fn write_hosts_toml(&self, host: &str, content: &str) {
        let dir = self.hosts_dir().join(host);
        std::fs::create_dir_all(&dir).expect("create hosts.d entry");
        std::fs::write(dir.join("hosts.toml"), content).expect("write hosts.toml");
    }

    /// Configures `upstream_host` to be pulled through the mirror at
    /// `http://127.0.0.1:<mirror_port>`. With `fallback == false` the
    /// `server` is an unreachable address, so only the mirror can serve.
    pub fn configure_mirror(&self, upstream_host: &str, mirror_port: u16, fallback: bool) {
        let server = if fallback {
            format!("http://{upstream_host}")
        } else {
            "http://127.0.0.1:1".to_string()
        };
        self.write_hosts_toml(
            upstream_host,
            &format!(
                "server = \"{server}\"\n\n\
                 [host.\"http://127.0.0.1:{mirror_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        );
    }

    /// Configures `host` to be accessed directly over plain HTTP.
    pub fn configure_direct(&self, host: &str) {
        self.write_hosts_toml(
            host,
            &format!(
                "server = \"http://{host}\"\n\n\
                 [host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
            ),
        );
    }

    /// Runs `ctr --address <sock> --namespace stevedore-test <args>`.
    pub async fn ctr(&self, args: &[&str]) -> Result<std::process::Output, CommandError> {
        self.ctr_env(args, &[]).await
    }

    /// [`Self::ctr`] with extra environment.
    pub async fn ctr_env(
        &self,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<std::process::Output, CommandError> {
        let mut cmd = tokio::process::Command::new("ctr");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(CTR_NAMESPACE)
            .args(args);
        run_checked(cmd).await
    }

    /// Pulls `<upstream_host>/<repo>:<tag>` through the mirror (call
    /// [`Self::configure_mirror`] first).
    pub async fn pull_via_mirror(
        &self,
        upstream_host: &str,
        repo: &str,
        tag: &str,
        opts: &CtrPullOptions,
    ) -> Result<PullResult, CommandError> {
        self.pull(&format!("{upstream_host}/{repo}:{tag}"), opts)
            .await
    }

    /// `ctr images pull --hosts-dir <dir> --snapshotter native
    /// --platform linux/amd64 <reference>` (or `ctr content fetch`), then
    /// reads the image target and its manifest back from containerd.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &CtrPullOptions,
    ) -> Result<PullResult, CommandError> {
        let hosts_dir = self.hosts_dir();
        let hosts_dir = hosts_dir.to_string_lossy();
        let user = opts
            .creds
            .as_ref()
            .map(|c| format!("{}:{}", c.username, c.password));
        let mut args: Vec<&str> = if opts.fetch_only {
            vec!["content", "fetch"]
        } else {
            vec!["images", "pull", "--snapshotter", "native"]
        };
        args.extend(["--hosts-dir", &hosts_dir]);
        if opts.all_platforms {
            args.push("--all-platforms");
        } else {
            args.extend(["--platform", "linux/amd64"]);
        }
        if let Some(user) = &user {
            args.extend(["--user", user]);
        }
        args.push(reference);
        let output = self.ctr_env(&args, &opts.env).await?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let description = format!("ctr {}", args.join(" "));
        let fail = |msg: String| {
            CommandError::other(description.clone(), format!("{msg}\nctr output:\n{log}"))
        };

        let reference_digest = self
            .image_target(reference)
            .await?
            .ok_or_else(|| fail(format!("{reference} not in `ctr images ls` after pull")))?;
        let top = self.content_json(&reference_digest).await?;
        let manifest_digest = if is_index(&top) {
            amd64_entry(&top).ok_or_else(|| fail("index has no linux/amd64 entry".into()))?
        } else {
            reference_digest.clone()
        };
        let manifest = if manifest_digest == reference_digest {
            top
        } else {
            self.content_json(&manifest_digest).await?
        };
        let (config_digest, layer_digests) = manifest_parts(&manifest);
        Ok(PullResult {
            reference_digest,
            manifest_digest,
            layer_digests,
            config_digest,
            output: log,
        })
    }

    /// Target digest of `reference` from `ctr images ls`, if present.
    pub async fn image_target(&self, reference: &str) -> Result<Option<String>, CommandError> {
        let output = self.ctr(&["images", "ls"]).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        // Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS
        Ok(stdout.lines().skip(1).find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(reference))
                .then(|| cols.nth(1).map(str::to_string))
                .flatten()
        }))
    }

    /// Removes an image record (content is garbage-collected).
    pub async fn remove_image(&self, reference: &str) -> Result<(), CommandError> {
        self.ctr(&["images", "rm", "--sync", reference])
            .await
            .map(|_| ())
    }

    /// Reads a blob from the content store and parses it as JSON.
    async fn content_json(&self, digest: &str) -> Result<serde_json::Value, CommandError> {
        let output = self.ctr(&["content", "get", digest]).await?;
        serde_json::from_slice(&output.stdout).map_err(|e| {
            CommandError::other(
                format!("ctr content get {digest}"),
                format!("not JSON: {e}"),
            )
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// oci-client
// ---------------------------------------------------------------------------

/// Pulls `127.0.0.1:<mirror_port>/<upstream_host>/<repo>:<tag>` anonymously
/// over plain HTTP with oci-client (what CoCo's image-rs uses), downloading
/// and digest-checking config and layers.
pub async fn oci_client_pull_via_mirror(
    mirror_port: u16,
    upstream_host: &str,
    repo: &str,
    tag: &str,
) -> Result<PullResult, BoxError> {
    oci_client_pull(
        &format!("127.0.0.1:{mirror_port}/{upstream_host}/{repo}:{tag}"),
        RegistryAuth::Anonymous,
    )
    .await
}

/// Pulls `reference` over plain HTTP with the given auth; an index resolves
/// to linux/amd64.
pub async fn oci_client_pull(reference: &str, auth: RegistryAuth) -> Result<PullResult, BoxError> {
    oci_client_pull_with(
        reference,
        auth,
        ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        },
    )
    .await
}

/// Pulls `reference` with `config` (e.g. HTTPS through a proxy, with extra roots, as image-rs
/// configures it); an index resolves to linux/amd64.
pub async fn oci_client_pull_with(
    reference: &str,
    auth: RegistryAuth,
    config: ClientConfig,
) -> Result<PullResult, BoxError> {
    let reference: oci_client::Reference = reference
        .parse()
        .map_err(|e| format!("invalid reference {reference}: {e}"))?;
    let client = oci_client::Client::new(ClientConfig {
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..config
    });
    let (manifest, manifest_digest, list_digest) = client
        .pull_image_manifest_and_list_digest(&reference, &auth)
        .await?;
    // pull_blob verifies the content against the descriptor digest.
    let mut config = Vec::new();
    client
        .pull_blob(&reference, &manifest.config, &mut config)
        .await?;
    let mut layer_digests = Vec::new();
    for layer in &manifest.layers {
        let mut out = Vec::new();
        client.pull_blob(&reference, layer, &mut out).await?;
        if sha256_digest(&out) != layer.digest {
            return Err(format!("layer {} has wrong content", layer.digest).into());
        }
        layer_digests.push(layer.digest.clone());
    }
    Ok(PullResult {
        reference_digest: list_digest.unwrap_or_else(|| manifest_digest.clone()),
        manifest_digest,
        layer_digests,
        config_digest: manifest.config.digest.clone(),
        output: String::new(),
    })
}
