//! `[log]` and `[tracing]`: how stevedore reports what it does. Their meaning is applied in
//! `crate::telemetry`.

use serde::Deserialize;

use super::Problem;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// Filter directives (`info`, `stevedore=debug,hyper=warn`); `RUST_LOG`, when set, wins.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` (human readable) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TracingConfig {
    /// OTLP/HTTP (protobuf) traces endpoint, used as given
    /// (`http://collector:4318/v1/traces`). Unset: the `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// and `OTEL_EXPORTER_OTLP_ENDPOINT` variables turn export on; neither: no export.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced (0.0 to 1.0), whatever a client's `traceparent` says.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (`OTEL_SERVICE_NAME` wins).
    #[serde(default = "default_service")]
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: default_ratio(),
            service_name: default_service(),
        }
    }
}

fn default_ratio() -> f64 {
    1.0
}

fn default_service() -> String {
    "stevedore".to_owned()
}

/// What is wrong with `[log]` and `[tracing]`.
pub fn problems(log: &LogConfig, tracing: &TracingConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log.level) {
        out.push(Problem {
            key: "log.level".to_owned(),
            message: format!(
                "{:?} is not a log filter ({e}); try \"info\" or \"stevedore=debug,info\"",
                log.level
            ),
        });
    }
    if let Some(endpoint) = &tracing.otlp_endpoint {
        match url::Url::parse(endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => out.push(Problem {
                key: "tracing.otlp-endpoint".to_owned(),
                message: format!("{endpoint:?} must be an http:// or https:// URL with a host"),
            }),
            Err(e) => out.push(Problem {
                key: "tracing.otlp-endpoint".to_owned(),
                message: format!("{endpoint:?} is not a URL: {e}"),
            }),
        }
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        out.push(Problem {
            key: "tracing.sample-ratio".to_owned(),
            message: format!("{} must be between 0.0 and 1.0", tracing.sample_ratio),
        });
    }
    if tracing.service_name.trim().is_empty() {
        out.push(Problem {
            key: "tracing.service-name".to_owned(),
            message: "must not be empty".to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let log = LogConfig {
            level: "stevedore=loud".to_owned(),
            format: LogFormat::Json,
        };
        let tracing = TracingConfig {
            otlp_endpoint: Some("collector:4318".to_owned()),
            sample_ratio: 1.5,
            service_name: " ".to_owned(),
        };
        let keys: Vec<_> = problems(&log, &tracing)
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "log.level",
                "tracing.otlp-endpoint",
                "tracing.sample-ratio",
                "tracing.service-name"
            ]
        );
        assert!(problems(&LogConfig::default(), &TracingConfig::default()).is_empty());
    }
}
