//! What stevedore tells about itself: metrics (here), logs (`logs.rs`), spans exported over
//! OTLP (`traces.rs`), and the request context tying them together (`request.rs`).
//!
//! Every instrument is named here and recorded through OpenTelemetry. A periodic reader
//! hands them to an exporter that renders the Prometheus text format (`prometheus.rs`),
//! which `[server] metrics-listen` serves (flushed on every scrape, so numbers are current).
//! Labels hold only bounded, non-secret values: methods, status codes, kinds, results.

pub mod logs;
mod prometheus;
pub mod request;
pub mod traces;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use crate::store::Store;

/// Instrument names (Prometheus replaces `.` with `_` and adds `_total` to counters).
pub mod names {
    /// Requests answered by the mirror listener; labels `method`, `status`.
    pub const REQUESTS: &str = "stevedore.requests";
    /// Requests sent to upstream registries by the engine; label `method`.
    pub const UPSTREAM_REQUESTS: &str = "stevedore.upstream.requests";
    /// Store lookups; labels `kind` (manifest, blob), `result` (hit, miss, joined).
    pub const CACHE_LOOKUPS: &str = "stevedore.cache.lookups";
    /// Token requests made to token realms.
    pub const TOKEN_FETCHES: &str = "stevedore.token.fetches";
    /// Blob fills started.
    pub const FILLS: &str = "stevedore.fills";
    /// Fill resumes after a broken upstream connection.
    pub const FILL_RESUMES: &str = "stevedore.fill.resumes";
    /// Fills whose content did not match its digest (discarded, readers aborted).
    pub const DIGEST_MISMATCHES: &str = "stevedore.digest.mismatches";
    /// Items evicted from the store.
    pub const EVICTIONS: &str = "stevedore.evictions";
    /// Bytes received from upstreams into the store.
    pub const UPSTREAM_BYTES: &str = "stevedore.upstream.bytes";
    /// Bytes of content in the store.
    pub const STORE_BYTES: &str = "stevedore.store.bytes";
    /// Blob misses streamed without being stored (low on space, larger than the store).
    pub const PASS_THROUGHS: &str = "stevedore.store.pass_throughs";
    /// Client connections open now.
    pub const CONNECTIONS: &str = "stevedore.connections";
    /// Bytes of response chunks in flight, all streams together (`limits.stream-buffer`).
    pub const STREAM_BUFFER: &str = "stevedore.stream.buffer";
    /// Leaf certificates minted for intercepted registries.
    pub const TLS_LEAVES: &str = "stevedore.tls.leaves";
    /// 1 while the store is below its free-space watermark.
    pub const STORE_LOW_SPACE: &str = "stevedore.store.low_space";
    /// Requests an upstream allows per window (`ratelimit-limit`); label `registry`.
    pub const UPSTREAM_RATELIMIT_LIMIT: &str = "stevedore.upstream.ratelimit.limit";
    /// Requests an upstream has left (`ratelimit-remaining`); label `registry`.
    pub const UPSTREAM_RATELIMIT_REMAINING: &str = "stevedore.upstream.ratelimit.remaining";
    /// Seconds from a request's arrival to its response head; labels `route`, `cache`.
    pub const REQUEST_TTFB: &str = "stevedore.request.ttfb";
    /// Seconds from a request's arrival to its body's end (or the client leaving); labels
    /// `route`, `cache`.
    pub const REQUEST_DURATION: &str = "stevedore.request.duration";
    /// Blob fills running now.
    pub const FILLS_IN_FLIGHT: &str = "stevedore.fills.in_flight";
    /// Blobs in the store.
    pub const STORE_ENTRIES: &str = "stevedore.store.entries";
    /// Replicas that answer (this one included), with `[peers]`.
    pub const PEERS: &str = "stevedore.peers";
    /// Config reloads; label `result` (`ok`, `rejected`).
    pub const CONFIG_RELOADS: &str = "stevedore.config.reloads";
}

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

/// Reads one of the store's counters.
type StoreCounter = fn(&Store) -> u64;

/// Reads gauges kept elsewhere: one value per label value, those known now.
pub type GaugesRead = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// How often metrics are exported when nobody scrapes.
const EXPORT_INTERVAL: Duration = Duration::from_secs(15);

/// The metrics of one stevedore instance.
pub struct Telemetry {
    provider: SdkMeterProvider,
    snapshot: Snapshot,
    meter: Meter,
    pub requests: Counter<u64>,
    pub upstream_requests: Counter<u64>,
    pub cache_lookups: Counter<u64>,
    pub config_reloads: Counter<u64>,
    ttfb: Histogram<f64>,
    duration: Histogram<f64>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// The exporter: keeps the latest export rendered as Prometheus text.
#[derive(Debug, Clone, Default)]
struct Snapshot(Arc<Mutex<String>>);

impl PushMetricExporter for Snapshot {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let text = prometheus::render(metrics);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = text;
        std::future::ready(Ok(()))
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let snapshot = Snapshot::default();
        let reader = PeriodicReader::builder(snapshot.clone())
            .with_interval(EXPORT_INTERVAL)
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        let meter = provider.meter("stevedore");
        Self {
            requests: meter.u64_counter(names::REQUESTS).build(),
            upstream_requests: meter.u64_counter(names::UPSTREAM_REQUESTS).build(),
            cache_lookups: meter.u64_counter(names::CACHE_LOOKUPS).build(),
            config_reloads: meter.u64_counter(names::CONFIG_RELOADS).build(),
            ttfb: latency(&meter, names::REQUEST_TTFB),
            duration: latency(&meter, names::REQUEST_DURATION),
            provider,
            snapshot,
            meter,
        }
    }

    /// Records a request's time to its response head.
    pub fn record_ttfb(&self, labels: request::Labels, seconds: f64) {
        self.ttfb.record(seconds, &latency_labels(labels));
    }

    /// Records a request's whole time, body included.
    pub fn record_duration(&self, labels: request::Labels, seconds: f64) {
        self.duration.record(seconds, &latency_labels(labels));
    }

    /// Counts one lookup in the store (and labels the current request with its result).
    pub fn cache(&self, kind: &'static str, result: &'static str) {
        request::set_cache(result);
        self.cache_lookups.add(
            1,
            &[KeyValue::new("kind", kind), KeyValue::new("result", result)],
        );
    }

    /// Reports the store's own counters (read when metrics are collected).
    pub fn observe_store(&self, store: &Arc<Store>) {
        let counters: [(&'static str, StoreCounter); 6] = [
            (names::FILLS, |s| load(&s.stats.fills)),
            (names::FILL_RESUMES, |s| load(&s.stats.resumes)),
            (names::DIGEST_MISMATCHES, |s| {
                load(&s.stats.digest_mismatches)
            }),
            (names::EVICTIONS, |s| load(&s.stats.evictions)),
            (names::UPSTREAM_BYTES, |s| load(&s.stats.upstream_bytes)),
            (names::PASS_THROUGHS, |s| load(&s.stats.pass_throughs)),
        ];
        for (name, read) in counters {
            let store = Arc::downgrade(store);
            self.meter
                .u64_observable_counter(name)
                .with_callback(move |o| {
                    if let Some(s) = store.upgrade() {
                        o.observe(read(&s), &[]);
                    }
                })
                .build();
        }
        let weak = Arc::downgrade(store);
        self.meter
            .u64_observable_gauge(names::STORE_LOW_SPACE)
            .with_callback(move |o| {
                if let Some(s) = weak.upgrade() {
                    o.observe(u64::from(s.low_on_space()), &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(store);
        self.meter
            .u64_observable_gauge(names::FILLS_IN_FLIGHT)
            .with_callback(move |o| {
                if let Some(s) = weak.upgrade() {
                    o.observe(s.summary().fills_in_flight as u64, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(store);
        self.meter
            .u64_observable_gauge(names::STORE_ENTRIES)
            .with_callback(move |o| {
                if let Some(s) = weak.upgrade() {
                    o.observe(s.summary().items as u64, &[]);
                }
            })
            .build();
        let store = Arc::downgrade(store);
        self.meter
            .u64_observable_gauge(names::STORE_BYTES)
            .with_callback(move |o| {
                if let Some(s) = store.upgrade() {
                    o.observe(s.summary().bytes, &[]);
                }
            })
            .build();
    }

    /// Reports gauges kept elsewhere, one series per label value.
    pub fn observe_gauges(&self, name: &'static str, label: &'static str, read: GaugesRead) {
        self.meter
            .u64_observable_gauge(name)
            .with_callback(move |o| {
                for (value, v) in read() {
                    o.observe(v, &[KeyValue::new(label, value)]);
                }
            })
            .build();
    }

    /// Reports a gauge kept elsewhere.
    pub fn observe_gauge(
        &self,
        name: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.meter
            .u64_observable_gauge(name)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    }

    /// Reports a counter kept elsewhere (token fetches).
    pub fn observe_counter(
        &self,
        name: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.meter
            .u64_observable_counter(name)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    }

    /// All metrics in the Prometheus text exposition format, collected now. Blocks briefly
    /// (the reader's thread collects): call it off the async threads.
    pub fn render(&self) -> String {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "collecting metrics failed");
        }
        self.snapshot
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

fn latency(meter: &Meter, name: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_boundaries(LATENCY_BOUNDS.to_vec())
        .build()
}

fn latency_labels(l: request::Labels) -> [KeyValue; 2] {
    [
        KeyValue::new("route", l.route),
        KeyValue::new("cache", l.cache),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn renders_prometheus_text() {
        let t = Telemetry::new();
        t.requests.add(
            2,
            &[
                KeyValue::new("method", "GET"),
                KeyValue::new("status", "200"),
            ],
        );
        t.cache("blob", "hit");
        t.observe_counter(names::TOKEN_FETCHES, || 7);
        let text = t.render();
        assert!(
            text.contains("# TYPE stevedore_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("stevedore_requests_total{method=\"GET\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("stevedore_cache_lookups_total{kind=\"blob\",result=\"hit\"} 1"),
            "{text}"
        );
        assert!(text.contains("stevedore_token_fetches_total 7"), "{text}");
        let labels = request::Labels {
            route: "blob",
            cache: "hit",
        };
        t.record_ttfb(labels, 0.003);
        t.record_ttfb(labels, 0.2);
        assert!(
            text_has(
                &t.render(),
                "# TYPE stevedore_request_ttfb_seconds histogram"
            ),
            "{}",
            t.render()
        );
        let text = t.render();
        for line in [
            "stevedore_request_ttfb_seconds_bucket{cache=\"hit\",route=\"blob\",le=\"0.0025\"} 0",
            "stevedore_request_ttfb_seconds_bucket{cache=\"hit\",route=\"blob\",le=\"0.005\"} 1",
            "stevedore_request_ttfb_seconds_bucket{cache=\"hit\",route=\"blob\",le=\"+Inf\"} 2",
            "stevedore_request_ttfb_seconds_count{cache=\"hit\",route=\"blob\"} 2",
        ] {
            assert!(text_has(&text, line), "{line} missing from\n{text}");
        }
    }
}
