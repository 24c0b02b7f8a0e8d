//! The engine and the content store under hostile requests and upstreams, against a real
//! registry with a fault-injecting proxy in between: what a request for a stored layer as a
//! manifest costs, how many upstream requests concurrent misses make (and that a negative
//! answer is shared), that readers of a fill keep it from eviction, that Accept spellings and
//! Range numbers cannot be used to amplify or crash, and what happens when fills are at
//! their limit or the disk is full.

mod common;

use common::util::direct_client as client;

use std::time::Duration;

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{self, ImageSpec, PushedImage};
use common::process::Process;
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;
use futures_util::StreamExt;
use reqwest::StatusCode;

fn largest_layer(image: &PushedImage) -> (String, u64) {
    image
        .layers
        .iter()
        .max_by_key(|(_, size)| *size)
        .cloned()
        .expect("a layer")
}

struct Setup {
    faults: FaultProxy,
    proxy: Stevedore,
    image: PushedImage,
    host: String,
    store: tempfile::TempDir,
    _registry: Registry,
}

impl Setup {
    async fn new(seed: u64, large: usize, store_extra: &str) -> Setup {
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
            "[store]\npath = \"{}\"\n{store_extra}\n{}",
            store.path().display(),
            registry_section(&host, &faults.url(), "")
        ))
        .await;
        Setup {
            faults,
            proxy,
            image,
            host,
            store,
            _registry: registry,
        }
    }

    fn url(&self, repo: &str, what: &str) -> String {
        format!("{}/v2/{repo}/{what}?ns={}", self.proxy.url(), self.host)
    }
}

/// Reads a whole body; its sha256 digest and length, or where the transfer broke.
async fn fetch(req: reqwest::RequestBuilder) -> Result<(StatusCode, String, u64), String> {
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, sha256_digest(&bytes), bytes.len() as u64))
}

// ---------------------------------------------------------------------------------------------
// Memory: a stored layer asked for as a manifest.

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_layer_asked_for_as_a_manifest_is_never_read_into_memory() {
    const LAYER: usize = 256 << 20;
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/big",
        "v1",
        &ImageSpec::seed(601).large_layer(LAYER),
    )
    .await;
    let (layer, size) = largest_layer(&image);
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Process::start(
        "",
        &format!(
            "[store]\npath = \"{}\"\n{}",
            store.path().display(),
            registry_section(&registry.host(), &registry.url(), "")
        ),
        &[],
    );
    let base = format!("{}/v2/team/big", proxy.url());
    let ns = format!("?ns={}", registry.host());
    // Store the layer (and make team/big a known member of it).
    let c = client();
    let (status, got, n) = fetch(c.get(format!("{base}/blobs/{layer}{ns}")))
        .await
        .expect("layer pull");
    assert_eq!(
        (status, got.as_str(), n),
        (StatusCode::OK, layer.as_str(), size)
    );

    proxy.reset_peak();
    let before = proxy.status_kib("VmHWM");
    // Eight at once, each of them, on a store that read objects whole, a 256 MiB read.
    let asks = (0..8).map(|_| {
        let c = c.clone();
        let url = format!("{base}/manifests/{layer}{ns}");
        async move { c.get(url).header("accept", "*/*").send().await }
    });
    for r in futures_util::future::join_all(asks).await {
        // distribution answers a layer's digest asked for as a manifest with the layer
        // itself, announcing its size: refused as too large without reading it.
        let r = r.expect("manifest request");
        assert!(
            matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::BAD_GATEWAY),
            "{}",
            r.status()
        );
        assert!(r.bytes().await.expect("body").len() < 4096);
    }
    // And from a repository that is not a member: refused before anything is read.
    let r = c
        .get(format!(
            "{}/v2/other/repo/manifests/{layer}{ns}",
            proxy.url()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let grown = proxy.status_kib("VmHWM").saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "peak resident memory grew by {grown} KiB answering manifest requests for a {} MiB layer",
        LAYER >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// The fill table: one upstream request for concurrent misses, negative answers shared.

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_for_a_missing_blob_make_one_upstream_request() {
    let s = Setup::new(602, 1 << 20, "").await;
    let missing = sha256_digest(b"never pushed");
    // A slow 404, so that every request arrives while the first is still asking.
    s.faults.add(Rule::new(
        &format!("/blobs/{missing}"),
        Fault::Delay {
            by: Duration::from_millis(500),
        },
    ));
    let c = client();
    let target = s.url("team/app", &format!("blobs/{missing}"));
    let asks = (0..20).map(|_| c.get(&target).send());
    for r in futures_util::future::join_all(asks).await {
        let (status, code, _) = error_of(r.expect("request")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        );
    }
    assert_eq!(
        s.faults.count("GET", &format!("/blobs/{missing}")),
        1,
        "20 concurrent misses, one upstream GET"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_fill_is_shared_with_the_requests_waiting_on_it() {
    let s = Setup::new(603, 1 << 20, "").await;
    let (layer, _) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{layer}"),
            Fault::Status {
                status: 429,
                retry_after: Some("7".into()),
            },
        )
        .delay(Duration::from_millis(500))
        .times(1),
    );
    let c = client();
    let target = s.url("team/app", &format!("blobs/{layer}"));
    let asks = (0..12).map(|_| c.get(&target).send());
    for r in futures_util::future::join_all(asks).await {
        let r = r.expect("request");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "7");
    }
    assert_eq!(s.faults.count("GET", &format!("/blobs/{layer}")), 1);
    // A later request asks again and gets the blob.
    let (status, got, _) = fetch(c.get(&target)).await.expect("retry");
    assert_eq!((status, got), (StatusCode::OK, layer.clone()));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_for_a_manifest_digest_make_one_upstream_get() {
    let s = Setup::new(604, 64 << 10, "").await;
    let digest = s.image.manifest_digest.clone();
    s.faults.add(Rule::new(
        &format!("/manifests/{digest}"),
        Fault::Delay {
            by: Duration::from_millis(300),
        },
    ));
    let c = client();
    let target = s.url("team/app", &format!("manifests/{digest}"));
    let asks = (0..20).map(|_| fetch(c.get(&target).header("accept", "*/*")));
    for r in futures_util::future::join_all(asks).await {
        let (status, got, _) = r.expect("request");
        assert_eq!((status, got.as_str()), (StatusCode::OK, digest.as_str()));
    }
    assert_eq!(
        s.faults.count("GET", &format!("/manifests/{digest}")),
        1,
        "20 concurrent misses, one upstream GET"
    );
}

// ---------------------------------------------------------------------------------------------
// Eviction pins.

#[tokio::test(flavor = "multi_thread")]
async fn readers_that_joined_a_fill_keep_the_committed_blob_from_eviction() {
    // Larger than loopback socket buffers hold, so readers are still reading after the
    // commit; room for it and little else.
    let s = Setup::new(605, 24 << 20, "max-size = \"28MiB\"").await;
    let (layer, size) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{layer}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(2),
            },
        )
        .method("GET"),
    );
    let c = client();
    let target = s.url("team/app", &format!("blobs/{layer}"));
    // Readers that join the fill and then read slowly, past its commit.
    let mut readers = Vec::new();
    for _ in 0..3 {
        let resp = c.get(&target).send().await.expect("reader");
        assert_eq!(resp.status(), StatusCode::OK);
        readers.push(resp);
    }
    let mut first = readers.remove(0);
    let mut read = 0u64;
    while let Some(chunk) = first.chunk().await.expect("first reader") {
        read += chunk.len() as u64;
    }
    assert_eq!(read, size, "the fill committed");
    // Other content now pushes the store over its bound.
    let other = images::push_image(
        &s._registry,
        "team/other",
        "v1",
        &ImageSpec::seed(606).large_layer(8 << 20),
    )
    .await;
    let (other_layer, _) = largest_layer(&other);
    let (status, _, _) = fetch(c.get(s.url("team/other", &format!("blobs/{other_layer}"))))
        .await
        .expect("other layer");
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The two remaining readers are still reading: the blob must still be stored.
    let before = s.faults.count("GET", &format!("/blobs/{layer}"));
    let (status, got, _) = fetch(c.get(&target)).await.expect("again");
    assert_eq!((status, got), (StatusCode::OK, layer.clone()));
    assert_eq!(
        s.faults.count("GET", &format!("/blobs/{layer}")),
        before,
        "evicted while readers that joined its fill were still reading"
    );
    for mut r in readers {
        let mut n = 0u64;
        while let Some(chunk) = r.chunk().await.expect("reader") {
            n += chunk.len() as u64;
        }
        assert_eq!(n, size);
    }
}

// ---------------------------------------------------------------------------------------------
// Amplification.

#[tokio::test(flavor = "multi_thread")]
async fn accept_spellings_cannot_multiply_upstream_gets_or_tag_records() {
    let s = Setup::new(607, 64 << 10, "").await;
    let c = client();
    let target = s.url("team/app", "manifests/v1");
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let index = "application/vnd.oci.image.index.v1+json";
    for i in 0..40 {
        // Forty different Accept headers naming the same two types (and noise).
        let accept = match i % 4 {
            0 => format!("{oci}, {index}, application/x-noise-{i}"),
            1 => format!("{index};q=0.{i}, {oci}"),
            2 => format!("application/x-{i}+json, {oci}, {index}"),
            _ => format!("{oci},{index},{oci}, text/x-{i}"),
        };
        let (status, got, _) = fetch(c.get(&target).header("accept", accept))
            .await
            .expect("request");
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::OK, s.image.manifest_digest.as_str())
        );
    }
    assert_eq!(
        s.faults.count("GET", "/manifests/v1"),
        1,
        "one upstream GET for the tag"
    );
    let records = common::util::walk_files(&s.store.path().join("repos"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/_tags/v1/"))
        .count();
    assert_eq!(records, 1, "one tag record on disk");
}

#[tokio::test(flavor = "multi_thread")]
async fn range_numbers_at_the_edge_of_u64_are_answered() {
    let s = Setup::new(608, 1 << 20, "").await;
    let (layer, size) = largest_layer(&s.image);
    let c = client();
    let target = s.url("team/app", &format!("blobs/{layer}"));
    // Once uncached (the fill path), once stored.
    for round in 0..2 {
        let r = c
            .get(&target)
            .header("range", "bytes=0-18446744073709551615")
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "round {round}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 0-{}/{size}", size - 1).as_str()
        );
        let body = r.bytes().await.expect("body");
        assert_eq!(sha256_digest(&body), layer);
        for odd in [
            "bytes=18446744073709551615-",
            "bytes=-18446744073709551615",
            "bytes=18446744073709551615-18446744073709551615",
            "bytes=99999999999999999999999-",
        ] {
            let r = c
                .get(&target)
                .header("range", odd)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{odd}: {e}"));
            assert!(
                matches!(
                    r.status(),
                    StatusCode::OK
                        | StatusCode::PARTIAL_CONTENT
                        | StatusCode::RANGE_NOT_SATISFIABLE
                ),
                "{odd}: {}",
                r.status()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limits of the store.

#[tokio::test(flavor = "multi_thread")]
async fn transfers_past_the_fill_limit_get_503_with_retry_after() {
    let s = Setup::new(609, 8 << 20, "max-concurrent-fills = 1").await;
    let (layer, size) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(
            &format!("/blobs/{layer}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(10),
            },
        )
        .method("GET"),
    );
    let c = client();
    let slow = tokio::spawn(fetch(c.get(s.url("team/app", &format!("blobs/{layer}")))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config = s.image.config_digest.clone();
    let r = c
        .get(s.url("team/app", &format!("blobs/{config}")))
        .send()
        .await
        .expect("second transfer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let (_, code, message) = error_of(r).await;
    assert_eq!(code, "UNAVAILABLE");
    assert!(message.contains("max-concurrent-fills"), "{message}");
    let (status, got, n) = slow.await.expect("join").expect("slow transfer");
    assert_eq!(
        (status, got.as_str(), n),
        (StatusCode::OK, layer.as_str(), size)
    );
    // The slot is free again.
    let (status, got, _) = fetch(c.get(s.url("team/app", &format!("blobs/{config}"))))
        .await
        .expect("after");
    assert_eq!((status, got), (StatusCode::OK, config));
}

/// A small tmpfs for a store, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs (the tests run as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_without_room_streams_misses_without_keeping_them() {
    let disk = SmallDisk::new("8m");
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(610).large_layer(12 << 20),
    )
    .await;
    let (layer, size) = largest_layer(&image);
    let faults = FaultProxy::start(&registry.url()).await;
    let proxy = Stevedore::start(&format!(
        "[store]\npath = \"{}\"\nmin-free-space = \"1MiB\"\n{}",
        disk.path().display(),
        registry_section(&registry.host(), &faults.url(), "")
    ))
    .await;
    let c = client();
    let target = format!(
        "{}/v2/team/app/blobs/{layer}?ns={}",
        proxy.url(),
        registry.host()
    );
    for _ in 0..2 {
        let (status, got, n) = fetch(c.get(&target)).await.expect("pull");
        assert_eq!(
            (status, got.as_str(), n),
            (StatusCode::OK, layer.as_str(), size)
        );
    }
    assert_eq!(
        faults.count("GET", &format!("/blobs/{layer}")),
        2,
        "not stored: each pull streams from upstream"
    );
    let store = proxy.state.pull.store().expect("store");
    assert_eq!(
        store
            .stats
            .pass_throughs
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(store.size(&layer.parse().expect("digest")).is_none());
    // Small content still fits and is stored.
    let config = image.config_digest.clone();
    let (status, got, _) = fetch(c.get(format!(
        "{}/v2/team/app/blobs/{config}?ns={}",
        proxy.url(),
        registry.host()
    )))
    .await
    .expect("config");
    assert_eq!((status, got.as_str()), (StatusCode::OK, config.as_str()));
    assert!(store.size(&config.parse().expect("digest")).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_up_during_a_fill_breaks_the_transfer_and_leaves_nothing() {
    let disk = SmallDisk::new("8m");
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(611).large_layer(4 << 20),
    )
    .await;
    let (layer, size) = largest_layer(&image);
    let faults = FaultProxy::start(&registry.url()).await;
    faults.add(
        Rule::new(
            &format!("/blobs/{layer}"),
            Fault::Slow {
                per_chunk: Duration::from_millis(10),
            },
        )
        .method("GET")
        .times(1),
    );
    let proxy = Stevedore::start(&format!(
        "[store]\npath = \"{}\"\nmin-free-space = \"0\"\nfill-retries = 0\n{}",
        disk.path().display(),
        registry_section(&registry.host(), &faults.url(), "")
    ))
    .await;
    let c = client();
    let target = format!(
        "{}/v2/team/app/blobs/{layer}?ns={}",
        proxy.url(),
        registry.host()
    );
    let first = c.get(&target).send().await.expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    // Something else takes the disk while the fill runs.
    std::fs::write(disk.path().join("filler"), vec![7u8; 6 << 20]).ok();
    let mut body = first.bytes_stream();
    let mut broke = false;
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            broke = true;
            break;
        }
    }
    assert!(broke, "a fill that could not be written never ends cleanly");
    std::fs::remove_file(disk.path().join("filler")).ok();
    // The failed fill left nothing behind; the next pull works.
    let (status, got, n) = fetch(c.get(&target)).await.expect("again");
    assert_eq!(
        (status, got.as_str(), n),
        (StatusCode::OK, layer.as_str(), size)
    );
    // The pull ends once its bytes are verified; the commit moves the file out of tmp/ right
    // after.
    let left = common::util::wait_until(Duration::from_secs(10), || {
        let tmp = std::fs::read_dir(disk.path().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        (tmp == 0).then_some(())
    });
    assert!(left.is_some(), "no partial blob left");
}
