//! Front doors: listeners that speak HTTP and hand typed routes to the pull engine.
//!
//! Every connection is admitted against `limits.max-connections` (all clients) and
//! `limits.max-connections-per-client`, watched for slow request heads, idleness and clients
//! that stop reading (`conn.rs`), and every request is rate limited per client before it is
//! routed. Response bodies are paced so their memory stays bounded (`pacing.rs`).

mod access;
mod conn;
mod lifecycle;
mod metrics;
pub mod mirror;
mod pacing;
mod peer;
mod proxy;
mod ratelimit;
pub mod reload;
pub mod response;
mod state;

pub use conn::ClientKey;
pub use metrics::serve_metrics;
pub use pacing::StreamMemory;
use state::RateKey;
pub use state::{AppState, Live, StartError, TlsState};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use crate::config::LimitsConfig;
use crate::reference::RegistryHost;
use crate::telemetry::request::{self, RequestContext};
use crate::tls::CertName;
use conn::{Activity, Timeouts, Watched};
use pacing::{Guarded, Pacer};
use response::{Body, Failure, FrontRefusal};

/// One client connection, as its requests see it.
#[derive(Clone)]
struct ConnInfo {
    peer: SocketAddr,
    /// The client's TCP socket (for pacing response bodies).
    socket: RawFd,
    activity: Arc<Activity>,
    /// Inside an intercepted CONNECT tunnel: the registry it is for.
    tunnel: Option<Arc<TunnelTarget>>,
    /// The client certificate presented to the TLS listener, if any.
    client_cert: Option<Arc<rustls::pki_types::CertificateDer<'static>>>,
    /// The task serving a CONNECT that took this connection over.
    upgraded: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// What an intercepted tunnel is for.
#[derive(Debug, Clone)]
struct TunnelTarget {
    registry: RegistryHost,
    /// The name the client used (and must present as SNI).
    name: CertName,
}

impl ConnInfo {
    fn new(peer: SocketAddr, socket: RawFd, activity: Arc<Activity>) -> Self {
        Self {
            peer,
            socket,
            activity,
            tunnel: None,
            client_cert: None,
            upgraded: Arc::default(),
        }
    }

    fn with_client_cert(mut self, certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Self {
        self.client_cert = certs
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.clone().into_owned()));
        self
    }

    fn hold_tunnel(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut slot) = self.upgraded.lock() {
            *slot = Some(task);
        }
    }

    fn take_tunnel(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.upgraded.lock().ok().and_then(|mut s| s.take())
    }
}

/// Serves the mirror API (and the forward proxy) on `listener` until `shutdown` resolves,
/// then drains.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_listener(listener, state, shutdown, None).await
}

/// Serves the mirror API over TLS on `listener` until `shutdown` resolves, then drains.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    serve_listener(listener, state, shutdown, Some(acceptor)).await
}

/// Time a client of the TLS listener has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_listener(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ticket = match state.admission.admit(ClientKey::of(peer.ip())) {
                    Ok(t) => t,
                    Err(why) => {
                        tracing::warn!(%peer, ?why, "connection refused");
                        tokio::spawn(refuse(stream, why));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let limits = state.live().limits.clone();
                let timeouts = Timeouts::from(&limits);
                conn::set_send_buffer(&stream, limits.socket_send_buffer.0);
                let activity = Activity::new();
                let info = ConnInfo::new(peer, stream.as_raw_fd(), activity.clone());
                let io = Watched::new(stream, activity.clone());
                let (state, tls, watcher) = (state.clone(), tls.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let _ticket = ticket;
                    let watchdog = conn::watchdog(activity, timeouts);
                    tokio::pin!(watchdog);
                    let conn_info = info.clone();
                    let served = async move {
                        let info = conn_info;
                        match tls {
                            None => serve_conn(state, io, info, Some(watcher)).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                                    Ok(Ok(stream)) => {
                                        let info = info.with_client_cert(stream.get_ref().1.peer_certificates());
                                        serve_conn(state, stream, info, Some(watcher)).await;
                                    }
                                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = served => {}
                        why = &mut watchdog => {
                            tracing::info!(%peer, reason = why, "closing connection");
                            return;
                        }
                    }
                    // A CONNECT took the connection over: watch it while the tunnel lasts.
                    if let Some(mut tunnel) = info.take_tunnel() {
                        tokio::select! {
                            _ = &mut tunnel => {}
                            why = &mut watchdog => {
                                tracing::info!(%peer, reason = why, "closing tunnel");
                                tunnel.abort();
                            }
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drain = state.drain_timeout;
    let open = graceful.count();
    if open > 0 {
        tracing::info!(
            connections = open,
            ?drain,
            "listener closed; draining connections"
        );
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain time; closing them"
        );
    }
    Ok(())
}

/// Serves HTTP (1.1 or 2) on one connection until it ends (or is upgraded by a CONNECT).
async fn serve_conn<I>(state: Arc<AppState>, io: I, info: ConnInfo, watcher: Option<Watcher>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = http_builder(&state.live().limits);
    let peer = info.peer;
    let svc = service_fn(move |req| {
        let state = state.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, &info).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    let ended = match watcher {
        Some(w) => w.watch(conn).await,
        None => conn.await,
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves the requests inside an intercepted CONNECT tunnel. Boxed: a tunnel is served from
/// within the request that opened it.
fn serve_inner<I>(
    state: Arc<AppState>,
    io: I,
    info: ConnInfo,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(serve_conn(state, io, info, None))
}

/// HTTP/1.1 and HTTP/2 (h2c) with the configured limits.
fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(header_bytes)
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_send_buf_size(pacing::MIN_CHUNK * 4)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024);
    builder
}

/// Answers a connection over the limits and closes it.
async fn refuse(mut stream: TcpStream, why: conn::Refusal) {
    let answer = conn::refusal_response(why);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn handle(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Body> {
    let in_flight = conn.activity.request_started();
    let ctx = RequestContext::new();
    let span = request::span(&ctx, req.method(), req.uri().path(), req.headers());
    let answered = ctx
        .clone()
        .scope(front(state, &mut req, conn))
        .instrument(span.clone())
        .await;
    let mut resp = answered.unwrap_or_else(|e| response::error(&e));
    let headers = resp.headers_mut();
    headers.insert(
        response::API_VERSION_HEADER,
        HeaderValue::from_static(response::API_VERSION),
    );
    if let Ok(id) = HeaderValue::from_str(&ctx.id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    let status = resp.status().as_u16();
    request::record_status(&span, status);
    state.telemetry.requests.add(
        1,
        &[
            opentelemetry::KeyValue::new("method", method_label(req.method())),
            opentelemetry::KeyValue::new("status", i64::from(status)),
        ],
    );
    let elapsed = ctx.started.elapsed();
    state
        .telemetry
        .record_ttfb(ctx.labels(), elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            peer = %conn.peer,
            method = %req.method(),
            path = req.uri().path(),
            query = req.uri().query().unwrap_or(""),
            status,
            elapsed_ms = elapsed.as_millis() as u64,
            "request"
        );
    });
    let end = RequestEnd {
        telemetry: state.telemetry.clone(),
        ctx,
        _span: span,
    };
    resp.map(|body| Guarded::new(body, (in_flight, end)).boxed_unsync())
}

/// The `x-request-id` response header: the id on the request's log lines.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// Held by a response body until it ends or its client goes: records the request's whole
/// time and keeps its span open while the body streams.
struct RequestEnd {
    telemetry: Arc<crate::telemetry::Telemetry>,
    ctx: Arc<RequestContext>,
    _span: tracing::Span,
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        self.telemetry
            .record_duration(self.ctx.labels(), self.ctx.started.elapsed().as_secs_f64());
    }
}

/// Checks that apply to every request, then the mirror.
async fn front(
    state: &Arc<AppState>,
    req: &mut Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<Body>, Failure> {
    // A forward-proxy request names its registry in its authority, and is answered for that
    // registry only: answering it from another would resolve a tag asked for on one registry
    // on another.
    let absolute_form = req.version() < Version::HTTP_2 && req.uri().authority().is_some();
    let authority = match &conn.tunnel {
        Some(target) => {
            if req.method() == Method::CONNECT {
                return Err(Failure::Front(FrontRefusal::NotAProxy {
                    authority: "a CONNECT inside a tunnel".to_owned(),
                }));
            }
            proxy::check_inner_authority(target, req.uri())?;
            Some(target.registry.clone())
        }
        None if req.method() == Method::CONNECT || absolute_form => {
            if !state.live().proxy.enabled {
                let authority = req
                    .uri()
                    .authority()
                    .map_or_else(String::new, ToString::to_string);
                return Err(Failure::Front(FrontRefusal::NotAProxy { authority }));
            }
            if req.method() == Method::CONNECT {
                request::set_route("proxy");
                return proxy::connect(state, req, conn).await;
            }
            Some(proxy::absolute_registry(state, req.uri())?)
        }
        None => None,
    };
    let live = state.live();
    // Another replica (it presents the shared secret); anyone else on that path is an
    // ordinary client with a path that is not the API.
    if authority.is_none() && peer::admitted(state, req) {
        request::set_route("peer");
        let pacer = Pacer {
            memory: state.streams.clone(),
            socket: (req.version() < Version::HTTP_2).then_some(conn.socket),
        };
        return peer::handle(state, &live, req, &pacer).await;
    }
    let caller = access::identify(
        live.policy.as_ref(),
        conn.peer.ip(),
        req.headers(),
        conn.client_cert.as_deref(),
    );
    if let Some(rates) = &live.rates {
        let key = match &caller {
            Ok(Some(c)) if c.authenticated => RateKey::Identity(c.label()),
            _ => RateKey::Client(ClientKey::of(conn.peer.ip())),
        };
        if let Err(wait) = rates.check(&key) {
            return Err(Failure::Front(FrontRefusal::RateLimited {
                retry_after_s: ratelimit::retry_after_secs(wait),
            }));
        }
    }
    let caller = caller?;
    let pacer = Pacer {
        memory: state.streams.clone(),
        socket: (req.version() < Version::HTTP_2).then_some(conn.socket),
    };
    mirror::handle(
        state,
        &live,
        req,
        caller.as_ref(),
        &pacer,
        authority.as_ref(),
    )
    .await
}

/// The request method as a metric label: the standard ones by name, anything else "other",
/// so clients cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"X-RANDOM-12345").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
