//! The metrics listener: `GET /metrics` in the Prometheus text format, on its own address so
//! it can stay private while the mirror listener serves anonymous clients.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::AppState;
use super::response::{self, Body};

/// Serves `/metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, &req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle(state: &Arc<AppState>, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(response::full(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let telemetry = state.telemetry.clone();
    // Collecting waits for the reader's thread: keep it off the async threads.
    let text = tokio::task::spawn_blocking(move || telemetry.render())
        .await
        .unwrap_or_default();
    let mut r = Response::new(response::full(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
