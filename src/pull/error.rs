//! Errors of the pull engine, each knowing whose fault it is. `server::response` turns them
//! into OCI error JSON in one place.

use bytes::Bytes;

use crate::reference::Digest;
use crate::upstream::UpstreamError;

/// OCI distribution-spec error codes ("Error Codes" table) that stevedore answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NameInvalid,
    DigestInvalid,
    ManifestInvalid,
    Denied,
    Unauthorized,
    Unsupported,
    TooManyRequests,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream has no such manifest, blob or repository. `body` is the upstream's own
    /// OCI error JSON when it sent one, passed through as bytes.
    #[error("{message}")]
    NotFound {
        code: ErrorCode,
        message: String,
        body: Option<Bytes>,
    },
    /// The upstream refused access with stevedore's credentials (403).
    #[error("{0}")]
    Denied(String),
    #[error("upstream {registry} is rate limiting stevedore (429)")]
    RateLimited {
        registry: String,
        retry_after: Option<String>,
    },
    #[error("upstream {registry} answered {status} for {what}")]
    UpstreamStatus {
        registry: String,
        status: http::StatusCode,
        what: String,
        retry_after: Option<String>,
    },
    #[error("range not satisfiable")]
    RangeNotSatisfiable { content_range: Option<String> },
    #[error("upstream {registry} sent content for {expected} whose digest is {actual}")]
    DigestMismatch {
        registry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("upstream {registry} sent a manifest larger than {limit} bytes")]
    ManifestTooLarge { registry: String, limit: usize },
    #[error("upstream {registry} sent a response stevedore cannot use: {reason}")]
    BadUpstreamResponse { registry: String, reason: String },
    /// The content store failed (permissions, I/O errors).
    #[error("content store: {0}")]
    Store(String),
    /// The content store's file system is full.
    #[error("content store is full: {0}")]
    StoreFull(String),
    /// All `store.max-concurrent-fills` upstream transfers are running.
    #[error(
        "stevedore is running as many upstream transfers as it allows \
         (store.max-concurrent-fills); retry shortly"
    )]
    Busy,
    /// Another request's upstream exchange, which this one waited for, took too long.
    #[error("no answer from upstream {registry} for {what} within {after_s}s")]
    Timeout {
        registry: String,
        what: String,
        after_s: u64,
    },
}

impl PullError {
    pub fn timeout(route: &crate::route::Route, after: std::time::Duration) -> Self {
        PullError::Timeout {
            registry: route.registry.to_string(),
            what: route.repository.to_string(),
            after_s: after.as_secs(),
        }
    }
}

impl From<std::io::Error> for PullError {
    fn from(e: std::io::Error) -> Self {
        PullError::Store(e.to_string())
    }
}

impl PullError {
    /// Whether the upstream could not be asked at all (unreachable, 5xx, 429): the cases in
    /// which stored content is served stale.
    pub fn is_upstream_unavailable(&self) -> bool {
        match self {
            PullError::Upstream(e) => e.is_retryable(),
            PullError::RateLimited { .. } | PullError::Timeout { .. } => true,
            PullError::UpstreamStatus { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}
