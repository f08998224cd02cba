use lookout_bus::BusError;

use crate::rules::RulesError;

/// Why a sink did not take an alert.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A failure that may pass (the broker or server is away, answers 5xx or 429, a timeout):
    /// the alert is offered again after a backoff.
    #[error("{0}")]
    Transient(String),
    /// The receiver refuses this alert for good (an HTTP 4xx other than 408 and 429): the
    /// alert is dead-lettered.
    #[error("{0}")]
    Permanent(String),
}

/// Errors of the alerts service.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The rules file cannot be used.
    #[error(transparent)]
    Rules(#[from] RulesError),

    /// A sink specification does not parse.
    #[error("bad sink {spec:?}: {reason}")]
    BadSink {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A sink could not be set up.
    #[error("cannot set up sink {sink}: {reason}")]
    Setup {
        /// The sink.
        sink: String,
        /// What went wrong.
        reason: String,
    },

    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}
