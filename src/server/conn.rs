//! Client connections: who may open one, and what a connection may cost in time.
//!
//! [`Admission`] counts connections, all clients together and per client address (an IPv6
//! client is its /64, since one host holds all of it). [`Watched`] wraps a connection's
//! socket and records its traffic in an [`Activity`]; [`watchdog`] closes the connection
//! when a request head takes longer than `header-read-timeout` to arrive, when it sits idle
//! past `idle-timeout`, or when its client has not taken a byte of a response for
//! `send-timeout` (a reader that does not read).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::LimitsConfig;

/// A client as connection limits and rate limits count it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    Self(IpAddr::V6(s.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromClient,
}

/// Counts open connections, in total and per client, against limits a reload may change.
pub struct Admission {
    counts: Arc<Mutex<Counts>>,
    max_total: AtomicUsize,
    max_per_client: AtomicUsize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// One admitted connection; its counts are released when it drops.
pub struct Ticket {
    counts: Arc<Mutex<Counts>>,
    client: ClientKey,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            counts: Arc::default(),
            max_total: AtomicUsize::new(limits.max_connections),
            max_per_client: AtomicUsize::new(limits.max_connections_per_client),
        }
    }

    /// New limits for new connections; open ones stay.
    pub fn set_limits(&self, limits: &LimitsConfig) {
        self.max_total
            .store(limits.max_connections, Ordering::Relaxed);
        self.max_per_client
            .store(limits.max_connections_per_client, Ordering::Relaxed);
    }

    pub fn admit(&self, client: ClientKey) -> Result<Ticket, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Refusal::TooManyConnections);
        }
        let max_per_client = self.max_per_client.load(Ordering::Relaxed);
        let n = c.per_client.entry(client).or_insert(0);
        if *n >= max_per_client {
            return Err(Refusal::TooManyFromClient);
        }
        *n += 1;
        c.total += 1;
        Ok(Ticket {
            counts: self.counts.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// Fixes a client socket's kernel send buffer (`SO_SNDBUF`): a client that stops reading can
/// then hold at most that much kernel memory, however long it stays. `0` keeps the kernel's
/// autotuning.
pub fn set_send_buffer(stream: &tokio::net::TcpStream, bytes: u64) {
    use std::os::fd::AsRawFd as _;
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return;
    };
    if value == 0 {
        return;
    }
    // SAFETY: setsockopt reads one int from a live local; the fd belongs to `stream`, which
    // outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The answer to a connection that is not admitted: written raw, then the socket is closed.
pub fn refusal_response(why: Refusal) -> Vec<u8> {
    let message = match why {
        Refusal::TooManyConnections => {
            "stevedore has as many client connections open as limits.max-connections allows"
        }
        Refusal::TooManyFromClient => {
            "this client has as many connections open as limits.max-connections-per-client allows"
        }
    };
    let body = super::response::error_json(crate::pull::ErrorCode::Unavailable, message);
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\ndocker-distribution-api-version: registry/2.0\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// What a connection has been doing, in milliseconds since it opened (0 = never).
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_io: AtomicU64,
    /// When the first bytes of the next request head arrived, while none was in flight.
    head_started: AtomicU64,
    /// When writing to the client started to wait for it, while it still does.
    blocked_since: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_io: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now(&self) -> u64 {
        // Never 0, which means "not set".
        self.opened.elapsed().as_millis() as u64 + 1
    }

    /// A request's head arrived: it is in flight until the guard (kept with its response
    /// body) drops.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight {
            activity: self.clone(),
        }
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
        self.blocked_since.store(0, Ordering::Relaxed);
    }

    fn write_blocked(&self) {
        let now = self.now();
        let _ = self
            .blocked_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Why the connection should be closed now, if it should.
    fn verdict(&self, limits: &Timeouts) -> Option<&'static str> {
        let now = self.now();
        let since = |t: u64| Duration::from_millis(now.saturating_sub(t));
        let blocked = self.blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && since(blocked) > limits.send {
            return Some("the client stopped reading a response (limits.send-timeout)");
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && since(head) > limits.header {
            return Some("a request head took too long to arrive (limits.header-read-timeout)");
        }
        if head == 0 && since(self.last_io.load(Ordering::Relaxed)) > limits.idle {
            return Some("idle (limits.idle-timeout)");
        }
        None
    }
}

/// Marks a request in flight while alive.
pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity
            .last_io
            .store(self.activity.now(), Ordering::Relaxed);
    }
}

/// The time limits the watchdog applies.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
}

impl From<&LimitsConfig> for Timeouts {
    fn from(l: &LimitsConfig) -> Self {
        Self {
            header: l.header_read_timeout,
            idle: l.idle_timeout,
            send: l.send_timeout,
        }
    }
}

/// Resolves when the connection should be closed, with the reason.
pub async fn watchdog(activity: Arc<Activity>, limits: Timeouts) -> &'static str {
    let tick = (limits.header.min(limits.idle).min(limits.send) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if let Some(why) = activity.verdict(&limits) {
            return why;
        }
    }
}

/// A socket whose traffic is recorded in an [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.activity.read(buf.filled().len() - before);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.record(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.record(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> Watched<T> {
    fn record(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_and_v6_64s() {
        let a = ClientKey::of("2001:db8:1:2:3:4:5:6".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::1".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::of("::ffff:10.0.0.1".parse().unwrap()),
            ClientKey::of("10.0.0.1".parse().unwrap())
        );
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn admission_counts_per_client_and_in_total() {
        let limits = LimitsConfig {
            max_connections: 3,
            max_connections_per_client: 2,
            ..LimitsConfig::default()
        };
        let a = Admission::new(&limits);
        let x = ClientKey::of("10.0.0.1".parse().unwrap());
        let y = ClientKey::of("10.0.0.2".parse().unwrap());
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::TooManyFromClient));
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).err(), Some(Refusal::TooManyConnections));
        drop(t1);
        assert_eq!(a.open(), 2);
        assert!(a.admit(x).is_ok());
    }

    #[test]
    fn verdicts() {
        let t = Timeouts {
            header: Duration::from_millis(10),
            idle: Duration::from_millis(30),
            send: Duration::from_millis(10),
        };
        let act = Activity::new();
        assert_eq!(act.verdict(&t), None);
        act.read(5); // the start of a request head
        std::thread::sleep(Duration::from_millis(15));
        assert!(act.verdict(&t).unwrap().contains("header-read-timeout"));
        let guard = act.request_started();
        assert_eq!(act.verdict(&t), None, "a request in flight is not idle");
        act.write_blocked();
        std::thread::sleep(Duration::from_millis(15));
        assert!(act.verdict(&t).unwrap().contains("send-timeout"));
        act.wrote();
        drop(guard);
        assert_eq!(act.verdict(&t), None);
        std::thread::sleep(Duration::from_millis(35));
        assert!(act.verdict(&t).unwrap().contains("idle"));
    }
}
