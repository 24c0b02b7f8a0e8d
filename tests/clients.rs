//! Real clients pull through stevedore anonymously while stevedore authenticates upstream:
//! skopeo (path-prefix mirror), containerd's ctr (hosts.toml mirror with `?ns=`) and the
//! oci-client crate (path prefix, as image-rs uses it). Every pulled digest must match the
//! upstream's.

mod common;

use common::clients::{
    Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, oci_client_pull_via_mirror,
    skopeo_pull_via_mirror_only,
};
use common::images::{self, ImageSpec};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::token_server::TokenServer;

fn no_creds() -> SkopeoOptions {
    SkopeoOptions {
        dest: SkopeoDest::Oci,
        ..SkopeoOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_path_prefix_mirror_with_basic_upstream() {
    let registry = Registry::builder()
        .portless()
        .htpasswd(&[("puller", "pull-pw"), ("admin", "admin-secret")])
        .start();
    let pushed = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(1).small_layers(3),
    )
    .await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        "username = \"puller\"\npassword = \"pull-pw\"",
    ))
    .await;

    let pulled = skopeo_pull_via_mirror_only(proxy.port(), &host, "team/app", "v1", &no_creds())
        .await
        .unwrap_or_else(|e| panic!("skopeo through stevedore failed: {e}"));
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digests, pushed.layer_digests());
    assert_eq!(pulled.config_digest, pushed.config_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_path_prefix_mirror_with_token_upstream_multiplatform() {
    let tokens = TokenServer::builder()
        .user("puller", "pull-pw", &["team/"])
        .start();
    let registry = Registry::builder().portless().token(&tokens).start();
    let pushed =
        images::push_multiplatform(&registry, "team/multi", "v2", &ImageSpec::seed(2)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &format!(
            "username = \"puller\"\npassword = \"pull-pw\"\nauth-realms = [\"{}\"]",
            tokens.url()
        ),
    ))
    .await;

    let opts = SkopeoOptions {
        all_platforms: true,
        ..no_creds()
    };
    let pulled = skopeo_pull_via_mirror_only(proxy.port(), &host, "team/multi", "v2", &opts)
        .await
        .unwrap_or_else(|e| panic!("skopeo --all through stevedore failed: {e}"));
    assert_eq!(Some(pulled.reference_digest.clone()), pushed.index_digest);
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digests, pushed.layer_digests());
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_through_hosts_toml_mirror_with_ns() {
    let tokens = TokenServer::builder()
        .user("puller", "pull-pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    let pushed = images::push_multiplatform(
        &registry,
        "team/ctr",
        "v3",
        &ImageSpec::seed(3).small_layers(2),
    )
    .await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        "username = \"puller\"\npassword = \"pull-pw\"",
    ))
    .await;

    let containerd = Containerd::start();
    containerd.configure_mirror(&host, proxy.port(), false);
    let pulled = containerd
        .pull_via_mirror(&host, "team/ctr", "v3", &CtrPullOptions::default())
        .await
        .unwrap_or_else(|e| panic!("ctr through stevedore failed: {e}\n{}", containerd.log()));
    assert_eq!(Some(pulled.reference_digest.clone()), pushed.index_digest);
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digests, pushed.layer_digests());
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_client_through_path_prefix_mirror() {
    let tokens = TokenServer::builder()
        .user("puller", "pull-pw", &["team/"])
        .start();
    let registry = Registry::builder().portless().token(&tokens).start();
    let pushed = images::push_image(&registry, "team/coco", "v4", &ImageSpec::seed(4)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &format!(
            "username = \"puller\"\npassword = \"pull-pw\"\nauth-realms = [\"{}\"]",
            tokens.url()
        ),
    ))
    .await;

    let pulled = oci_client_pull_via_mirror(proxy.port(), &host, "team/coco", "v4")
        .await
        .unwrap_or_else(|e| panic!("oci-client through stevedore failed: {e}"));
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.layer_digests, pushed.layer_digests());
}

/// `podman pull` through a registries.conf path-prefix mirror (what CRI-O reads too), with a
/// private storage root; the primary location is unreachable so only stevedore can serve.
#[tokio::test(flavor = "multi_thread")]
async fn podman_through_path_prefix_mirror() {
    let tokens = TokenServer::builder()
        .user("puller", "pull-pw", &["team/"])
        .start();
    let registry = Registry::builder().portless().token(&tokens).start();
    let pushed = images::push_image(
        &registry,
        "team/pod",
        "v5",
        &ImageSpec::seed(5).small_layers(2),
    )
    .await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(
        &host,
        &registry.url(),
        &format!(
            "username = \"puller\"\npassword = \"pull-pw\"\nauth-realms = [\"{}\"]",
            tokens.url()
        ),
    ))
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        common::clients::mirror_registries_conf(
            &host,
            "127.0.0.1:1",
            &format!("127.0.0.1:{}/{host}", proxy.port()),
        ),
    )
    .expect("registries.conf");
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, "{}").expect("auth.json");
    let root = dir.path().join("root");
    let runroot = dir.path().join("runroot");
    let mut cmd = tokio::process::Command::new("podman");
    cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .arg("--root")
        .arg(&root)
        .arg("--runroot")
        .arg(&runroot)
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ])
        .args(["pull", "--quiet"])
        .arg(format!("{host}/team/pod:v5"));
    let out = common::util::run_checked(cmd)
        .await
        .unwrap_or_else(|e| panic!("podman through stevedore failed: {e}"));
    // `podman pull --quiet` prints the image (config) ID.
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(format!("sha256:{id}"), pushed.config_digest);
}
