//! The content store against a real registry, with a fault-injecting proxy in between: one
//! upstream fetch per digest under concurrency, resume after a cut, corrupt content never
//! committed, offline serving, tag revalidation, repository scoping and eviction.

mod common;

use std::time::Duration;

use common::clients::{
    Containerd, CtrPullOptions, SkopeoDest, SkopeoOptions, skopeo_pull_via_mirror_only,
};
use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec, PushedImage};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::Digest as _;

const OCI_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn store_section(dir: &std::path::Path, extra: &str) -> String {
    format!("[store]\npath = \"{}\"\n{extra}\n", dir.display())
}

fn url(proxy: &Stevedore, host: &str, repo: &str, what: &str) -> String {
    format!("{}/v2/{repo}/{what}?ns={host}", proxy.url())
}

/// Streams a body, hashing as it arrives. Err when the transfer breaks.
async fn fetch_hashed(req: reqwest::RequestBuilder) -> Result<(StatusCode, String, u64), String> {
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

fn largest_layer(image: &PushedImage) -> (String, u64) {
    image
        .layers
        .iter()
        .max_by_key(|(_, size)| *size)
        .cloned()
        .expect("a layer")
}

struct Setup {
    registry: Registry,
    faults: FaultProxy,
    proxy: Stevedore,
    image: PushedImage,
    host: String,
    _store: tempfile::TempDir,
}

async fn setup(seed: u64, large: usize, store_extra: &str) -> Setup {
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

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_clients_one_upstream_fetch_identical_bytes() {
    let s = setup(30, 16 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    // Slow the upstream so every client joins the fill while it is running.
    s.faults.add(
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(2),
            },
        )
        .method("GET"),
    );
    let client = reqwest::Client::new();
    let target = url(&s.proxy, &s.host, "team/app", &format!("blobs/{digest}"));
    let pulls = (0..32).map(|_| fetch_hashed(client.get(&target)));
    let results = futures_util::future::join_all(pulls).await;
    for r in results {
        let (status, got, n) = r.expect("transfer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!((got.as_str(), n), (digest.as_str(), size));
    }
    assert_eq!(
        s.faults.count("GET", &format!("/blobs/{digest}")),
        1,
        "one upstream GET"
    );
    // And later requests come from the store.
    let (_, got, _) = fetch_hashed(client.get(&target)).await.expect("warm");
    assert_eq!(got, digest);
    assert_eq!(s.faults.count("GET", &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_byte_arrives_before_the_fill_ends() {
    let s = setup(31, 8 << 20, "").await;
    let (digest, _) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(5),
            },
        )
        .method("GET"),
    );
    let resp = reqwest::get(url(
        &s.proxy,
        &s.host,
        "team/app",
        &format!("blobs/{digest}"),
    ))
    .await
    .expect("request");
    let mut body = resp.bytes_stream();
    body.next().await.expect("a first chunk").expect("chunk");
    // The client is served while the blob is still arriving, not after.
    let store = s.proxy.state.pull.store().expect("store");
    assert_eq!(
        store.summary().fills_in_flight,
        1,
        "first byte came before the fill ended"
    );
    while let Some(c) = body.next().await {
        c.expect("chunk");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_is_resumed_with_range() {
    let s = setup(32, 4 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::Truncate { after: size / 3 },
        )
        .method("GET")
        .times(1),
    );
    let (status, got, n) = fetch_hashed(reqwest::Client::new().get(url(
        &s.proxy,
        &s.host,
        "team/app",
        &format!("blobs/{digest}"),
    )))
    .await
    .expect("the client sees one whole transfer");
    assert_eq!(
        (status, got.as_str(), n),
        (StatusCode::OK, digest.as_str(), size)
    );
    let seen = s.faults.seen();
    let gets: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "GET" && r.path_and_query.contains(&digest))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let range = gets[1].range.clone().expect("the resume asks for a range");
    assert!(
        range.starts_with("bytes=") && range.ends_with('-'),
        "{range}"
    );
    let store = s.proxy.state.pull.store().expect("store");
    assert_eq!(
        store
            .stats
            .resumes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_is_never_committed_and_readers_are_aborted() {
    let s = setup(33, 2 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(&format!("/blobs/{digest}"), Fault::Corrupt { at: size / 2 })
            .method("GET")
            .times(1),
    );
    let target = url(&s.proxy, &s.host, "team/app", &format!("blobs/{digest}"));
    let client = reqwest::Client::new();
    let attempts = (0..4).map(|_| fetch_hashed(client.get(&target)));
    for r in futures_util::future::join_all(attempts).await {
        match r {
            Err(_) => {}
            Ok((status, _, _)) if status != StatusCode::OK => {}
            Ok((status, got, _)) => panic!("a wrong body ended cleanly: {status} {got}"),
        }
    }
    let store = s.proxy.state.pull.store().expect("store");
    assert_eq!(
        store
            .stats
            .digest_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let parsed: stevedore::reference::Digest = digest.parse().expect("digest");
    assert!(
        store.size(&parsed).is_none(),
        "nothing unverified is stored"
    );
    // The next request fills again, correctly.
    let (status, got, _) = fetch_hashed(client.get(&target)).await.expect("retry");
    assert_eq!((status, got.as_str()), (StatusCode::OK, digest.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_from_the_store_and_from_a_fill_in_progress() {
    let s = setup(34, 4 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    let content = s.image.content(&digest).expect("content");
    s.faults.add(
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(2),
            },
        )
        .method("GET"),
    );
    let target = url(&s.proxy, &s.host, "team/app", &format!("blobs/{digest}"));
    let client = reqwest::Client::new();
    // Start a full read (the fill), then ask for ranges while it runs.
    let full = tokio::spawn(fetch_hashed(client.get(&target)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (range, start, end) in [
        (format!("bytes={}-", size - 1000), size - 1000, size),
        ("bytes=10-19".to_owned(), 10, 20),
    ] {
        let r = client
            .get(&target)
            .header("range", &range)
            .send()
            .await
            .expect("range");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"].to_str().expect("ascii"),
            format!("bytes {start}-{}/{size}", end - 1)
        );
        let body = r.bytes().await.expect("body");
        assert_eq!(&body[..], &content[start as usize..end as usize]);
    }
    full.await.expect("task").expect("full read");
    // From the store now.
    let r = client
        .get(&target)
        .header("range", "bytes=5-")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.expect("body")[..], &content[5..]);
    let r = client
        .get(&target)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(s.faults.count("GET", &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_of_an_uncached_blob_asks_upstream_with_head_only() {
    let s = setup(35, 1 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    let r = reqwest::Client::new()
        .head(url(
            &s.proxy,
            &s.host,
            "team/app",
            &format!("blobs/{digest}"),
        ))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"].to_str().expect("ascii"),
        size.to_string()
    );
    assert_eq!(s.faults.count("HEAD", &format!("/blobs/{digest}")), 1);
    assert_eq!(s.faults.count("GET", &format!("/blobs/{digest}")), 0);
    // Unknown blob: an honest 404 from upstream, not a guess.
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = reqwest::Client::new()
        .head(url(
            &s.proxy,
            &s.host,
            "team/app",
            &format!("blobs/{missing}"),
        ))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

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
async fn repository_scoping_holds() {
    let registry = Registry::htpasswd("admin", "admin-secret");
    let secret = images::push_image(&registry, "team/secret", "v1", &ImageSpec::seed(38)).await;
    images::push_image(&registry, "other/app", "v1", &ImageSpec::seed(39)).await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "{}{}",
        store_section(store.path(), ""),
        registry_section(
            &host,
            &registry.url(),
            "username = \"admin\"\npassword = \"admin-secret\""
        )
    ))
    .await;
    let client = reqwest::Client::new();
    let layer = secret.layer_digests()[0].clone();
    // Pulled through its own repository: cached.
    let (status, got, _) =
        fetch_hashed(client.get(url(&proxy, &host, "team/secret", &format!("blobs/{layer}"))))
            .await
            .expect("own repo");
    assert_eq!((status, got.as_str()), (StatusCode::OK, layer.as_str()));
    // Asked through another repository: upstream says it is not there, so neither is it here.
    let r = client
        .get(url(&proxy, &host, "other/app", &format!("blobs/{layer}")))
        .send()
        .await
        .expect("other repo");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
    let r = client
        .get(url(
            &proxy,
            &host,
            "other/app",
            &format!("manifests/{}", secret.manifest_digest),
        ))
        .header("accept", OCI_ACCEPT)
        .send()
        .await
        .expect("other repo manifest");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_under_concurrent_reads_never_truncates() {
    let registry = Registry::open();
    let mut images = Vec::new();
    for seed in 40..44 {
        let repo = format!("team/e{seed}");
        images.push(
            images::push_image(
                &registry,
                &repo,
                "v1",
                &ImageSpec::seed(seed).large_layer(3 << 20),
            )
            .await,
        );
    }
    let faults = FaultProxy::start(&registry.url()).await;
    let store = tempfile::tempdir().expect("tempdir");
    let host = registry.host();
    let proxy = Stevedore::start(&format!(
        "{}{}",
        store_section(store.path(), "max-size = \"5MiB\""),
        registry_section(&host, &faults.url(), "")
    ))
    .await;
    let client = reqwest::Client::new();
    // Warm the first blob, then read it slowly while others push it out of the store.
    let (first, first_size) = largest_layer(&images[0]);
    let target = url(&proxy, &host, &images[0].repo, &format!("blobs/{first}"));
    fetch_hashed(client.get(&target)).await.expect("warm");
    // The slow reader takes its first chunk, then waits until the other fills are done.
    let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let client = client.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let resp = client
                .get(&target)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let mut h = sha2::Sha256::new();
            let mut n = 0u64;
            let mut body = resp.bytes_stream();
            let mut wait = Some(wait);
            while let Some(c) = body.next().await {
                let c = c.map_err(|e| e.to_string())?;
                n += c.len() as u64;
                h.update(&c);
                if let Some(w) = wait.take() {
                    let _ = w.await;
                }
            }
            Ok::<_, String>((format!("sha256:{}", hex::encode(h.finalize())), n))
        })
    };
    for img in &images[1..] {
        let (d, _) = largest_layer(img);
        let (status, got, _) =
            fetch_hashed(client.get(url(&proxy, &host, &img.repo, &format!("blobs/{d}"))))
                .await
                .expect("fill");
        assert_eq!((status, got), (StatusCode::OK, d));
    }
    let _ = go_on.send(());
    let (got, n) = slow.await.expect("task").expect("slow read completes");
    assert_eq!((got, n), (first, first_size));
    // Content pinned by readers may keep the store over its bound for a while (a fill that
    // commits while its own client still reads it); once they are done, the store gets back
    // within its bound without waiting for another fill.
    let store = proxy.state.pull.store().expect("store");
    let within = common::util::wait_until(Duration::from_secs(10), || {
        (store.summary().bytes <= 5 << 20).then_some(())
    });
    assert!(within.is_some(), "{:?}", store.summary());
    assert!(
        store
            .stats
            .evictions
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
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
async fn a_fill_outlives_the_client_that_started_it() {
    let s = setup(46, 4 << 20, "").await;
    let (digest, _) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{digest}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(2),
            },
        )
        .method("GET"),
    );
    let resp = reqwest::get(url(
        &s.proxy,
        &s.host,
        "team/app",
        &format!("blobs/{digest}"),
    ))
    .await
    .expect("request");
    let mut body = resp.bytes_stream();
    body.next().await.expect("a first chunk").expect("chunk");
    drop(body); // the client goes away mid-blob
    let store = s.proxy.state.pull.store().expect("store").clone();
    let parsed: stevedore::reference::Digest = digest.parse().expect("digest");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.size(&parsed).is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.size(&parsed).is_some(),
        "the fill finished without its client"
    );
    assert_eq!(s.faults.count("GET", &format!("/blobs/{digest}")), 1);
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

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_cache_results_and_fills() {
    let s = setup(48, 1 << 20, "").await;
    let (digest, _) = largest_layer(&s.image);
    let client = reqwest::Client::new();
    let target = url(&s.proxy, &s.host, "team/app", &format!("blobs/{digest}"));
    for _ in 0..2 {
        let (status, got, _) = fetch_hashed(client.get(&target)).await.expect("blob");
        assert_eq!((status, got.as_str()), (StatusCode::OK, digest.as_str()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(stevedore::server::serve_metrics(
        listener,
        s.proxy.state.clone(),
        std::future::pending(),
    ));
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    for line in [
        "stevedore_requests_total{method=\"GET\",status=\"200\"} 2",
        "stevedore_cache_lookups_total{kind=\"blob\",result=\"miss\"} 1",
        "stevedore_cache_lookups_total{kind=\"blob\",result=\"hit\"} 1",
        "stevedore_fills_total 1",
        "stevedore_digest_mismatches_total 0",
        "stevedore_upstream_requests_total{method=\"GET\"} 1",
        "stevedore_token_fetches_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("stevedore_store_bytes ") && !l.ends_with(" 0")),
        "{text}"
    );
    let r = reqwest::get(format!("http://{addr}/other"))
        .await
        .expect("other");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_for_missing_blobs_leave_no_fill_state_behind() {
    let s = setup(49, 1024, "").await;
    let client = reqwest::Client::new();
    for i in 0..20u8 {
        let missing = format!("sha256:{}", format!("{i:02x}").repeat(32));
        let r = client
            .get(url(
                &s.proxy,
                &s.host,
                "team/app",
                &format!("blobs/{missing}"),
            ))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let store = s.proxy.state.pull.store().expect("store");
    assert_eq!(store.summary().fills_in_flight, 0);
}
