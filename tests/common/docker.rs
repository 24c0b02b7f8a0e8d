//! A private Docker engine (Debian's `docker.io`) for tests that are about Docker: its own
//! data, exec root and socket in a temporary directory, no bridge and no iptables, so the
//! host's engine (if any) and network are untouched. `registry-mirrors` points at stevedore.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::util::{BoxError, wait_until};

pub struct DockerEngine {
    child: Child,
    dir: tempfile::TempDir,
    /// `/etc/docker/certs.d/<host:port>` directories this engine's tests wrote.
    cert_dirs: Vec<PathBuf>,
}

impl DockerEngine {
    /// Starts `dockerd` with `mirrors` as its `registry-mirrors`.
    pub fn start(mirrors: &[String]) -> DockerEngine {
        Self::start_with(mirrors, serde_json::json!({}))
    }

    /// [`DockerEngine::start`] with more `daemon.json` settings (an object), e.g.
    /// `host-gateway-ip`: with no default bridge, `host-gateway` has no address otherwise.
    pub fn start_with(mirrors: &[String], settings: serde_json::Value) -> DockerEngine {
        let dir = tempfile::Builder::new()
            .prefix("dockerd")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let mut config = serde_json::json!({
            "data-root": root.join("data"),
            "exec-root": root.join("exec"),
            "pidfile": root.join("dockerd.pid"),
            "hosts": [format!("unix://{}", root.join("docker.sock").display())],
            "storage-driver": "overlay2",
            "iptables": false,
            "ip-masq": false,
            "bridge": "none",
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "registry-mirrors": mirrors,
        });
        if let (Some(config), Some(settings)) = (config.as_object_mut(), settings.as_object()) {
            config.extend(settings.clone());
        }
        let path = root.join("daemon.json");
        std::fs::write(&path, config.to_string()).expect("daemon.json");
        let log = std::fs::File::create(root.join("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&path)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("http_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd (apt-get install docker.io)");
        let engine = DockerEngine {
            child,
            dir,
            cert_dirs: Vec::new(),
        };
        let up = wait_until(Duration::from_secs(30), || {
            engine
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .ok()
        });
        if up.is_none() {
            panic!("dockerd did not start:\n{}", engine.log());
        }
        engine
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Trusts `ca_pem` for the registry (or mirror) at `host_port`, the way an operator does:
    /// `/etc/docker/certs.d/<host:port>/ca.crt`. Removed when the engine stops.
    pub fn trust(&mut self, host_port: &str, ca_pem: &str) {
        let dir = Path::new("/etc/docker/certs.d").join(host_port);
        std::fs::create_dir_all(&dir).expect("certs.d (the tests run as root)");
        std::fs::write(dir.join("ca.crt"), ca_pem).expect("ca.crt");
        self.cert_dirs.push(dir);
    }

    /// `program` (`docker`, `docker-compose`, …) set up to talk to this engine: its
    /// `DOCKER_HOST`, and a client config directory of its own.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", self.dir.path().join("client"));
        cmd
    }

    /// Runs the docker CLI against this engine; stdout on success.
    pub fn docker(&self, args: &[&str]) -> Result<String, BoxError> {
        let out = self.command("docker").args(args).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into())
        }
    }

    /// `docker pull <reference>` (blocking, on a worker thread); the image's ID (its config
    /// digest) and repo digests on success.
    pub async fn pull(&self, reference: &str) -> Result<(String, Vec<String>), BoxError> {
        let socket = self.dir.path().join("docker.sock");
        let client = self.dir.path().join("client");
        let reference = reference.to_owned();
        tokio::task::spawn_blocking(move || {
            let run = |args: &[&str]| -> Result<String, BoxError> {
                let out = Command::new("docker")
                    .env("DOCKER_HOST", format!("unix://{}", socket.display()))
                    .env("DOCKER_CONFIG", &client)
                    .args(args)
                    .output()?;
                if !out.status.success() {
                    return Err(format!(
                        "docker {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                    .into());
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            };
            run(&["pull", "--quiet", &reference])?;
            let id = run(&["image", "inspect", "--format", "{{.Id}}", &reference])?;
            let digests = run(&[
                "image",
                "inspect",
                "--format",
                "{{range .RepoDigests}}{{.}} {{end}}",
                &reference,
            ])?;
            Ok((id, digests.split_whitespace().map(str::to_owned).collect()))
        })
        .await?
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let exited = wait_until(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("umount")
            .arg(self.dir.path().join("exec/netns/default"))
            .stderr(Stdio::null())
            .status();
        // overlay2 may leave mounts under data-root; unmount whatever is still there.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
        for dir in &self.cert_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
