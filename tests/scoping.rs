//! Repository scoping against real registries: a manifest whose `subject` names a private
//! blob, pushed wherever its author may push (their own repository on the same registry, or
//! another registry stevedore reads), must never make that blob readable through their
//! repository.

mod common;

use common::util::direct_client as client;

use common::images::{self, Blob, ImageSpec, Platform, RegistryClient};
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::{PublicAddress, sha256_digest};
use reqwest::StatusCode;

/// Pushes to `repo:tag` an image of its own whose manifest names `subject` (any digest) as
/// its subject. distribution accepts it: registries do not check that a subject exists.
async fn push_with_subject(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    seed: u64,
    subject: &str,
) {
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
        async move {
            c.get(url)
                .header("accept", "*/*")
                .send()
                .await
                .expect("request")
        }
    };
    // The private blob gets into the cache through its own repository.
    let r = get(private.host(), "team/secret", format!("blobs/{layer}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&r.bytes().await.expect("body")), layer);

    // Its digest as the subject of manifests in repositories their authors control: on the
    // public registry, and in another repository of the private one.
    push_with_subject(
        &RegistryClient::anonymous(&public),
        "evil/app",
        "v1",
        1002,
        &layer,
    )
    .await;
    push_with_subject(
        &RegistryClient::admin(&private),
        "evil/app",
        "v1",
        1003,
        &layer,
    )
    .await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_reached_only_as_an_unknown_one_cannot_vouch_for_stored_content() {
    use common::faults::{Fault, FaultProxy, Rule};
    use common::pki::Pki;
    use common::process::Process;

    let private = Registry::htpasswd("admin", "admin-secret");
    let secret = images::push_image(
        &private,
        "team/secret",
        "v1",
        &ImageSpec::seed(1011).large_layer(256 << 10),
    )
    .await;
    let (layer, size) = secret.layers.last().cloned().expect("layer");
    // A hostile registry, reachable only because unknown registries are allowed: a real
    // registry behind a proxy that answers HEADs for anything, and a manifest that lists the
    // private layer.
    let address = PublicAddress::add(21);
    let pki = Pki::for_names("hostile", &[address.ip()]);
    let backing = Registry::open();
    let hostile = FaultProxy::start_tls(address.ip(), &backing.url(), &pki).await;
    let host = hostile.host();
    hostile.add(
        Rule::new(
            &format!("/evil/app/blobs/{layer}"),
            Fault::Respond {
                status: 200,
                headers: vec![
                    ("content-length".into(), size.to_string()),
                    ("docker-content-digest".into(), layer.clone()),
                ],
            },
        )
        .method("HEAD"),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": secret.config_digest, "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": size}],
    })
    .to_string();
    hostile.add(Rule::new(
        "/evil/app/manifests/v1",
        Fault::Body {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    "application/vnd.oci.image.manifest.v1+json".into(),
                ),
                (
                    "docker-content-digest".into(),
                    sha256_digest(manifest.as_bytes()),
                ),
            ],
            body: manifest,
        },
    ));
    let store = tempfile::tempdir().expect("tempdir");
    let ca = pki.ca.display().to_string();
    let proxy = Process::start(
        "",
        &format!(
            "[routing]\nallow-unknown-registries = true\n[store]\npath = \"{}\"\n{}",
            store.path().display(),
            registry_section(
                &private.host(),
                &private.url(),
                "username = \"admin\"\npassword = \"admin-secret\""
            ),
        ),
        // Unknown registries use the system's roots: here, the hostile registry's CA.
        &[("SSL_CERT_FILE", ca.as_str())],
    );
    let c = client();
    let r = c
        .get(format!(
            "{}/v2/team/secret/blobs/{layer}?ns={}",
            proxy.url(),
            private.host()
        ))
        .send()
        .await
        .expect("private pull");
    assert_eq!(r.status(), StatusCode::OK);
    let url = |what: &str| format!("{}/v2/evil/app/{what}?ns={host}", proxy.url());
    let r = c
        .get(url("manifests/v1"))
        .header("accept", "*/*")
        .send()
        .await
        .expect("hostile manifest");
    assert_eq!(r.status(), StatusCode::OK, "{}", proxy.log());
    for _ in 0..2 {
        // A HEAD first: the hostile registry says yes, which must unlock nothing.
        let r = c
            .head(url(&format!("blobs/{layer}")))
            .send()
            .await
            .expect("head");
        assert!(r.status().is_success() || r.status() == StatusCode::NOT_FOUND);
        let r = c
            .get(url(&format!("blobs/{layer}")))
            .send()
            .await
            .expect("get");
        let status = r.status();
        let body = r.bytes().await.expect("body");
        assert_ne!(
            sha256_digest(&body),
            layer,
            "the private layer was served through a registry anyone may run"
        );
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert!(
        hostile.count("GET", &format!("/blobs/{layer}")) >= 1,
        "stevedore asked the hostile registry for the bytes themselves"
    );
}
