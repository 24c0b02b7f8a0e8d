//! Refused methods (push, delete, catalog) and OCI error JSON with the spec's codes,
//! including invalid names and digests.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::faults::FaultProxy;
use crate::common::images::{self, ImageSpec};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::helpers::{API_VERSION, Form, MISSING_DIGEST, api_url, get, http1, ns_encoded, send};

/// `GET <target>` over a bare TCP connection, so the path reaches stevedore exactly as
/// written (URL libraries resolve `..`). Returns status, lowercased headers and body.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to stevedore");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

// ---------------------------------------------------------------------------------------
// Push, delete and catalog
// ---------------------------------------------------------------------------------------

/// Writes and the catalog are `405 UNSUPPORTED` with `Allow: GET, HEAD`, and nothing reaches
/// the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn push_delete_and_catalog_are_unsupported() {
    let registry = Registry::open();
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(61)).await;
    let watch = FaultProxy::start(&registry.url()).await;
    let host = "writes.test";
    let proxy = Stevedore::start(&registry_section(host, &watch.url(), "")).await;
    let c = http1();
    let base = proxy.url();
    let ns = format!("ns={host}");
    let digest = &pushed.manifest_digest;

    let requests: Vec<(Method, String, Option<&'static str>)> = vec![
        (
            Method::POST,
            format!("{base}/v2/team/app/blobs/uploads/?{ns}"),
            None,
        ),
        (
            Method::POST,
            format!("{base}/v2/team/app/blobs/uploads/"),
            None,
        ),
        (
            Method::PATCH,
            format!("{base}/v2/team/app/blobs/uploads/0b7c1a2e?{ns}"),
            Some("data"),
        ),
        (
            Method::PUT,
            format!("{base}/v2/team/app/blobs/uploads/0b7c1a2e?digest={MISSING_DIGEST}&{ns}"),
            None,
        ),
        (
            Method::GET,
            format!("{base}/v2/team/app/blobs/uploads/0b7c1a2e?{ns}"),
            None,
        ),
        (
            Method::PUT,
            format!("{base}/v2/team/app/manifests/v2?{ns}"),
            Some("{\"schemaVersion\":2}"),
        ),
        (
            Method::PUT,
            format!("{base}/v2/{host}/team/app/manifests/v2"),
            Some("{\"schemaVersion\":2}"),
        ),
        (
            Method::DELETE,
            format!("{base}/v2/team/app/manifests/{digest}?{ns}"),
            None,
        ),
        (
            Method::DELETE,
            format!("{base}/v2/team/app/blobs/{digest}?{ns}"),
            None,
        ),
        (Method::GET, format!("{base}/v2/_catalog"), None),
        (Method::GET, format!("{base}/v2/_catalog?n=10"), None),
        (Method::HEAD, format!("{base}/v2/_catalog"), None),
    ];
    for (method, url, body) in requests {
        let mut req = c.request(method.clone(), &url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(b);
        }
        let r = send(req, format!("{method} {url}")).await;
        if method == Method::HEAD {
            r.expect_status(405);
        } else {
            let message = r.expect_error(405, "UNSUPPORTED");
            assert!(message.contains("pull-through"), "{}: {message}", r.what);
        }
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{}", r.what);
    }
    assert!(
        watch.seen().is_empty(),
        "refused writes reached the upstream: {:?}",
        watch.seen()
    );
}

// ---------------------------------------------------------------------------------------
// Errors as OCI JSON
// ---------------------------------------------------------------------------------------

/// Unknown manifests and blobs, invalid names and digests, and unconfigured registries are
/// OCI error JSON with the spec's codes.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_oci_json_with_spec_codes() {
    let registry = Registry::open();
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(71)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;
    let c = http1();
    let base = proxy.url();

    // Unknown content at a configured registry.
    for form in [Form::Ns, Form::PathPrefix] {
        for reference in ["nope", MISSING_DIGEST] {
            let url = api_url(
                &proxy,
                form,
                &host,
                "team/app",
                &format!("manifests/{reference}"),
            );
            get(&c, &url).await.expect_error(404, "MANIFEST_UNKNOWN");
        }
        let url = api_url(
            &proxy,
            form,
            &host,
            "team/app",
            &format!("blobs/{MISSING_DIGEST}"),
        );
        get(&c, &url).await.expect_error(404, "BLOB_UNKNOWN");
        let r = send(c.head(&url), format!("HEAD {url}")).await;
        r.expect_status(404);
        assert!(r.body.is_empty());
    }

    // Invalid repository names.
    for path in [
        "/v2/UPPER/manifests/x".to_owned(),
        format!("/v2/Team/app/manifests/v1?ns={}", ns_encoded(&host)),
        format!("/v2/team/a___b/manifests/v1?ns={}", ns_encoded(&host)),
        format!("/v2/team/-app/manifests/v1?ns={}", ns_encoded(&host)),
        format!("/v2/team//app/manifests/v1?ns={}", ns_encoded(&host)),
    ] {
        get(&c, &format!("{base}{path}"))
            .await
            .expect_error(400, "NAME_INVALID");
    }
    // `..` must reach stevedore unresolved: a bare socket.
    for target in [
        "/v2/../etc/manifests/x".to_owned(),
        "/v2/team/../app/manifests/x".to_owned(),
        format!(
            "/v2/../../team/blobs/{MISSING_DIGEST}?ns={}",
            ns_encoded(&host)
        ),
    ] {
        let (status, headers, body) = raw_get(proxy.addr, &target).await;
        assert_eq!(status, 400, "{target}: {}", String::from_utf8_lossy(&body));
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("content-type"), Some("application/json"), "{target}");
        assert_eq!(header("docker-distribution-api-version"), Some(API_VERSION));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("error JSON");
        assert_eq!(
            json["errors"][0]["code"], "NAME_INVALID",
            "{target}: {json}"
        );
    }
    assert!(
        !registry.log().contains("/etc/"),
        "a `..` path reached the upstream"
    );

    // Invalid digests.
    for rest in [
        "blobs/sha256:zz",
        "blobs/notadigest",
        "blobs/sha256:abc",
        "manifests/sha256:1234",
        "blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let url = api_url(&proxy, Form::Ns, &host, "team/app", rest);
        get(&c, &url).await.expect_error(400, "DIGEST_INVALID");
    }

    // A registry without a section: the message names the section to add.
    for url in [
        format!("{base}/v2/team/app/manifests/v1?ns=other.test"),
        format!("{base}/v2/other.test/team/app/manifests/v1"),
        format!("{base}/v2/team/app/blobs/{MISSING_DIGEST}?ns=other.test"),
    ] {
        let message = get(&c, &url).await.expect_error(403, "DENIED");
        assert!(
            message.contains("[registries.\"other.test\"]"),
            "{url}: {message}"
        );
    }
}

/// Repository name components follow `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: two different
/// separators in a row are not a name.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_separators_are_invalid_names() {
    let registry = Registry::open();
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;
    let c = http1();
    let mut accepted = Vec::new();
    for repo in [
        "team/a__-b",
        "team/a_-b",
        "team/a.-b",
        "team/a-.b",
        "team/a._b",
    ] {
        let url = api_url(&proxy, Form::Ns, &host, repo, "manifests/v1");
        let r = get(&c, &url).await;
        if r.status != StatusCode::BAD_REQUEST {
            accepted.push(format!("{repo} -> {}", r.status));
            continue;
        }
        r.expect_error(400, "NAME_INVALID");
    }
    assert!(
        accepted.is_empty(),
        "invalid names forwarded upstream: {accepted:?}"
    );
}
