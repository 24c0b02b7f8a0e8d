//! Shared helpers for the `cache` tests: store and URL config, hashed body reads, and a
//! registry behind a fault proxy with stevedore and a store in front.

use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::Digest as _;

use crate::common::faults::FaultProxy;
use crate::common::images::{self, ImageSpec, PushedImage};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};

pub(crate) const OCI_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

pub(crate) fn store_section(dir: &std::path::Path, extra: &str) -> String {
    format!("[store]\npath = \"{}\"\n{extra}\n", dir.display())
}

pub(crate) fn url(proxy: &Stevedore, host: &str, repo: &str, what: &str) -> String {
    format!("{}/v2/{repo}/{what}?ns={host}", proxy.url())
}

/// Streams a body, hashing as it arrives. Err when the transfer breaks.
pub(crate) async fn fetch_hashed(
    req: reqwest::RequestBuilder,
) -> Result<(StatusCode, String, u64), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("transfer broke after {n} bytes: {e}"))?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok((status, format!("sha256:{}", hex::encode(h.finalize())), n))
}

pub(crate) fn largest_layer(image: &PushedImage) -> (String, u64) {
    image
        .layers
        .iter()
        .max_by_key(|(_, size)| *size)
        .cloned()
        .expect("a layer")
}

pub(crate) struct Setup {
    pub(crate) registry: Registry,
    pub(crate) faults: FaultProxy,
    pub(crate) proxy: Stevedore,
    pub(crate) image: PushedImage,
    pub(crate) host: String,
    _store: tempfile::TempDir,
}

pub(crate) async fn setup(seed: u64, large: usize, store_extra: &str) -> Setup {
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(seed).large_layer(large),
    )
    .await;
    let faults = FaultProxy::start(&registry.url()).await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "{}{}",
        store_section(store.path(), store_extra),
        registry_section(&host, &faults.url(), "")
    ))
    .await;
    Setup {
        registry,
        faults,
        proxy,
        image,
        host,
        _store: store,
    }
}
