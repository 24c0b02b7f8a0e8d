//! Byte streams as every layer passes them: the store's readers, the engine's verifying
//! streams and upstream bodies produce them; the front doors send them. Defined below all of
//! them so no layer has to reach up for the type.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::Stream;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Largest chunk a stored-content reader reads at once.
pub const MAX_CHUNK: usize = 256 * 1024;

/// The size of the next chunk a reader may read, set by whoever consumes the stream (the
/// front door sizes chunks to what the client's socket can take, and to the memory all
/// streams share). Readers that cannot choose their chunk size (upstream bodies) have none.
#[derive(Debug, Clone)]
pub struct ChunkLimit(Arc<AtomicUsize>);

impl Default for ChunkLimit {
    fn default() -> Self {
        Self(Arc::new(AtomicUsize::new(MAX_CHUNK)))
    }
}

impl ChunkLimit {
    pub fn set(&self, bytes: usize) {
        self.0.store(bytes.clamp(1, MAX_CHUNK), Ordering::Relaxed);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed).clamp(1, MAX_CHUNK)
    }
}

/// A response body on its way to a client: the stream, and its chunk size knob when it has
/// one.
pub struct BlobBody {
    pub stream: ByteStream,
    pub chunk_limit: Option<ChunkLimit>,
}

impl BlobBody {
    /// A stream whose chunk sizes its producer decides.
    pub fn unpaced(stream: ByteStream) -> Self {
        Self {
            stream,
            chunk_limit: None,
        }
    }
}

/// `stream`, keeping `guard` alive until the stream is dropped (a permit, a pin).
pub fn hold(stream: ByteStream, guard: impl Send + 'static) -> ByteStream {
    use futures_util::StreamExt as _;
    Box::pin(stream.map(move |item| {
        let _ = &guard;
        item
    }))
}
