//! Renders collected metrics in the Prometheus text exposition format: counters get `_total`,
//! instruments in seconds get `_seconds`, histograms `_bucket{le=…}`, `_sum` and `_count`.

use std::fmt::Write as _;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

pub fn render(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            render_metric(&mut out, metric);
        }
    }
    out
}

fn family(metric: &Metric) -> String {
    let mut base = metric.name().replace(['.', '-'], "_");
    if metric.unit() == "s" {
        base.push_str("_seconds");
    }
    base
}

fn render_metric(out: &mut String, metric: &Metric) {
    let base = family(metric);
    match metric.data() {
        AggregatedMetrics::U64(MetricData::Sum(sum)) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.clone(), "gauge")
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for p in sum.data_points() {
                let _ = writeln!(out, "{name}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
            let _ = writeln!(out, "# TYPE {base} gauge");
            for p in gauge.data_points() {
                let _ = writeln!(out, "{base}{} {}", labels(p.attributes(), None), p.value());
            }
        }
        AggregatedMetrics::F64(MetricData::Histogram(h)) => {
            let _ = writeln!(out, "# TYPE {base} histogram");
            for p in h.data_points() {
                let mut cumulative = 0u64;
                let bounds: Vec<f64> = p.bounds().collect();
                for (i, count) in p.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds
                        .get(i)
                        .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                    let _ = writeln!(
                        out,
                        "{base}_bucket{} {cumulative}",
                        labels(p.attributes(), Some(&le))
                    );
                }
                let plain = labels(p.attributes(), None);
                let _ = writeln!(out, "{base}_sum{plain} {}", p.sum());
                let _ = writeln!(out, "{base}_count{plain} {}", p.count());
            }
        }
        _ => {}
    }
}

fn labels<'a>(attrs: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut parts: Vec<String> = attrs
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                kv.key.as_str().replace(['.', '-'], "_"),
                escape(&kv.value.as_str())
            )
        })
        .collect();
    // Stable series: labels in key order.
    parts.sort();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
