//! Guest setups beyond the basic pull, in the lab of `tests/guests.rs`: credentials from
//! CoCo's `containers-auth.json` (re-read when it changes), stevedore's CA given as files, and
//! blob redirects to a "CDN" that stevedore follows inside the intercepted tunnel.

mod common;

use std::time::{Duration, Instant};

use common::clients::{PullResult, oci_client_pull_with};
use common::faults::{Fault, FaultProxy, Rule};
use common::lab::{Lab, REGISTRY};
use common::pki::Pki;
use common::util::BoxError;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

/// Pulls `registry.test/team/app:v1` the way image-rs does: through `proxy`, trusting only
/// `ca_pem` beyond the system roots, anonymously.
async fn guest_pull(proxy: String, ca_pem: &str) -> Result<PullResult, BoxError> {
    let config = ClientConfig {
        protocol: ClientProtocol::Https,
        https_proxy: Some(proxy),
        extra_root_certificates: vec![Certificate {
            encoding: CertificateEncoding::Pem,
            data: ca_pem.as_bytes().to_vec(),
        }],
        ..ClientConfig::default()
    };
    oci_client_pull_with(
        &format!("{REGISTRY}/team/app:v1"),
        RegistryAuth::Anonymous,
        config,
    )
    .await
}

fn containers_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("{{\"auths\":{{\"{REGISTRY}\":{{\"auth\":\"{auth}\"}}}}}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containers_auth_file_supplies_the_credentials_and_is_reread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("containers-auth.json");
    std::fs::write(&file, containers_auth("puller", "stale-password")).expect("write");
    let lab = Lab::start_with(
        1211,
        &format!(
            "[credentials]\ncontainers-auth = [\"{}\"]\n",
            file.display()
        ),
    )
    .await;

    let refused = guest_pull(lab.proxy_url(), &lab.ca_pem).await;
    assert!(refused.is_err(), "pulled with a wrong password");
    assert_eq!(
        lab.answered(401).await,
        0,
        "the guest never sees a challenge"
    );

    // The operator fixes the file in place; the next pulls use it, no restart.
    std::fs::write(&file, containers_auth("puller", "puller-secret")).expect("rewrite");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pulled = loop {
        match guest_pull(lab.proxy_url(), &lab.ca_pem).await {
            Ok(p) => break p,
            Err(e) if Instant::now() > deadline => panic!("never pulled after the fix: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    assert_eq!(pulled.layer_digests, lab.image.layer_digests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_given_as_files_signs_the_leaves() {
    let ours = Pki::new("operator");
    let lab = Lab::start(
        1212,
        &format!(
            "[ca]\ncert = \"{}\"\nkey = \"{}\"\n",
            ours.ca.display(),
            ours.ca_key_file().display()
        ),
    )
    .await;
    let given = std::fs::read_to_string(&ours.ca).expect("ca.pem");
    assert_eq!(lab.ca_pem, given, "stevedore uses the CA it was given");
    let pulled = guest_pull(lab.proxy_url(), &given)
        .await
        .unwrap_or_else(|e| panic!("guest trusting the given CA: {e}"));
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    // A guest trusting some other CA does not accept stevedore's leaf.
    let other = Pki::new("other");
    let other_pem = std::fs::read_to_string(&other.ca).expect("ca.pem");
    assert!(guest_pull(lab.proxy_url(), &other_pem).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_redirects_are_followed_by_stevedore_inside_the_tunnel() {
    let lab = Lab::start(1213, "").await;
    // The registry sends blob GETs to a "CDN" on another host (no auth there).
    let cdn = FaultProxy::start_with("127.0.0.2", &lab.plain.url(), None).await;
    lab.faults
        .add(Rule::new("/blobs/", Fault::Redirect { to: cdn.url() }).method("GET"));
    let pulled = guest_pull(lab.proxy_url(), &lab.ca_pem)
        .await
        .unwrap_or_else(|e| panic!("guest pull with CDN redirects: {e}"));
    assert_eq!(pulled.manifest_digest, lab.image.manifest_digest);
    assert_eq!(pulled.layer_digests, lab.image.layer_digests());
    let at_cdn = cdn.seen();
    assert!(
        at_cdn.len() >= lab.image.layers.len(),
        "the blobs came from the CDN: {at_cdn:?}"
    );
    assert!(
        at_cdn.iter().all(|s| s.authorization.is_none()),
        "no credential crossed to the CDN"
    );
    assert_eq!(lab.answered(307).await, 0, "the guest never saw a redirect");
}
