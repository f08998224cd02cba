//! Tracing, log shipping and metrics set-up shared by Lookout's services.
//!
//! - [`init`] installs a `tracing` subscriber (human-readable or JSON lines on stderr, filtered by
//!   `RUST_LOG`, default `info`), bridges the `log` records of librdkafka into it, and installs
//!   a Prometheus metrics recorder whose text rendering the admin server serves on `/metrics`,
//!   every histogram with buckets fit for what it measures ([`buckets`]). Tools use it.
//! - [`init_with_shipping`] does the same and also publishes the service's events as
//!   `LogRecord`s on the logs topic ([`log_layer`], [`ShipConfig`]), with their own level filter.
//!   Every service gets it through `lookout_service::main`.
//!
//! Shipping never blocks the service: events go through a bounded queue to a thread of their
//! own, and what does not fit is dropped and counted ([`metrics::LOG_RECORDS_DROPPED`]), the
//! count being reported on the console every ten seconds. Nothing about the shipping itself is
//! shipped: events of the Kafka client (`rdkafka`, `librdkafka`), of the bus publisher, of this
//! crate and of the shipping thread stay on the console, so logs cannot feed on themselves.
//! [`console_only`] keeps other code's events off the logs topic the same way.

pub mod buckets;
mod layer;
pub mod metrics;
mod ship;

use std::{fmt, str::FromStr, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::format::FmtSpan, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

pub use layer::{LogLayer, ShipFilter, console_only};
pub use ship::{DEFAULT_QUEUE_CAPACITY, LogShipper, ShipConfig, log_layer};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one event per line.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pretty => "pretty",
            Self::Json => "json",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

/// Errors of [`init`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),
    /// A subscriber or recorder was already installed in this process.
    #[error("telemetry is already initialised: {0}")]
    AlreadySet(String),
    /// A histogram's buckets are not valid.
    #[error("invalid histogram buckets: {0}")]
    Buckets(String),
    /// The log shipping thread could not be started.
    #[error("cannot start log shipping: {0}")]
    Ship(#[source] std::io::Error),
}

/// What [`init`] installed; keep it for the life of the service.
#[derive(Clone)]
pub struct Telemetry {
    metrics: PrometheusHandle,
    shipper: Option<LogShipper>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The Prometheus text rendering of every metric.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// The log shipping thread, when logs are shipped.
    pub fn log_shipper(&self) -> Option<&LogShipper> {
        self.shipper.as_ref()
    }

    /// Waits until the log records queued so far are on the logs topic, at most `timeout`.
    /// True when they are (or when logs are not shipped). Call before the process exits.
    pub async fn flush_logs(&self, timeout: Duration) -> bool {
        match &self.shipper {
            Some(shipper) => shipper.flush(timeout).await,
            None => true,
        }
    }
}

/// Installs logging and metrics for the process. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    install(format, None)
}

/// Like [`init`], and ships the process's events on the logs topic as configured. Starts the
/// shipping thread.
pub fn init_with_shipping(
    format: LogFormat,
    ship: ShipConfig,
) -> Result<Telemetry, TelemetryError> {
    install(format, Some(ship))
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn install(format: LogFormat, ship: Option<ShipConfig>) -> Result<Telemetry, TelemetryError> {
    // The console's filter is its own (per layer), so `RUST_LOG` does not limit what is shipped.
    let filter =
        EnvFilter::try_from_default_env().or_else(|e| match std::env::var_os("RUST_LOG") {
            Some(_) => Err(TelemetryError::Filter(e.to_string())),
            None => Ok(EnvFilter::new("info")),
        })?;
    let console: BoxedLayer = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![console];
    let mut shipper = None;
    if let Some(config) = ship {
        let (layer, handle) = log_layer::<Registry>(config)?;
        layers.push(layer.boxed());
        shipper = Some(handle);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;

    let recorder = buckets::set(PrometheusBuilder::new())
        .map_err(|e| TelemetryError::Buckets(e.to_string()))?
        .build_recorder();
    let metrics = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    metrics::describe();
    Ok(Telemetry { metrics, shipper })
}
