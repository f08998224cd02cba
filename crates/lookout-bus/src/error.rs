use std::time::Duration;

use rdkafka::error::KafkaError;

/// Errors of the bus. Variants carry the topic (and where known partition and offset) they
/// concern, so a log line says where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The client could not be created from the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[source] KafkaError),

    /// A `--kafka-opt` that is not `key=value`.
    #[error("invalid Kafka option {0:?}: expected key=value")]
    BadOption(String),

    /// An unknown compression name.
    #[error("unknown compression {0:?}: expected none, lz4 or zstd")]
    BadCompression(String),

    /// The encoded message is larger than the producer may send.
    #[error(
        "message for topic {topic} is {size} bytes, over the limit of {limit} bytes \
         (message.max.bytes); it was not sent"
    )]
    TooLarge {
        /// Topic the message was for.
        topic: String,
        /// Encoded size in bytes.
        size: usize,
        /// The producer's `message.max.bytes`.
        limit: usize,
    },

    /// The producer's local queue stayed full: the brokers do not keep up or are unreachable.
    #[error("producer queue full for topic {topic} for {waited:?}: the brokers are slow or down")]
    QueueFull {
        /// Topic the message was for.
        topic: String,
        /// How long the publisher waited for room.
        waited: Duration,
    },

    /// The brokers did not accept the message.
    #[error("delivery to topic {topic} failed: {source}")]
    Delivery {
        /// Topic the message was for.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// Any other client error.
    #[error("Kafka error on topic {topic}: {source}")]
    Kafka {
        /// Topic concerned ("*" for cluster-wide operations).
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },

    /// A topic the operation needs does not exist.
    #[error("topic {topic} does not exist on {brokers}{hint}")]
    UnknownTopic {
        /// The missing topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
        /// What to do about it.
        hint: &'static str,
    },

    /// The embedded broker could not be started or changed.
    #[error("embedded broker: {0}")]
    Embedded(String),

    /// A socket error of the embedded broker's listener.
    #[error("embedded broker listener on {addr}: {source}")]
    Listener {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A handler's verdict on a message it could not handle.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure (a database outage, a full downstream): the same message is offered
    /// again after a backoff, and its offset is not stored until it succeeds.
    #[error("transient: {0}")]
    Retry(String),
    /// The message can never be handled: it goes to the dead-letter topic with this reason and
    /// its offset is stored.
    #[error("rejected: {0}")]
    Reject(String),
}
