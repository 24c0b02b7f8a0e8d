//! One fill per digest. The first request for a missing blob starts a fill on its own task;
//! concurrent requests join it and read the growing temp file as bytes land. The fill
//! outlives the client that started it (bounded by `fill-timeout`), resumes with `Range`
//! after a broken upstream connection, and commits only verified content.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::disk::{CommitError, DiskLayout, TempBlob};
use super::reader::{self, FillState, Guard, Progress};
use super::{Store, StoreStats};
use crate::pull::ByteStream;
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
}

/// A fill in progress (or just finished).
pub struct Fill {
    pub digest: Digest,
    pub total: Option<u64>,
    temp_path: PathBuf,
    committed_path: PathBuf,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    pub fn state(&self) -> FillState {
        self.progress.borrow().state.clone()
    }

    /// A reader of `[start, end)`, following the fill.
    pub fn reader(
        &self,
        start: u64,
        end: Option<u64>,
        guard: Option<Guard>,
    ) -> io::Result<ByteStream> {
        let file = match std::fs::File::open(&self.temp_path) {
            Ok(f) => f,
            // Committed (renamed) between the join and this open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::File::open(&self.committed_path)?
            }
            Err(e) => return Err(e),
        };
        Ok(reader::stream(
            file,
            start,
            end,
            self.total,
            self.progress.clone(),
            guard,
        ))
    }
}

/// The answer of [`Fills::join_or_start`].
pub enum Joined {
    /// A fill to read from; `started` is true for the request that started it.
    Fill { fill: Arc<Fill>, started: bool },
    /// The content was committed meanwhile: read it from the store.
    Stored,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Fill>>>>;

#[derive(Default)]
pub struct Fills {
    slots: Mutex<HashMap<Digest, Slot>>,
}

impl Fills {
    fn slot(&self, digest: &Digest) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .clone()
    }

    fn release(&self, digest: &Digest) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }

    /// Removes `slot` if it is still the table's entry and nobody else waits on it.
    fn forget_unused(&self, digest: &Digest, slot: &Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // The table and the caller hold the only references: no waiter is left behind.
        if slots.get(digest).is_some_and(|s| Arc::ptr_eq(s, slot)) && Arc::strong_count(slot) == 2 {
            slots.remove(digest);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Store {
    /// Joins the fill of `digest`, or starts one with the source `start` produces. Only the
    /// request that starts a fill waits for `start`; the others wait for it to decide.
    pub async fn join_or_start<E, F>(
        self: &Arc<Self>,
        digest: &Digest,
        start: F,
    ) -> Result<Joined, E>
    where
        F: Future<Output = Result<FillSource, E>>,
        E: From<io::Error>,
    {
        let slot = self.fills.slot(digest);
        let outcome = {
            let mut current = slot.lock().await;
            self.join_or_start_locked(&mut current, digest, start).await
        };
        // A slot that got no fill (an upstream error, content already stored) must not stay
        // behind: clients probing missing digests would grow the table without bound.
        if !matches!(outcome, Ok(Joined::Fill { .. })) {
            self.fills.forget_unused(digest, &slot);
        }
        outcome
    }

    async fn join_or_start_locked<E, F>(
        self: &Arc<Self>,
        current: &mut Option<Arc<Fill>>,
        digest: &Digest,
        start: F,
    ) -> Result<Joined, E>
    where
        F: Future<Output = Result<FillSource, E>>,
        E: From<io::Error>,
    {
        if let Some(fill) = current.as_ref() {
            match fill.state() {
                FillState::Running => {
                    return Ok(Joined::Fill {
                        fill: fill.clone(),
                        started: false,
                    });
                }
                FillState::Committed => return Ok(Joined::Stored),
                FillState::Failed(_) => {}
            }
        }
        if self.layout.size(digest).is_some() {
            return Ok(Joined::Stored);
        }
        let source = start.await?;
        let layout = self.layout.clone();
        let d = digest.clone();
        let temp = tokio::task::spawn_blocking(move || layout.temp(&d))
            .await
            .map_err(io::Error::other)??;
        let (tx, rx) = watch::channel(Progress {
            written: 0,
            state: FillState::Running,
        });
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            total: source.total,
            temp_path: temp.path().to_owned(),
            committed_path: self.layout.path(digest),
            progress: rx,
        });
        *current = Some(fill.clone());
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        let store = self.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let timeout = store.config.fill_timeout;
            let outcome =
                match tokio::time::timeout(timeout, pump(&store, temp, source, tx.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("fill did not finish within {timeout:?}")),
                };
            match outcome {
                Ok(size) => {
                    store.committed(&digest, size);
                    tx.send_modify(|p| p.state = FillState::Committed);
                }
                Err(reason) => {
                    tracing::warn!(%digest, %reason, "fill failed");
                    tx.send_modify(|p| p.state = FillState::Failed(reason));
                }
            }
            store.fills.release(&digest);
        });
        Ok(Joined::Fill {
            fill,
            started: true,
        })
    }
}

/// Moves bytes from upstream to the temp file (written and hashed on a blocking thread),
/// resuming after broken connections; commits when the digest matches.
async fn pump(
    store: &Store,
    temp: TempBlob,
    source: FillSource,
    progress: watch::Sender<Progress>,
) -> Result<u64, String> {
    let stats: &StoreStats = &store.stats;
    let (chunks, mut rx) = mpsc::channel::<Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<TempBlob> {
        let mut temp = temp;
        while let Some(chunk) = rx.blocking_recv() {
            temp.write(&chunk)?;
            let written = temp.written();
            progress.send_modify(|p| p.written = written);
        }
        Ok(temp)
    });
    let FillSource {
        total,
        mut body,
        resume,
    } = source;
    let mut received: u64 = 0;
    let mut skip: u64 = 0;
    let mut resumes = 0u32;
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
                    return Err("upstream sent more bytes than it announced".to_owned());
                }
                stats
                    .upstream_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if chunks.send(chunk).await.is_err() {
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
            return Err(format!("{broken}; gave up after {} resumes", resumes - 1));
        }
        stats.resumes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%broken, from = received, "resuming fill");
        tokio::time::sleep(Duration::from_millis(100 * u64::from(resumes))).await;
        match resume(received).await {
            Ok((next, from_offset)) => {
                body = next;
                skip = if from_offset { 0 } else { received };
            }
            Err(e) => return Err(format!("{broken}; resuming failed: {e}")),
        }
    }
    drop(chunks);
    let temp = writer
        .await
        .map_err(|e| format!("writer task: {e}"))?
        .map_err(|e| format!("writing the store: {e}"))?;
    let size = temp.written();
    let layout: DiskLayout = store.layout.clone();
    let committed = tokio::task::spawn_blocking(move || temp.commit(&layout, None))
        .await
        .map_err(|e| format!("commit task: {e}"))?;
    match committed {
        Ok(()) => Ok(size),
        Err(CommitError::Mismatch {
            expected,
            actual,
            size,
        }) => {
            stats.digest_mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%expected, %actual, size, "upstream sent corrupt content: discarded");
            Err(format!(
                "digest mismatch: expected {expected}, got {actual}"
            ))
        }
        Err(CommitError::Io(e)) => Err(format!("committing to the store: {e}")),
    }
}
