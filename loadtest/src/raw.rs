//! Raw HTTP/1.1 over TCP, for load that a full client would blur: a light keep-alive request
//! loop for small answers (so the client spends as little CPU as possible), and hostile
//! clients (idle connections, request heads sent a byte at a time, blob requests never read).
//! Connections come from chosen loopback source addresses, so per-client limits see many
//! clients.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The `i`-th of a set of loopback source addresses, `per` connections each:
/// 127.1.x.y, never 127.0.0.1 (which the server's own tools use).
pub fn source(i: usize, per: usize) -> IpAddr {
    let n = (i / per.max(1)) as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8))
}

/// Connects to `to` from `from` (port chosen by the kernel).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    connect_with(from, to, None).await
}

/// [`connect_from`] with a receive buffer of `recv_buffer` bytes (set before connecting, so
/// the window the client offers stays small).
async fn connect_with(from: IpAddr, to: SocketAddr, recv_buffer: Option<u32>) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4().context("socket")?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).context("SO_RCVBUF")?;
    }
    socket
        .bind(SocketAddr::new(from, 0))
        .with_context(|| format!("bind {from}"))?;
    let stream = socket
        .connect(to)
        .await
        .with_context(|| format!("connect {to} from {from}"))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// A request as bytes: `method path` with `Host` and the given headers.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: loadtest\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Reads one response (head, and body by `Content-Length` unless `head_only`), keeping
/// leftover bytes in `buf`. Returns the status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Result<u16> {
    let mut tmp = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.context("read response head")?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("response status")?;
    let length: usize = if head_only {
        0
    } else {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0)
    };
    buf.drain(..end);
    while buf.len() < length {
        let n = s.read(&mut tmp).await.context("read response body")?;
        if n == 0 {
            bail!("connection closed inside a body");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    buf.drain(..length);
    Ok(status)
}

/// Outcome of a request loop.
#[derive(Debug, Default, Clone)]
pub struct LoopRun {
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub latencies: Vec<Duration>,
    pub wall: Duration,
}

/// `connections` keep-alive connections send `req` back to back for `duration`.
pub async fn request_loop(
    connections: usize,
    to: SocketAddr,
    req: Vec<u8>,
    head_only: bool,
    duration: Duration,
) -> Result<LoopRun> {
    let req = Arc::new(req);
    let barrier = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (req, barrier) = (req.clone(), barrier.clone());
        let from = source(i, 64);
        tasks.push(tokio::spawn(async move {
            let mut run = LoopRun::default();
            let mut conn = connect_from(from, to).await;
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut buf = Vec::new();
            while Instant::now() < deadline {
                let s = match &mut conn {
                    Ok(s) => s,
                    Err(e) => {
                        run.errors += 1;
                        run.error_samples.push(format!("{e:#}"));
                        break;
                    }
                };
                let start = Instant::now();
                let outcome = async {
                    s.write_all(&req).await.context("write request")?;
                    read_response(s, &mut buf, head_only).await
                }
                .await;
                match outcome {
                    Ok(200) => {
                        run.ok += 1;
                        run.latencies.push(start.elapsed());
                    }
                    Ok(status) => {
                        run.errors += 1;
                        if run.error_samples.len() < 3 {
                            run.error_samples.push(format!("status {status}"));
                        }
                    }
                    Err(e) => {
                        run.errors += 1;
                        if run.error_samples.len() < 3 {
                            run.error_samples.push(format!("{e:#}"));
                        }
                        buf.clear();
                        conn = connect_from(from, to).await;
                    }
                }
            }
            run
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut total = LoopRun::default();
    for t in tasks {
        let run = t.await.context("request loop task")?;
        total.ok += run.ok;
        total.errors += run.errors;
        for e in run.error_samples {
            if total.error_samples.len() < 5 {
                total.error_samples.push(e);
            }
        }
        total.latencies.extend(run.latencies);
    }
    total.wall = start.elapsed();
    Ok(total)
}

/// What hostile clients do.
#[derive(Debug, Clone, Copy)]
pub enum Hostile {
    /// Connect and send nothing.
    Idle,
    /// Send a request head one byte a second, never finishing it.
    SlowHead,
    /// Request the blob and never read the answer (a small receive buffer).
    NeverRead,
}

/// Counters of a hostile crowd.
#[derive(Debug, Default)]
pub struct Crowd {
    /// Connections made (including reconnections after the server closed one).
    pub connects: AtomicU64,
    /// Connections the server closed.
    pub closed_by_server: AtomicU64,
    /// Connections that could not be made (refused, limit answers).
    pub failed: AtomicU64,
}

/// Runs `n` hostile clients of one kind until `stop` is set; each reconnects when the server
/// closes it. `first` is the index of its first source address slot.
pub fn spawn_crowd(
    kind: Hostile,
    n: usize,
    first: usize,
    to: SocketAddr,
    blob_path: String,
    crowd: Arc<Crowd>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (crowd, stop, blob_path) = (crowd.clone(), stop.clone(), blob_path.clone());
            let from = source(first + i, 200);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let small = matches!(kind, Hostile::NeverRead).then_some(4096);
                    let conn = match connect_with(from, to, small).await {
                        Ok(c) => c,
                        Err(_) => {
                            crowd.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    crowd.connects.fetch_add(1, Ordering::Relaxed);
                    if hold(kind, conn, &blob_path, &stop).await {
                        crowd.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                    // Spread reconnections out.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect()
}

/// Keeps one hostile connection going; true when the server closed it.
async fn hold(kind: Hostile, mut s: TcpStream, blob_path: &str, stop: &AtomicBool) -> bool {
    match kind {
        Hostile::Idle => {}
        Hostile::NeverRead => {
            let req = request("GET", blob_path, &[]);
            if s.write_all(&req).await.is_err() {
                return true;
            }
        }
        Hostile::SlowHead => {
            if s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                return true;
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let closed = match kind {
            Hostile::SlowHead => s.write_all(b"X").await.is_err() || peer_closed(&s),
            Hostile::Idle | Hostile::NeverRead => peer_closed(&s),
        };
        if closed {
            return true;
        }
    }
}

/// Whether the server closed the connection (TCP state CLOSE_WAIT or CLOSE), without reading
/// what it sent.
fn peer_closed(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    // struct tcp_info begins with `__u8 tcpi_state`.
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a live local buffer.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    rc != 0 || matches!(info[0], TCP_CLOSE | TCP_CLOSE_WAIT)
}

/// Raises this process's open-file limit to its hard limit (thousands of connections).
pub fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
