//! The front door under hostile clients, over raw sockets: slow request heads, idle
//! connections and clients that never read are closed; connections are limited in total and
//! per client; oversized heads, request floods, forward-proxy requests and made-up methods get
//! clear answers; a hostile token service cannot make stevedore read without bound.

mod common;

use common::util::direct_client as client;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::faults::FaultProxy;
use common::images::{self, ImageSpec};
use common::pulls::error_of;
use common::registry::Registry;
use common::stevedore::{Stevedore, registry_section};
use common::token_server::TokenServer;
use reqwest::StatusCode;

/// Reads from `s` until the server closes it; how long that took, and what was read. Panics
/// if it stays open past `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (started.elapsed(), got),
        }
        assert!(
            started.elapsed() < limit,
            "the connection stayed open past {limit:?}"
        );
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect to stevedore")
}

/// Sends a raw request and reads one response head (and a small body).
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).expect("write");
    let (_, got) = wait_closed(&mut s, Duration::from_secs(10));
    String::from_utf8_lossy(&got).into_owned()
}

const LIMITS: &str =
    "[limits]\nheader-read-timeout = \"1s\"\nidle-timeout = \"2s\"\nsend-timeout = \"1s\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_are_cut_off_after_the_header_read_timeout() {
    let proxy = Stevedore::start(LIMITS).await;
    let addr = proxy.addr;
    let took = tokio::task::spawn_blocking(move || {
        let mut s = connect(addr);
        // Half a request head, then a byte now and then: never finished.
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let started = Instant::now();
        let mut closed = None;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(b"X").is_err() {
                closed = Some(started.elapsed());
                break;
            }
        }
        closed.unwrap_or_else(|| wait_closed(&mut s, Duration::from_secs(5)).0)
    })
    .await
    .expect("join");
    assert!(
        took < Duration::from_secs(4),
        "a trickled head was allowed {took:?}"
    );
    assert_eq!(proxy.state.open_connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let proxy = Stevedore::start(LIMITS).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        // Keep-alive after one request, then silence.
        let mut s = connect(addr);
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let (took, got) = wait_closed(&mut s, Duration::from_secs(6));
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "closed after {took:?}"
        );
        // A connection that never sends anything is idle too.
        let mut s = connect(addr);
        let (took, _) = wait_closed(&mut s, Duration::from_secs(6));
        assert!(took < Duration::from_secs(5));
        // Requests every second keep a connection open past the idle timeout.
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        for _ in 0..4 {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("busy connection still open");
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).expect("response");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .await
    .expect("join");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_a_blob_are_disconnected() {
    let registry = Registry::open();
    let image = images::push_image(
        &registry,
        "team/app",
        "v1",
        &ImageSpec::seed(701).large_layer(32 << 20),
    )
    .await;
    let (layer, _) = image.layers.last().cloned().expect("layer");
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Stevedore::start(&format!(
        "{LIMITS}[store]\npath = \"{}\"\n{}",
        store.path().display(),
        registry_section(&registry.host(), &registry.url(), "")
    ))
    .await;
    // Warm the store.
    let url = format!(
        "{}/v2/team/app/blobs/{layer}?ns={}",
        proxy.url(),
        registry.host()
    );
    let bytes = client()
        .get(&url)
        .send()
        .await
        .expect("warm")
        .bytes()
        .await
        .expect("body");
    assert_eq!(common::util::sha256_digest(&bytes), layer);
    let addr = proxy.addr;
    let request = format!(
        "GET /v2/team/app/blobs/{layer}?ns={} HTTP/1.1\r\nHost: x\r\n\r\n",
        registry.host()
    );
    let sockets = tokio::task::spawn_blocking(move || {
        (0..8)
            .map(|_| {
                let mut s = connect(addr);
                // A tiny receive window, and never a read.
                let _ = socket2_set_recv_buffer(&s, 4096);
                s.write_all(request.as_bytes()).expect("write");
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.state.open_connections(), 8);
    // send-timeout is 1s: they are all gone well before 5s.
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if proxy.state.open_connections() == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "{} still open", proxy.state.open_connections());
    assert_eq!(proxy.state.streams.used(), 0, "no stream memory left held");
    drop(sockets);
}

/// Shrinks a socket's receive buffer (SO_RCVBUF).
fn socket2_set_recv_buffer(s: &TcpStream, bytes: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt reads one int from a live local; the fd belongs to `s`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_limited_in_total_and_per_client() {
    let proxy = Stevedore::start(
        "[limits]\nmax-connections = 6\nmax-connections-per-client = 3\nidle-timeout = \"30s\"\n",
    )
    .await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let from = |ip: [u8; 4]| {
            socket_from(Ipv4Addr::from(ip))
                .connect(addr)
                .expect("connect")
        };
        let mut held: Vec<TcpStream> = (0..3).map(|_| from([127, 0, 0, 1])).collect();
        std::thread::sleep(Duration::from_millis(200));
        // A fourth from the same client is answered 503 and closed.
        let mut fourth = from([127, 0, 0, 1]);
        let (_, got) = wait_closed(&mut fourth, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("retry-after: 1"), "{text}");
        assert!(text.contains("max-connections-per-client"), "{text}");
        // Other clients still get in, up to the total.
        held.extend((0..3).map(|i| from([127, 0, 0, 2 + i])));
        std::thread::sleep(Duration::from_millis(200));
        let mut seventh = from([127, 0, 0, 9]);
        let (_, got) = wait_closed(&mut seventh, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("limits.max-connections"), "{text}");
        // Closing one makes room again.
        drop(held.pop());
        std::thread::sleep(Duration::from_millis(300));
        let mut s = from([127, 0, 0, 9]);
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let (_, got) = wait_closed(&mut s, Duration::from_secs(5));
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    })
    .await
    .expect("join");
}

/// A TCP stream bound to a local address (`127.0.0.x`), not yet connected.
fn socket_from(ip: Ipv4Addr) -> BoundSocket {
    BoundSocket(ip)
}

struct BoundSocket(Ipv4Addr);

impl BoundSocket {
    fn connect(self, to: SocketAddr) -> std::io::Result<TcpStream> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2)/bind(2)/connect(2) on a fresh fd that is handed to a
        // TcpStream (which closes it) on success and closed here on failure.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            let local = sa(self.0, 0);
            let SocketAddr::V4(to) = to else {
                libc::close(fd);
                return Err(std::io::Error::other("IPv4 only"));
            };
            let remote = sa(*to.ip(), to.port());
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
                || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(TcpStream::from_raw_fd(fd))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431() {
    let proxy = Stevedore::start("[limits]\nmax-header-bytes = \"8KiB\"\n").await;
    let addr = proxy.addr;
    let text = tokio::task::spawn_blocking(move || {
        let big = "a".repeat(20 * 1024);
        raw(
            addr,
            &format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        )
    })
    .await
    .expect("join");
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_floods_get_429_with_retry_after() {
    let proxy = Stevedore::start("[limits]\nrequests-per-second = 2\nrequest-burst = 5\n").await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = c
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .await
            .expect("request");
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((1..=2).contains(&after), "Retry-After {after}");
            let (_, code, _) = error_of(r).await;
            assert_eq!(code, "TOOMANYREQUESTS");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "{statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .get(format!("{}/v2/", proxy.url()))
        .send()
        .await
        .expect("later");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_proxy_requests_are_refused_not_answered_from_the_default_registry() {
    let registry = Registry::open();
    let _image =
        images::push_image(&registry, "library/app", "latest", &ImageSpec::seed(702)).await;
    let faults = FaultProxy::start(&registry.url()).await;
    // The default registry is a real one: an absolute-form request for another registry
    // must not be resolved there.
    let proxy = Stevedore::start(&format!(
        "[routing]\ndefault-registry = \"{}\"\n{}",
        registry.host(),
        registry_section(&registry.host(), &faults.url(), "")
    ))
    .await;
    let addr = proxy.addr;
    let (absolute, connect) = tokio::task::spawn_blocking(move || {
        (
            raw(
                addr,
                "GET http://other.registry.example/v2/app/manifests/latest HTTP/1.1\r\n\
                 Host: other.registry.example\r\nConnection: close\r\n\r\n",
            ),
            raw(
                addr,
                "CONNECT other.registry.example:443 HTTP/1.1\r\nHost: other.registry.example:443\r\n\r\n",
            ),
        )
    })
    .await
    .expect("join");
    for text in [&absolute, &connect] {
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains("DENIED"), "{text}");
        assert!(text.contains("other.registry.example"), "{text}");
    }
    assert!(
        faults.seen().is_empty(),
        "nothing reached the default registry: {:?}",
        faults.seen()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_do_not_grow_the_metric_labels() {
    let proxy = Stevedore::start("").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        for i in 0..5 {
            let text = raw(
                addr,
                &format!("X-METHOD-{i} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            );
            assert!(text.starts_with("HTTP/1.1 405"), "{text}");
        }
    })
    .await
    .expect("join");
    let telemetry = proxy.state.telemetry.clone();
    let text = tokio::task::spawn_blocking(move || telemetry.render())
        .await
        .expect("render");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(!text.contains("X-METHOD"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_response_is_refused() {
    let tokens = TokenServer::builder()
        .user("puller", "pw", &["team/"])
        .start();
    let registry = Registry::token(&tokens);
    let _image = images::push_image(&registry, "team/app", "v1", &ImageSpec::seed(703)).await;
    tokens.set_padding(8 << 20);
    let proxy = Stevedore::start(&registry_section(
        &registry.host(),
        &registry.url(),
        "username = \"puller\"\npassword = \"pw\"",
    ))
    .await;
    let r = client()
        .get(format!(
            "{}/v2/team/app/manifests/v1?ns={}",
            proxy.url(),
            registry.host()
        ))
        .send()
        .await
        .expect("request");
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("larger than"), "{message}");
    assert!(!message.contains("pw"), "{message}");
}
