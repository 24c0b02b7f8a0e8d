//! Pulling through stevedore in tests: requests in containerd's `?ns=` form, a whole-image
//! pull that checks every byte, and the parts of an OCI error answer.

use reqwest::StatusCode;

use super::images::PushedImage;
use super::stevedore::Stevedore;
use super::util::sha256_digest;

/// The media type test pulls accept.
pub const OCI_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// GET `/v2/<repo>/<what>?ns=<host>` through stevedore.
pub async fn get(proxy: &Stevedore, host: &str, repo: &str, what: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/v2/{repo}/{what}?ns={host}", proxy.url()))
        .header("accept", OCI_ACCEPT)
        .send()
        .await
        .expect("request to stevedore")
}

/// Pulls the manifest by tag and every blob through stevedore, checking bytes and digests.
pub async fn pull_all(proxy: &Stevedore, host: &str, image: &PushedImage) {
    let r = get(
        proxy,
        host,
        &image.repo,
        &format!("manifests/{}", image.tag),
    )
    .await;
    let status = r.status();
    let body = r.bytes().await.expect("manifest body");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, image.manifest_bytes);
    assert_eq!(sha256_digest(&body), image.manifest_digest);
    for digest in all_blobs(image) {
        let r = get(proxy, host, &image.repo, &format!("blobs/{digest}")).await;
        let status = r.status();
        let bytes = r.bytes().await.expect("blob body");
        assert_eq!(
            status,
            StatusCode::OK,
            "blob {digest}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(sha256_digest(&bytes), digest);
    }
}

pub fn all_blobs(image: &PushedImage) -> Vec<String> {
    let mut blobs = image.layer_digests();
    blobs.push(image.config_digest.clone());
    blobs
}

/// Status, code and message of an OCI error response.
pub async fn error_of(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let text = r.text().await.expect("error body");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not OCI error JSON ({e}): {text}"));
    let e = &v["errors"][0];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}
