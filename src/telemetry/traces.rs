//! Span export over OTLP/HTTP (protobuf): on when `[tracing] otlp-endpoint` is set or the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables
//! are, off with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Spans are batched on
//! the SDK's own thread; each export is sent by stevedore's HTTP client on the runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Link, SamplingResult, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _,
};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, ShouldSample};

use crate::config::TracingConfig;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (and so worth linking and parenting).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The collector's answer is read up to this size.
const MAX_ANSWER: usize = 64 * 1024;

/// The export pipeline; shut it down to send what is still batched.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts export if configured; must run inside the tokio runtime.
    pub fn start(config: &TracingConfig) -> Result<Option<(Traces, SdkTracer)>, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        if config.otlp_endpoint.is_none() && !from_env {
            return Ok(None);
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "traces: no runtime to send exports on".to_owned())?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("traces: HTTP client: {e}"))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ExportClient { http, runtime })
            .with_timeout(EXPORT_TIMEOUT);
        if let Some(endpoint) = &config.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("tracing.otlp-endpoint: {e}"))?;
        let service = env("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(ClientsCannotForce {
                ratio: Sampler::TraceIdRatioBased(config.sample_ratio),
                local: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sample_ratio,
                ))),
            })
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("stevedore");
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some((Traces { provider }, tracer)))
    }

    /// Sends what is batched and stops. Call it off the runtime's threads while the runtime
    /// still runs (exports are sent on it).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "sending the last spans failed");
        }
    }
}

/// Samples a span whose parent came from a client (`traceparent`) by `sample-ratio` like a
/// new trace, so that anonymous clients cannot make every request of theirs exported; spans
/// under stevedore's own spans follow their parent.
#[derive(Debug, Clone)]
struct ClientsCannotForce {
    ratio: Sampler,
    local: Sampler,
}

impl ShouldSample for ClientsCannotForce {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let remote = parent.is_some_and(|cx| {
            let sc = cx.span().span_context().clone();
            sc.is_valid() && sc.is_remote()
        });
        let sampler = if remote { &self.ratio } else { &self.local };
        sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// Sends exports with reqwest on the runtime, whatever thread asks.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut resp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut answer = Response::builder().status(resp.status());
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(h) = answer.headers_mut() {
                *h = resp.headers().clone();
            }
            Ok::<_, HttpError>(answer.body(Bytes::from(body))?)
        });
        sent.await?
    }
}
