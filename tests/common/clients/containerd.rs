//! [`Containerd`]: a private containerd daemon and `ctr` pulls using `hosts.toml` mirrors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{PullResult, amd64_entry, is_index, manifest_parts};
use crate::common::token_server::Credentials;
use crate::common::util::{CommandError, SCRUBBED_ENV, read_log, run_checked, wait_until};

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
