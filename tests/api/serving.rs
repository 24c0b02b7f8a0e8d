//! Serving content: `/v2/` and the API version header, manifests and blobs (with ranges) in
//! every routing form, an h2c client, and a large blob streamed through intact.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, RANGE};
use reqwest::{Method, StatusCode, Version};
use sha2::{Digest as _, Sha256};

use crate::common::images::{
    self, DOCKER_MANIFEST, ImageSpec, OCI_INDEX, OCI_MANIFEST, PushedImage,
};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::common::util::sha256_digest;
use crate::helpers::{AcceptStyle, Form, api_url, get, http1, ns_encoded, send, with_accept};

/// The content a tag resolves to: `(digest, bytes, media type)`.
fn tag_content(p: &PushedImage) -> (String, Bytes, String) {
    match (&p.index_digest, &p.index_bytes, &p.index_media_type) {
        (Some(d), Some(b), Some(t)) => (d.clone(), b.clone(), t.clone()),
        _ => (
            p.manifest_digest.clone(),
            p.manifest_bytes.clone(),
            p.media_type.clone(),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// /v2/ and the API version header
// ---------------------------------------------------------------------------------------

/// `GET /v2/` answers 200 and every response — success or any kind of error — carries
/// `Docker-Distribution-Api-Version: registry/2.0`.
#[tokio::test(flavor = "multi_thread")]
async fn ping_and_api_version_header_on_every_response() {
    let registry = Registry::open();
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(11)).await;
    let host = registry.host();
    let config = format!(
        "{}{}",
        registry_section(&host, &registry.url(), ""),
        registry_section("down.test", "http://127.0.0.1:1", "")
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();
    let base = proxy.url();

    let r = get(&c, &format!("{base}/v2/")).await;
    r.expect_status(200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(&r.body[..], b"{}");
    send(c.head(format!("{base}/v2/")), "HEAD /v2/")
        .await
        .expect_status(200);
    get(&c, &format!("{base}/v2")).await.expect_status(200);

    // Success and every error class carry the header (expect_status checks it).
    get(
        &c,
        &api_url(&proxy, Form::Ns, &host, "team/app", "manifests/v1"),
    )
    .await
    .expect_status(200);
    get(
        &c,
        &api_url(&proxy, Form::Ns, &host, "team/app", "manifests/nope"),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    get(&c, &format!("{base}/v2/team/app/not/api"))
        .await
        .expect_error(404, "NAME_UNKNOWN");
    get(&c, &format!("{base}/v2/Team/app/manifests/v1"))
        .await
        .expect_error(400, "NAME_INVALID");
    get(&c, &format!("{base}/v2/_catalog"))
        .await
        .expect_error(405, "UNSUPPORTED");
    get(
        &c,
        &format!("{base}/v2/team/app/manifests/v1?ns=other.test"),
    )
    .await
    .expect_error(403, "DENIED");
    get(&c, &format!("{base}/v2/team/app/manifests/v1?ns=down.test"))
        .await
        .expect_error(502, "UNAVAILABLE");
    let r = send(
        c.head(api_url(
            &proxy,
            Form::Ns,
            &host,
            "team/app",
            "manifests/nope",
        )),
        "HEAD unknown manifest",
    )
    .await;
    r.expect_status(404);
    assert!(r.body.is_empty());
}

// ---------------------------------------------------------------------------------------
// Manifests in all three routing forms
// ---------------------------------------------------------------------------------------

/// Manifests by tag and by digest, GET and HEAD, via `?ns=` (percent-encoded port), a path
/// prefix and the default registry; OCI manifest, OCI index and Docker schema 2; `Accept` as
/// one comma-joined line, as several lines and as `*/*`. Headers are exact and the body is the
/// pushed bytes.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_by_tag_and_digest_in_every_routing_form() {
    let ported = Registry::open();
    let portless = Registry::builder().portless().start();
    let mut pushed = Vec::new();
    for reg in [&ported, &portless] {
        pushed.push((
            images::push_image(reg, "team/app", "oci", &ImageSpec::seed(21)).await,
            images::push_multiplatform(reg, "team/app", "multi", &ImageSpec::seed(22)).await,
            images::push_docker_image(reg, "team/app", "docker", &ImageSpec::seed(23)).await,
        ));
    }
    // Same specs, same bytes on both registries.
    assert_eq!(pushed[0].0.manifest_digest, pushed[1].0.manifest_digest);
    let (oci, multi, docker) = pushed.remove(0);
    assert_eq!(oci.media_type, OCI_MANIFEST);
    assert_eq!(multi.index_media_type.as_deref(), Some(OCI_INDEX));
    assert_eq!(docker.media_type, DOCKER_MANIFEST);

    // Control for the `*/*` case: asked directly with `Accept: */*`, distribution 2.8 does
    // not serve an OCI manifest (or index); stevedore must add the manifest types itself.
    // (distribution 2.8.2 splits a comma-joined `Accept` on its own, so the joined and
    // per-line forms below prove that stevedore forwards both, not that it must split.)
    for tag in ["oci", "multi"] {
        let direct = send(
            http1()
                .get(format!("{}/v2/team/app/manifests/{tag}", ported.url()))
                .header(ACCEPT, "*/*"),
            format!("direct GET {tag} with */*"),
        )
        .await;
        assert_eq!(
            direct.status,
            StatusCode::NOT_FOUND,
            "distribution served an OCI {tag} to `Accept: */*`; the wildcard check below \
             would prove nothing"
        );
    }

    let config = format!(
        "[routing]\ndefault-registry = \"{}\"\n\n{}{}",
        ported.host(),
        registry_section(&ported.host(), &ported.url(), ""),
        registry_section(&portless.host(), &portless.url(), ""),
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();

    // (reference, digest, bytes, media type) for everything a client resolves.
    let mut cases: Vec<(String, String, Bytes, String)> = Vec::new();
    for (tag, image) in [("oci", &oci), ("multi", &multi), ("docker", &docker)] {
        let (digest, bytes, media_type) = tag_content(image);
        cases.push((
            tag.to_owned(),
            digest.clone(),
            bytes.clone(),
            media_type.clone(),
        ));
        cases.push((digest.clone(), digest, bytes, media_type));
    }
    // A platform manifest of the index, by digest.
    cases.push((
        multi.manifest_digest.clone(),
        multi.manifest_digest.clone(),
        multi.manifest_bytes.clone(),
        multi.media_type.clone(),
    ));

    let forms = [
        (Form::Ns, ported.host()),
        (Form::Default, ported.host()),
        (Form::PathPrefix, portless.host()),
        // Path prefix with a port in the host component works too.
        (Form::PathPrefix, ported.host()),
    ];
    for (form, host) in &forms {
        for (reference, digest, bytes, media_type) in &cases {
            for style in [
                AcceptStyle::Joined,
                AcceptStyle::Lines,
                AcceptStyle::Wildcard,
            ] {
                let url = api_url(
                    &proxy,
                    *form,
                    host,
                    "team/app",
                    &format!("manifests/{reference}"),
                );
                if *form == Form::Ns {
                    assert!(
                        url.contains(&format!("ns={}", ns_encoded(host))) && url.contains("%3A"),
                        "{url}"
                    );
                }
                for method in [Method::GET, Method::HEAD] {
                    let what = format!("{method} {url} (Accept {style:?})");
                    let r = send(with_accept(c.request(method.clone(), &url), style), what).await;
                    r.expect_status(200);
                    assert_eq!(
                        r.header("docker-content-digest"),
                        Some(digest.as_str()),
                        "{}",
                        r.what
                    );
                    assert_eq!(
                        r.header("content-type"),
                        Some(media_type.as_str()),
                        "{}",
                        r.what
                    );
                    assert_eq!(
                        r.header("content-length"),
                        Some(bytes.len().to_string().as_str()),
                        "{}",
                        r.what
                    );
                    if method == Method::GET {
                        assert!(r.body == *bytes, "{}: body differs from the push", r.what);
                        assert_eq!(sha256_digest(&r.body), *digest);
                    } else {
                        assert!(r.body.is_empty(), "{}: HEAD with a body", r.what);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Blobs and ranges
// ---------------------------------------------------------------------------------------

/// Layers and the config, in every routing form: whole (digest verified, exact length), by
/// HEAD (no body) and by `Range` (open-ended and bounded: 206 with exact `Content-Range`,
/// `Content-Length` and bytes).
#[tokio::test(flavor = "multi_thread")]
async fn blobs_whole_head_and_ranges() {
    let registry = Registry::open();
    let pushed = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(31).small_layers(2),
    )
    .await;
    let host = registry.host();
    let config = format!(
        "[routing]\ndefault-registry = \"{host}\"\n\n{}",
        registry_section(&host, &registry.url(), "")
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();

    let mut digests = pushed.layer_digests();
    digests.push(pushed.config_digest.clone());
    let forms = [Form::Ns, Form::PathPrefix, Form::Default];
    for (digest, form) in digests.iter().flat_map(|d| forms.map(|f| (d, f))) {
        let bytes = pushed.content(digest).expect("pushed blob");
        let len = bytes.len();
        assert!(len > 200, "test blob too small for the ranges below");
        let url = api_url(&proxy, form, &host, "team/app", &format!("blobs/{digest}"));

        let r = get(&c, &url).await;
        r.expect_status(200);
        assert!(r.body == bytes, "{}: wrong bytes", r.what);
        assert_eq!(sha256_digest(&r.body), *digest);
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));

        // HEAD: the blob's length (from the upstream's header, not the empty body), no body.
        let r = send(c.head(&url), format!("HEAD {url}")).await;
        r.expect_status(200);
        assert!(r.body.is_empty());
        assert_eq!(
            r.header("content-length"),
            Some(len.to_string().as_str()),
            "{}",
            r.what
        );
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));

        let r = send(
            c.get(&url).header(RANGE, "bytes=100-"),
            format!("GET {url} bytes=100-"),
        )
        .await;
        r.expect_status(206);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 100-{}/{len}", len - 1).as_str())
        );
        assert_eq!(
            r.header("content-length"),
            Some((len - 100).to_string().as_str())
        );
        assert!(r.body == bytes.slice(100..), "{}: wrong bytes", r.what);

        let r = send(
            c.get(&url).header(RANGE, "bytes=10-19"),
            format!("GET {url} bytes=10-19"),
        )
        .await;
        r.expect_status(206);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 10-19/{len}").as_str())
        );
        assert_eq!(r.header("content-length"), Some("10"));
        assert!(r.body == bytes.slice(10..20), "{}: wrong bytes", r.what);
    }
}

// ---------------------------------------------------------------------------------------
// h2c
// ---------------------------------------------------------------------------------------

/// A client speaking HTTP/2 with prior knowledge (cleartext) pulls a manifest and a blob.
#[tokio::test(flavor = "multi_thread")]
async fn h2c_client_pulls_manifest_and_blob() {
    let registry = Registry::open();
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(111)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");

    let r = get(&c, &format!("{}/v2/", proxy.url())).await;
    r.expect_status(200);
    assert_eq!(r.version, Version::HTTP_2);

    let url = api_url(&proxy, Form::Ns, &host, "team/app", "manifests/v1");
    let r = send(with_accept(c.get(&url), AcceptStyle::Lines), "h2c manifest").await;
    r.expect_status(200);
    assert_eq!(r.version, Version::HTTP_2);
    assert!(r.body == pushed.manifest_bytes);
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );

    for digest in pushed.layer_digests().iter().chain([&pushed.config_digest]) {
        let url = api_url(
            &proxy,
            Form::Ns,
            &host,
            "team/app",
            &format!("blobs/{digest}"),
        );
        let r = get(&c, &url).await;
        r.expect_status(200);
        assert_eq!(r.version, Version::HTTP_2);
        assert_eq!(sha256_digest(&r.body), *digest);
        let r = send(c.get(&url).header(RANGE, "bytes=0-9"), "h2c range").await;
        r.expect_status(206);
        assert_eq!(r.body.len(), 10);
    }
}

// ---------------------------------------------------------------------------------------
// A large blob, streamed
// ---------------------------------------------------------------------------------------

/// A 64 MiB layer comes through intact; the test hashes it chunk by chunk as it arrives.
#[tokio::test(flavor = "multi_thread")]
async fn large_blob_streams_through_intact() {
    const SIZE: usize = 64 * 1024 * 1024;
    let registry = Registry::open();
    let pushed = images::push_image(
        &registry,
        "team/big",
        "v1",
        &ImageSpec::seed(121).small_layers(0).large_layer(SIZE),
    )
    .await;
    let (digest, size) = pushed.layers.last().cloned().expect("large layer");
    assert!(size as usize > SIZE);
    drop(pushed);
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;

    let url = api_url(
        &proxy,
        Form::Ns,
        &host,
        "team/big",
        &format!("blobs/{digest}"),
    );
    let resp = http1().get(&url).send().await.expect("large blob GET");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(size));
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut chunks = 0usize;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("large blob body");
        received += chunk.len() as u64;
        chunks += 1;
        hasher.update(&chunk);
    }
    assert_eq!(received, size);
    assert!(chunks > 1, "the blob arrived in one piece");
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), digest);
}
