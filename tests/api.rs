//! The distribution API surface of stevedore, black-box over real sockets, with Debian's
//! `docker-registry` (distribution 2.8) as the upstream and a fault proxy in between where
//! failures are needed: routing forms, manifests, blobs and ranges, tag pagination (through
//! a small paging front, since distribution 2.8 does not paginate tags), referrers, refused
//! methods, OCI error JSON, the network policy, upstream faults, endpoint fallback, h2c and
//! streaming of a large blob.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, HeaderMap, RANGE};
use reqwest::{Method, StatusCode, Version};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::faults::{Fault, FaultProxy, Rule};
use common::images::{
    self, ALL_MANIFEST_TYPES, DOCKER_MANIFEST, ImageSpec, OCI_INDEX, OCI_MANIFEST, PushedImage,
};
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::util::sha256_digest;

const API_VERSION: &str = "registry/2.0";
/// A well-formed digest that no test pushes.
const MISSING_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000001";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("test HTTP client")
}

/// A response read whole, with what was asked, for assertion messages.
struct Reply {
    what: String,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: body {}",
            self.what,
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("docker-distribution-api-version"),
            Some(API_VERSION),
            "{}: every response carries the API version header",
            self.what
        );
        self
    }

    /// Asserts an OCI error answer and returns its (first) message.
    fn expect_error(&self, status: u16, code: &str) -> String {
        self.expect_status(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.what
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: error body is not JSON ({e}): {}",
                self.what,
                String::from_utf8_lossy(&self.body)
            )
        });
        let first = &json["errors"][0];
        assert_eq!(first["code"], code, "{}: {json}", self.what);
        first["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: error without a message: {json}", self.what))
            .to_owned()
    }
}

async fn send(req: reqwest::RequestBuilder, what: impl Into<String>) -> Reply {
    let what = what.into();
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
    Reply {
        what,
        status,
        version,
        headers,
        body,
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Reply {
    send(client.get(url), format!("GET {url}")).await
}

/// How a client names the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// containerd: `/v2/<repo>/…?ns=<host>` (the colon of a port percent-encoded).
    Ns,
    /// CRI-O, podman, image-rs: `/v2/<host>/<repo>/…`.
    PathPrefix,
    /// Neither: `routing.default-registry`.
    Default,
}

/// stevedore's URL for `/v2/<repo>/<rest>` at `host` in `form`, with `query` pairs.
fn api_url(proxy: &Stevedore, form: Form, host: &str, repo: &str, rest: &str) -> String {
    api_url_q(proxy, form, host, repo, rest, &[])
}

fn api_url_q(
    proxy: &Stevedore,
    form: Form,
    host: &str,
    repo: &str,
    rest: &str,
    query: &[(&str, &str)],
) -> String {
    let path = match form {
        Form::PathPrefix => format!("/v2/{host}/{repo}/{rest}"),
        Form::Ns | Form::Default => format!("/v2/{repo}/{rest}"),
    };
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.extend_pairs(query.iter().copied());
    if form == Form::Ns {
        q.append_pair("ns", host);
    }
    let q = q.finish();
    if q.is_empty() {
        format!("{}{path}", proxy.url())
    } else {
        format!("{}{path}?{q}", proxy.url())
    }
}

/// `ns=` as containerd writes it: `127.0.0.1%3A5000`.
fn ns_encoded(host: &str) -> String {
    url::form_urlencoded::byte_serialize(host.as_bytes()).collect()
}

/// A section with several endpoints, tried in order.
fn multi_endpoint_section(host: &str, endpoints: &[&str]) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[registries.\"{host}\"]\nendpoints = [{}]\nallow-private-network = true\n",
        list.join(", ")
    )
}

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

/// A TCP listener that counts connections and never answers: proof that nothing was sent
/// to an address stevedore must not contact.
struct Tripwire {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Tripwire {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tripwire");
        let addr = listener.local_addr().expect("tripwire address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A host name from `/etc/hosts`, other than `localhost`, whose every address is loopback
/// (Debian maps the machine's own name to 127.0.1.1).
fn loopback_host_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts
        .lines()
        .filter_map(|l| l.split('#').next())
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|n| {
            !n.eq_ignore_ascii_case("localhost")
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .find(|n| {
            (n.as_str(), 0)
                .to_socket_addrs()
                .map(|addrs| {
                    let addrs: Vec<_> = addrs.collect();
                    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
                })
                .unwrap_or(false)
        })
}

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

/// The ways clients list the manifest types they take.
#[derive(Debug, Clone, Copy)]
enum AcceptStyle {
    /// One comma-joined header line (containerd, docker).
    Joined,
    /// One header line per type (skopeo / containers-image).
    Lines,
    /// Just `*/*`.
    Wildcard,
}

fn with_accept(mut req: reqwest::RequestBuilder, style: AcceptStyle) -> reqwest::RequestBuilder {
    match style {
        AcceptStyle::Joined => req.header(ACCEPT, ALL_MANIFEST_TYPES.join(", ")),
        AcceptStyle::Lines => {
            // reqwest appends: several `Accept` lines go out.
            for t in ALL_MANIFEST_TYPES {
                req = req.header(ACCEPT, *t);
            }
            req
        }
        AcceptStyle::Wildcard => req.header(ACCEPT, "*/*"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. /v2/ and the API version header
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
// 2. Manifests in all three routing forms
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
// 3. Blobs and ranges
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
// 4. Tag pagination
// ---------------------------------------------------------------------------------------

/// distribution 2.8 ignores `n` and `last` on `tags/list` (pagination came with
/// distribution 3): it always answers every tag, with no `Link`. This front pages the real
/// registry's list the way distribution 3 does — tags sorted, `n` per page, and
/// `Link: </v2/<name>/tags/list?last=<tag>&n=<n>>; rel="next"` (query keys sorted, as Go's
/// `url.Values.Encode` writes them) while more remain — optionally as an absolute URL. It
/// records each query it receives.
struct TagPager {
    addr: SocketAddr,
    queries: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TagPager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TagPager {
    async fn start(registry_url: String, absolute: bool) -> Self {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tag pager");
        let addr = listener.local_addr().expect("tag pager address");
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = queries.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let registry_url = registry_url.clone();
                let seen = seen.clone();
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let registry_url = registry_url.clone();
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or("").to_owned();
                        seen.lock().expect("queries").push(query.clone());
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        let Some(name) = path
                            .strip_prefix("/v2/")
                            .and_then(|p| p.strip_suffix("/tags/list"))
                        else {
                            *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                            return Ok::<_, std::convert::Infallible>(resp);
                        };
                        let all: serde_json::Value = http1()
                            .get(format!("{registry_url}/v2/{name}/tags/list"))
                            .send()
                            .await
                            .expect("tags from the registry")
                            .json()
                            .await
                            .expect("tags JSON from the registry");
                        let mut tags: Vec<String> = all["tags"]
                            .as_array()
                            .expect("tags array")
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect();
                        tags.sort();
                        let params: Vec<(String, String)> =
                            url::form_urlencoded::parse(query.as_bytes())
                                .into_owned()
                                .collect();
                        let param =
                            |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                        if let Some(last) = param("last") {
                            tags.retain(|t| *t > last);
                        }
                        let n = param("n").and_then(|n| n.parse::<usize>().ok());
                        let more = n.is_some_and(|n| tags.len() > n);
                        if let Some(n) = n {
                            tags.truncate(n);
                        }
                        if let (true, Some(n), Some(last)) = (more, n, tags.last()) {
                            let base = if absolute {
                                format!("http://{addr}")
                            } else {
                                String::new()
                            };
                            let link = format!(
                                "<{base}/v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""
                            );
                            resp.headers_mut()
                                .insert("link", link.parse().expect("link value"));
                        }
                        resp.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static(
                                "application/json; charset=utf-8",
                            ),
                        );
                        *resp.body_mut() = Full::new(Bytes::from(
                            serde_json::json!({ "name": name, "tags": tags }).to_string(),
                        ));
                        Ok(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            queries,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn queries(&self) -> Vec<String> {
        self.queries.lock().expect("queries").clone()
    }
}

/// `tags/list?n=1` over three tags: the upstream's `Link` (relative or absolute) comes back
/// in the client's own form — `ns=` kept (port colon encoded), path prefix kept, plain for
/// the default registry — and following it through stevedore returns the next page, with `n`
/// and `last` forwarded upstream. The last page has no `Link`.
#[tokio::test(flavor = "multi_thread")]
async fn tags_list_links_keep_the_clients_form() {
    let registry = Registry::open();
    for tag in ["c", "a", "b"] {
        images::push_image(&registry, "team/app", tag, &ImageSpec::seed(41)).await;
    }
    // The premise of the pager: distribution 2.8 itself does not paginate.
    let direct = get(
        &http1(),
        &format!("{}/v2/team/app/tags/list?n=1", registry.url()),
    )
    .await;
    assert_eq!(direct.header("link"), None);
    let direct: serde_json::Value = serde_json::from_slice(&direct.body).expect("tags JSON");
    assert_eq!(direct["tags"].as_array().map(Vec::len), Some(3));

    let relative = TagPager::start(registry.url(), false).await;
    let absolute = TagPager::start(registry.url(), true).await;
    // Registry names are free-form: a dotted name with and without a port, all served by
    // the pagers.
    let config = format!(
        "[routing]\ndefault-registry = \"pager.test:5000\"\n\n{}{}{}",
        registry_section("pager.test:5000", &relative.url(), ""),
        registry_section("pages.test", &relative.url(), ""),
        registry_section("absolute.test:8443", &absolute.url(), ""),
    );
    let proxy = Stevedore::start(&config).await;
    let c = http1();

    for (form, host) in [
        (Form::Ns, "pager.test:5000"),
        (Form::Ns, "absolute.test:8443"),
        (Form::PathPrefix, "pages.test"),
        (Form::PathPrefix, "pager.test:5000"),
        (Form::PathPrefix, "absolute.test:8443"),
        (Form::Default, "pager.test:5000"),
    ] {
        let expected_link = |last: &str| {
            let path = match form {
                Form::PathPrefix => format!("/v2/{host}/team/app/tags/list"),
                _ => "/v2/team/app/tags/list".to_owned(),
            };
            let ns = match form {
                Form::Ns => format!("&ns={}", ns_encoded(host)),
                _ => String::new(),
            };
            format!("<{path}?last={last}&n=1{ns}>; rel=\"next\"")
        };
        let mut url = api_url_q(&proxy, form, host, "team/app", "tags/list", &[("n", "1")]);
        for (i, tag) in ["a", "b", "c"].iter().enumerate() {
            let r = get(&c, &url).await;
            r.expect_status(200);
            // The upstream's own Content-Type, passed through.
            assert_eq!(
                r.header("content-type"),
                Some("application/json; charset=utf-8"),
                "{}",
                r.what
            );
            let json: serde_json::Value = serde_json::from_slice(&r.body).expect("tags JSON");
            assert_eq!(json["name"], "team/app", "{}", r.what);
            assert_eq!(json["tags"], serde_json::json!([tag]), "{}", r.what);
            let link = r.header("link").map(str::to_owned);
            if i == 2 {
                assert_eq!(link, None, "{}: a link after the last page", r.what);
                break;
            }
            let link = link.unwrap_or_else(|| panic!("{}: no Link header", r.what));
            assert_eq!(link, expected_link(tag), "{}", r.what);
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map(|(t, _)| t.to_owned())
                .expect("link target");
            url = format!("{}{target}", proxy.url());
        }
    }
    // stevedore forwarded n and last, and never ns.
    for pager in [&relative, &absolute] {
        let queries = pager.queries();
        assert!(queries.iter().any(|q| q == "n=1"), "{queries:?}");
        assert!(queries.iter().any(|q| q == "n=1&last=b"), "{queries:?}");
        assert!(!queries.iter().any(|q| q.contains("ns=")), "{queries:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Referrers
// ---------------------------------------------------------------------------------------

/// distribution 2.8 has no referrers API: it answers `404` with a plain-text
/// `404 page not found`. stevedore keeps the upstream's verdict — `404`, which tells OCI
/// clients to fall back to the referrers tag schema — instead of making up an (empty) index.
/// The plain-text body is not OCI error JSON, so stevedore states the 404 as
/// `NAME_UNKNOWN` in its own words (an upstream OCI error body would be passed on as is,
/// as `MANIFEST_UNKNOWN` from distribution is elsewhere).
#[tokio::test(flavor = "multi_thread")]
async fn referrers_keep_the_upstreams_404() {
    let registry = Registry::open();
    let pushed = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(51)).await;
    let host = registry.host();
    let proxy = Stevedore::start(&registry_section(&host, &registry.url(), "")).await;
    let c = http1();
    let digest = &pushed.manifest_digest;

    let direct = get(
        &c,
        &format!("{}/v2/team/app/referrers/{digest}", registry.url()),
    )
    .await;
    assert_eq!(
        direct.status,
        StatusCode::NOT_FOUND,
        "distribution grew a referrers API?"
    );
    assert_eq!(&direct.body[..], b"404 page not found\n");

    for form in [Form::Ns, Form::PathPrefix] {
        for query in [&[][..], &[("artifactType", "application/example")][..]] {
            let url = api_url_q(
                &proxy,
                form,
                &host,
                "team/app",
                &format!("referrers/{digest}"),
                query,
            );
            let r = get(&c, &url).await;
            let message = r.expect_error(404, "NAME_UNKNOWN");
            assert_eq!(
                message,
                format!("referrers of {digest} in {host}/team/app not found at {host}"),
                "{}",
                r.what
            );
            let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
            assert!(
                json.get("manifests").is_none(),
                "{}: an invented index",
                r.what
            );
            assert!(r.header("oci-filters-applied").is_none(), "{}", r.what);
        }
    }
    assert!(
        registry.log().contains("referrers"),
        "stevedore answered without asking the upstream"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Push, delete and catalog
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
// 7. Errors as OCI JSON
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

// ---------------------------------------------------------------------------------------
// 8. Network policy (SSRF)
// ---------------------------------------------------------------------------------------

/// Even with `allow-unknown-registries`, clients cannot point stevedore at loopback, private
/// or link-local addresses: `?ns=` and path prefixes naming them are `403 DENIED`, and a live
/// registry (and a bare listener) on loopback receive nothing.
///
/// Not covered: an upstream *redirect* to 169.254.169.254 from a registry without
/// `allow-private-network`. Every upstream these tests can run is on loopback, which config
/// validation only accepts with `allow-private-network = true` — and that switch also allows
/// private redirect targets, so the variant cannot be set up here.
#[tokio::test(flavor = "multi_thread")]
async fn clients_cannot_steer_stevedore_to_restricted_addresses() {
    let registry = Registry::open();
    images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(81)).await;
    let trip = Tripwire::start().await;
    let proxy = Stevedore::start("[routing]\nallow-unknown-registries = true\n").await;
    let c = http1();
    let base = proxy.url();
    let log_before = registry.log().len();

    let live = registry.port();
    let dead = trip.addr.port();
    let mut urls = Vec::new();
    for ns in [
        "169.254.169.254".to_owned(),
        "169.254.169.254:80".to_owned(),
        "10.0.0.1".to_owned(),
        "192.168.1.1:5000".to_owned(),
        "100.64.0.1".to_owned(),
        format!("127.0.0.1:{live}"),
        format!("localhost:{live}"),
        format!("LOCALHOST:{live}"),
        format!("127.0.0.1:{dead}"),
        format!("localhost:{dead}"),
        format!("[::1]:{dead}"),
        format!("[::ffff:127.0.0.1]:{dead}"),
    ] {
        let ns = ns_encoded(&ns);
        urls.push(format!("{base}/v2/team/app/manifests/v1?ns={ns}"));
        urls.push(format!("{base}/v2/team/app/blobs/{MISSING_DIGEST}?ns={ns}"));
        urls.push(format!("{base}/v2/team/app/tags/list?ns={ns}"));
    }
    for prefix in [
        format!("127.0.0.1:{live}"),
        format!("localhost:{live}"),
        format!("127.0.0.1:{dead}"),
        "169.254.169.254".to_owned(),
        "10.0.0.1".to_owned(),
    ] {
        urls.push(format!("{base}/v2/{prefix}/x/manifests/y"));
        urls.push(format!(
            "{base}/v2/{prefix}/team/app/blobs/{MISSING_DIGEST}"
        ));
    }
    for url in &urls {
        let message = get(&c, url).await.expect_error(403, "DENIED");
        assert!(
            message.contains("loopback, private, link-local"),
            "{url}: {message}"
        );
        let r = send(c.head(url), format!("HEAD {url}")).await;
        r.expect_status(403);
    }

    // A name other than `localhost` that resolves only to loopback is caught by the guarded
    // resolver instead: refused the same way as an address literal, and nothing connects.
    if let Some(name) = loopback_host_name() {
        for url in [
            format!("{base}/v2/team/app/manifests/v1?ns={name}%3A{dead}"),
            format!("{base}/v2/{name}:{dead}/team/app/manifests/v1"),
        ] {
            let message = get(&c, &url).await.expect_error(403, "DENIED");
            assert!(message.contains("loopback, private"), "{url}: {message}");
        }
    } else {
        eprintln!("no /etc/hosts name besides localhost resolves to loopback; DNS case skipped");
    }

    assert_eq!(
        trip.count(),
        0,
        "stevedore connected to a loopback listener"
    );
    let log = registry.log();
    assert_eq!(
        log.len(),
        log_before,
        "the loopback registry was contacted:\n{}",
        &log[log_before.min(log.len())..]
    );
}

// ---------------------------------------------------------------------------------------
// 9. Upstream faults
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
// 10. Endpoint fallback
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

// ---------------------------------------------------------------------------------------
// 11. h2c
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
// 12. A large blob, streamed
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
