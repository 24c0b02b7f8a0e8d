//! The pull engine: every front door (mirror listener, forward proxy, CLI) calls
//! [`PullService`]. It returns domain values and byte streams and knows nothing of hyper.

mod cached;
mod error;
mod service;
mod stream;

pub use cached::referenced_digests;
pub use error::{ErrorCode, PullError};
pub use service::{BlobReply, DocumentReply, ManifestReply, PullService};
pub use stream::ByteStream;

/// Manifest media types asked for when a client sends no `Accept`.
pub const DEFAULT_MANIFEST_ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
