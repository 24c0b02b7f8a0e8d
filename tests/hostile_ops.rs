//! Hostile inputs against what the operations and scale-out work added, on the real binary:
//! forged or malformed `traceparent` and `x-request-id` headers, a collector that answers
//! with an endless body, a peer address that answers its id with one, the peer path probed
//! without, with wrong and with oversized secrets,
//! a replica asked by an admitted peer for another repository's blob, and made-up paths that
//! must not grow the metric labels.

mod common;

use common::util::direct_client as client;

use std::time::Duration;

use common::images::{self, ImageSpec};
use common::otlp::Receiver;
use common::process::Process;
use common::registry::Registry;
use common::stevedore::registry_section;
use common::util::free_port;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "a-peer-secret-of-some-length";

#[tokio::test(flavor = "multi_thread")]
async fn forged_trace_and_request_ids_are_not_taken() {
    let receiver = Receiver::start().await;
    let mut proxy = Process::start(
        "",
        &format!("[tracing]\notlp-endpoint = \"{}\"\n", receiver.url()),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let http = client();
    let forged = [
        "f".repeat(4000),
        "00-00000000000000000000000000000000-0000000000000000-01".to_owned(),
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".to_owned(),
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".to_owned(),
        "00-xyz-00f067aa0ba902b7-01".to_owned(),
    ];
    for value in &forged {
        let r = http
            .get(format!("{}/v2/", proxy.url()))
            .header("traceparent", value)
            .header("x-request-id", "attacker-chosen-id")
            .send()
            .await
            .expect("ping");
        assert_eq!(r.status(), 200, "{value:.40}");
        let id = r.headers().get("x-request-id").expect("x-request-id");
        assert_ne!(id, "attacker-chosen-id");
    }
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    let spans = receiver.spans();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "request").collect();
    assert_eq!(requests.len(), forged.len());
    // None of them became a child of a span the client made up.
    assert!(
        requests.iter().all(|s| s.parent_span_id.is_empty()),
        "{requests:?}"
    );
    assert!(!proxy.log().contains("attacker-chosen-id"));
}

/// A collector that answers every export with an endless body.
async fn endless_collector() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = [b"10000\r\n".as_slice(), &vec![b'x'; 0x10000], b"\r\n"].concat();
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_answering_forever_costs_neither_memory_nor_the_shutdown() {
    let port = endless_collector().await;
    let mut proxy = Process::start(
        "",
        &format!("[tracing]\notlp-endpoint = \"http://127.0.0.1:{port}/v1/traces\"\n"),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let http = client();
    let before = proxy.status_kib("VmRSS");
    for _ in 0..200 {
        let r = http
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .await
            .expect("ping");
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = proxy.status_kib("VmHWM").saturating_sub(before);
    assert!(grown < 64 * 1024, "grew {grown} KiB");
    let started = std::time::Instant::now();
    assert_eq!(proxy.terminate(), Some(0), "{}", proxy.log());
    assert!(started.elapsed() < Duration::from_secs(25));
}

/// A replica with a store, listed first in its own `[peers]` before `others`, over a registry
/// holding `team/app:v1`.
struct Replica {
    registry: Registry,
    image: images::PushedImage,
    _store: tempfile::TempDir,
    port: u16,
    proxy: Process,
}

impl Replica {
    async fn start(seed: u64, others: &[String], peers_extra: &str) -> Replica {
        let registry = Registry::open();
        let image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(seed)).await;
        let host = registry.host();
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port(std::net::Ipv4Addr::LOCALHOST.into());
        let addresses: Vec<String> = std::iter::once(format!("http://127.0.0.1:{port}"))
            .chain(others.iter().cloned())
            .map(|a| format!("{a:?}"))
            .collect();
        let proxy = Process::start_at(
            "127.0.0.1",
            port,
            "",
            &format!(
                "[store]\npath = \"{}\"\n[peers]\naddresses = [{}]\nsecret = \"{SECRET}\"\n\
                 {peers_extra}{}",
                store.path().display(),
                addresses.join(", "),
                registry_section(&host, &registry.url(), "")
            ),
            &[],
        );
        Replica {
            registry,
            image,
            _store: store,
            port,
            proxy,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_path_gives_nothing_without_the_secret_and_keeps_repositories_apart() {
    let r = Replica::start(2601, &[], "").await;
    let (image, host, port, proxy) = (&r.image, r.registry.host(), r.port, &r.proxy);
    let http = client();
    let (layer, _) = image.layers[0].clone();
    let base = format!("http://127.0.0.1:{port}/_stevedore/peer");
    let blob = format!("{base}/v2/team/app/blobs/{layer}?ns={host}");
    for secret in [
        None,
        Some(String::new()),
        Some("a".to_owned()),
        Some(SECRET[..SECRET.len() - 1].to_owned()),
        Some(format!("{SECRET}x")),
    ] {
        for url in [&blob, &format!("{base}/id")] {
            let mut r = http.get(url.as_str());
            if let Some(s) = &secret {
                r = r.header("x-stevedore-peer", s.as_str());
            }
            let r = r.send().await.expect("request");
            assert_eq!(r.status(), 404, "{secret:?} {url}");
        }
    }
    // An oversized secret is refused at the head, not compared.
    let huge = http
        .get(&blob)
        .header("x-stevedore-peer", "s".repeat(200_000))
        .send()
        .await
        .expect("request");
    assert_eq!(huge.status(), 431);
    // Admitted, the peer path still answers only for the repository that has the blob, and
    // only the API under it.
    let peer = |url: String| http.get(url).header("x-stevedore-peer", SECRET).send();
    assert_eq!(peer(blob.clone()).await.expect("blob").status(), 200);
    let other = format!("{base}/v2/team/other/blobs/{layer}?ns={host}");
    assert_eq!(peer(other).await.expect("other").status(), 404);
    for odd in [
        format!("{base}/../v2/team/app/blobs/{layer}?ns={host}"),
        format!("{base}/v2/team/app/manifests/v1?ns={host}"),
        base.clone(),
    ] {
        let status = peer(odd.clone()).await.expect("odd").status();
        assert!(status == 404 || status == 400, "{odd}: {status}");
    }
    assert_eq!(get_blob(&http, proxy, &host, &layer).await.status(), 200);
}

/// `GET` of a blob of `team/app` through the mirror API.
async fn get_blob(
    http: &reqwest::Client,
    proxy: &Process,
    host: &str,
    layer: &str,
) -> reqwest::Response {
    http.get(format!(
        "{}/v2/team/app/blobs/{layer}?ns={host}",
        proxy.url()
    ))
    .send()
    .await
    .expect("blob")
}

/// Whatever listens at an address in `[peers]` is asked for its id at every refresh: one that
/// answers with an endless body is read no further than an id can go, and never becomes an
/// owner (the blob is still served, by this replica itself).
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_address_answering_forever_costs_no_memory_and_owns_nothing() {
    let endless = endless_collector().await;
    let r = Replica::start(
        2602,
        &[format!("http://127.0.0.1:{endless}")],
        "refresh = \"1s\"\n",
    )
    .await;
    let (image, host, proxy) = (&r.image, r.registry.host(), &r.proxy);
    let before = proxy.status_kib("VmRSS");
    // Several refreshes, each reading the endless answer until it is too long for an id.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let grown = proxy.status_kib("VmHWM").saturating_sub(before);
    assert!(grown < 64 * 1024, "grew {grown} KiB");
    let http = client();
    for (layer, _) in &image.layers {
        let r = get_blob(&http, proxy, &host, layer).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            common::util::sha256_digest(&r.bytes().await.expect("body")),
            *layer
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_paths_and_methods_do_not_grow_the_latency_labels() {
    let admin = free_port(std::net::Ipv4Addr::LOCALHOST.into());
    let proxy = Process::start(&format!("metrics-listen = \"127.0.0.1:{admin}\""), "", &[]);
    let http = client();
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).expect("method");
        let _ = http
            .request(
                method,
                format!("{}/x{i}/_stevedore/peer/{i}?ns=r{i}.example", proxy.url()),
            )
            .send()
            .await
            .expect("request");
    }
    let metrics = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let routes = [
        "ping",
        "manifest",
        "blob",
        "tags",
        "referrers",
        "proxy",
        "peer",
        "other",
    ];
    let caches = ["hit", "miss", "joined", "shared", "peer", "none"];
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("stevedore_request_"))
    {
        let labels = line.split(['{', '}']).nth(1).unwrap_or_default();
        for kv in labels.split(',') {
            let (k, v) = kv.split_once('=').unwrap_or_default();
            let v = v.trim_matches('"');
            match k {
                "route" => assert!(routes.contains(&v), "{line}"),
                "cache" => assert!(caches.contains(&v), "{line}"),
                "le" => {}
                _ => panic!("unexpected label in {line}"),
            }
        }
    }
    assert!(!metrics.contains("M199"));
}
