//! Records a sink refused go to the dead-letter topic, through the bus's dead-letter writer,
//! with the standard `dlq-*` headers.
//!
//! The shipper dead-letters them itself rather than rejecting them through the bus, so that
//! its events about them stay on the console: shipped, an event about a refused record would
//! be a record too, and a sink that refuses everything (a bad index name) would refuse it
//! again, for ever.

use lookout_bus::{Bus, DeadLettered, HandlerError, MessageMeta, RawMessage, topics};
use lookout_proto::v1::LogRecord;
use lookout_telemetry::console_only;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::metrics as m;

/// Dead-letters refused records.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    writer: lookout_bus::DeadLetters,
    group: String,
}

impl DeadLetters {
    pub(crate) fn new(bus: &Bus, group: &str) -> Self {
        Self { writer: bus.dead_letters(), group: group.to_owned() }
    }

    /// Copies a refused record (re-encoded, with its original key and headers) to the
    /// dead-letter topic, retrying until it is delivered. `Ok(false)` when shut down before
    /// that; a fatal error when the dead-letter topic cannot take it at all.
    pub(crate) async fn send(
        &self,
        record: &LogRecord,
        meta: MessageMeta,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, HandlerError> {
        let (topic, partition, offset) = (meta.topic.clone(), meta.partition, meta.offset);
        let raw = RawMessage::from_meta(meta, Some(topics::LOGS.encode(record).into()));
        let sent = self.writer.send(&raw, &self.group, reason, shutdown).await;
        match sent {
            Ok(DeadLettered::Stopped) => Ok(false),
            Ok(outcome) => {
                metrics::counter!(m::RECORDS_DEAD_LETTERED).increment(1);
                console_only(|| {
                    warn!(
                        topic = %topic,
                        partition,
                        offset,
                        reason,
                        truncated = matches!(outcome, DeadLettered::Truncated { .. }),
                        dlq = %self.writer.topic(),
                        "log record refused by a sink; dead-lettered",
                    );
                });
                Ok(true)
            }
            Err(e) => {
                console_only(|| error!(error = %e, "cannot dead-letter a refused log record"));
                Err(HandlerError::fatal(e))
            }
        }
    }
}
