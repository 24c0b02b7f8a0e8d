//! What one client request carries through the engine: its id (on every log line, in the
//! `x-request-id` header), its span (the parent of upstream, token, store and fill spans),
//! and the labels its latency is recorded under, set by whoever learns them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
}

/// One request's identity and labels.
#[derive(Debug)]
pub struct RequestContext {
    pub id: String,
    pub started: Instant,
    labels: Mutex<Labels>,
}

/// The labels of the latency histograms: bounded sets of static names.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    /// `ping`, `manifest`, `blob`, `tags`, `referrers`, `proxy` or `other`.
    pub route: &'static str,
    /// `hit`, `miss`, `joined` or `none`.
    pub cache: &'static str,
}

impl RequestContext {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            id: format!("{}", RandomIdGenerator::default().new_span_id()),
            started: Instant::now(),
            labels: Mutex::new(Labels {
                route: "other",
                cache: "none",
            }),
        })
    }

    pub fn labels(&self) -> Labels {
        *self.labels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` as this request: the setters below reach it.
    pub async fn scope<F: Future>(self: Arc<Self>, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

/// The current request's id, if the caller runs for one.
pub fn current_id() -> Option<String> {
    CURRENT.try_with(|c| c.id.clone()).ok()
}

/// Names the kind of route the current request is.
pub fn set_route(route: &'static str) {
    let _ = CURRENT.try_with(|c| {
        c.labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .route = route;
    });
}

/// Says how the store answered the current request.
pub fn set_cache(outcome: &'static str) {
    let _ = CURRENT.try_with(|c| {
        c.labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cache = outcome;
    });
}

/// The span of one client request. With traces on, a client's W3C `traceparent` (and
/// `tracestate`) makes it the parent.
pub fn span(ctx: &RequestContext, method: &http::Method, path: &str, headers: &HeaderMap) -> Span {
    // Only the id is a field (it is on every log line); what only spans need is set as
    // attributes, and only when spans are exported: logging pays for nothing else.
    let span = tracing::info_span!("request", request_id = %ctx.id);
    if super::traces::enabled() {
        span.set_attribute("http.request.method", method.to_string());
        span.set_attribute("url.path", path.to_owned());
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Records the answer's status on a request span (exported spans only).
pub fn record_status(span: &Span, status: u16) {
    if super::traces::enabled() {
        span.set_attribute("http.response.status_code", i64::from(status));
    }
}

/// Links `span` (a fill, say) to the request running now, which joined it.
pub fn link_current(span: &Span) {
    if super::traces::enabled() {
        let current = Span::current().context();
        span.add_link(current.span().span_context().clone());
    }
}

/// Makes the request running now the trace parent of `span`, which tracing does not nest
/// under it (a fill outlives the request that started it).
pub fn parent_current(span: &Span) {
    if super::traces::enabled() {
        let _ = span.set_parent(Span::current().context());
    }
}
