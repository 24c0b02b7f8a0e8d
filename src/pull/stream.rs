//! Byte streams from upstream to client, with verification on the way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::body::ByteStream;
use crate::reference::{Digest, Hasher};

/// Passes bytes through while hashing them; at the end, a digest or size mismatch becomes an
/// error instead of a clean end, so the client's transfer is aborted rather than completed
/// with wrong content.
pub struct Verifying {
    inner: ByteStream,
    expected: Digest,
    expected_len: Option<u64>,
    hasher: Option<Hasher>,
    seen: u64,
    /// The latest chunk, held back until the next arrives or the content is verified: a
    /// client must never receive the complete body of wrong content.
    held: Option<Bytes>,
}

impl Verifying {
    pub fn new(inner: ByteStream, expected: Digest, expected_len: Option<u64>) -> Self {
        let hasher = Some(expected.algorithm().hasher());
        Self {
            inner,
            expected,
            expected_len,
            hasher,
            seen: 0,
            held: None,
        }
    }
}

impl Stream for Verifying {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    this.seen += chunk.len() as u64;
                    if let Some(previous) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(this.finish()),
                Poll::Ready(Some(Err(e))) => {
                    this.hasher = None;
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Verifying {
    /// At the end of the input: the held chunk if everything matched, else an error.
    fn finish(&mut self) -> Option<Result<Bytes, io::Error>> {
        let hasher = self.hasher.take()?;
        if let Some(len) = self.expected_len
            && len != self.seen
        {
            self.held = None;
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upstream sent {} of {len} bytes", self.seen),
            )));
        }
        let actual = hasher.finish();
        if actual == self.expected {
            return self.held.take().map(Ok);
        }
        self.held = None;
        tracing::error!(expected = %self.expected, %actual, "blob digest mismatch: aborting the transfer");
        Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("digest mismatch: expected {}, got {actual}", self.expected),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<Result<Bytes, io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn passes_matching_content() {
        let d = Digest::sha256_of(b"hello world");
        let mut s = Verifying::new(stream_of(&[b"hello ", b"world"]), d, Some(11));
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out, b"hello world");
    }

    #[tokio::test]
    async fn mismatch_ends_in_an_error() {
        let d = Digest::sha256_of(b"hello world");
        let mut s = Verifying::new(stream_of(&[b"hello ", b"wOrld"]), d, None);
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"hello ");
        // The last chunk is never delivered: the error comes in its place.
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn short_body_ends_in_an_error() {
        let d = Digest::sha256_of(b"hello");
        let mut s = Verifying::new(stream_of(&[b"hel"]), d, Some(5));
        assert_eq!(
            s.next().await.unwrap().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
