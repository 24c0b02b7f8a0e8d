//! What the forward proxy refuses, observed at the socket level: CONNECT to a host without a
//! section, to another port, to restricted addresses, a TLS server name that differs from
//! the CONNECT authority, requests inside a tunnel that name another registry, and a proxy
//! that is switched off. Nothing is connected for a refused CONNECT. Blind tunnels go only to
//! listed destinations, with the same address rules.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::registry::Registry;
use common::stevedore::Stevedore;

const REGISTRY: &str = "registry.test";

/// A TCP listener that counts connections (and echoes what it receives).
struct Target {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Target {
    fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Target { addr, accepted }
    }
}

/// Sends `CONNECT target` and returns the stream and the response head.
fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).expect("connect to stevedore");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    // A refusal has a body: read it too.
    if !head.starts_with("HTTP/1.1 200") {
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        return (s, format!("{head}{rest}"));
    }
    (s, head)
}

async fn proxy_with(extra: &str) -> (Stevedore, Registry) {
    let registry = Registry::open();
    let proxy = Stevedore::start(&format!(
        "[registries.\"{REGISTRY}\"]\nendpoints = [\"{}\"]\nallow-private-network = true\n{extra}",
        registry.url()
    ))
    .await;
    (proxy, registry)
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_to_anything_but_a_served_registry_are_refused_and_connect_nothing() {
    let (proxy, _registry) = proxy_with("").await;
    let target = Target::start();
    let addr = proxy.addr;
    let local = target.addr.to_string();
    let answers = tokio::task::spawn_blocking(move || {
        [
            "unconfigured.example:443".to_owned(),
            format!("{REGISTRY}:8443"),
            "169.254.169.254:443".to_owned(),
            "127.0.0.1:22".to_owned(),
            "[::1]:443".to_owned(),
            local,
        ]
        .map(|t| (t.clone(), connect(addr, &t).1))
    })
    .await
    .expect("join");
    for (target, head) in answers {
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        assert!(head.contains("DENIED"), "{target}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        target.accepted.load(Ordering::SeqCst),
        0,
        "nothing was connected"
    );
}

/// A TLS client through a CONNECT tunnel, presenting `sni`, trusting stevedore's CA.
async fn tls_through(
    proxy: SocketAddr,
    connect_to: &str,
    sni: &str,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    s.write_all(format!("CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA"))
        .expect("root");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    connector.connect(name, s).await
}

fn ca_of(proxy: &Stevedore) -> String {
    proxy
        .state
        .tls
        .as_ref()
        .expect("a CA")
        .leaves
        .ca()
        .cert_pem()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_server_name_other_than_the_connect_authority_fails_the_handshake() {
    let (proxy, _registry) = proxy_with("").await;
    let ca = ca_of(&proxy);
    let ok = tls_through(proxy.addr, &format!("{REGISTRY}:443"), REGISTRY, &ca).await;
    assert!(ok.is_ok(), "the matching name works: {:?}", ok.err());
    let other = tls_through(proxy.addr, &format!("{REGISTRY}:443"), "other.test", &ca).await;
    assert!(
        other.is_err(),
        "SNI other.test inside a tunnel to registry.test"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_inside_a_tunnel_cannot_name_another_registry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, _registry) = proxy_with("").await;
    let ca = ca_of(&proxy);
    for request in [
        "GET https://other.test/v2/app/manifests/v1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        "GET /v2/app/manifests/v1?ns=ghcr.io HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n",
        "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\nConnection: close\r\n\r\n",
    ] {
        let mut tls = tls_through(proxy.addr, &format!("{REGISTRY}:443"), REGISTRY, &ca)
            .await
            .expect("tunnel");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{request}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blind_tunnels_go_only_to_listed_destinations_at_allowed_addresses() {
    let target = Target::start();
    let listed = target.addr.to_string();
    // Listed, but on loopback: refused unless private addresses are allowed for tunnels.
    let (strict, _r1) = proxy_with(&format!("[proxy]\ntunnel = [\"{listed}\"]\n")).await;
    let (open, _r2) = proxy_with(&format!(
        "[proxy]\ntunnel = [\"{listed}\"]\ntunnel-private-network = true\n"
    ))
    .await;
    let (strict_addr, open_addr, l) = (strict.addr, open.addr, listed.clone());
    tokio::task::spawn_blocking(move || {
        let (_, head) = connect(strict_addr, &l);
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(head.contains("loopback"), "{head}");
        let (mut s, head) = connect(open_addr, &l);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"hello through the tunnel").expect("write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("echo");
        assert_eq!(&buf[..n], b"hello through the tunnel");
        // Not listed: refused.
        let (_, head) = connect(open_addr, "127.0.0.1:1");
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    })
    .await
    .expect("join");
    assert_eq!(target.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switched_off_proxy_refuses_every_proxy_request() {
    let (proxy, _registry) = proxy_with("[proxy]\nenabled = false\n").await;
    assert!(proxy.state.tls.is_none(), "no CA is needed");
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let (_, head) = connect(addr, &format!("{REGISTRY}:443"));
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(head.contains("not serving as a forward proxy"), "{head}");
    })
    .await
    .expect("join");
}
