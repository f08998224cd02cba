//! Standard output: the JSON form of each alert on a line of its own.

use std::io::Write as _;

use lookout_proto::v1::Alert;

use super::{Delivery, Sink};
use crate::SinkError;

/// The stdout sink.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn name(&self) -> &str {
        "stdout"
    }

    fn deliver<'a>(&'a self, _alert: &'a Alert, body: &'a [u8]) -> Delivery<'a> {
        Box::pin(async move {
            let mut out = std::io::stdout().lock();
            out.write_all(body)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .map_err(|e| SinkError::Transient(format!("stdout: {e}")))
        })
    }
}
