//! The TLS mirror listener of the real binary, with a certificate issued from stevedore's CA
//! (printed by `stevedore ca show`): containerd with `ca =` in hosts.toml, skopeo and podman
//! with the CA in a cert dir, all through registries.conf / hosts.toml mirrors whose primary
//! location is unreachable; HTTP/2 by ALPN.

mod common;

use std::path::Path;
use std::process::Command;

use common::clients::{Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, skopeo_pull};
use common::images::{self, ImageSpec};
use common::process::{BIN, Process};
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::free_port;

/// registries.conf with one TLS (verified) path-prefix mirror for `host`.
fn tls_mirror_conf(host: &str, mirror: &str) -> String {
    format!(
        "unqualified-search-registries = []\n\n[[registry]]\nprefix = \"{host}\"\n\
         location = \"127.0.0.1:1\"\ninsecure = true\n\n[[registry.mirror]]\n\
         location = \"{mirror}\"\ninsecure = false\n"
    )
}

fn ca_show(config: &Path) -> String {
    let out = Command::new(BIN)
        .args(["ca", "show", "--config"])
        .arg(config)
        .output()
        .expect("run stevedore ca show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM")
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_pull_from_the_tls_mirror_trusting_stevedores_ca() {
    let registry = Registry::builder().portless().open().start();
    let host = registry.host();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(1301)).await;
    let tls_port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let proxy = Process::start(
        &format!("tls-listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\nnames = [\"127.0.0.1\"]\n"),
        &registry_section(&host, &registry.url(), ""),
        &[],
    );
    // `ca show` prints the CA the server generated (and never its key).
    let ca = ca_show(&proxy.config_path());
    assert_eq!(
        ca,
        std::fs::read_to_string(proxy.dir().join("ca/ca.pem")).expect("ca.pem")
    );
    assert!(!ca.contains("PRIVATE KEY"));
    let certs = tempfile::tempdir().expect("tempdir");
    std::fs::write(certs.path().join("ca.crt"), &ca).expect("ca.crt");
    let mirror = format!("127.0.0.1:{tls_port}");
    wait_for_tls(&mirror).await;

    // HTTP/2 by ALPN, verified against the CA.
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge([reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA")])
        .build()
        .expect("client");
    let r = client
        .get(format!("https://{mirror}/v2/"))
        .send()
        .await
        .expect("ping over TLS");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    // containerd: hosts.toml with `ca =`.
    let containerd = Containerd::start();
    containerd.write_hosts_toml(
        &host,
        &format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"https://{mirror}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            certs.path().join("ca.crt").display()
        ),
    );
    let pulled = containerd
        .pull(&format!("{host}/team/app:v1"), &CtrPullOptions::default())
        .await
        .unwrap_or_else(|e| panic!("containerd from the TLS mirror: {e}"));
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(pulled.layer_digests, image.layer_digests());

    // skopeo: a verified registries.conf mirror, the CA in a cert dir.
    let pulled = skopeo_pull(
        &format!("{host}/team/app:v1"),
        Some(&tls_mirror_conf(&host, &format!("{mirror}/{host}"))),
        &SkopeoOptions {
            dest: SkopeoDest::Oci,
            cert_dir: Some(certs.path().to_owned()),
            ..SkopeoOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo from the TLS mirror: {e}"));
    assert_eq!(pulled.manifest_digest, image.manifest_digest);

    // podman: the same, with --cert-dir.
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, tls_mirror_conf(&host, &format!("{mirror}/{host}"))).expect("conf");
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, "{}").expect("auth.json");
    let mut cmd = tokio::process::Command::new("podman");
    cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--runroot")
        .arg(dir.path().join("runroot"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ])
        .args(["pull", "--quiet", "--cert-dir"])
        .arg(certs.path())
        .arg(format!("{host}/team/app:v1"));
    let out = common::util::run_checked(cmd)
        .await
        .unwrap_or_else(|e| panic!("podman from the TLS mirror: {e}"));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(format!("sha256:{id}"), image.config_digest);
}

async fn wait_for_tls(addr: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the TLS listener on {addr} did not come up");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_policy_identities() {
    use common::pki::Pki;
    let registry = Registry::open();
    let host = registry.host();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(1302)).await;
    let clients = Pki::new("clients");
    let tls_port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let proxy = Process::start(
        &format!(
            "tls-listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\nnames = [\"127.0.0.1\"]\n\
             client-ca = \"{}\"\n",
            clients.ca.display()
        ),
        &format!(
            "[policy.identities.nodes]\nclient-cert-names = [\"node-1.test\"]\n\
             [[policy.rules]]\nname = \"nodes\"\nidentities = [\"nodes\"]\nregistries = [\"*\"]\n{}",
            registry_section(&host, &registry.url(), "")
        ),
        &[],
    );
    let ca = ca_show(&proxy.config_path());
    let mirror = format!("127.0.0.1:{tls_port}");
    wait_for_tls(&mirror).await;
    let client = |identity: Option<std::path::PathBuf>| {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_merge([reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA")]);
        if let Some(path) = identity {
            let pem = std::fs::read(path).expect("identity");
            b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
        }
        b.build().expect("client")
    };
    let url = format!("https://{mirror}/v2/team/app/manifests/v1?ns={host}");
    let with = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            c.get(url)
                .header("accept", "*/*")
                .send()
                .await
                .expect("request")
        }
    };
    let r = with(client(Some(clients.client_identity("node-1.test")))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    let r = with(client(None)).await;
    assert_eq!(r.status(), 403, "no certificate, no identity");
    let r = with(client(Some(clients.client_identity("node-2.test")))).await;
    assert_eq!(r.status(), 403, "another name");
    // A certificate from another CA does not even get through the handshake.
    let strangers = Pki::new("strangers");
    let refused = client(Some(strangers.client_identity("node-1.test")))
        .get(&url)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}
