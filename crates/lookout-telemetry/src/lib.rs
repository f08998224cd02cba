//! Tracing and metrics set-up shared by Lookout's services.
//!
//! [`init`] installs a `tracing` subscriber (human-readable or JSON lines on stderr, filtered by
//! `RUST_LOG`, default `info`), bridges the `log` records of librdkafka into it, and installs
//! a Prometheus metrics recorder whose text rendering the admin server serves on `/metrics`.

use std::{fmt, str::FromStr};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{
    EnvFilter, fmt::format::FmtSpan, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

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
}

/// What [`init`] installed; keep it for the life of the service.
#[derive(Clone)]
pub struct Telemetry {
    metrics: PrometheusHandle,
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
}

/// Installs logging and metrics for the process. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().or_else(|e| match std::env::var_os("RUST_LOG") {
            Some(_) => Err(TelemetryError::Filter(e.to_string())),
            None => Ok(EnvFilter::new("info")),
        })?;
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(true))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_span_events(FmtSpan::NONE)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;

    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    Ok(Telemetry { metrics })
}
