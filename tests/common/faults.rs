//! A small fault-injecting HTTP proxy placed between stevedore and a real registry. It
//! forwards every request to the registry and, for requests matching a rule, answers with a
//! status instead, cuts the body short, flips a byte, slows the body down, or redirects to
//! another server. It records what it receives (including `Authorization`) so tests can
//! assert on what stevedore sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After`, if given) instead of forwarding.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Forward, but end the body after this many bytes (the connection is cut).
    Truncate { after: u64 },
    /// Forward, flipping the byte at this offset of the body.
    Corrupt { at: u64 },
    /// Forward, waiting this long before each body chunk.
    Slow { per_chunk: Duration },
    /// Answer `307` to the same path and query at this base URL.
    Redirect { to: String },
    /// Wait this long, then forward.
    Delay { by: Duration },
    /// Forward, adding these headers to the answer.
    AddHeaders(Vec<(String, String)>),
    /// Answer with this status, headers and body.
    Body {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Answer with this status and these headers, empty body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Applies to requests whose path and query contain this.
    pub path_contains: String,
    /// Applies only to this method (`GET`, `HEAD`), or to any.
    pub method: Option<String>,
    pub fault: Fault,
    /// How many matching requests it applies to; `None` for all.
    pub times: Option<usize>,
    /// Wait this long before applying the fault.
    pub delay: Option<Duration>,
}

impl Rule {
    pub fn new(path_contains: &str, fault: Fault) -> Self {
        Self {
            path_contains: path_contains.to_owned(),
            method: None,
            fault,
            times: None,
            delay: None,
        }
    }

    /// Waits `by` before applying the fault (a slow answer).
    pub fn delay(mut self, by: Duration) -> Self {
        self.delay = Some(by);
        self
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_owned());
        self
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
}

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    /// The request target exactly as received: `/v2/…` (origin form), or
    /// `http://host:port/v2/…` (absolute form) from a client that uses this
    /// proxy as its outbound HTTP proxy. Either way the request is forwarded
    /// by path and query to the configured upstream.
    pub target: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

struct State {
    upstream: String,
    /// `Authorization` put on every forwarded request (a CDN that signs its own way).
    inject_authorization: Option<String>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    client: reqwest::Client,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        Self::start_on("127.0.0.1", upstream).await
    }

    /// A proxy on a given loopback address (`127.0.0.2` for "another host").
    pub async fn start_on(ip: &str, upstream: &str) -> Self {
        Self::start_with(ip, upstream, None).await
    }

    /// A proxy that replaces any `Authorization` with `authorization` when forwarding.
    pub async fn start_with(ip: &str, upstream: &str, authorization: Option<String>) -> Self {
        Self::start_full(ip, upstream, authorization, None, None).await
    }

    /// A proxy serving HTTPS with the certificate and key of `pki` (its clients must trust
    /// the PKI's CA), forwarding to `upstream`.
    pub async fn start_tls(ip: &str, upstream: &str, pki: &super::pki::Pki) -> Self {
        Self::start_tls_to(ip, upstream, pki, None).await
    }

    /// [`FaultProxy::start_tls`] to an HTTPS `upstream` whose certificate chains to
    /// `upstream_ca` (PEM file).
    pub async fn start_tls_to(
        ip: &str,
        upstream: &str,
        pki: &super::pki::Pki,
        upstream_ca: Option<&std::path::Path>,
    ) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .expect("read the certificate")
            .collect::<Result<_, _>>()
            .expect("parse the certificate");
        let key = PrivateKeyDer::from_pem_file(&pki.key).expect("read the key");
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("TLS server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_full(ip, upstream, None, Some(acceptor), upstream_ca).await
    }

    async fn start_full(
        ip: &str,
        upstream: &str,
        authorization: Option<String>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        upstream_ca: Option<&std::path::Path>,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            inject_authorization: authorization,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            client: {
                let mut b = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy();
                if let Some(ca) = upstream_ca {
                    let pem = std::fs::read(ca).expect("read the upstream CA");
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("upstream CA");
                    b = b.tls_certs_merge(certs);
                }
                b.build().expect("fault proxy client")
            },
        });
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = task_state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) {
        self.state.rules.lock().expect("rules").push(rule);
    }

    pub fn clear(&self) {
        self.state.rules.lock().expect("rules").clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    pub fn reset_seen(&self) {
        self.state.seen.lock().expect("seen").clear();
    }

    /// Requests received with this method whose path and query contain `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path_and_query.contains(needle))
            .count()
    }
}

fn take_fault(state: &State, method: &str, path: &str) -> Option<(Fault, Option<Duration>)> {
    let mut rules = state.rules.lock().expect("rules");
    let i = rules.iter().position(|r| {
        path.contains(&r.path_contains)
            && r.method.as_deref().is_none_or(|m| m == method)
            && r.times != Some(0)
    })?;
    let rule = &mut rules[i];
    if let Some(n) = rule.times.as_mut() {
        *n -= 1;
    }
    Some((rule.fault.clone(), rule.delay))
}

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".to_owned());
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.seen.lock().expect("seen").push(Seen {
        method: method.clone(),
        path_and_query: path.clone(),
        target: req.uri().to_string(),
        authorization: header("authorization"),
        range: header("range"),
    });
    let fault = match take_fault(state, &method, &path) {
        Some((fault, delay)) => {
            if let Some(by) = delay {
                tokio::time::sleep(by).await;
            }
            Some(fault)
        }
        None => None,
    };
    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let mut r = full(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"injected\"}]}",
            );
            if let Some(after) = retry_after {
                r.headers_mut()
                    .insert("retry-after", after.parse().expect("retry-after value"));
            }
            return r;
        }
        Some(Fault::Body {
            status,
            headers,
            body,
        }) => {
            let mut r = Response::new(
                Full::new(Bytes::from(body.clone()))
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync(),
            );
            *r.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (k, v) in headers {
                r.headers_mut().append(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    v.parse().expect("header value"),
                );
            }
            return r;
        }
        Some(Fault::Respond { status, headers }) => {
            let mut r = full(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "",
            );
            for (k, v) in headers {
                r.headers_mut().append(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    v.parse().expect("header value"),
                );
            }
            return r;
        }
        Some(Fault::Delay { by }) => tokio::time::sleep(*by).await,
        Some(Fault::Redirect { to }) => {
            let mut r = full(StatusCode::TEMPORARY_REDIRECT, "");
            r.headers_mut().insert(
                "location",
                format!("{}{}", to.trim_end_matches('/'), path)
                    .parse()
                    .expect("location value"),
            );
            return r;
        }
        _ => {}
    }
    let mut out = state
        .client
        .request(req.method().clone(), format!("{}{}", state.upstream, path));
    for (name, value) in req.headers() {
        let replaced = name == "authorization" && state.inject_authorization.is_some();
        if !replaced && !matches!(name.as_str(), "host" | "connection" | "content-length") {
            out = out.header(name, value);
        }
    }
    if let Some(auth) = &state.inject_authorization {
        out = out.header("authorization", auth);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return full(StatusCode::BAD_REQUEST, "bad request body"),
    };
    if !body.is_empty() {
        out = out.body(body);
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(_) => return full(StatusCode::BAD_GATEWAY, "upstream unreachable"),
    };
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !matches!(name.as_str(), "connection" | "transfer-encoding") {
            builder = builder.header(name, value);
        }
    }
    if let Some(Fault::AddHeaders(extra)) = &fault {
        for (name, value) in extra {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let mut offset: u64 = 0;
    let stream = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let start = offset;
        offset += chunk.len() as u64;
        Ok::<_, std::io::Error>((start, chunk))
    });
    let body: Body = match fault {
        Some(Fault::Truncate { after }) => {
            let s = stream
                .take_while(move |item| {
                    let keep = matches!(item, Ok((start, _)) if *start < after);
                    async move { keep }
                })
                .map(move |item| {
                    let (start, chunk) = item?;
                    let end = (after - start).min(chunk.len() as u64) as usize;
                    Ok::<_, std::io::Error>(chunk.slice(..end))
                })
                .chain(futures_util::stream::once(async {
                    Err(std::io::Error::other("injected truncation"))
                }));
            StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
        }
        Some(Fault::Corrupt { at }) => {
            let s = stream.map(move |item| {
                let (start, chunk) = item?;
                let end = start + chunk.len() as u64;
                if (start..end).contains(&at) {
                    let mut v = chunk.to_vec();
                    v[(at - start) as usize] ^= 0xff;
                    return Ok(Bytes::from(v));
                }
                Ok(chunk)
            });
            StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
        }
        Some(Fault::Slow { per_chunk }) => {
            let s = stream.then(move |item| async move {
                tokio::time::sleep(per_chunk).await;
                item.map(|(_, c)| c)
            });
            StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
        }
        _ => {
            let s = stream.map(|item| item.map(|(_, c)| c));
            StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| full(StatusCode::BAD_GATEWAY, "bad upstream response"))
}
