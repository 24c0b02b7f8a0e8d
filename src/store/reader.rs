//! Streams content from a file that may still be growing: a committed blob, or the temp file
//! of a fill in progress. Readers follow the fill's progress and never deliver the final byte
//! before the fill is verified, so a corrupt blob ends in an error, never in a clean end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::body::{ByteStream, ChunkLimit};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillState {
    Running,
    /// Every byte is written and matches the digest; the file is being made durable and
    /// moved to its digest path. Readers may deliver the last byte.
    Verified,
    Committed,
    Failed(FillFailure),
}

/// Why a fill ended without committing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillFailure {
    /// The upstream failed: broke off, sent too much, timed out.
    #[error("{0}")]
    Upstream(String),
    /// The content did not match its digest.
    #[error("{0}")]
    Corrupt(String),
    /// Writing the store failed; `full` when the file system is out of space or quota.
    #[error("{reason}")]
    Store { reason: String, full: bool },
}

impl FillFailure {
    fn io_error(&self) -> io::Error {
        let kind = match self {
            FillFailure::Upstream(_) => io::ErrorKind::BrokenPipe,
            FillFailure::Corrupt(_) => io::ErrorKind::InvalidData,
            FillFailure::Store { full: true, .. } => io::ErrorKind::StorageFull,
            FillFailure::Store { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, self.to_string())
    }
}

/// How far a fill has got.
#[derive(Debug, Clone)]
pub struct Progress {
    pub written: u64,
    pub state: FillState,
}

/// Something a reader holds until it ends (an eviction pin).
pub type Guard = Box<dyn Send + Sync>;

struct ReadState {
    file: Arc<File>,
    pos: u64,
    /// Exclusive end asked for (a range), if any.
    end: Option<u64>,
    total: Option<u64>,
    progress: watch::Receiver<Progress>,
    done: bool,
    chunk: ChunkLimit,
    _guard: Option<Guard>,
}

/// A stream of `[start, end)` of `file`, following `progress`.
pub fn stream(
    file: File,
    start: u64,
    end: Option<u64>,
    total: Option<u64>,
    progress: watch::Receiver<Progress>,
    guard: Option<Guard>,
    chunk: ChunkLimit,
) -> ByteStream {
    let state = ReadState {
        file: Arc::new(file),
        pos: start,
        end,
        total,
        progress,
        done: false,
        chunk,
        _guard: guard,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        match next_chunk(&mut st).await {
            Ok(Some(bytes)) => Some((Ok(bytes), st)),
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    }))
}

/// A stream over a committed file of `size` bytes.
pub fn committed(
    file: File,
    size: u64,
    start: u64,
    end: Option<u64>,
    guard: Option<Guard>,
    chunk: ChunkLimit,
) -> ByteStream {
    let (_tx, rx) = watch::channel(Progress {
        written: size,
        state: FillState::Committed,
    });
    stream(file, start, end, Some(size), rx, guard, chunk)
}

async fn next_chunk(st: &mut ReadState) -> io::Result<Option<Bytes>> {
    loop {
        let p = st.progress.borrow_and_update().clone();
        let committed = match &p.state {
            FillState::Failed(failure) => return Err(failure.io_error()),
            FillState::Verified | FillState::Committed => true,
            FillState::Running => false,
        };
        // Until verified, hold back the last byte of the blob.
        let deliverable = match (committed, st.total) {
            (true, _) => p.written,
            (false, Some(total)) => p.written.min(total.saturating_sub(1)),
            (false, None) => p.written,
        };
        let target = st.end.or(st.total);
        if let Some(target) = target
            && st.pos >= target
        {
            // A range that stops short of the blob's end needs no verification to finish.
            let short_range = st.total.is_some_and(|t| target < t);
            if committed || short_range {
                return Ok(None);
            }
        } else if st.pos >= p.written && committed {
            return Ok(None);
        }
        let limit = target.map_or(deliverable, |t| deliverable.min(t));
        if st.pos < limit {
            let len = (limit - st.pos).min(st.chunk.get() as u64) as usize;
            let pos = st.pos;
            // Page-cache hits are copied right here; only reads that would wait for the disk
            // go to a blocking thread.
            let bytes = match read_cached(&st.file, pos, len) {
                Some(bytes) => bytes,
                None => {
                    let file = st.file.clone();
                    tokio::task::spawn_blocking(move || read_blocking(&file, pos, len))
                        .await
                        .map_err(io::Error::other)??
                }
            };
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stored content is shorter than recorded",
                ));
            }
            st.pos += bytes.len() as u64;
            return Ok(Some(Bytes::from(bytes)));
        }
        if st.progress.changed().await.is_err() {
            // The fill is gone; its last word stands.
            let last = st.progress.borrow().clone();
            if matches!(last.state, FillState::Running | FillState::Verified) {
                return Err(io::Error::other("the fill ended without finishing"));
            }
        }
    }
}

/// Reads up to `len` bytes at `pos` only if they are in the page cache (`preadv2` with
/// `RWF_NOWAIT`); `None` when the read would block or the kernel does not support it.
fn read_cached(file: &File, pos: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(pos).ok()?;
    // SAFETY: the iovec points at `len` bytes of `buf`'s allocation, which outlives the
    // call; the kernel writes at most `len` bytes and returns how many.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n <= 0 {
        return None;
    }
    // SAFETY: the kernel initialised the first `n` bytes (n <= len <= capacity).
    unsafe { buf.set_len(n as usize) };
    Some(buf)
}

/// Reads up to `len` bytes at `pos`, waiting for the disk if need be.
fn read_blocking(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0usize;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write as _;

    async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn committed_ranges() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"0123456789").unwrap();
        let open = || File::open(f.path()).unwrap();
        assert_eq!(
            collect(committed(open(), 10, 0, None, None, ChunkLimit::default()))
                .await
                .unwrap(),
            b"0123456789"
        );
        assert_eq!(
            collect(committed(
                open(),
                10,
                3,
                Some(5),
                None,
                ChunkLimit::default()
            ))
            .await
            .unwrap(),
            b"34"
        );
        assert_eq!(
            collect(committed(open(), 10, 8, None, None, ChunkLimit::default()))
                .await
                .unwrap(),
            b"89"
        );
    }

    /// A reader of all of `f`, a fill of `total` bytes still running, and its progress.
    fn following(f: &tempfile::NamedTempFile, total: u64) -> (watch::Sender<Progress>, ByteStream) {
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            state: FillState::Running,
        });
        let s = stream(
            File::open(f.path()).unwrap(),
            0,
            None,
            Some(total),
            rx,
            None,
            ChunkLimit::default(),
        );
        (tx, s)
    }

    #[tokio::test]
    async fn follows_a_growing_file_and_holds_the_last_byte_until_verified() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let (tx, mut s) = following(&f, 6);
        f.write_all(b"abcdef").unwrap();
        tx.send_modify(|p| p.written = 6);
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"abcde");
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), s.next()).await;
        assert!(pending.is_err(), "the last byte waits for verification");
        tx.send_modify(|p| {
            p.state = FillState::Failed(FillFailure::Corrupt("digest mismatch".into()))
        });
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn the_last_byte_goes_out_once_verified_before_the_commit() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"abcdef").unwrap();
        let (tx, mut s) = following(&f, 6);
        tx.send_modify(|p| p.written = 6);
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"abcde");
        tx.send_modify(|p| p.state = FillState::Verified);
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"f");
        assert!(
            s.next().await.is_none(),
            "ends without waiting for the commit"
        );
    }

    #[tokio::test]
    async fn ends_after_commit() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"abc").unwrap();
        let (tx, rx) = watch::channel(Progress {
            written: 3,
            state: FillState::Running,
        });
        let s = stream(
            File::open(f.path()).unwrap(),
            1,
            None,
            None,
            rx,
            None,
            ChunkLimit::default(),
        );
        let reader = tokio::spawn(collect(s));
        tokio::task::yield_now().await;
        tx.send_modify(|p| p.state = FillState::Committed);
        assert_eq!(reader.await.unwrap().unwrap(), b"bc");
    }
}

#[cfg(test)]
mod nowait_tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn cached_and_blocking_reads_agree() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"0123456789").unwrap();
        let file = File::open(f.path()).unwrap();
        assert_eq!(read_blocking(&file, 2, 4).unwrap(), b"2345");
        // Where RWF_NOWAIT is supported, a fresh write is in the page cache.
        let cached = read_cached(&file, 2, 4);
        if let Some(bytes) = cached {
            assert_eq!(bytes, b"2345");
        }
    }
}
