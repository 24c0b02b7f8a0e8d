//! The admin listener: `GET /metrics` in the Prometheus text format, `/healthz` and `/readyz`
//! for probes, on its own address so it can stay private while the mirror listener serves
//! anonymous clients. It keeps answering while the mirror drains, so probes see the drain.

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

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
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
    match req.uri().path() {
        "/metrics" => metrics(state).await,
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let reasons = super::lifecycle::unready_reasons(state).await;
            if reasons.is_empty() {
                text(StatusCode::OK, "ready\n".to_owned())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", reasons.join("; ")),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (/metrics, /healthz, /readyz)\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(response::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn metrics(state: &Arc<AppState>) -> Response<Body> {
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
