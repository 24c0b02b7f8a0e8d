//! The store's bounds: repository scoping, eviction under concurrent reads, and metrics.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::Digest as _;

use crate::common::faults::FaultProxy;
use crate::common::images::{self, ImageSpec};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::helpers::{OCI_ACCEPT, fetch_hashed, largest_layer, setup, store_section, url};

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
    let within = crate::common::util::wait_until(Duration::from_secs(10), || {
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
async fn metrics_count_requests_cache_results_and_fills() {
    let s = setup(48, 1 << 20, "").await;
    let (digest, _) = largest_layer(&s.image);
    let client = reqwest::Client::new();
    let target = url(&s.proxy, &s.host, "team/app", &format!("blobs/{digest}"));
    for _ in 0..2 {
        let (status, got, _) = fetch_hashed(client.get(&target)).await.expect("blob");
        assert_eq!((status, got.as_str()), (StatusCode::OK, digest.as_str()));
        // A transfer ends once the bytes are verified; wait for the commit, so that the
        // second request is a hit rather than a join of the committing fill.
        s.proxy
            .state
            .pull
            .settled(&digest.parse().expect("digest"))
            .await;
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
