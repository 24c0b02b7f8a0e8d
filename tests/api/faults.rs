//! Upstream faults: error statuses mapped to OCI errors, truncated and corrupt blobs breaking
//! the client's transfer, and fallback to later endpoints.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::common::faults::{Fault, FaultProxy, Rule};
use crate::common::images::{self, ImageSpec};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::common::util::sha256_digest;
use crate::helpers::{Form, Reply, api_url, get, http1, send};

/// A section with several endpoints, tried in order.
fn multi_endpoint_section(host: &str, endpoints: &[&str]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[registries.\"{host}\"]\nendpoints = [{}]\nallow-private-network = true\n",
        list.join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// Upstream faults
// ---------------------------------------------------------------------------------------

/// Upstream statuses become the right client statuses: 429 (with and without
/// `Retry-After`), 503 → 502, 403 → `DENIED` naming registry and repository, unreachable →
/// 502 with the reason, and a manifest whose bytes do not match → 502.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_faults_map_to_oci_errors() {
    let registry = Registry::open();
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(91)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let host = "faulty.test";
    let config = format!(
        "{}{}",
        registry_section(host, &faults.url(), ""),
        registry_section("down.test", "http://127.0.0.1:1", "")
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();
    let manifest = api_url(&proxy, Form::Ns, host, "team/app", "manifests/v1");
    let layer = &pushed.layers[0].0;
    let blob = api_url(
        &proxy,
        Form::Ns,
        host,
        "team/app",
        &format!("blobs/{layer}"),
    );

    // Sanity: without faults everything is served.
    get(&c, &manifest).await.expect_status(200);
    get(&c, &blob).await.expect_status(200);

    let status = |status: u16, retry_after: Option<&str>| Fault::Status {
        status,
        retry_after: retry_after.map(str::to_owned),
    };

    // 429 with Retry-After: kept.
    for url in [&manifest, &blob] {
        faults.clear();
        faults.add(Rule::new("/v2/team/app/", status(429, Some("7"))));
        let r = get(&c, url).await;
        r.expect_error(429, "TOOMANYREQUESTS");
        assert_eq!(r.header("retry-after"), Some("7"), "{}", r.what);
        let r = send(c.head(url.as_str()), format!("HEAD {url}")).await;
        r.expect_status(429);
        assert_eq!(r.header("retry-after"), Some("7"), "{}", r.what);
    }

    // 429 without Retry-After: the client is still told when to come back.
    faults.clear();
    faults.add(Rule::new("/v2/team/app/", status(429, None)));
    for url in [&manifest, &blob] {
        let r = get(&c, url).await;
        r.expect_error(429, "TOOMANYREQUESTS");
        let after = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("{}: 429 without Retry-After", r.what));
        assert!(
            after.parse::<u64>().is_ok_and(|s| s > 0),
            "{}: Retry-After {after:?}",
            r.what
        );
    }

    // 503 → 502.
    faults.clear();
    faults.add(Rule::new("/v2/team/app/", status(503, None)));
    for url in [&manifest, &blob] {
        let message = get(&c, url).await.expect_error(502, "UNAVAILABLE");
        assert!(
            message.contains(host) && message.contains("503"),
            "{message}"
        );
    }

    // 403 → DENIED naming registry and repository.
    faults.clear();
    faults.add(Rule::new("/v2/team/app/", status(403, None)));
    for url in [&manifest, &blob] {
        let message = get(&c, url).await.expect_error(403, "DENIED");
        assert!(
            message.contains(host) && message.contains("team/app"),
            "{url}: {message}"
        );
    }

    // A manifest whose bytes do not match its digest is not served.
    faults.clear();
    faults.add(Rule::new("/manifests/", Fault::Corrupt { at: 5 }).method("GET"));
    let by_digest = api_url(
        &proxy,
        Form::Ns,
        host,
        "team/app",
        &format!("manifests/{}", pushed.manifest_digest),
    );
    for url in [&manifest, &by_digest] {
        let message = get(&c, url).await.expect_error(502, "UNAVAILABLE");
        assert!(message.contains("digest"), "{url}: {message}");
    }

    // Faults cleared: served again (nothing sticky).
    faults.clear();
    get(&c, &manifest).await.expect_status(200);

    // Unreachable: 502 with the reason.
    let url = format!("{}/v2/team/app/manifests/v1?ns=down.test", proxy.url());
    let message = get(&c, &url).await.expect_error(502, "UNAVAILABLE");
    assert!(
        message.contains("down.test")
            && message.contains("unreachable")
            && message.to_ascii_lowercase().contains("connection refused"),
        "{message}"
    );
}

/// Reads a response body to the end; `Err` when the transfer broke.
async fn read_body(resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A registry holding one layer of `layer_size` bytes (a small layer when `None`), behind a
/// fault proxy that applies `fault` to GETs of that layer; returns stevedore's URL for it and
/// the layer's bytes.
async fn broken_blob_setup(
    layer_size: Option<usize>,
    fault: Fault,
) -> (Registry, FaultProxy, Stevedore, String, Bytes) {
    let registry = Registry::open();
    let spec = match layer_size {
        Some(size) => ImageSpec::seed(95).small_layers(0).large_layer(size),
        None => ImageSpec::seed(96).small_layers(1),
    };
    let pushed = images::push_image(&registry, "team/app", "v1", &spec).await;
    let faults = FaultProxy::start(&registry.url()).await;
    let host = "broken.test";
    let proxy = Stevedore::start(&registry_section(host, &faults.url(), "")).await;
    let layer = pushed.layers[0].0.clone();
    let bytes = pushed.content(&layer).expect("layer bytes");
    faults.add(Rule::new(&format!("/blobs/{layer}"), fault).method("GET"));
    let url = api_url(
        &proxy,
        Form::Ns,
        host,
        "team/app",
        &format!("blobs/{layer}"),
    );
    (registry, faults, proxy, url, bytes)
}

/// A small blob cut short by the upstream (after 100 bytes): the client never gets a
/// complete blob. The cut can reach stevedore before the upstream's response head has, in
/// which case it answers `502 UNAVAILABLE`; otherwise the client's body read fails.
#[tokio::test(flavor = "multi_thread")]
async fn truncated_small_blob_is_never_served_whole() {
    let (_registry, faults, _proxy, url, bytes) =
        broken_blob_setup(None, Fault::Truncate { after: 100 }).await;
    let resp = http1().get(&url).send().await.expect("response head");
    let status = resp.status();
    if status == StatusCode::OK {
        let result = read_body(resp).await;
        assert!(
            result.is_err(),
            "a truncated blob completed: {} of {} bytes",
            result.map(|b| b.len()).unwrap_or_default(),
            bytes.len()
        );
    } else {
        let r = Reply {
            what: format!("GET {url}"),
            status,
            version: resp.version(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("error body"),
        };
        let message = r.expect_error(502, "UNAVAILABLE");
        assert!(message.contains("broken.test"), "{message}");
    }
    assert_eq!(faults.count("GET", "/blobs/"), 1);
}

/// A 1 MiB blob cut at 512 KiB: the head (200) is already out, and the client's transfer
/// fails instead of ending cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn truncated_blob_aborts_the_clients_transfer() {
    let (_registry, _faults, _proxy, url, bytes) =
        broken_blob_setup(Some(1 << 20), Fault::Truncate { after: 512 * 1024 }).await;
    let resp = http1().get(&url).send().await.expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(bytes.len() as u64));
    let result = read_body(resp).await;
    assert!(
        result.is_err(),
        "a truncated blob completed: {} of {} bytes",
        result.map(|b| b.len()).unwrap_or_default(),
        bytes.len()
    );
}

/// GETs a layer of `layer_size` bytes whose byte 1000 the upstream flips, through stevedore
/// with `client`. `Ok(body)` when the client's transfer completed, `Err(why)` when it broke
/// (before or after the response head).
async fn fetch_corrupted(
    client: &reqwest::Client,
    layer_size: usize,
) -> (Result<Vec<u8>, String>, Bytes) {
    let (_registry, faults, _proxy, url, bytes) =
        broken_blob_setup(Some(layer_size), Fault::Corrupt { at: 1000 }).await;
    let outcome = match client.get(&url).send().await {
        Err(e) => Err(format!("{e:?}")),
        Ok(resp) => {
            assert_eq!(resp.status(), StatusCode::OK, "{url}");
            read_body(resp).await.map_err(|e| format!("{e:?}"))
        }
    };
    assert_eq!(faults.count("GET", "/blobs/"), 1);
    (outcome, bytes)
}

fn assert_transfer_broke(outcome: Result<Vec<u8>, String>, bytes: &Bytes, what: &str) {
    if let Ok(body) = outcome {
        panic!(
            "{what}: the transfer of a corrupt blob completed cleanly ({} of {} bytes, digest \
             {} instead of {}): the client got wrong bytes and no error",
            body.len(),
            bytes.len(),
            sha256_digest(&body),
            sha256_digest(bytes)
        );
    }
}

/// A blob whose bytes do not match its digest (one byte flipped upstream), over HTTP/1.1:
/// the client's transfer fails rather than completing with wrong bytes. Small and medium
/// sizes matter: hyper stops polling a body once `Content-Length` bytes are written, so a
/// mismatch reported only after the last chunk would never reach the client.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_aborts_the_clients_transfer_http1() {
    for size in [8 << 10, 64 << 10, 1 << 20] {
        let (outcome, bytes) = fetch_corrupted(&http1(), size).await;
        assert_transfer_broke(outcome, &bytes, &format!("HTTP/1.1, {size}-byte layer"));
    }
}

/// The same over h2c: the stream is reset instead of ending cleanly, whatever the size.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_aborts_the_clients_transfer_h2c() {
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    for size in [8 << 10, 64 << 10, 1 << 20] {
        let (outcome, bytes) = fetch_corrupted(&c, size).await;
        if let Err(why) = &outcome {
            assert!(why.contains("Reset") || why.contains("Body"), "{why}");
        }
        assert_transfer_broke(outcome, &bytes, &format!("h2c, {size}-byte layer"));
    }
}

// ---------------------------------------------------------------------------------------
// Endpoint fallback
// ---------------------------------------------------------------------------------------

/// Endpoints are tried in order: an unreachable first endpoint, or one answering 404, does
/// not stop the next from serving.
#[tokio::test(flavor = "multi_thread")]
async fn later_endpoints_serve_when_earlier_ones_fail() {
    let registry = Registry::open();
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(101)).await;
    let declines = FaultProxy::start(&registry.url()).await;
    declines.add(Rule::new(
        "/v2/",
        Fault::Status {
            status: 404,
            retry_after: None,
        },
    ));
    let config = format!(
        "{}{}",
        multi_endpoint_section("fallback.test", &["http://127.0.0.1:1", &registry.url()]),
        multi_endpoint_section("declines.test", &[&declines.url(), &registry.url()]),
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();
    let layer = &pushed.layers[0].0;
    let layer_bytes = pushed.content(layer).expect("layer");

    for host in ["fallback.test", "declines.test"] {
        let r = get(
            &c,
            &api_url(&proxy, Form::Ns, host, "team/app", "manifests/v1"),
        )
        .await;
        r.expect_status(200);
        assert!(r.body == pushed.manifest_bytes, "{}", r.what);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(pushed.manifest_digest.as_str())
        );
        let r = send(
            c.head(api_url(&proxy, Form::Ns, host, "team/app", "manifests/v1")),
            "HEAD manifest",
        )
        .await;
        r.expect_status(200);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(pushed.manifest_digest.as_str())
        );
        let r = get(
            &c,
            &api_url(
                &proxy,
                Form::Ns,
                host,
                "team/app",
                &format!("blobs/{layer}"),
            ),
        )
        .await;
        r.expect_status(200);
        assert!(r.body == layer_bytes, "{}", r.what);
    }
    assert!(
        declines.count("GET", "/v2/team/app/manifests/v1") >= 1,
        "the first endpoint was never asked: {:?}",
        declines.seen()
    );
    assert!(declines.count("GET", &format!("/v2/team/app/blobs/{layer}")) >= 1);
}
