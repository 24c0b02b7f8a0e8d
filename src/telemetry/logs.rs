//! Log output: text or JSON lines on stderr, filtered by `[log] level` unless `RUST_LOG` is
//! set; spans (the request's id above all) are on every line. The filter can be swapped
//! while running (config reload). Span export, when on, sees every span at info and above
//! (stevedore's own from debug) whatever the log level.

use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat};

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// Swaps the log filter of a running process.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the config file, now and after reloads.
    from_env: bool,
}

impl LogControl {
    /// Applies `[log] level` from a reloaded config (unless `RUST_LOG` rules).
    pub fn set_level(&self, level: &str) {
        if self.from_env {
            return;
        }
        match EnvFilter::builder().parse(level) {
            Ok(f) => {
                if let Err(e) = self.filter.reload(f) {
                    tracing::warn!(error = %e, "cannot change the log level");
                }
            }
            Err(e) => tracing::warn!(error = %e, "log.level is not a filter"),
        }
    }
}

/// Logging for the server, with `tracer` (when traces are exported) as a second output.
pub fn init_server(config: &LogConfig, tracer: Option<SdkTracer>) -> LogControl {
    let (filter, from_env) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (EnvFilter::new(v), true),
        _ => (
            EnvFilter::builder()
                .parse(&config.level)
                .unwrap_or_else(|_| EnvFilter::new("info")),
            false,
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let mut layers: Vec<Boxed> = vec![output(config.format).with_filter(filter).boxed()];
    if let Some(tracer) = tracer {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                // stevedore's debug spans (store reads) are exported; nobody else's.
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_default(LevelFilter::INFO)
                        .with_target("stevedore", LevelFilter::DEBUG),
                )
                .boxed(),
        );
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    LogControl {
        filter: handle,
        from_env,
    }
}

/// Logging for the command-line tools: text, `RUST_LOG` or `default_level`.
pub fn init_tool(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let layers: Vec<Boxed> = vec![output(LogFormat::Text).with_filter(filter).boxed()];
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

fn output(format: LogFormat) -> Boxed {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }
}
