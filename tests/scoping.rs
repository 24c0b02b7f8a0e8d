//! Repository scoping against real registries: a manifest whose `subject` names a private
//! blob, pushed wherever its author may push (their own repository on the same registry, or
//! another registry stevedore reads), must never make that blob readable through their
//! repository.

mod common;

use common::images::{self, Blob, ImageSpec, Platform, RegistryClient};
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Pushes to `repo:tag` an image of its own whose manifest names `subject` (any digest) as
/// its subject. distribution accepts it: registries do not check that a subject exists.
async fn push_with_subject(client: &RegistryClient, repo: &str, tag: &str, seed: u64, subject: &str) {
    let built = images::build_image(&ImageSpec::seed(seed), &Platform::linux_amd64());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&built.manifest.bytes).expect("manifest JSON");
    manifest["subject"] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": subject,
        "size": 1234,
    });
    let manifest = Blob::new(
        &built.manifest.media_type,
        serde_json::to_vec(&manifest).expect("encode"),
    );
    client.push_blob(repo, &built.config).await.expect("config");
    for layer in &built.layers {
        client.push_blob(repo, &layer.blob).await.expect("layer");
    }
    client
        .push_manifest(repo, tag, &manifest)
        .await
        .expect("a manifest with a subject that is not there is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_never_unlocks_a_private_blob() {
    // The private registry: only stevedore holds its credentials.
    let private = Registry::htpasswd("admin", "admin-secret");
    let secret = images::push_image(
        &private,
        "team/secret",
        "v1",
        &ImageSpec::seed(1001).large_layer(256 << 10),
    )
    .await;
    let (layer, _) = secret.layers.last().cloned().expect("layer");
    // A registry where anyone may push (their own namespace on a public registry).
    let public = Registry::open();
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Stevedore::start(&format!(
        "[store]\npath = \"{}\"\n{}{}",
        store.path().display(),
        registry_section(
            &private.host(),
            &private.url(),
            "username = \"admin\"\npassword = \"admin-secret\""
        ),
        registry_section(&public.host(), &public.url(), "")
    ))
    .await;
    let c = client();
    let get = |host: String, repo: &'static str, what: String| {
        let c = c.clone();
        let url = format!("{}/v2/{repo}/{what}?ns={host}", proxy.url());
        async move { c.get(url).header("accept", "*/*").send().await.expect("request") }
    };
    // The private blob gets into the cache through its own repository.
    let r = get(private.host(), "team/secret", format!("blobs/{layer}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&r.bytes().await.expect("body")), layer);

    // Its digest as the subject of manifests in repositories their authors control: on the
    // public registry, and in another repository of the private one.
    push_with_subject(&RegistryClient::anonymous(&public), "evil/app", "v1", 1002, &layer).await;
    push_with_subject(&RegistryClient::admin(&private), "evil/app", "v1", 1003, &layer).await;
    for host in [public.host(), private.host()] {
        let r = get(host.clone(), "evil/app", "manifests/v1".to_owned()).await;
        assert_eq!(r.status(), StatusCode::OK, "the manifest itself is served");
        let r = get(host.clone(), "evil/app", format!("blobs/{layer}")).await;
        let (status, code, _) = error_of(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            "{host}: the private blob was served through a repository naming it as subject"
        );
        let r = c
            .head(format!(
                "{}/v2/evil/app/blobs/{layer}?ns={host}",
                proxy.url()
            ))
            .send()
            .await
            .expect("head");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
