//! A counting HTTP/1.1 reverse proxy between a target (stevedore,
//! distribution) and the origin registry: it forwards every request
//! unchanged, streams the response back, and counts requests per method and
//! path and the response bytes it relayed, so "one upstream fetch" can be
//! checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;

type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Default)]
struct Counts {
    requests: Mutex<BTreeMap<String, u64>>,
    bytes: AtomicU64,
}

/// Upstream traffic seen by a [`Counter`] (or the difference of two
/// snapshots).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Upstream {
    pub blob_get: u64,
    pub blob_head: u64,
    pub manifest_get: u64,
    pub manifest_head: u64,
    pub other: u64,
    pub response_bytes: u64,
    /// `"<METHOD> <path>" -> count`.
    pub by_request: BTreeMap<String, u64>,
}

impl Upstream {
    /// `self - before`, per field.
    pub fn since(&self, before: &Upstream) -> Upstream {
        let mut by_request = BTreeMap::new();
        for (k, v) in &self.by_request {
            let d = v - before.by_request.get(k).copied().unwrap_or(0);
            if d > 0 {
                by_request.insert(k.clone(), d);
            }
        }
        Upstream {
            blob_get: self.blob_get - before.blob_get,
            blob_head: self.blob_head - before.blob_head,
            manifest_get: self.manifest_get - before.manifest_get,
            manifest_head: self.manifest_head - before.manifest_head,
            other: self.other - before.other,
            response_bytes: self.response_bytes - before.response_bytes,
            by_request,
        }
    }
}

/// The running proxy; stops when dropped.
pub struct Counter {
    addr: SocketAddr,
    counts: Arc<Counts>,
    blob_digest: String,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    /// Listens on a free 127.0.0.1 port and forwards to `origin`.
    /// `blob_digest` is the blob whose GETs are reported as `blob_get`.
    pub async fn start(origin: SocketAddr, blob_digest: &str) -> Result<Counter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind counting proxy")?;
        let addr = listener.local_addr().context("counting proxy address")?;
        let counts = Arc::new(Counts::default());
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (client, counts) = (client.clone(), c.clone());
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| forward(req, origin, client.clone(), counts.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Counter {
            addr,
            counts,
            blob_digest: blob_digest.to_string(),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn snapshot(&self) -> Upstream {
        let by_request = match self.counts.requests.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut up = Upstream {
            response_bytes: self.counts.bytes.load(Ordering::Relaxed),
            ..Upstream::default()
        };
        let blob_suffix = format!("/blobs/{}", self.blob_digest);
        for (key, &n) in &by_request {
            let (method, path) = key.split_once(' ').unwrap_or((key.as_str(), ""));
            let path = path.split('?').next().unwrap_or(path);
            match method {
                "GET" if path.ends_with(&blob_suffix) => up.blob_get += n,
                "HEAD" if path.ends_with(&blob_suffix) => up.blob_head += n,
                "GET" if path.contains("/manifests/") => up.manifest_get += n,
                "HEAD" if path.contains("/manifests/") => up.manifest_head += n,
                _ => up.other += n,
            }
        }
        up.by_request = by_request;
        up
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut req: Request<Incoming>,
    origin: SocketAddr,
    client: Client<HttpConnector, Incoming>,
    counts: Arc<Counts>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let key = format!("{} {}", req.method(), req.uri().path());
    {
        let mut m = match counts.requests.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let uri = match format!("http://{origin}{path_and_query}").parse() {
        Ok(uri) => uri,
        Err(_) => return Ok(error_response(400, "bad request target")),
    };
    *req.uri_mut() = uri;
    match client.request(req).await {
        Ok(resp) => {
            let counts = counts.clone();
            Ok(resp.map(move |body| {
                body.map_frame(move |frame| {
                    if let Some(data) = frame.data_ref() {
                        counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    frame
                })
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed()
            }))
        }
        Err(e) => Ok(error_response(502, &format!("origin unreachable: {e}"))),
    }
}

fn error_response(status: u16, msg: &str) -> Response<ProxyBody> {
    let body = http_body_util::Full::new(Bytes::from(msg.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp
}
