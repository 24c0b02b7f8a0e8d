//! The pull engine: every front door (mirror listener, forward proxy, CLI) calls
//! [`PullService`]. It returns domain values and byte streams and knows nothing of hyper.

mod accept;
mod blobs;
mod error;
mod flight;
mod manifests;
mod range;
mod scope;
mod service;
mod stream;
mod wire;

pub use accept::{MANIFEST_TYPES, ManifestAccept};
pub use error::{ErrorCode, PullError};
pub use range::{ByteRange, Span};
pub use scope::referenced_digests;
pub use service::{BlobReply, DocumentReply, ManifestReply, PullService};
