//! Replicas over one Garage bucket (`[store] type = "s3"`): three Garage nodes with
//! replication factor 3. What one replica verified and stored (content, tag records,
//! repository membership) is served by a replica with an empty disk without asking the
//! upstream, also with a Garage node down; bad bytes in the bucket are never served and are
//! replaced from upstream; repository scoping holds across replicas.

mod common;

use std::time::Duration;

use common::faults::FaultProxy;
use common::garage::Garage;
use common::images::{self, ImageSpec};
use common::pulls::{all_blobs, get, pull_all};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;
use object_store::ObjectStore as _;
use object_store::path::Path;

fn upstream_requests(faults: &FaultProxy) -> usize {
    faults
        .seen()
        .iter()
        .filter(|s| {
            s.path_and_query.contains("/manifests/") || s.path_and_query.contains("/blobs/")
        })
        .count()
}

async fn replica(garage: &Garage, node: usize, registry: &str) -> (Stevedore, tempfile::TempDir) {
    let disk = tempfile::tempdir().expect("tempdir");
    let s = Stevedore::start(&format!(
        "{}{registry}",
        garage.store_section(node, disk.path())
    ))
    .await;
    (s, disk)
}

/// Waits until the bucket holds every blob of the image (uploads follow commits).
async fn uploaded(garage: &Garage, digests: &[String]) {
    let s3 = garage.client(0);
    for d in digests {
        let path = Path::from(format!("blobs/sha256/{}", d.trim_start_matches("sha256:")));
        let mut found = false;
        for _ in 0..200 {
            if s3.head(&path).await.is_ok() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(found, "{d} never reached the bucket");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_with_an_empty_disk_serves_what_another_stored_without_the_upstream() {
    let mut garage = Garage::start(3);
    let registry = Registry::htpasswd("puller", "shared-pw");
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(2401).large_layer(12 << 20),
    )
    .await;
    let host = registry.host();
    let faults = FaultProxy::start(&registry.url()).await;
    let section = registry_section(
        &host,
        &faults.url(),
        "username = \"puller\"\npassword = \"shared-pw\"",
    );

    // Replica A pulls from the registry and stores into the bucket.
    let (a, _a) = replica(&garage, 0, &section).await;
    pull_all(&a, &host, &image).await;
    let blobs = all_blobs(&image);
    uploaded(&garage, &blobs).await;
    assert!(upstream_requests(&faults) > 0);

    // Replica B, empty disk, another Garage node: everything from the bucket.
    faults.reset_seen();
    let (b, _b) = replica(&garage, 1, &section).await;
    pull_all(&b, &host, &image).await;
    assert_eq!(upstream_requests(&faults), 0, "{:?}", faults.seen());

    // One Garage node down: replica C (empty disk) still pulls everything from the bucket.
    garage.stop(2);
    let (c, _c) = replica(&garage, 0, &section).await;
    tokio::time::timeout(Duration::from_secs(60), pull_all(&c, &host, &image))
        .await
        .expect("pull with a Garage node down");
    assert_eq!(upstream_requests(&faults), 0, "{:?}", faults.seen());

    // Another repository cannot read the content through the bucket: scoping holds.
    let (layer, _) = image.layers.last().cloned().expect("layer");
    let (d, _d) = replica(&garage, 1, &section).await;
    let other = get(&d, &host, "team/other", &format!("blobs/{layer}")).await;
    assert_eq!(other.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bytes_in_the_bucket_are_never_served_and_are_replaced_from_upstream() {
    let garage = Garage::start(3);
    let registry = Registry::open();
    let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(2402)).await;
    let host = registry.host();
    let faults = FaultProxy::start(&registry.url()).await;
    let section = registry_section(&host, &faults.url(), "");
    let (a, _a) = replica(&garage, 0, &section).await;
    pull_all(&a, &host, &image).await;
    let blobs = all_blobs(&image);
    uploaded(&garage, &blobs).await;

    // Someone with write access to the bucket replaces a layer's bytes.
    let (layer, size) = image.layers[0].clone();
    let path = Path::from(format!(
        "blobs/sha256/{}",
        layer.trim_start_matches("sha256:")
    ));
    let s3 = garage.client(1);
    s3.put(&path, vec![b'x'; size as usize].into())
        .await
        .expect("overwrite");

    // A replica with an empty disk never serves them whole: the transfer fails...
    let (b, _b) = replica(&garage, 1, &section).await;
    let url = format!("{}/v2/team/app/blobs/{layer}?ns={host}", b.url());
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let first = match http.get(&url).send().await {
        Ok(r) => r.bytes().await.ok(),
        // A short blob is cut before its head is flushed.
        Err(_) => None,
    };
    assert!(
        first.is_none_or(|b| sha256_digest(&b) != layer && b.len() as u64 != size),
        "corrupt bytes were served as the blob"
    );
    // ...the bad object is removed, and the next request gets the right bytes from upstream.
    let mut good = None;
    for _ in 0..50 {
        let Ok(r) = http.get(&url).send().await else {
            continue;
        };
        if r.status() == 200
            && let Ok(bytes) = r.bytes().await
            && sha256_digest(&bytes) == layer
        {
            good = Some(bytes);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(good.is_some(), "the blob was never served right");
    assert!(faults.count("GET", &format!("/blobs/{layer}")) >= 2);
    // And the bucket holds the right bytes again.
    uploaded(&garage, std::slice::from_ref(&layer)).await;
    let mut stored = None;
    for _ in 0..100 {
        let bytes = s3
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        if sha256_digest(&bytes) == layer {
            stored = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored.is_some(), "the bucket still holds bad bytes");
}
