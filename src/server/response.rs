//! Building HTTP responses, and the one place where errors become HTTP: OCI error JSON
//! (distribution spec, "Error Codes") with the right status.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use super::pacing::{Paced, Pacer};
use crate::pull::{BlobReply, DocumentReply, ErrorCode, ManifestReply, PullError};
use crate::route::RouteError;
use crate::upstream::UpstreamError;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// `Docker-Distribution-Api-Version`, on every response of the mirror listener.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const API_VERSION: &str = "registry/2.0";
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Set on manifests served past their tag's freshness because the upstream was unavailable.
pub const STALE_HEADER: &str = "x-stevedore-stale";
/// The challenge of stevedore's own policy: Basic, which docker, podman, CRI-O and skopeo
/// answer from their auth files, with the token as the password.
const CHALLENGE: &str = "Basic realm=\"stevedore\"";
/// Seconds a client is told to wait when an upstream rate limits without saying how long.
const DEFAULT_RETRY_AFTER: &str = "60";

/// Everything a request can fail with at the front door.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Front(#[from] FrontRefusal),
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Pull(#[from] PullError),
}

/// Requests `[policy]` refuses.
#[derive(Debug, thiserror::Error)]
pub enum PolicyRefusal {
    /// The client presented credentials no identity has.
    #[error("the credentials presented to stevedore are not recognised")]
    Unrecognised,
    /// Refused, but credentials would help: answered 401 with a challenge.
    #[error("{0}")]
    Challenge(String),
    #[error("{0}")]
    Denied(String),
}

/// Requests the front door refuses before routing them.
#[derive(Debug, thiserror::Error)]
pub enum FrontRefusal {
    /// `CONNECT`, or an absolute-form request (`GET http://host/…`): what a client that uses
    /// stevedore as its HTTP(S) proxy sends.
    #[error(
        "stevedore is not serving as a forward proxy: the request for {authority:?} is \
         refused (use it as a registry mirror: /v2/… with ?ns=<registry> or a registry path \
         prefix)"
    )]
    NotAProxy { authority: String },
    /// A forward-proxy request stevedore will not serve.
    #[error("stevedore refuses to proxy to {authority:?}: {reason}")]
    ProxyRefused { authority: String, reason: String },
    /// The client is over `limits.requests-per-second`.
    #[error("too many requests from this client (limits.requests-per-second)")]
    RateLimited { retry_after_s: u64 },
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Pull(PullError::Upstream(e))
    }
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn builder(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

fn finish(b: http::response::Builder, body: Body) -> Response<Body> {
    b.body(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "building a response failed");
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// `200` to a `CONNECT`: the tunnel is open.
pub fn connected() -> Response<Body> {
    finish(builder(StatusCode::OK), empty())
}

/// `GET /v2/`: stevedore accepts anonymous clients, so this is always 200.
/// A plain-text answer.
pub fn text(body: Bytes) -> Response<Body> {
    finish(
        builder(StatusCode::OK).header(CONTENT_TYPE, "text/plain; charset=utf-8"),
        full(body),
    )
}

pub fn ping() -> Response<Body> {
    finish(
        builder(StatusCode::OK).header(CONTENT_TYPE, "application/json"),
        full(Bytes::from_static(b"{}")),
    )
}

pub fn manifest(m: ManifestReply) -> Response<Body> {
    let b = builder(StatusCode::OK)
        .header(CONTENT_TYPE, m.media_type)
        .header(CONTENT_LENGTH, m.size)
        .header(DOCKER_CONTENT_DIGEST, m.digest.to_string())
        .header(http::header::ETAG, format!("\"{}\"", m.digest));
    let b = if m.stale {
        // RFC 9111 §5.5 (obsoleted but still understood): 110 Response is Stale.
        b.header(
            http::header::WARNING,
            "110 stevedore \"stale: upstream unavailable\"",
        )
        .header(STALE_HEADER, "true")
    } else {
        b
    };
    finish(b, m.body.map_or_else(empty, full))
}

pub fn blob(reply: BlobReply, pacer: &Pacer) -> Response<Body> {
    let status = if reply.content_range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut b = builder(status)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, reply.digest.to_string())
        .header(http::header::ACCEPT_RANGES, "bytes");
    if let Some(len) = reply.length {
        b = b.header(CONTENT_LENGTH, len);
    }
    if let Some(range) = reply.content_range {
        b = b.header(CONTENT_RANGE, range);
    }
    let body = match reply.body {
        Some(body) => BodyExt::boxed_unsync(Paced::new(body, pacer.clone())),
        None => empty(),
    };
    finish(b, body)
}

pub fn document(doc: DocumentReply, head: bool) -> Response<Body> {
    let mut b = builder(StatusCode::OK)
        .header(CONTENT_TYPE, doc.content_type)
        .header(CONTENT_LENGTH, doc.body.len());
    if let Some(link) = doc.link {
        b = b.header(LINK, link);
    }
    if let Some(f) = doc.filters_applied {
        b = b.header("oci-filters-applied", f);
    }
    finish(b, if head { empty() } else { full(doc.body) })
}

/// The one mapping from errors to HTTP.
pub fn error(failure: &Failure) -> Response<Body> {
    let (status, code) = classify(failure);
    let message = failure.to_string();
    if status.is_server_error() {
        tracing::warn!(%status, code = code.as_str(), %message, "request failed");
    } else {
        tracing::debug!(%status, code = code.as_str(), %message, "request refused");
    }
    let mut b = builder(status).header(CONTENT_TYPE, "application/json");
    if let Some(after) = retry_after(failure) {
        b = b.header(RETRY_AFTER, after);
    }
    if let Failure::Pull(PullError::RangeNotSatisfiable {
        content_range: Some(r),
    }) = failure
    {
        b = b.header(CONTENT_RANGE, r);
    }
    if let Failure::Policy(PolicyRefusal::Unrecognised | PolicyRefusal::Challenge(_)) = failure {
        b = b.header(http::header::WWW_AUTHENTICATE, CHALLENGE);
    }
    if let Failure::Front(FrontRefusal::NotAProxy { .. } | FrontRefusal::ProxyRefused { .. }) =
        failure
    {
        // A refused CONNECT's client may send TLS next: end the conversation.
        b = b.header(http::header::CONNECTION, "close");
    }
    if let Failure::Route(RouteError::Unsupported(_) | RouteError::Method(_)) = failure {
        b = b.header(http::header::ALLOW, "GET, HEAD");
    }
    // An upstream's own OCI error body passes through as it was.
    let body = match failure {
        Failure::Pull(PullError::NotFound {
            body: Some(raw), ..
        }) => raw.clone(),
        _ => error_json(code, &message),
    };
    finish(b.header(CONTENT_LENGTH, body.len()), full(body))
}

/// The status a failure is answered with.
pub fn status_of(failure: &Failure) -> StatusCode {
    classify(failure).0
}

fn classify(failure: &Failure) -> (StatusCode, ErrorCode) {
    match failure {
        Failure::Policy(PolicyRefusal::Unrecognised | PolicyRefusal::Challenge(_)) => {
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
        }
        Failure::Policy(PolicyRefusal::Denied(_)) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
        Failure::Front(FrontRefusal::NotAProxy { .. } | FrontRefusal::ProxyRefused { .. }) => {
            (StatusCode::FORBIDDEN, ErrorCode::Denied)
        }
        Failure::Front(FrontRefusal::RateLimited { .. }) => {
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
        }
        Failure::Route(e) => match e {
            RouteError::NotApi(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            RouteError::Invalid(n) => match n {
                crate::reference::NameError::Digest(_) => {
                    (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
                }
                crate::reference::NameError::Tag(_) => {
                    (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid)
                }
                _ => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            },
            RouteError::Unsupported(_) | RouteError::Method(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported)
            }
            RouteError::Authority { .. } => (StatusCode::FORBIDDEN, ErrorCode::Denied),
        },
        Failure::Pull(e) => match e {
            PullError::Upstream(u) => match u {
                UpstreamError::NotConfigured { .. } | UpstreamError::RestrictedAddress { .. } => {
                    (StatusCode::FORBIDDEN, ErrorCode::Denied)
                }
                UpstreamError::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                UpstreamError::Unreachable { .. } | UpstreamError::Protocol { .. } => {
                    (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
                }
                UpstreamError::BudgetSpent { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
                }
                UpstreamError::Credentials { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable)
                }
            },
            PullError::NotFound { code, .. } => (StatusCode::NOT_FOUND, *code),
            PullError::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            PullError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            PullError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUnknown)
            }
            PullError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable),
            PullError::StoreFull(_) | PullError::Busy => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            PullError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable),
            PullError::UpstreamStatus { .. }
            | PullError::DigestMismatch { .. }
            | PullError::ManifestTooLarge { .. }
            | PullError::BadUpstreamResponse { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
            }
        },
    }
}

fn retry_after(failure: &Failure) -> Option<HeaderValue> {
    if let Failure::Front(FrontRefusal::RateLimited { retry_after_s }) = failure {
        return Some(HeaderValue::from(*retry_after_s));
    }
    if let Failure::Pull(PullError::Upstream(UpstreamError::BudgetSpent { retry_after, .. })) =
        failure
    {
        return Some(HeaderValue::from(retry_after.as_secs().max(1)));
    }
    let value = match failure {
        Failure::Pull(PullError::RateLimited { retry_after, .. }) => {
            retry_after.as_deref().unwrap_or(DEFAULT_RETRY_AFTER)
        }
        Failure::Pull(PullError::UpstreamStatus {
            retry_after: Some(r),
            ..
        }) => r.as_str(),
        Failure::Pull(PullError::Busy) => "1",
        Failure::Pull(PullError::StoreFull(_)) => "60",
        _ => return None,
    };
    HeaderValue::from_str(value).ok()
}

/// `{"errors":[{"code":…,"message":…}]}`
pub fn error_json(code: ErrorCode, message: &str) -> Bytes {
    let value = serde_json::json!({
        "errors": [{ "code": code.as_str(), "message": message, "detail": null }]
    });
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_oci_json() {
        let r = error(&Failure::Route(RouteError::Unsupported("push")));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let j: serde_json::Value =
            serde_json::from_slice(&error_json(ErrorCode::Denied, "nope")).unwrap();
        assert_eq!(j["errors"][0]["code"], "DENIED");
        assert_eq!(j["errors"][0]["message"], "nope");
    }

    #[test]
    fn rate_limits_keep_retry_after() {
        let f = Failure::Pull(PullError::RateLimited {
            registry: "r".into(),
            retry_after: None,
        });
        let r = error(&f);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "60");
    }
}
