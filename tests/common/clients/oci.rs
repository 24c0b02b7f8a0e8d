//! oci-client (the library CoCo's image-rs uses): pulls over HTTP or with a custom client config.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::PullResult;
use crate::common::util::{BoxError, sha256_digest};

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
