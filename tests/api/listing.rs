//! Listing endpoints: tag pagination links kept in the client's form (through a paging
//! front), and referrers keeping the upstream's 404.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::StatusCode;

use crate::common::images::{self, ImageSpec};
use crate::common::registry::Registry;
use crate::common::stevedore::{Stevedore, registry_section};
use crate::helpers::{Form, api_url_q, get, http1, ns_encoded};

// ---------------------------------------------------------------------------------------
// Tag pagination
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
// Referrers
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
