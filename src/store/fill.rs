//! Fills: a missing blob written from its upstream body into a temp file on its own task,
//! read by any number of requests as bytes land, resumed with `Range` after a broken
//! upstream connection, committed only when its digest matches. The fill outlives the client
//! that started it (bounded by `fill-timeout`).
//!
//! Which request starts a fill, and how others find it, is the engine's fill table
//! (`pull::flight`); the store admits fills (a bounded number, space permitting) and runs
//! them.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::Instrument as _;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::disk::{CommitError, DiskLayout, TempBlob};
use super::reader::{self, FillFailure, FillState, Guard, Progress};
use super::{Store, StoreStats};
use crate::body::{ByteStream, ChunkLimit};
use crate::reference::Digest;

/// Re-fetches a blob from a byte offset: the stream, and whether it starts at that offset
/// (`206`) or at zero (an upstream that ignored `Range`).
pub type Resume = Box<
    dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(ByteStream, bool), String>> + Send>>
        + Send
        + Sync,
>;

/// Where a fill's bytes come from.
pub struct FillSource {
    /// Size announced by the upstream.
    pub total: Option<u64>,
    pub body: ByteStream,
    pub resume: Resume,
    /// The bytes come from the shared bucket (so they are not uploaded back to it).
    pub from_bucket: bool,
}

/// One of `store.max-concurrent-fills`: held by a fill (or a stream passed through without
/// being stored) until it ends.
pub struct FillPermit {
    _slot: OwnedSemaphorePermit,
}

/// Why a miss is streamed without being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    /// The store is below its free-space watermark.
    LowSpace,
    /// The blob is larger than `store.max-size`.
    TooLarge,
}

/// A fill in progress (or just finished).
pub struct Fill {
    pub digest: Digest,
    pub total: Option<u64>,
    /// The fill's span: the request that started it is its trace parent, those that joined
    /// it are linked to it.
    pub span: tracing::Span,
    temp_path: PathBuf,
    committed_path: PathBuf,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    pub fn state(&self) -> FillState {
        self.progress.borrow().state.clone()
    }

    /// Waits until the fill committed or failed.
    pub async fn finished(&self) -> FillState {
        let mut rx = self.progress.clone();
        let waited = rx
            .wait_for(|p| matches!(p.state, FillState::Committed | FillState::Failed(_)))
            .await
            .map(|p| p.state.clone());
        waited.unwrap_or_else(|_| rx.borrow().state.clone())
    }

    /// A reader of `[start, end)`, following the fill, its chunks sized by `chunk`.
    pub async fn reader(
        &self,
        start: u64,
        end: Option<u64>,
        guard: Option<Guard>,
        chunk: ChunkLimit,
    ) -> io::Result<ByteStream> {
        let (temp, committed) = (self.temp_path.clone(), self.committed_path.clone());
        let file = tokio::task::spawn_blocking(move || match std::fs::File::open(&temp) {
            Ok(f) => Ok(f),
            // Committed (renamed) between the join and this open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::File::open(&committed),
            Err(e) => Err(e),
        })
        .await
        .map_err(io::Error::other)??;
        Ok(reader::stream(
            file,
            start,
            end,
            self.total,
            self.progress.clone(),
            guard,
            chunk,
        ))
    }
}

impl Store {
    /// One of `store.max-concurrent-fills` upstream transfers; `None` when all are taken.
    pub fn fill_slot(&self) -> Option<FillPermit> {
        let slot = self.fill_slots.clone().try_acquire_owned().ok()?;
        Some(FillPermit { _slot: slot })
    }

    /// Whether a blob of `size` bytes (when announced) may be stored.
    pub fn may_keep(&self, size: Option<u64>) -> Result<(), PassReason> {
        if size.is_some_and(|size| size > self.config.max_size.0) {
            return Err(PassReason::TooLarge);
        }
        // Fills in progress will write what they reserved: count it as taken.
        let need = size.unwrap_or(0).saturating_add(self.lru.reserved());
        if self.space.is_low(0) || self.space.is_low(need) {
            return Err(PassReason::LowSpace);
        }
        Ok(())
    }

    /// Counts a miss streamed without being stored.
    pub fn passed_through(&self) {
        self.stats.pass_throughs.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts filling `digest` from `source` on its own task. The announced size is held
    /// against `max-size` (evicting to make room) until the fill ends.
    pub async fn start_fill(
        self: &Arc<Self>,
        permit: FillPermit,
        digest: &Digest,
        source: FillSource,
    ) -> io::Result<Arc<Fill>> {
        let reservation = self.lru.reserve(source.total.unwrap_or(0));
        let from_bucket = source.from_bucket;
        let victims = self.lru.take_victims(self.config.max_size.0);
        let d = digest.clone();
        let temp = self
            .blocking(move |s| {
                s.remove_victims(victims);
                s.layout.temp(&d)
            })
            .await?;
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            state: FillState::Running,
        });
        let span = tracing::info_span!(
            parent: None,
            "fill",
            %digest,
            request_id = crate::telemetry::request::current_id().unwrap_or_default(),
            size = source.total,
        );
        crate::telemetry::request::parent_current(&span);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            total: source.total,
            span: span.clone(),
            temp_path: temp.path().to_owned(),
            committed_path: self.layout.path(digest),
            progress: rx,
        });
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        let store = self.clone();
        let digest = digest.clone();
        tokio::spawn(
            async move {
                let timeout = store.config.fill_timeout;
                let pumped = tokio::time::timeout(timeout, pump(&store, temp, source, tx.clone()));
                let outcome = tokio::select! {
                    r = pumped => match r {
                        Ok(r) => r,
                        Err(_) => Err(FillFailure::Upstream(format!(
                            "fill did not finish within {timeout:?}"
                        ))),
                    },
                    () = store.stopping.cancelled() => Err(FillFailure::Upstream(
                        "aborted: stevedore is shutting down".to_owned(),
                    )),
                };
                match outcome {
                    Ok(size) => {
                        tracing::info!(bytes = size, "fill committed");
                        if !from_bucket {
                            let (backend, d) = (store.backend.clone(), digest.clone());
                            let path = store.layout.path(&digest);
                            tokio::spawn(async move { backend.put_blob(&d, path).await });
                        }
                        store.lru.insert(&digest, size);
                        drop(reservation);
                        let victims = store.lru.take_victims(store.config.max_size.0);
                        store.evict_later(victims);
                        store.space.invalidate();
                        tx.send_modify(|p| p.state = FillState::Committed);
                    }
                    Err(failure) => {
                        tracing::warn!(%digest, reason = %failure, "fill failed");
                        // Bad bytes in the shared bucket are removed, so that the next
                        // request fetches the blob from upstream instead.
                        if let (true, FillFailure::Corrupt(_)) = (from_bucket, &failure) {
                            let (backend, d) = (store.backend.clone(), digest.clone());
                            tokio::spawn(async move { backend.remove_blob(&d).await });
                        }
                        tx.send_modify(|p| p.state = FillState::Failed(failure));
                    }
                }
                drop(permit);
            }
            .instrument(span),
        );
        Ok(fill)
    }
}

/// Largest write of a fill's temp file.
const WRITE_BLOCK: usize = 1 << 20;

/// A failure to write the temp file: a full disk is told apart.
fn store_failure(what: &str, e: &io::Error) -> FillFailure {
    FillFailure::Store {
        reason: format!("{what}: {e}"),
        full: e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::EDQUOT),
    }
}

/// Moves bytes from upstream to the temp file (written and hashed on a blocking thread),
/// resuming after broken connections; commits when the digest matches.
async fn pump(
    store: &Store,
    temp: TempBlob,
    source: FillSource,
    progress: watch::Sender<Progress>,
) -> Result<u64, FillFailure> {
    let stats: &StoreStats = &store.stats;
    let (chunks, mut rx) = mpsc::channel::<Bytes>(16);
    let verified = progress.clone();
    // Hashing and writing run on two threads, each fed every chunk in order: on one they
    // took about 1.8 s per GiB here, the slowest stage of a single fill.
    let mut temp = temp;
    let hasher = temp.take_hasher();
    let (to_hasher, mut hash_rx) = mpsc::channel::<Bytes>(16);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher?;
        while let Some(chunk) = hash_rx.blocking_recv() {
            hasher.update(&chunk);
        }
        Some(hasher.finish())
    });
    let writer = tokio::task::spawn_blocking(move || -> io::Result<TempBlob> {
        let mut temp = temp;
        // Chunks that have arrived are gathered into one block (up to WRITE_BLOCK) per
        // write: a fill written chunk by chunk as the network delivers them spent several
        // times the CPU in the kernel's page-cache copy (docs/benchmarks.md, s3-tier).
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BLOCK);
        while let Some(chunk) = rx.blocking_recv() {
            buf.extend_from_slice(&chunk);
            while buf.len() < WRITE_BLOCK {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            temp.write(&buf)?;
            buf.clear();
            let written = temp.written();
            progress.send_modify(|p| p.written = written);
        }
        Ok(temp)
    });
    let FillSource {
        total,
        mut body,
        resume,
        ..
    } = source;
    let mut received: u64 = 0;
    let mut skip: u64 = 0;
    let mut resumes = 0u32;
    let upstream = |s: String| FillFailure::Upstream(s);
    loop {
        let broken = match body.next().await {
            Some(Ok(mut chunk)) => {
                if skip > 0 {
                    let n = skip.min(chunk.len() as u64);
                    skip -= n;
                    chunk = chunk.slice(n as usize..);
                    if chunk.is_empty() {
                        continue;
                    }
                }
                received += chunk.len() as u64;
                if total.is_some_and(|t| received > t) {
                    return Err(upstream(
                        "upstream sent more bytes than it announced".to_owned(),
                    ));
                }
                // Without an announced size, nothing larger than the store can be kept.
                if received > store.config.max_size.0 {
                    return Err(upstream(format!(
                        "upstream sent more than store.max-size ({} bytes)",
                        store.config.max_size.0
                    )));
                }
                stats
                    .upstream_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if to_hasher.send(chunk.clone()).await.is_err() || chunks.send(chunk).await.is_err()
                {
                    // The writer stopped: its error is reported below.
                    break;
                }
                continue;
            }
            Some(Err(e)) => format!("upstream connection broke: {e}"),
            None if total.is_some_and(|t| received < t) => {
                "upstream ended the body early".to_owned()
            }
            None => break,
        };
        resumes += 1;
        if resumes > store.config.fill_retries {
            return Err(upstream(format!(
                "{broken}; gave up after {} resumes",
                resumes - 1
            )));
        }
        stats.resumes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%broken, from = received, "resuming fill");
        tokio::time::sleep(Duration::from_millis(100 * u64::from(resumes))).await;
        match resume(received).await {
            Ok((next, from_offset)) => {
                body = next;
                skip = if from_offset { 0 } else { received };
            }
            Err(e) => return Err(upstream(format!("{broken}; resuming failed: {e}"))),
        }
    }
    drop(chunks);
    drop(to_hasher);
    let mut temp = writer
        .await
        .map_err(|e| upstream(format!("writer task: {e}")))?
        .map_err(|e| store_failure("writing the store", &e))?;
    let actual = hashing
        .await
        .map_err(|e| upstream(format!("hashing task: {e}")))?;
    if let Some(actual) = actual {
        temp.set_hashed(actual);
    }
    let size = temp.written();
    let layout: DiskLayout = store.layout.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let mut temp = temp;
        temp.verify()?;
        // The bytes are right: readers finish now rather than after the fsync of the whole
        // blob (about 0.6 s per GiB here). Should making it durable fail, those still
        // reading end with an error; nothing unverified is ever delivered.
        verified.send_modify(|p| p.state = FillState::Verified);
        temp.commit(&layout, None)
    })
    .await
    .map_err(|e| upstream(format!("commit task: {e}")))?;
    match committed {
        Ok(()) => Ok(size),
        Err(CommitError::Mismatch {
            expected,
            actual,
            size,
        }) => {
            stats.digest_mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%expected, %actual, size, "upstream sent corrupt content: discarded");
            Err(FillFailure::Corrupt(format!(
                "digest mismatch: expected {expected}, got {actual}"
            )))
        }
        Err(CommitError::Io(e)) => Err(store_failure("committing to the store", &e)),
    }
}
