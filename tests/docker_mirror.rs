//! A real Docker engine (private `dockerd`) pulling Docker Hub names through stevedore as its
//! `registry-mirrors`: over plain HTTP, and over TLS with stevedore's CA trusted the way
//! operators do it (`/etc/docker/certs.d/<host:port>/ca.crt`). The engine holds no
//! credentials; stevedore's `docker.io` section points at a password-protected distribution.
//!
//! Docker treats every 127.0.0.0/8 registry as insecure (it would skip verification), so the
//! TLS mirror listens on a documentation address added to `lo`, where Docker verifies.

mod common;

use common::docker::DockerEngine;
use common::images::{self, ImageSpec, PushedImage};
use common::process::{BIN, Process};
use common::registry::Registry;
use common::util::{PublicAddress, free_port};

#[tokio::test(flavor = "multi_thread")]
async fn docker_pulls_hub_names_through_the_plain_and_the_tls_mirror() {
    let registry = Registry::htpasswd("hub", "hub-secret");
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(1401)).await;
    let library =
        images::push_image(&registry, "library/tool", "latest", &ImageSpec::seed(1402)).await;
    let address = PublicAddress::add(23);
    let tls_port = free_port(std::net::Ipv4Addr::UNSPECIFIED.into());
    let proxy = Process::start(
        &format!(
            "tls-listen = \"{ip}:{tls_port}\"\n[server.tls]\nnames = [\"{ip}\"]\n",
            ip = address.ip()
        ),
        &format!(
            "[routing]\ndefault-registry = \"docker.io\"\n\
             [registries.\"docker.io\"]\nendpoints = [\"{}\"]\nallow-private-network = true\n\
             username = \"hub\"\npassword = \"hub-secret\"\n",
            registry.url()
        ),
        &[],
    );
    let ca = {
        let out = std::process::Command::new(BIN)
            .args(["ca", "show", "--config"])
            .arg(proxy.config_path())
            .output()
            .expect("stevedore ca show");
        assert!(out.status.success());
        String::from_utf8(out.stdout).expect("PEM")
    };

    // Plain HTTP mirror: `team/app:v1` and a single-segment (library/) name.
    let engine = DockerEngine::start(&[proxy.url()]);
    pulls_team_app(&engine, &image, "HTTP").await;
    let (id, _) = engine
        .pull("tool")
        .await
        .unwrap_or_else(|e| panic!("docker pull tool: {e}\n{}", engine.log()));
    assert_eq!(id, library.config_digest);
    drop(engine);

    // TLS mirror: refused while the engine does not trust stevedore's CA (Docker falls back to
    // Docker Hub, which is unreachable here), pulled once it does.
    let mirror = format!("{}:{tls_port}", address.ip());
    let mut engine = DockerEngine::start(&[format!("https://{mirror}")]);
    let untrusted = engine.pull("team/app:v1").await;
    let refused = untrusted.expect_err("pulled without trusting the CA");
    let log = engine.log();
    assert!(
        log.contains("x509: certificate signed by unknown authority"),
        "{refused}\n{log}"
    );
    engine.trust(&mirror, &ca);
    pulls_team_app(&engine, &image, "TLS").await;
    assert!(
        !proxy.log().contains("hub-secret"),
        "the upstream password appeared in the log"
    );
}

/// `docker pull team/app:v1` gives the pushed image: its ID is the config digest and its repo
/// digest the manifest's.
async fn pulls_team_app(engine: &DockerEngine, image: &PushedImage, mirror: &str) {
    let (id, digests) = engine
        .pull("team/app:v1")
        .await
        .unwrap_or_else(|e| panic!("docker through the {mirror} mirror: {e}\n{}", engine.log()));
    assert_eq!(id, image.config_digest);
    assert_eq!(digests, vec![format!("team/app@{}", image.manifest_digest)]);
}
