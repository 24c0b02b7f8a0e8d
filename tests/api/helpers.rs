//! Shared helpers for the `api` tests: the test HTTP client, whole-response replies with
//! OCI error assertions, and stevedore URLs in each routing form.

use bytes::Bytes;
use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{StatusCode, Version};

use crate::common::images::ALL_MANIFEST_TYPES;
use crate::common::stevedore::Stevedore;

pub(crate) const API_VERSION: &str = "registry/2.0";
/// A well-formed digest that no test pushes.
pub(crate) const MISSING_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000001";

pub(crate) fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("test HTTP client")
}

/// A response read whole, with what was asked, for assertion messages.
pub(crate) struct Reply {
    pub(crate) what: String,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn expect_status(&self, status: u16) -> &Self {
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
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> String {
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

pub(crate) async fn send(req: reqwest::RequestBuilder, what: impl Into<String>) -> Reply {
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

pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Reply {
    send(client.get(url), format!("GET {url}")).await
}

/// How a client names the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// containerd: `/v2/<repo>/…?ns=<host>` (the colon of a port percent-encoded).
    Ns,
    /// CRI-O, podman, image-rs: `/v2/<host>/<repo>/…`.
    PathPrefix,
    /// Neither: `routing.default-registry`.
    Default,
}

/// stevedore's URL for `/v2/<repo>/<rest>` at `host` in `form`, with `query` pairs.
pub(crate) fn api_url(proxy: &Stevedore, form: Form, host: &str, repo: &str, rest: &str) -> String {
    api_url_q(proxy, form, host, repo, rest, &[])
}

pub(crate) fn api_url_q(
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
pub(crate) fn ns_encoded(host: &str) -> String {
    url::form_urlencoded::byte_serialize(host.as_bytes()).collect()
}

/// The ways clients list the manifest types they take.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AcceptStyle {
    /// One comma-joined header line (containerd, docker).
    Joined,
    /// One header line per type (skopeo / containers-image).
    Lines,
    /// Just `*/*`.
    Wildcard,
}

pub(crate) fn with_accept(
    mut req: reqwest::RequestBuilder,
    style: AcceptStyle,
) -> reqwest::RequestBuilder {
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
