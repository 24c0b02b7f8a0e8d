//! Chained caches: a node-local stevedore whose upstream is a regional stevedore (named with
//! the registry as a path prefix, or with `?ns=`), which holds the credentials and reaches
//! the real registry. containerd pulls through the node-local one: one fetch per digest at
//! the registry, digests equal; blob HEADs, ranges and resumed fills work through the chain.

mod common;

use std::time::Duration;

use common::clients::{Containerd, CtrPullOptions};
use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec};
use common::pulls::{all_blobs, pull_all};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;

async fn with_store(config: &str) -> (Stevedore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Stevedore::start(&format!(
        "[store]\npath = \"{}\"\n{config}",
        dir.path().display()
    ))
    .await;
    (s, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_through_node_local_and_regional_with_one_fetch_per_digest() {
    let registry = Registry::htpasswd("puller", "chain-pw");
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(2301).large_layer(1 << 20),
    )
    .await;
    let host = registry.host();
    let faults = FaultProxy::start(&registry.url()).await;
    let (regional, _r) = with_store(&registry_section(
        &host,
        &faults.url(),
        "username = \"puller\"\npassword = \"chain-pw\"",
    ))
    .await;
    // Node-local: no credentials; its endpoint is the regional cache, path-prefix form. A
    // fault proxy in between cuts the first blob transfer, so the fill resumes with a range.
    let between = FaultProxy::start(&regional.url()).await;
    let (layer, size) = image.layers.last().cloned().expect("layer");
    between.add(
        Rule::new(&layer, Fault::Truncate { after: 300_000 })
            .method("GET")
            .times(1),
    );
    let (local, _l) = with_store(&registry_section(
        &host,
        &format!("{}/v2/{host}", between.url()),
        "",
    ))
    .await;

    let containerd = Containerd::start();
    containerd.configure_mirror(&host, local.port(), false);
    let pulled = containerd
        .pull_via_mirror(&host, "team/app", "v1", &CtrPullOptions::default())
        .await
        .unwrap_or_else(|e| panic!("ctr through the chain failed: {e}\n{}", containerd.log()));
    assert_eq!(pulled.manifest_digest, image.manifest_digest);
    assert_eq!(
        pulled.layer_digests,
        image
            .layers
            .iter()
            .map(|(d, _)| d.clone())
            .collect::<Vec<_>>()
    );

    // One GET per digest at the registry, whatever the chain did.
    for digest in all_blobs(&image) {
        assert_eq!(
            faults.count("GET", &format!("/blobs/{digest}")),
            1,
            "{digest}"
        );
    }
    // (The first request, without credentials, is answered with the registry's challenge.)
    let manifest_gets = faults
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path_and_query.contains("/manifests/"))
        .filter(|s| s.authorization.is_some())
        .count();
    assert_eq!(
        manifest_gets,
        1,
        "{:?}",
        faults
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path_and_query))
            .collect::<Vec<_>>()
    );
    // The cut transfer was resumed from the regional cache with a range, not refetched.
    let ranged = between
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path_and_query.contains(&layer) && s.range.is_some())
        .count();
    assert!(ranged >= 1, "{:?}", between.seen());

    // HEAD and ranges through the chain, answered by the node-local cache.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let blob_url = format!("{}/v2/team/app/blobs/{layer}?ns={host}", local.url());
    let head = http.head(&blob_url).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        Some(size)
    );
    let part = http
        .get(&blob_url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    let whole = http
        .get(&blob_url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&whole), layer);
    assert_eq!(part.bytes().await.expect("part"), whole.slice(1000..2000));

    // A second node-local cache naming the registry with ?ns= pulls everything from the
    // regional one: nothing more reaches the registry.
    let (other, _o) = with_store(&registry_section(
        &host,
        &format!("{}/?ns={host}", regional.url()),
        "",
    ))
    .await;
    tokio::time::timeout(Duration::from_secs(60), pull_all(&other, &host, &image))
        .await
        .expect("pull through the ?ns= chain");
    for digest in all_blobs(&image) {
        assert_eq!(
            faults.count("GET", &format!("/blobs/{digest}")),
            1,
            "{digest}"
        );
    }
}
