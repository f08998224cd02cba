use std::path::PathBuf;

use lookout_bus::BusError;

/// Why a sink could not take a batch. Every variant is retried after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file operation of a file sink failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// Writing to standard output failed.
    #[error("stdout: {0}")]
    Stdout(#[source] std::io::Error),

    /// The HTTP request did not complete (connection refused, timeout…).
    #[error("request to {url} failed: {source}")]
    Request {
        /// The bulk URL, without credentials.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },

    /// The server answered the whole request with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The bulk URL, without credentials.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },

    /// The bulk response could not be matched with the request.
    #[error("{url} answered with an unusable bulk response: {reason}")]
    BadResponse {
        /// The bulk URL, without credentials.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The blocking task that does a file sink's work panicked or was cancelled.
    #[error("file sink task failed: {0}")]
    Task(String),
}

/// Errors of the log shipper.
#[derive(Debug, thiserror::Error)]
pub enum LogshipError {
    /// A sink specification does not parse.
    #[error("bad sink {spec:?}: {reason}")]
    BadSink {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A sink could not be opened.
    #[error("cannot open sink {sink}: {source}")]
    Open {
        /// The sink's name.
        sink: String,
        /// The error.
        #[source]
        source: SinkError,
    },

    /// The HTTP client for Elasticsearch or OpenSearch could not be built.
    #[error("cannot set up the HTTP client for {sink}: {reason}")]
    Client {
        /// The sink's name.
        sink: String,
        /// What went wrong.
        reason: String,
    },

    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),

    /// The batching task failed.
    #[error("batching task failed: {0}")]
    Batcher(String),
}
