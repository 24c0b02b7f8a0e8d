//! Response bodies whose memory is bounded whatever clients do.
//!
//! A stream keeps at most one chunk in flight: the next is read only once the client's
//! connection has taken the previous one (handed it to the kernel). The size of that chunk
//! follows what the client can take: over HTTP/1.1 it is the free room in the socket's send
//! buffer (so a client that stops reading holds one small chunk, not a large one); over
//! HTTP/2 it grows while chunks leave at once and shrinks when they wait. And all streams
//! share one budget (`limits.stream-buffer`): past it every stream reads small chunks, so a
//! thousand streams cost the budget plus a little each.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{BlobBody, ByteStream, ChunkLimit, MAX_CHUNK};

/// The smallest chunk read: what a stream gets when its client does not keep up or the
/// shared budget is spent.
pub const MIN_CHUNK: usize = 16 * 1024;

/// Memory all response streams share for chunks in flight.
#[derive(Debug)]
pub struct StreamMemory {
    capacity: AtomicUsize,
    used: AtomicUsize,
}

impl StreamMemory {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: AtomicUsize::new(capacity),
            used: AtomicUsize::new(0),
        })
    }

    /// How many bytes a stream that wants `want` may read now.
    fn grant(&self, want: usize) -> usize {
        let free = self
            .capacity
            .load(Ordering::Relaxed)
            .saturating_sub(self.used.load(Ordering::Relaxed));
        want.min(free).max(MIN_CHUNK)
    }

    /// Changes the budget (config reload); streams adapt with their next chunk.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Bytes in flight now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Where a stream's bytes go, as far as pacing is concerned.
#[derive(Debug, Clone)]
pub struct Pacer {
    pub memory: Arc<StreamMemory>,
    /// The connection's TCP socket, when one response at a time uses it (HTTP/1.1): its send
    /// buffer tells how much the client can take.
    pub socket: Option<RawFd>,
}

/// Tells a stream that its chunk in flight was taken.
#[derive(Debug, Default)]
struct Release {
    held: AtomicBool,
    waker: AtomicWaker,
}

/// A chunk in flight: returns its bytes to the budget when the connection is done with it.
struct InFlight {
    bytes: Bytes,
    memory: Arc<StreamMemory>,
    release: Arc<Release>,
}

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.memory
            .used
            .fetch_sub(self.bytes.len(), Ordering::Relaxed);
        self.release.held.store(false, Ordering::Release);
        self.release.waker.wake();
    }
}

/// A paced response body.
pub struct Paced {
    stream: ByteStream,
    limit: Option<ChunkLimit>,
    pacer: Pacer,
    release: Arc<Release>,
    /// Chunk size when the socket cannot be asked.
    size: usize,
    /// Whether the last chunk had to wait before it was taken.
    waited: bool,
    /// Whether `size` has yet to learn from the last chunk.
    adapt: bool,
}

impl Paced {
    pub fn new(body: BlobBody, pacer: Pacer) -> Self {
        Self {
            stream: body.stream,
            limit: body.chunk_limit,
            pacer,
            release: Arc::default(),
            size: 64 * 1024,
            waited: false,
            adapt: false,
        }
    }

    /// The chunk size this stream should read next.
    fn want(&mut self) -> usize {
        let want = match self.pacer.socket.and_then(send_room) {
            Some(room) => room,
            None => {
                if std::mem::take(&mut self.adapt) {
                    self.size = if self.waited {
                        (self.size / 2).max(MIN_CHUNK)
                    } else {
                        (self.size * 2).min(MAX_CHUNK)
                    };
                }
                self.size
            }
        };
        self.pacer.memory.grant(want.clamp(MIN_CHUNK, MAX_CHUNK))
    }
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.release.held.load(Ordering::Acquire) {
            this.release.waker.register(cx.waker());
            if this.release.held.load(Ordering::Acquire) {
                this.waited = true;
                return Poll::Pending;
            }
        }
        if this.limit.is_some() {
            let want = this.want();
            if let Some(limit) = &this.limit {
                limit.set(want);
            }
        }
        match this.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                this.waited = false;
                this.adapt = true;
                this.pacer
                    .memory
                    .used
                    .fetch_add(bytes.len(), Ordering::Relaxed);
                this.release.held.store(true, Ordering::Release);
                let chunk = Bytes::from_owner(InFlight {
                    bytes,
                    memory: this.pacer.memory.clone(),
                    release: this.release.clone(),
                });
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Free room in a TCP socket's send buffer: half of `SO_SNDBUF` (the kernel doubles what it
/// reports, for its own bookkeeping) less the bytes not yet sent (`SIOCOUTQ`).
fn send_room(fd: RawFd) -> Option<usize> {
    let mut sndbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `sndbuf`, an int-sized local, and
    // an fd that is not a socket (or is closed) only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut sndbuf as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int into `queued`.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued as *mut libc::c_int) };
    if rc != 0 {
        return None;
    }
    let room = (sndbuf / 2).saturating_sub(queued);
    usize::try_from(room).ok()
}

/// A body that keeps `guard` alive until it is dropped (a request's in-flight mark).
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin, G: Unpin> HttpBody for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(n: usize, size: usize) -> ByteStream {
        let items: Vec<io::Result<Bytes>> =
            (0..n).map(|_| Ok(Bytes::from(vec![1u8; size]))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn one_chunk_in_flight_and_the_budget_is_returned() {
        let memory = StreamMemory::new(1 << 20);
        let pacer = Pacer {
            memory: memory.clone(),
            socket: None,
        };
        let mut body = Paced::new(BlobBody::unpaced(chunks(3, 1000)), pacer);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(memory.used(), 1000);
        // The first chunk is still held: the next poll waits for it.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        drop(first);
        assert_eq!(memory.used(), 0);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second.len(), 1000);
        drop(second);
        let third = body.frame().await.unwrap().unwrap();
        drop(third);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn grants_shrink_to_the_minimum_when_the_budget_is_spent() {
        let memory = StreamMemory::new(100_000);
        assert_eq!(memory.grant(64 * 1024), 64 * 1024);
        memory.used.store(90_000, Ordering::Relaxed);
        assert_eq!(memory.grant(64 * 1024), MIN_CHUNK);
    }

    #[test]
    fn send_room_of_a_socket() {
        use std::os::fd::AsRawFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let room = send_room(client.as_raw_fd()).unwrap();
        assert!(room > 0);
        assert_eq!(send_room(-1), None);
    }
}
