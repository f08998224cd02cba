//! The dead-letter topic (`lookout.dlq`): where messages that can never be handled go, as
//! they were read, with where they came from and why in `dlq-*` headers.

use std::time::Duration;

use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{Bus, BusError, RawMessage, backoff::Backoff, headers, metrics as m};

/// Room left for the record's framing when a payload is cut to fit the size limit.
const RECORD_OVERHEAD: usize = 1024;
/// How long one attempt waits for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLettered {
    /// Delivered whole.
    Delivered,
    /// Delivered with its payload cut from this many bytes to fit the size limit.
    Truncated {
        /// The original payload size.
        from: usize,
    },
    /// Shutdown came first; the message was not dead-lettered (and must not be acknowledged).
    Stopped,
}

/// Writes dead letters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    bus: Bus,
    topic: String,
}

impl DeadLetters {
    pub(crate) fn new(bus: Bus) -> Self {
        let topic = bus.topic_name(lookout_proto::topics::DLQ);
        Self { bus, topic }
    }

    /// The dead-letter topic's full name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `message` (key, payload, headers) to the dead-letter topic with the `dlq-*`
    /// headers (origin, `group`, `reason`). Failures that may pass are retried with a backoff
    /// until delivered or `shutdown`. A payload over the size limit is cut to fit and marked
    /// with `dlq-truncated-from`. A missing dead-letter topic or a write that is not
    /// authorised is an error: retrying would never end, and skipping would lose the message.
    /// Logs nothing itself; counts delivered dead letters.
    pub async fn send(
        &self,
        message: &RawMessage,
        group: &str,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Result<DeadLettered, BusError> {
        let original = message.payload.as_ref().map_or(0, |p| p.len());
        let key_len = message.key.as_ref().map_or(0, |k| k.len());
        let header_len: usize =
            message.headers.iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum();
        let room = self
            .bus
            .max_message_bytes()
            .saturating_sub(key_len + header_len + reason.len() + group.len() + RECORD_OVERHEAD);
        let mut keep = original.min(room);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let outcome = self.produce(message, group, reason, keep, original).await;
            match outcome {
                Ok(()) => {
                    metrics::counter!(m::DEAD_LETTERS, "topic" => message.topic.to_string())
                        .increment(1);
                    return Ok(if keep < original {
                        DeadLettered::Truncated { from: original }
                    } else {
                        DeadLettered::Delivered
                    });
                }
                Err(e) if too_large(&e) && keep > 0 => keep /= 2,
                Err(e) if fatal(&e) => {
                    return Err(BusError::DeadLetter {
                        message: format!(
                            "{}/{}@{}",
                            message.topic, message.partition, message.offset
                        ),
                        dlq: self.topic.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    warn!(dlq = %self.topic, error = %e, "dead-letter topic unavailable; will retry");
                    if !backoff.wait(shutdown).await {
                        return Ok(DeadLettered::Stopped);
                    }
                }
            }
        }
    }

    async fn produce(
        &self,
        message: &RawMessage,
        group: &str,
        reason: &str,
        keep: usize,
        original: usize,
    ) -> Result<(), KafkaError> {
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        let original_text = original.to_string();
        let mut hs = OwnedHeaders::new_with_capacity(message.headers.len() + 6);
        for (key, value) in message.headers.iter() {
            hs = hs.insert(Header { key, value });
        }
        hs = hs
            .insert(Header { key: headers::DLQ_TOPIC, value: Some(&*message.topic) })
            .insert(Header { key: headers::DLQ_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::DLQ_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::DLQ_ERROR, value: Some(reason) })
            .insert(Header { key: headers::DLQ_GROUP, value: Some(group) });
        if keep < original {
            hs = hs.insert(Header { key: headers::DLQ_TRUNCATED, value: Some(&original_text) });
        }
        let payload = message.payload.as_ref().map(|p| &p[..keep]);
        crate::producer::send_one(
            self.bus.producer(),
            &self.topic,
            message.key.as_deref(),
            payload,
            hs,
            QUEUE_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}

fn code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// The record is over a size limit (the producer's or the broker's).
fn too_large(e: &KafkaError) -> bool {
    matches!(
        code(e),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// Retrying cannot help: the topic is not there, or writing to it is not allowed.
fn fatal(e: &KafkaError) -> bool {
    matches!(
        code(e),
        Some(
            RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_errors_are_sorted_by_what_helps() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(too_large(&e(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(fatal(&e(RDKafkaErrorCode::UnknownTopicOrPartition)));
        assert!(fatal(&e(RDKafkaErrorCode::TopicAuthorizationFailed)));
        let transient = e(RDKafkaErrorCode::MessageTimedOut);
        assert!(!fatal(&transient) && !too_large(&transient));
    }
}
