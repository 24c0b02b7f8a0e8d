//! Manifests and tags: digests and fresh tags served from the store, revalidation after the
//! TTL, Accept lists kept apart, and stale tags when the upstream throttles, fails or is gone.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::clients::{
    Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, skopeo_pull_via_mirror_only,
};
use crate::common::faults::{Fault, FaultProxy, Rule};
use crate::common::images::{self, ImageSpec};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::helpers::{OCI_ACCEPT, setup, store_section, url};

#[tokio::test(flavor = "multi_thread")]
async fn manifests_by_digest_and_fresh_tags_need_no_upstream_request() {
    let s = setup(36, 1024, "tag-ttl = \"2s\"").await;
    let client = reqwest::Client::new();
    let get = |what: String| {
        client
            .get(url(&s.proxy, &s.host, "team/app", &what))
            .header("accept", OCI_ACCEPT)
            .send()
    };
    let r = get("manifests/v1".into()).await.expect("tag");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body"), s.image.manifest_bytes);
    s.faults.reset_seen();
    for _ in 0..5 {
        let r = get("manifests/v1".into()).await.expect("tag");
        assert_eq!(r.status(), StatusCode::OK);
        let r = get(format!("manifests/{}", s.image.manifest_digest))
            .await
            .expect("digest");
        assert_eq!(r.bytes().await.expect("body"), s.image.manifest_bytes);
    }
    assert!(s.faults.seen().is_empty(), "{:?}", s.faults.seen());

    // Past the TTL: concurrent requests share one HEAD, and no GET (digest unchanged).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let many = (0..20).map(|_| get("manifests/v1".into()));
    for r in futures_util::future::join_all(many).await {
        assert_eq!(r.expect("tag").status(), StatusCode::OK);
    }
    assert_eq!(
        s.faults.count("HEAD", "/manifests/v1"),
        1,
        "{:?}",
        s.faults.seen()
    );
    assert_eq!(s.faults.count("GET", "/manifests/"), 0);

    // A moved tag is seen after the TTL.
    let moved = images::push_image(&s.registry, "team/app", "v1", &ImageSpec::seed(360)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get("manifests/v1".into()).await.expect("tag");
    assert_eq!(r.bytes().await.expect("body"), moved.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tag_cache_keeps_accept_lists_apart() {
    let registry = Registry::open();
    let image =
        images::push_multiplatform(&registry, "team/multi", "v1", &ImageSpec::seed(37)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "{}{}",
        store_section(store.path(), ""),
        registry_section(&host, &faults.url(), "")
    ))
    .await;
    let client = reqwest::Client::new();
    let index_accept =
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    let r = client
        .get(url(&proxy, &host, "team/multi", "manifests/v1"))
        .header("accept", index_accept)
        .send()
        .await
        .expect("index");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(Some(r.bytes().await.expect("body")), image.index_bytes);
    faults.reset_seen();
    // A client that cannot take an index must not get the cached index.
    let r = client
        .get(url(&proxy, &host, "team/multi", "manifests/v1"))
        .header("accept", OCI_ACCEPT)
        .send()
        .await
        .expect("manifest only");
    assert_eq!(
        faults.count("GET", "/manifests/v1"),
        1,
        "asked upstream with its own Accept"
    );
    let ct = r.headers().get("content-type").cloned();
    assert_ne!(
        ct.as_ref().and_then(|c| c.to_str().ok()),
        Some("application/vnd.oci.image.index.v1+json")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_upstream_still_serves_pulled_images_to_real_clients() {
    let mut registry = Registry::builder().portless().open().start();
    let image = images::push_multiplatform(
        &registry,
        "team/off",
        "v1",
        &ImageSpec::seed(45).small_layers(2),
    )
    .await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "{}{}",
        store_section(store.path(), "tag-ttl = \"1s\"\nstale-max-age = \"1h\""),
        registry_section(&host, &registry.url(), "")
    ))
    .await;
    let skopeo = SkopeoOptions {
        dest: SkopeoDest::Oci,
        ..SkopeoOptions::default()
    };
    let containerd = Containerd::start();
    containerd.configure_mirror(&host, proxy.port(), false);
    // Pull once while the upstream is up.
    let first = skopeo_pull_via_mirror_only(proxy.port(), &host, "team/off", "v1", &skopeo)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    containerd
        .pull_via_mirror(&host, "team/off", "v1", &CtrPullOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    containerd
        .remove_image(&format!("{host}/team/off:v1"))
        .await
        .ok();

    let index_accept = "application/vnd.oci.image.index.v1+json";
    let r = reqwest::Client::new()
        .get(url(&proxy, &host, "team/off", "manifests/v1"))
        .header("accept", index_accept)
        .send()
        .await
        .expect("fresh");
    assert_eq!(r.status(), StatusCode::OK);

    registry.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the tag TTL

    let again = skopeo_pull_via_mirror_only(proxy.port(), &host, "team/off", "v1", &skopeo)
        .await
        .unwrap_or_else(|e| panic!("skopeo with the upstream down: {e}"));
    assert_eq!(again.manifest_digest, first.manifest_digest);
    let by_tag = containerd
        .pull_via_mirror(&host, "team/off", "v1", &CtrPullOptions::default())
        .await
        .unwrap_or_else(|e| panic!("ctr with the upstream down: {e}\n{}", containerd.log()));
    assert_eq!(Some(by_tag.reference_digest), image.index_digest);
    let index = image.index_digest.clone().expect("index");
    let by_digest = containerd
        .pull(
            &format!("{host}/team/off@{index}"),
            &CtrPullOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("ctr by digest with the upstream down: {e}"));
    assert_eq!(by_digest.manifest_digest, image.manifest_digest);

    // Stale answers say so.
    let r = reqwest::Client::new()
        .get(url(&proxy, &host, "team/off", "manifests/v1"))
        .header("accept", index_accept)
        .send()
        .await
        .expect("stale");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("x-stevedore-stale").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_or_failing_upstreams_get_stale_tags_and_cached_digests() {
    let s = setup(47, 1024, "tag-ttl = \"1s\"\nstale-max-age = \"1h\"").await;
    let client = reqwest::Client::new();
    let get = |what: String| {
        client
            .get(url(&s.proxy, &s.host, "team/app", &what))
            .header("accept", OCI_ACCEPT)
            .send()
    };
    assert_eq!(
        get("manifests/v1".into()).await.expect("warm").status(),
        StatusCode::OK
    );
    for (status, retry_after) in [(429, Some("30".to_owned())), (503, None)] {
        s.faults.clear();
        s.faults.add(Rule::new(
            "/manifests/",
            Fault::Status {
                status,
                retry_after,
            },
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = get("manifests/v1".into()).await.expect("tag");
        assert_eq!(r.status(), StatusCode::OK, "upstream {status}");
        assert_eq!(
            r.headers().get("x-stevedore-stale").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        assert!(r.headers().contains_key("warning"));
        assert_eq!(r.bytes().await.expect("body"), s.image.manifest_bytes);
        let r = get(format!("manifests/{}", s.image.manifest_digest))
            .await
            .expect("digest");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            !r.headers().contains_key("x-stevedore-stale"),
            "by digest is never stale"
        );
    }
    // A tag never seen before cannot be invented: the upstream's answer stands.
    let r = get("manifests/other".into()).await.expect("unknown tag");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
}
