//! The `stdout` sink: one line per record, for people or as JSON.

use std::io::Write as _;

use crate::{
    SinkError,
    record::{Entry, human_line, json_line},
};

/// How the stdout sink prints records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StdoutFormat {
    /// `TIME LEVEL service[instance] target: message key=value…`.
    #[default]
    Human,
    /// The JSON lines of the file sink.
    Json,
}

/// Writes records to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    format: StdoutFormat,
}

impl StdoutSink {
    /// A sink printing in `format`.
    pub fn new(format: StdoutFormat) -> Self {
        Self { format }
    }

    /// `stdout`.
    pub fn name(&self) -> &str {
        "stdout"
    }

    /// Prints a batch and flushes. Writing happens on a blocking thread: a slow reader of the
    /// pipe slows the shipper down instead of blocking the runtime.
    pub async fn write(&mut self, entries: &[&Entry]) -> Result<(), SinkError> {
        let mut text = String::new();
        for e in entries {
            let line = match self.format {
                StdoutFormat::Human => human_line(e),
                StdoutFormat::Json => json_line(e),
            };
            text.push_str(&line);
            text.push('\n');
        }
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        })
        .await
        .map_err(|e| SinkError::Task(e.to_string()))?
        .map_err(SinkError::Stdout)
    }
}
