//! The container image and `docker-compose.yml`, really run: a private Docker engine builds
//! the image from a context `deploy/docker/stage.sh` stages from the test's stevedore binary,
//! compose brings the service up from the repository's own file until the image's
//! HEALTHCHECK says healthy, the engine pulls Docker Hub names through it as its
//! `registry-mirrors`, a compose service starts from an image named through it by a path
//! prefix, and `compose stop` drains it: exit code 0, well before the 10 s kill.
//!
//! What the test sets differently from a developer, and why:
//! - `STEVEDORE_CONFIG_DIR`: a directory with the shipped container config
//!   (`deploy/docker/config/stevedore.toml`) whose registries are replaced by the test's
//!   upstream — a password-protected distribution on this host, reached from the container as
//!   `host.docker.internal` — as the default registry (`docker.io`) and as `upstream.test`.
//! - `STEVEDORE_PORT` / `STEVEDORE_ADMIN_PORT`: free host ports instead of 5000 / 9102;
//!   `STEVEDORE_CONTEXT`: a context staged in a temporary directory from the debug binary.
//! - An override file adds one service, `app`, whose image only stevedore can provide.
//! - The engine's `host-gateway-ip` is the registry's address: with no default bridge, the
//!   engine has no gateway address of its own for `host-gateway`.
//!
//! The services run on the compose network with published ports, as the developer's do (no
//! `network_mode: host`): host and containers reach each other over the bridge without NAT.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::DockerEngine;
use common::images::{self, ImageSpec, RegistryClient};
use common::process::BIN;
use common::registry::Registry;
use common::util::{BoxError, PublicAddress, free_port, http_status, wait_until};

const PROJECT: &str = "stevedoretest";
const USER: &str = "hub";
const PASSWORD: &str = "hub-secret";

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_the_image_healthy_as_the_engines_mirror_and_stops_it_cleanly() {
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    // The upstream, on an address of this host that is not loopback (the container's
    // loopback is its own): the engine's `host-gateway-ip`, so `host.docker.internal` in the
    // container is this registry's host.
    let host = PublicAddress::add(41);
    let host_ip: std::net::Ipv4Addr = host.ip().parse().expect("IPv4 address");
    let registry = Registry::builder()
        .ip(host_ip)
        .htpasswd(&[(USER, PASSWORD)])
        .start();
    let client = RegistryClient::admin(&registry);
    let app = images::push_image_with(&client, "team/app", "v1", &ImageSpec::seed(1501)).await;
    let sleeper = images::host_program_image(&["/bin/sleep", "infinity"]);
    client
        .push_built("tools/sleeper", Some("v1"), &sleeper)
        .await
        .expect("push tools/sleeper:v1");

    let dir = tempfile::Builder::new()
        .prefix("compose")
        .tempdir()
        .expect("tempdir");
    let context = dir.path().join("context");
    let stage = Command::new("bash")
        .arg(repo.join("deploy/docker/stage.sh"))
        .arg(BIN)
        .arg(&context)
        .output()
        .expect("run stage.sh");
    assert!(stage.status.success(), "stage.sh: {}", text(&stage.stderr));
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).expect("config directory");
    let config = config_dir.join("stevedore.toml");
    std::fs::write(&config, test_config(repo, registry.port())).expect("write config");
    let check = Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run stevedore check-config");
    assert!(
        check.status.success(),
        "{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let admin_port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let override_file = dir.path().join("docker-compose.test.yml");
    std::fs::write(&override_file, app_service(port)).expect("write override");

    let engine = DockerEngine::start_with(
        &[format!("http://127.0.0.1:{port}")],
        serde_json::json!({ "host-gateway-ip": host.ip() }),
    );
    let compose = Compose {
        engine: &engine,
        v1: Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        files: vec![repo.join("docker-compose.yml"), override_file],
        env: vec![
            ("STEVEDORE_CONTEXT", context.display().to_string()),
            ("STEVEDORE_CONFIG_DIR", config_dir.display().to_string()),
            ("STEVEDORE_PORT", port.to_string()),
            ("STEVEDORE_ADMIN_PORT", admin_port.to_string()),
            ("RUST_LOG", String::new()),
        ],
    };
    let _down = Down(&compose);
    let ready = started.elapsed();

    // (a) Built and started by compose, healthy by the image's HEALTHCHECK.
    let t = Instant::now();
    compose.run(&["up", "-d", "--build", "stevedore"]);
    let up = t.elapsed();
    let container = compose.run(&["ps", "-q", "stevedore"]);
    let health = wait_until(Duration::from_secs(60), || {
        let status = engine
            .docker(&[
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                &container,
            ])
            .ok()?;
        (status != "starting").then_some(status)
    });
    let healthy = t.elapsed();
    assert_eq!(
        health.as_deref(),
        Some("healthy"),
        "stevedore did not turn healthy:\n{}",
        compose.logs()
    );
    let image = engine
        .docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}",
            "stevedore:dev",
        ])
        .expect("inspect stevedore:dev");
    assert_eq!(image, "65532:65532", "the image runs as its own user");
    let builtin = engine
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "stevedore:dev",
            "check-config",
            "/etc/stevedore/stevedore.toml",
        ])
        .expect("check the image's own config");
    assert!(builtin.ends_with(": ok"), "{builtin}");
    let admin = format!("127.0.0.1:{admin_port}").parse().expect("address");
    assert_eq!(http_status(admin, "localhost", "/readyz"), Some(200));

    // (b) The engine pulls a Docker Hub name through the composed stevedore, which pulls it
    // from its default registry with credentials the engine never sees.
    let t = Instant::now();
    let (id, digests) = engine
        .pull("team/app:v1")
        .await
        .unwrap_or_else(|e| panic!("docker pull team/app:v1: {e}\n{}", compose.logs()));
    let pulled = t.elapsed();
    assert_eq!(id, app.config_digest);
    assert_eq!(digests, vec![format!("team/app@{}", app.manifest_digest)]);

    // (c) A service whose image is named through stevedore by a path prefix is pulled and runs.
    let t = Instant::now();
    compose.run(&["up", "-d", "app"]);
    let app_container = compose.run(&["ps", "-q", "app"]);
    let state = engine
        .docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.Image}}",
            &app_container,
        ])
        .expect("inspect app");
    let app_up = t.elapsed();
    assert_eq!(state, format!("running {}", sleeper.config.digest));

    // The mounted config directory is live: a section added by renaming a new file over the
    // config (as editors save) is served without a restart.
    let mirror = RegistryClient::new(&format!("http://127.0.0.1:{port}"), None);
    let other = "other.test/tools/sleeper";
    let before = mirror
        .get_manifest(other, "v1")
        .await
        .expect("GET through stevedore");
    assert_eq!(before.status, 403, "a registry without a section");
    let edited = format!(
        "{}{}",
        std::fs::read_to_string(&config).expect("read config"),
        upstream_section("other.test", registry.port())
    );
    let t = Instant::now();
    std::fs::write(config_dir.join("new.toml"), edited).expect("write new config");
    std::fs::rename(config_dir.join("new.toml"), &config).expect("rename over the config");
    loop {
        let after = mirror.get_manifest(other, "v1").await.expect("GET");
        if after.status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "not reloaded: {}\n{}",
            after.status,
            compose.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reloaded = t.elapsed();

    // (d) `compose stop`: SIGTERM through the init process, drained, exit code 0, in well
    // under docker's 10 s before SIGKILL.
    let t = Instant::now();
    compose.run(&["stop"]);
    let stopped = t.elapsed();
    let exit = engine
        .docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &container,
        ])
        .expect("inspect stevedore");
    assert_eq!(exit, "exited 0", "{}", compose.logs());
    assert!(
        stopped < Duration::from_secs(5),
        "compose stop took {stopped:?}"
    );
    eprintln!(
        "compose timings: setup (registry, push, stage, dockerd) {ready:?}, up --build \
         {up:?}, healthy after {healthy:?}, docker pull {pulled:?}, app up {app_up:?}, \
         config reloaded {reloaded:?}, stop {stopped:?}, total {:?}",
        started.elapsed()
    );
}

/// The shipped container config with its registries replaced by the test's upstream, as the
/// default registry and as `upstream.test`.
fn test_config(repo: &Path, registry_port: u16) -> String {
    let shipped = std::fs::read_to_string(repo.join("deploy/docker/config/stevedore.toml"))
        .expect("read deploy/docker/config/stevedore.toml");
    let (head, _) = shipped
        .split_once("[registries.")
        .expect("deploy/docker/config/stevedore.toml has a registry section");
    let mut config = head.to_owned();
    for name in ["docker.io", "upstream.test"] {
        config.push_str(&upstream_section(name, registry_port));
    }
    config
}

/// A `[registries."<name>"]` section for the test's upstream.
fn upstream_section(name: &str, registry_port: u16) -> String {
    format!(
        "\n[registries.\"{name}\"]\nendpoints = [\"http://host.docker.internal:{registry_port}\"]\n\
         allow-private-network = true\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// A compose file adding `app`: the host's `sleep` (and its libraries) pushed to the upstream
/// as `tools/sleeper:v1`, named through stevedore's path-prefix form.
fn app_service(port: u16) -> String {
    format!(
        "# Test only: an application image that only the composed stevedore can provide.\n\
         services:\n  app:\n    image: 127.0.0.1:{port}/upstream.test/tools/sleeper:v1\n    \
         init: true\n"
    )
}

/// `docker-compose` (v1), or `docker compose` (v2), on the test's engine and files.
struct Compose<'a> {
    engine: &'a DockerEngine,
    /// `docker-compose` is installed (Debian bookworm's is v1).
    v1: bool,
    files: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Compose<'_> {
    fn command(&self) -> Command {
        let mut cmd = if self.v1 {
            self.engine.command("docker-compose")
        } else {
            let mut cmd = self.engine.command("docker");
            cmd.arg("compose");
            cmd
        };
        cmd.args(["--project-name", PROJECT]);
        for file in &self.files {
            cmd.arg("--file").arg(file);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    fn try_run(&self, args: &[&str]) -> Result<String, BoxError> {
        let out = self.command().args(args).output()?;
        if out.status.success() {
            Ok(text(&out.stdout).trim().to_owned())
        } else {
            Err(format!("compose {}: {}", args.join(" "), text(&out.stderr)).into())
        }
    }

    /// Runs `compose ARGS`; stdout, or a panic with everything compose and dockerd said.
    fn run(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("{e}\n{}\ndockerd:\n{}", self.logs(), self.engine.log()))
    }

    fn logs(&self) -> String {
        self.try_run(&["logs", "--no-color"])
            .unwrap_or_else(|e| e.to_string())
    }
}

/// `compose down -v` when the test ends, passed or not.
struct Down<'a, 'b>(&'a Compose<'b>);

impl Drop for Down<'_, '_> {
    fn drop(&mut self) {
        let _ = self.0.try_run(&["down", "--volumes", "--timeout", "2"]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
