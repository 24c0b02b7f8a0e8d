//! The forward-proxy front door, on the mirror listener: what a client whose `HTTPS_PROXY` /
//! `HTTP_PROXY` points at stevedore sends.
//!
//! - `CONNECT host:port` to a registry that has a section: stevedore answers `200`, then
//!   terminates the client's TLS with a certificate for `host` from its own CA (the client's
//!   SNI must name `host`) and serves the requests inside the tunnel through the pull engine,
//!   as requests for that registry and no other.
//! - `CONNECT` to a `host:port` listed in `[proxy] tunnel`: a blind tunnel, after the same
//!   address checks as any upstream.
//! - Absolute-form requests (`GET http://host/v2/…`): served for that registry.
//! - Anything else is refused before anything is connected: `403`.
//!
//! RFC 9110 §9.3.6 (CONNECT), §7.6.1 (hop-by-hop headers are never forwarded: nothing is
//! forwarded at all, every request is answered by the engine).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::response::{self, Body, Failure, FrontRefusal};
use super::{AppState, ConnInfo, TunnelTarget};
use crate::policy::is_restricted_ip;
use crate::reference::RegistryHost;
use crate::tls::CertName;

/// Time a client has to finish its TLS handshake inside a CONNECT tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a `CONNECT` may go.
enum Destination {
    /// A registry stevedore serves: intercepted.
    Registry(TunnelTarget),
    /// A host and port listed for blind tunnelling, at these addresses.
    Tunnel(Vec<SocketAddr>),
}

/// The registry a proxy request's authority names: `host` for port 443 (as image references
/// write it), `host:port` otherwise.
pub(super) fn registry_of(
    host: &str,
    port: Option<u16>,
    default_port: u16,
) -> Option<RegistryHost> {
    let name = match port {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_owned(),
    };
    RegistryHost::parse(&name).ok()
}

/// `CONNECT`: refused (403), tunnelled, or intercepted.
pub(super) async fn connect(
    state: &Arc<AppState>,
    req: &mut Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<Body>, Failure> {
    let authority = req
        .uri()
        .authority()
        .map(|a| (a.host().to_owned(), a.port_u16()))
        .ok_or_else(|| refused("", "CONNECT needs host:port".to_owned()))?;
    let (host, Some(port)) = authority else {
        return Err(refused(&authority.0, "CONNECT needs host:port".to_owned()));
    };
    let target = format!("{host}:{port}");
    let destination = destination(state, &host, port).await?;
    let info = conn.clone();
    let state = state.clone();
    let on_upgrade = hyper::upgrade::on(req);
    let task = tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        match destination {
            Destination::Registry(t) => intercept(state, upgraded, info, t).await,
            Destination::Tunnel(addrs) => blind(upgraded, addrs, &target).await,
        }
    });
    conn.hold_tunnel(task);
    Ok(response::connected())
}

fn refused(authority: &str, reason: String) -> Failure {
    Failure::Front(FrontRefusal::ProxyRefused {
        authority: authority.to_owned(),
        reason,
    })
}

async fn destination(state: &AppState, host: &str, port: u16) -> Result<Destination, Failure> {
    let target = format!("{host}:{port}");
    let registry = registry_of(host, Some(port), 443);
    if let Some(registry) = registry.filter(|r| state.pull.upstreams().serves(r)) {
        if state.tls.is_none() {
            return Err(refused(
                &target,
                "stevedore has no CA to intercept TLS with (see [ca] in its config)".to_owned(),
            ));
        }
        return Ok(Destination::Registry(TunnelTarget {
            registry,
            name: CertName::parse(host),
        }));
    }
    let live = state.live();
    if live
        .proxy
        .tunnel
        .iter()
        .any(|t| t.eq_ignore_ascii_case(&target))
    {
        let addrs = resolve(host, port, live.proxy.tunnel_private_network)
            .await
            .map_err(|reason| refused(&target, reason))?;
        return Ok(Destination::Tunnel(addrs));
    }
    Err(refused(
        &target,
        "no [registries] section covers it and it is not in [proxy] tunnel".to_owned(),
    ))
}

/// The addresses of a tunnel destination, refusing restricted ones.
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let all: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve it: {e}"))?
            .collect(),
    };
    let allowed: Vec<SocketAddr> = all
        .into_iter()
        .filter(|a| allow_private || !is_restricted_ip(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(
            "it is (or resolves only to) a loopback, private or link-local address".to_owned(),
        );
    }
    Ok(allowed)
}

/// Terminates the client's TLS inside a tunnel and serves the requests in it.
async fn intercept(
    state: Arc<AppState>,
    io: TokioIo<hyper::upgrade::Upgraded>,
    conn: ConnInfo,
    target: TunnelTarget,
) {
    let Some(tls) = state.tls.clone() else {
        return;
    };
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::info!(peer = %conn.peer, target = %target.name, error = %e, "no TLS ClientHello in the tunnel");
            return;
        }
        Err(_) => return,
    };
    let sni = start.client_hello().server_name().map(CertName::parse);
    let sni_ok = match (&sni, &target.name) {
        (Some(s), name) => s == name,
        // Clients send no SNI for IP addresses.
        (None, CertName::Ip(_)) => true,
        (None, CertName::Dns(_)) => false,
    };
    if !sni_ok {
        tracing::warn!(
            peer = %conn.peer, target = %target.name, sni = ?sni.map(|s| s.to_string()),
            "refused: the TLS server name differs from the CONNECT authority"
        );
        return;
    }
    let config = match tls.leaves.server_config(&target.name) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target = %target.name, error = %e, "cannot intercept");
            return;
        }
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %conn.peer, target = %target.name, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let inner = ConnInfo {
        tunnel: Some(Arc::new(target)),
        ..conn
    };
    super::serve_inner(state, stream, inner).await;
}

/// Copies bytes both ways between the client and a listed destination.
async fn blind(
    mut client: TokioIo<hyper::upgrade::Upgraded>,
    addrs: Vec<SocketAddr>,
    target: &str,
) {
    let mut upstream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addrs[..]),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(target, error = %e, "tunnel destination unreachable");
            return;
        }
        Err(_) => return,
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// The registry an absolute-form request names (`GET http://host[:port]/v2/…`), if it is one
/// stevedore serves; refused otherwise.
pub(super) fn absolute_registry(state: &AppState, uri: &Uri) -> Result<RegistryHost, Failure> {
    let authority = uri
        .authority()
        .map_or_else(String::new, ToString::to_string);
    if !state.live().proxy.enabled {
        return Err(Failure::Front(FrontRefusal::NotAProxy { authority }));
    }
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    uri.host()
        .and_then(|h| registry_of(h, uri.port_u16(), default_port))
        .filter(|r| state.pull.upstreams().serves(r))
        .ok_or_else(|| refused(&authority, "no [registries] section covers it".to_owned()))
}

/// Inside a tunnel, a request naming an authority must name the tunnel's.
pub(super) fn check_inner_authority(target: &TunnelTarget, uri: &Uri) -> Result<(), Failure> {
    match uri.host() {
        Some(h) if CertName::parse(h) != target.name => Err(refused(
            &uri.authority()
                .map_or_else(String::new, ToString::to_string),
            format!("the tunnel is for {}", target.name),
        )),
        _ => Ok(()),
    }
}
