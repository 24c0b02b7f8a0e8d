//! Reading a large object from the bucket as ranged GETs of [`SEGMENT`] bytes, a few in
//! flight at once and delivered in order. One GET from an object store is paced by the store's
//! block-by-block reads; several keep it busy, as any S3 client that downloads large objects
//! does. What is fetched ahead is bounded twice: per object ([`AHEAD`] segments) and per
//! process (a [`Budget`] of segments shared by every fill), acquired in order so that a fill
//! always holds the segment it needs next before any later one.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ByteStream;

/// Bytes per ranged GET.
pub const SEGMENT: u64 = 8 << 20;
/// Segments of one object in flight at once.
const AHEAD: usize = 4;
/// Chunks handed on from a segment (so that the fill's readers see progress sooner).
const SLICE: usize = 1 << 20;

/// Segments fetched and not yet handed on, across the process.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    /// Room for `segments` at once.
    pub fn new(segments: usize) -> Self {
        Self(Arc::new(Semaphore::new(segments)))
    }
}

/// `[from, total)` of `path`, in order.
pub fn ranged(
    s3: Arc<dyn ObjectStore>,
    path: Path,
    from: u64,
    total: u64,
    budget: Budget,
) -> ByteStream {
    let ranges = (from..total)
        .step_by(SEGMENT as usize)
        .map(move |start| start..(start + SEGMENT).min(total));
    let fetched = stream::iter(ranges)
        .then(move |range| {
            let budget = budget.0.clone();
            async move { (budget.acquire_owned().await.ok(), range) }
        })
        .map(
            move |(permit, range): (Option<OwnedSemaphorePermit>, Range<u64>)| {
                let (s3, path) = (s3.clone(), path.clone());
                async move {
                    let bytes = s3
                        .get_range(&path, range)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    Ok::<_, std::io::Error>(Slices {
                        bytes,
                        _permit: permit,
                    })
                }
            },
        )
        .buffered(AHEAD);
    Box::pin(fetched.flat_map(|segment| match segment {
        Ok(slices) => stream::iter(slices).map(Ok).left_stream(),
        Err(e) => stream::once(async move { Err(e) }).right_stream(),
    }))
}

/// A fetched segment, handed on in slices; its share of the budget is returned when the
/// last slice has gone.
struct Slices {
    bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Iterator for Slices {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.bytes.is_empty() {
            return None;
        }
        let n = self.bytes.len().min(SLICE);
        Some(self.bytes.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn delivers_every_byte_in_order_from_any_offset() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..(SEGMENT as usize * 3 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let path = Path::from("blob");
        store
            .put(&path, PutPayload::from(data.clone()))
            .await
            .unwrap();
        let budget = Budget::new(2);
        for from in [0, 1, SEGMENT - 1, SEGMENT * 2 + 7] {
            let mut s = ranged(
                store.clone(),
                path.clone(),
                from,
                data.len() as u64,
                budget.clone(),
            );
            let mut got = Vec::new();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.unwrap();
                assert!(chunk.len() <= SLICE);
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, data[from as usize..], "from {from}");
        }
        // Every share of the budget came back.
        assert_eq!(budget.0.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_missing_object_ends_in_an_error() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut s = ranged(store, Path::from("gone"), 0, SEGMENT * 2, Budget::new(1));
        assert!(s.next().await.unwrap().is_err());
    }
}
