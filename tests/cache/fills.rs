//! Blob fills: one upstream fetch under concurrency, streaming before the fill ends, resume
//! after a cut, corrupt bytes never committed, ranges, HEAD, and fills outliving clients.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::common::faults::{Fault, Rule};
use crate::helpers::{fetch_hashed, largest_layer, setup, url};

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
    flipped_byte(33, |size| size / 2).await;
}

/// The last byte is the one readers hold back until the hash (on its own thread) has seen
/// every byte: flipped, no reader may end cleanly even though every other byte was right.
#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_last_byte_is_never_delivered_as_a_clean_end() {
    flipped_byte(35, |size| size - 1).await;
}

async fn flipped_byte(seed: u64, at: impl Fn(u64) -> u64) {
    let s = setup(seed, 2 << 20, "").await;
    let (digest, size) = largest_layer(&s.image);
    s.faults.add(
        Rule::new(&format!("/blobs/{digest}"), Fault::Corrupt { at: at(size) })
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
