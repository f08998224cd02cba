//! Records a sink refused go to the dead-letter topic, with the standard `dlq-*` headers.
//!
//! The shipper produces them itself rather than rejecting the message through the bus, so
//! that its events about them stay on the console: shipped, an event about a refused record
//! would be a record too, and a sink that refuses everything (a bad index name) would refuse
//! it again, for ever.

use std::time::Duration;

use lookout_bus::{Bus, MessageMeta, headers, topics};
use lookout_proto::v1::LogRecord;
use lookout_telemetry::console_only;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{LogshipError, batch::pause, metrics as m};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a send waits for room in a full producer queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// A producer for the dead-letter topic.
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    group: String,
    content_type: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub(crate) fn new(bus: &Bus, group: &str) -> Result<Self, LogshipError> {
        let producer: FutureProducer = bus
            .client_config(&[
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "30000"),
                ("linger.ms", "5"),
            ])
            .create()
            .map_err(LogshipError::DeadLetters)?;
        Ok(Self {
            producer,
            topic: bus.topic_name(topics::DLQ),
            group: group.to_owned(),
            content_type: topics::LOGS.content_type(),
        })
    }

    /// Copies a refused record (re-encoded, with its original headers) to the dead-letter
    /// topic, retrying until it is delivered. False when shut down before that.
    pub(crate) async fn send(
        &self,
        record: &LogRecord,
        meta: &MessageMeta,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let payload = topics::LOGS.encode(record);
        let headers = self.headers(meta, reason);
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut message: FutureRecord<'_, str, Vec<u8>> =
                FutureRecord::to(&self.topic).payload(&payload).headers(headers.clone());
            if let Some(key) = &meta.key {
                message = message.key(key.as_str());
            }
            match self.producer.send(message, QUEUE_TIMEOUT).await {
                Ok(_) => {
                    metrics::counter!(m::RECORDS_DEAD_LETTERED).increment(1);
                    console_only(|| {
                        warn!(
                            topic = %meta.topic,
                            partition = meta.partition,
                            offset = meta.offset,
                            reason,
                            dlq = %self.topic,
                            "log record refused by a sink; dead-lettered",
                        );
                    });
                    return true;
                }
                Err((e, _)) => {
                    console_only(|| {
                        warn!(dlq = %self.topic, error = %e, "dead-letter topic unavailable; will retry");
                    });
                    if !pause(shutdown, backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn headers(&self, meta: &MessageMeta, reason: &str) -> OwnedHeaders {
        let h = &meta.headers;
        let produced_at = h.produced_at_ms.map(|t| t.to_string());
        let traceparent = h.trace.map(|t| t.to_header());
        let partition = meta.partition.to_string();
        let offset = meta.offset.to_string();
        let content_type = h.content_type.as_deref().unwrap_or(&self.content_type);
        let original = [
            (headers::CONTENT_TYPE, Some(content_type)),
            (headers::SERVICE, h.service.as_deref()),
            (headers::INSTANCE, h.instance.as_deref()),
            (headers::PRODUCED_AT, produced_at.as_deref()),
            (headers::TRACEPARENT, traceparent.as_deref()),
            (headers::DLQ_TOPIC, Some(meta.topic.as_str())),
            (headers::DLQ_PARTITION, Some(partition.as_str())),
            (headers::DLQ_OFFSET, Some(offset.as_str())),
            (headers::DLQ_ERROR, Some(reason)),
            (headers::DLQ_GROUP, Some(self.group.as_str())),
        ];
        original.into_iter().fold(OwnedHeaders::new(), |acc, (key, value)| match value {
            Some(v) => acc.insert(Header { key, value: Some(v) }),
            None => acc,
        })
    }
}
