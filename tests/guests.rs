//! stevedore as the HTTPS_PROXY of guest pullers, against the lab's HTTPS registry with
//! bearer-token auth (distribution over TLS with its own CA, behind the token server), with a
//! recording proxy in front of it. No puller holds registry credentials; they trust
//! stevedore's CA, and name the registry `registry.test`, which only stevedore knows how to
//! reach (Go clients never proxy loopback literals).

mod common;

use std::time::Duration;

use common::clients::{
    Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, oci_client_pull_with, skopeo_pull,
};
use common::faults::FaultProxy;
use common::images::{self, ImageSpec};
use common::lab::{Lab, REGISTRY};
use common::registry::Registry;
use common::stevedore::Stevedore;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

#[tokio::test(flavor = "multi_thread")]
async fn oci_client_configured_as_image_rs_pulls_through_the_proxy() {
    let lab = Lab::start(1201, "").await;
    let config = ClientConfig {
        protocol: ClientProtocol::Https,
        https_proxy: Some(lab.proxy_url()),
        extra_root_certificates: vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: lab.ca_pem.clone().into_bytes(),
        }],
        ..ClientConfig::default()
    };
    let pulled = oci_client_pull_with(
        &format!("{REGISTRY}/team/app:v1"),
        RegistryAuth::Anonymous,
        config,
    )
    .await
    .unwrap_or_else(|e| panic!("oci-client through stevedore: {e}"));
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    assert_eq!(pulled.layer_digests, lab.image.layer_digests());
    assert_eq!(pulled.config_digest, lab.image.config_digest);
    assert_eq!(
        lab.answered(401).await,
        0,
        "the guest never saw a challenge"
    );
    assert!(lab.tokens.count() >= 1, "stevedore did the token dance");
    assert_eq!(
        lab.proxy.state.tls.as_ref().expect("tls").leaves.minted(),
        1,
        "one leaf for registry.test"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_with_https_proxy_and_stevedores_ca_pulls() {
    let lab = Lab::start(1202, "").await;
    let pulled = skopeo_pull(
        &format!("{REGISTRY}/team/app:v1"),
        None,
        &SkopeoOptions {
            dest: SkopeoDest::Oci,
            cert_dir: Some(lab.ca_dir.path().to_owned()),
            env: vec![("HTTPS_PROXY".into(), lab.proxy_url())],
            ..SkopeoOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo through stevedore: {e}"));
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    assert_eq!(pulled.layer_digests, lab.image.layer_digests());
    assert_eq!(lab.answered(401).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_with_https_proxy_pulls() {
    let lab = Lab::start(1203, "").await;
    let containerd = Containerd::start();
    containerd.write_hosts_toml(
        REGISTRY,
        &format!(
            "server = \"https://{REGISTRY}\"\n\n[host.\"https://{REGISTRY}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            lab.ca_file().display()
        ),
    );
    let pulled = containerd
        .pull(
            &format!("{REGISTRY}/team/app:v1"),
            &CtrPullOptions {
                env: vec![("HTTPS_PROXY".into(), lab.proxy_url())],
                ..CtrPullOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("ctr through stevedore: {e}"));
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    assert_eq!(pulled.layer_digests, lab.image.layer_digests());
    assert_eq!(lab.answered(401).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_client_with_http_proxy_uses_the_absolute_form() {
    // A plain-HTTP registry, reached by its name through HTTP_PROXY.
    let registry = Registry::open();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(1204)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let proxy = Stevedore::start(&format!(
        "[registries.\"{REGISTRY}:5000\"]\nendpoints = [\"{}\"]\nallow-private-network = true\n",
        faults.url()
    ))
    .await;
    let pulled = skopeo_pull(
        &format!("{REGISTRY}:5000/team/app:v1"),
        None,
        &SkopeoOptions {
            dest: SkopeoDest::Oci,
            env: vec![("HTTP_PROXY".into(), proxy.url())],
            ..SkopeoOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("skopeo through stevedore over plain HTTP: {e}"));
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert!(
        faults.count("GET", "/v2/team/app/manifests/") >= 1,
        "stevedore fetched the manifest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guests_own_authorization_never_reaches_the_upstream_or_the_token_server() {
    let lab = Lab::start(1205, "").await;
    let ca = reqwest::Certificate::from_pem(lab.ca_pem.as_bytes()).expect("CA");
    let guest = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(lab.proxy_url()).expect("proxy"))
        .tls_certs_merge([ca])
        .build()
        .expect("guest client");
    for what in [
        "manifests/v1".to_owned(),
        format!("blobs/{}", lab.image.config_digest),
    ] {
        let r = guest
            .get(format!("https://{REGISTRY}/v2/team/app/{what}"))
            .header("authorization", "Bearer guest-secret-token")
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("through the tunnel");
        assert_eq!(r.status(), 200, "{what}");
        assert!(r.headers().get("docker-content-digest").is_some());
    }
    for seen in lab.faults.seen() {
        let auth = seen.authorization.unwrap_or_default();
        assert!(!auth.contains("guest-secret"), "{auth}");
    }
    for req in lab.tokens.requests() {
        let dump = format!("{req:?}");
        assert!(!dump.contains("guest-secret"), "{dump}");
    }
    let _ = &lab.pki;
}

#[tokio::test(flavor = "multi_thread")]
async fn leaves_are_minted_once_per_host() {
    let lab = Lab::start(1206, "").await;
    let ca = reqwest::Certificate::from_pem(lab.ca_pem.as_bytes()).expect("CA");
    for _ in 0..5 {
        // A new client each time: a new CONNECT and handshake.
        let guest = reqwest::Client::builder()
            .proxy(reqwest::Proxy::https(lab.proxy_url()).expect("proxy"))
            .tls_certs_merge([ca.clone()])
            .timeout(Duration::from_secs(30))
            .build()
            .expect("guest client");
        let r = guest
            .get(format!("https://{REGISTRY}/v2/"))
            .send()
            .await
            .expect("ping");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        lab.proxy.state.tls.as_ref().expect("tls").leaves.minted(),
        1
    );
}
